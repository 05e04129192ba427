"""Primary and secondary keys of deployments and endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from lmfoundry.access.secrets import SecretBox, new_key
from lmfoundry.errors import InvalidRequest
from lmfoundry.storage.models import Key

Slot = Literal["primary", "secondary"]
SLOTS: tuple[Slot, Slot] = ("primary", "secondary")


@dataclass(frozen=True)
class KeyMatch:
    target_kind: str
    target_id: int
    slot: str


class KeyStore:
    def __init__(self, box: SecretBox) -> None:
        self.box = box

    def create(self, s: Session, kind: str, target_id: int) -> dict[str, str]:
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
        return keys

    def read(self, s: Session, kind: str, target_id: int) -> dict[str, str]:
        rows = s.scalars(select(Key).where(Key.target_kind == kind, Key.target_id == target_id))
        return {f"{row.slot}_key": self.box.decrypt(row.secret) for row in rows}

    def regenerate(self, s: Session, kind: str, target_id: int, slot: str) -> dict[str, str]:
        if slot not in SLOTS:
            raise InvalidRequest(
                f"key_type must be 'primary' or 'secondary', not {slot!r}.", param="key_type"
            )
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
        return self.read(s, kind, target_id)

    def match(self, s: Session, key: str) -> KeyMatch | None:
        """The target a presented key belongs to. The lookup is by HMAC digest, so timing
        reveals nothing about stored keys."""
        row = s.scalar(select(Key).where(Key.digest == self.box.digest(key)))
        if row is None:
            return None
        return KeyMatch(row.target_kind, row.target_id, row.slot)

    def delete(self, s: Session, kind: str, target_id: int) -> None:
        s.execute(delete(Key).where(Key.target_kind == kind, Key.target_id == target_id))
