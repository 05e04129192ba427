"""Primary and secondary keys of deployments and endpoints."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Literal

from cachetools import TTLCache
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lmfoundry.access.models import Keys
from lmfoundry.access.secrets import SecretBox, new_key
from lmfoundry.errors import InvalidRequest, NotFound
from lmfoundry.storage.models import Key

Slot = Literal["primary", "secondary"]
SLOTS: tuple[Slot, Slot] = ("primary", "secondary")


@dataclass(frozen=True)
class KeyMatch:
    target_kind: str
    target_id: int
    slot: str


# How long a gateway trusts what it read about a key. A key regenerated or deleted through this
# process stops working at once; through another gateway process, within this many seconds.
MATCH_CACHE_SECONDS = 2.0


class KeyStore:
    def __init__(self, box: SecretBox) -> None:
        self.box = box
        # digest -> match (or None: unknown keys are cached too, so guessing costs no query)
        self._matches: TTLCache[str, KeyMatch | None] = TTLCache(4096, MATCH_CACHE_SECONDS)
        self._lock = threading.Lock()  # cachetools caches are not thread-safe

    def forget(self) -> None:
        """Drop what was read about keys (called on every change to them)."""
        with self._lock:
            self._matches.clear()

    def create(self, s: Session, kind: str, target_id: int) -> Keys:
        self.forget()
        keys = {}
        for slot in SLOTS:
            key = new_key()
            s.add(
                Key(
                    target_kind=kind,
                    target_id=target_id,
                    slot=slot,
                    digest=self.box.digest(key),
                    secret=self.box.encrypt(key),
                )
            )
            keys[f"{slot}_key"] = key
        return Keys.model_validate(keys)

    def read(self, s: Session, kind: str, target_id: int) -> Keys | None:
        """The target's keys; None when it has none (a flow not deployed yet)."""
        rows = s.scalars(select(Key).where(Key.target_kind == kind, Key.target_id == target_id))
        keys = {f"{row.slot}_key": self.box.decrypt(row.secret) for row in rows}
        return Keys.model_validate(keys) if keys else None

    def read_existing(self, s: Session, kind: str, target_id: int) -> Keys:
        """`read` for a target that has keys (every deployment and endpoint does)."""
        keys = self.read(s, kind, target_id)
        if keys is None:
            raise NotFound(f"No keys for this {kind}; regenerate them.")
        return keys

    def regenerate(self, s: Session, kind: str, target_id: int, slot: str) -> Keys:
        if slot not in SLOTS:
            raise InvalidRequest(
                f"key_type must be 'primary' or 'secondary', not {slot!r}.", param="key_type"
            )
        self.forget()
        row = s.scalar(
            select(Key).where(Key.target_kind == kind, Key.target_id == target_id, Key.slot == slot)
        )
        key = new_key()
        if row is None:
            s.add(
                Key(
                    target_kind=kind,
                    target_id=target_id,
                    slot=slot,
                    digest=self.box.digest(key),
                    secret=self.box.encrypt(key),
                )
            )
        else:
            row.digest = self.box.digest(key)
            row.secret = self.box.encrypt(key)
        s.flush()
        return self.read_existing(s, kind, target_id)

    def match(
        self, s: Session | Callable[[], AbstractContextManager[Session]], key: str
    ) -> KeyMatch | None:
        """The target a presented key belongs to. The lookup is by HMAC digest, so timing
        reveals nothing about stored keys. `s` may be a session factory, opened only when
        the key is not in the cache (the gateway's case: most requests need no query)."""
        digest = self.box.digest(key)
        with self._lock:
            if digest in self._matches:
                return self._matches[digest]
        if isinstance(s, Session):
            found = _find(s, digest)
        else:
            with s() as session:
                found = _find(session, digest)
        with self._lock:
            self._matches[digest] = found
        return found

    def delete(self, s: Session, kind: str, target_id: int) -> None:
        self.forget()
        s.execute(delete(Key).where(Key.target_kind == kind, Key.target_id == target_id))


def _find(s: Session, digest: str) -> KeyMatch | None:
    row = s.scalar(select(Key).where(Key.digest == digest))
    return None if row is None else KeyMatch(row.target_kind, row.target_id, row.slot)
