"""Stored responses: what `previous_response_id` continues and `v1/responses/{id}` reads.

Each belongs to the serverless deployment or online endpoint that answered it; a key opens
only its own target, and a response of another target is "not found" (not "forbidden"), so
its existence is not revealed. Sizes are bounded per conversation and per target, and a
stored response expires after `RETENTION` (OpenAI keeps them 30 days).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from lmfoundry.errors import Conflict, NotFound, PayloadTooLarge
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import StoredResponse

MAX_CONVERSATION_BYTES = 1024 * 1024  # one stored conversation, as JSON
MAX_TARGET_BYTES = 64 * 1024 * 1024  # all stored responses of one deployment or endpoint
RETENTION = timedelta(days=30)


@dataclass(frozen=True)
class Owner:
    """The target a stored response belongs to."""

    project_id: int
    kind: str  # "serverless" or "endpoint"
    target_id: int
    name: str

    def where(self) -> Any:
        column = (
            StoredResponse.serverless_id
            if self.kind == "serverless"
            else StoredResponse.endpoint_id
        )
        return (StoredResponse.project_id == self.project_id) & (column == self.target_id)


@dataclass(frozen=True)
class Stored:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    conversation: list[dict[str, Any]]


def size_of(items: list[dict[str, Any]]) -> int:
    return len(json.dumps(items, separators=(",", ":")))


class ResponseStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, owner: Owner, response_id: str, param: str | None = None) -> Stored:
        with self.db.session() as s:
            row = self._row(s, owner, response_id, param)
            return Stored(row.response, list(row.input_items), list(row.conversation))

    def delete(self, owner: Owner, response_id: str) -> None:
        with self.db.session() as s:
            s.delete(self._row(s, owner, response_id))

    def check_room(self, owner: Owner, conversation: list[dict[str, Any]]) -> None:
        """Refuse, before the model runs, a conversation too large to store (413) or a
        target whose stored responses are full (409)."""
        size = size_of(conversation)
        if size > MAX_CONVERSATION_BYTES:
            raise PayloadTooLarge(
                f"The conversation to store is {size:,} bytes, over the limit of "
                f"{MAX_CONVERSATION_BYTES:,}; start a new conversation (no "
                "previous_response_id), or send `store: false` and the whole conversation "
                "as input.",
                param="store",
            )
        with self.db.session() as s:
            used = s.scalar(
                select(func.coalesce(func.sum(StoredResponse.size_bytes), 0)).where(
                    owner.where(), StoredResponse.expires_at > datetime.now(UTC)
                )
            )
        if int(used or 0) + size > MAX_TARGET_BYTES:
            raise Conflict(
                f"{owner.name!r} already stores {int(used or 0):,} bytes of responses, the "
                f"most it may ({MAX_TARGET_BYTES:,}); delete some (`DELETE v1/responses/"
                "{id}`) or send `store: false`.",
                param="store",
            )

    def save(
        self,
        owner: Owner,
        response: dict[str, Any],
        input_items: list[dict[str, Any]],
        conversation: list[dict[str, Any]],
    ) -> None:
        now = datetime.now(UTC)
        with self.db.session() as s:
            s.execute(delete(StoredResponse).where(owner.where(), StoredResponse.expires_at <= now))
            s.add(
                StoredResponse(
                    id=response["id"],
                    project_id=owner.project_id,
                    serverless_id=owner.target_id if owner.kind == "serverless" else None,
                    endpoint_id=owner.target_id if owner.kind != "serverless" else None,
                    response=response,
                    input_items=input_items,
                    conversation=conversation,
                    size_bytes=size_of(conversation) + len(json.dumps(response)),
                    created_at=now,
                    expires_at=now + RETENTION,
                )
            )

    @staticmethod
    def _row(
        s: Session, owner: Owner, response_id: str, param: str | None = None
    ) -> StoredResponse:
        row = s.scalar(
            select(StoredResponse).where(
                owner.where(),
                StoredResponse.id == response_id,
                StoredResponse.expires_at > datetime.now(UTC),
            )
        )
        if row is None:
            raise NotFound(
                f"No stored response {response_id[:80]!r} on {owner.name!r}; responses are "
                "kept per deployment when created with `store: true` (the default), for "
                f"{RETENTION.days} days. Check the id, or start a new conversation without "
                "previous_response_id.",
                param=param,
            )
        return row
