"""Target resolvers for `lmfoundry` connections: serverless deployments and online endpoints
of the same project, registered by kind with `ConnectionService.register_target`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from lmfoundry.access.keys import KeyStore
from lmfoundry.connections.models import Target
from lmfoundry.deployments.endpoints import KIND as ENDPOINT
from lmfoundry.deployments.endpoints import EndpointService
from lmfoundry.deployments.serverless import KIND as SERVERLESS
from lmfoundry.deployments.serverless import ServerlessService
from lmfoundry.errors import NotFound
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import OnlineEndpoint, ServerlessDeployment


class _Targets:
    """Looks a deployment of one kind up by name in a project: its URL and primary key."""

    kind = ""
    model: Any = None
    what = ""  # for messages: "Serverless deployment"
    listing = ""  # the command that lists the other ones

    def __init__(self, db: Database, keys: KeyStore) -> None:
        self.db = db
        self.keys = keys

    def _row(self, s: Any, project_id: int, name: str) -> Any:
        table = self.model
        return s.scalar(select(table).where(table.project_id == project_id, table.name == name))

    def exists(self, project_id: int, name: str) -> bool:
        with self.db.session() as s:
            return self._row(s, project_id, name) is not None

    def resolve(self, project_id: int, name: str) -> Target:
        with self.db.session() as s:
            row = self._row(s, project_id, name)
            if row is None:
                raise NotFound(
                    f"{self.what} {name!r} no longer exists in this "
                    f"project; point the connection at another one (`{self.listing}`)."
                )
            key = self.keys.read_existing(s, self.kind, row.id).primary_key
        return self.target(name, key)

    def target(self, name: str, key: str) -> Target:
        raise NotImplementedError


class ServerlessTargets(_Targets):
    """`{"target_kind": "serverless", "target": NAME}` -> the deployment's URL and key."""

    kind, model = SERVERLESS, ServerlessDeployment
    what, listing = "Serverless deployment", "lmfoundry serverless list"

    def __init__(self, db: Database, serverless: ServerlessService, keys: KeyStore) -> None:
        super().__init__(db, keys)
        self.serverless = serverless

    def target(self, name: str, key: str) -> Target:
        url = self.serverless.target_url(name)
        return Target(kind=SERVERLESS, name=name, target_url=url, endpoint=url, key=key)


class EndpointTargets(_Targets):
    """`{"target_kind": "endpoint", "target": NAME}` -> the endpoint's `/score` URL and key.

    Flow code posts the tutorial's body (`{"input_data": {...}}`) to `endpoint`; `target_url`
    is the endpoint's base, under which `chat/completions` answers too."""

    kind, model = ENDPOINT, OnlineEndpoint
    what, listing = "Online endpoint", "lmfoundry endpoints list"

    def __init__(self, db: Database, endpoints: EndpointService, keys: KeyStore) -> None:
        super().__init__(db, keys)
        self.endpoints = endpoints

    def target(self, name: str, key: str) -> Target:
        score = self.endpoints.scoring_uri(name)
        base = score.rsplit("/", 1)[0] + "/"
        return Target(kind=ENDPOINT, name=name, target_url=base, endpoint=score, key=key)
