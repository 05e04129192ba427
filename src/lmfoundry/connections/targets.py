"""Target resolvers for `lmfoundry` connections: serverless deployments and online endpoints
of the same project, registered by kind with `ConnectionService.register_target`."""

from __future__ import annotations

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


class ServerlessTargets:
    """`{"target_kind": "serverless", "target": NAME}` -> the deployment's URL and primary key."""

    def __init__(self, db: Database, serverless: ServerlessService, keys: KeyStore) -> None:
        self.db = db
        self.serverless = serverless
        self.keys = keys

    def _row(self, s: object, project_id: int, name: str) -> ServerlessDeployment | None:
        return s.scalar(  # type: ignore[attr-defined, no-any-return]
            select(ServerlessDeployment).where(
                ServerlessDeployment.project_id == project_id, ServerlessDeployment.name == name
            )
        )

    def exists(self, project_id: int, name: str) -> bool:
        with self.db.session() as s:
            return self._row(s, project_id, name) is not None

    def resolve(self, project_id: int, name: str) -> Target:
        with self.db.session() as s:
            row = self._row(s, project_id, name)
            if row is None:
                raise NotFound(
                    f"Serverless deployment {name!r} no longer exists in this project; "
                    "point the connection at another one (`lmfoundry serverless list`)."
                )
            key = self.keys.read(s, SERVERLESS, row.id)["primary_key"]
        url = self.serverless.target_url(name)
        return Target(kind=SERVERLESS, name=name, target_url=url, endpoint=url, key=key)


class EndpointTargets:
    """`{"target_kind": "endpoint", "target": NAME}` -> the endpoint's `/score` URL and key.

    Flow code posts the tutorial's body (`{"input_data": {...}}`) to `endpoint`; `target_url`
    is the endpoint's base, under which `chat/completions` answers too."""

    def __init__(self, db: Database, endpoints: EndpointService, keys: KeyStore) -> None:
        self.db = db
        self.endpoints = endpoints
        self.keys = keys

    def _row(self, s: object, project_id: int, name: str) -> OnlineEndpoint | None:
        return s.scalar(  # type: ignore[attr-defined, no-any-return]
            select(OnlineEndpoint).where(
                OnlineEndpoint.project_id == project_id, OnlineEndpoint.name == name
            )
        )

    def exists(self, project_id: int, name: str) -> bool:
        with self.db.session() as s:
            return self._row(s, project_id, name) is not None

    def resolve(self, project_id: int, name: str) -> Target:
        with self.db.session() as s:
            row = self._row(s, project_id, name)
            if row is None:
                raise NotFound(
                    f"Online endpoint {name!r} no longer exists in this project; "
                    "point the connection at another one (`lmfoundry endpoints list`)."
                )
            key = self.keys.read(s, ENDPOINT, row.id)["primary_key"]
        score = self.endpoints.scoring_uri(name)
        base = score.rsplit("/", 1)[0] + "/"
        return Target(kind=ENDPOINT, name=name, target_url=base, endpoint=score, key=key)
