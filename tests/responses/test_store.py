"""The store of the Responses API on SQLite and PostgreSQL: a response is read and deleted
only through the target that answered it, goes with that target, and sizes are bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from lmfoundry.errors import Conflict, NotFound, PayloadTooLarge
from lmfoundry.responses import store as store_module
from lmfoundry.responses.store import Owner, ResponseStore
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Project, ServerlessDeployment, StoredResponse

ITEMS = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]


def deployment(db: Database, project: str, name: str) -> Owner:
    with db.session() as s:
        row = Project(name=project)
        s.add(row)
        s.flush()
        dep = ServerlessDeployment(
            project_id=row.id, name=name, model=name, tokens_per_minute=1, requests_per_minute=1
        )
        s.add(dep)
        s.flush()
        return Owner(row.id, "serverless", dep.id, name)


@pytest.fixture
def db(database_url: str) -> Database:
    database = Database(database_url)
    database.migrate()
    return database


def test_a_response_is_read_and_deleted_only_through_its_own_target(db: Database) -> None:
    store = ResponseStore(db)
    mine, theirs = deployment(db, "p1", "a"), deployment(db, "p2", "b")
    response = {"id": "resp_1", "object": "response", "output": []}
    store.save(mine, response, ITEMS, ITEMS)
    assert store.get(mine, "resp_1").response == response
    assert store.get(mine, "resp_1").conversation == ITEMS
    same_id_elsewhere = Owner(theirs.project_id, "endpoint", mine.target_id, "e")
    for other in (theirs, same_id_elsewhere):
        with pytest.raises(NotFound):
            store.get(other, "resp_1")
        with pytest.raises(NotFound):
            store.delete(other, "resp_1")
    store.delete(mine, "resp_1")
    with pytest.raises(NotFound, match="previous_response_id"):
        store.get(mine, "resp_1", "previous_response_id")


def test_stored_responses_go_with_their_deployment_and_expire(db: Database) -> None:
    store = ResponseStore(db)
    owner = deployment(db, "p1", "a")
    store.save(owner, {"id": "resp_gone"}, ITEMS, ITEMS)
    store.save(owner, {"id": "resp_old"}, ITEMS, ITEMS)
    with db.session() as s:
        s.execute(
            update(StoredResponse)
            .where(StoredResponse.id == "resp_old")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with pytest.raises(NotFound):
        store.get(owner, "resp_old")
    with db.session() as s:
        s.delete(s.get(ServerlessDeployment, owner.target_id))
    with db.session() as s:
        assert s.get(StoredResponse, "resp_gone") is None


def test_sizes_are_bounded(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResponseStore(db)
    owner = deployment(db, "p1", "a")
    big = [{"type": "message", "role": "user", "content": "x" * 2000}]
    monkeypatch.setattr(store_module, "MAX_CONVERSATION_BYTES", 1000)
    with pytest.raises(PayloadTooLarge, match="store: false"):
        store.check_room(owner, big)
    monkeypatch.setattr(store_module, "MAX_CONVERSATION_BYTES", 10_000)
    monkeypatch.setattr(store_module, "MAX_TARGET_BYTES", 4000)
    store.check_room(owner, big)
    store.save(owner, {"id": "resp_big"}, big, big)
    with pytest.raises(Conflict, match="DELETE"):
        store.check_room(owner, big)
    store.delete(owner, "resp_big")
    store.check_room(owner, big)
