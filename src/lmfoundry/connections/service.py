"""Connections: project-scoped configs + secrets that flows read.

Secrets are encrypted at rest with the master key and are write-only through the API: views
show each secret's name with the value "***", and a PUT that sends "***" keeps the stored
value, so a client can send back what it read. Plaintext leaves this module only through
`resolve`, on its way to a flow process.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lmfoundry.access.audit import record
from lmfoundry.access.models import ProjectAccess, Role
from lmfoundry.access.secrets import SecretBox
from lmfoundry.connections.models import (
    MASK,
    ConnectionType,
    ConnectionView,
    ResolvedConnection,
    TargetResolver,
)
from lmfoundry.errors import Conflict, InvalidRequest, NotFound
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Connection, utcnow

# Prompt flow connection names often have underscores (`open_ai_connection`), so they are
# allowed here, unlike deployment names that end up in URLs.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
MAX_FIELDS = 64
MAX_FIELD_NAME = 100
MAX_VALUE = 16 * 1024
LMFOUNDRY_CONFIGS = ("target_kind", "target")


def check_connection_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidRequest(
            f"Invalid connection name {name!r}: use 1-64 letters, digits, '_' and '-', "
            "starting with a letter, digit or '_' (for example 'my_connection').",
            param="name",
        )
    return name


def _check_fields(field: str, values: dict[str, str]) -> None:
    if len(values) > MAX_FIELDS:
        raise InvalidRequest(f"{field} can hold at most {MAX_FIELDS} entries.", param=field)
    for key, value in values.items():
        if not key or len(key) > MAX_FIELD_NAME or not key.isprintable():
            raise InvalidRequest(
                f"{field} has an invalid name {key[:40]!r}: use 1-{MAX_FIELD_NAME} printable "
                "characters (names like endpoint or key also work as attributes in flow code).",
                param=field,
            )
        if not isinstance(value, str):
            raise InvalidRequest(f"{field}.{key} must be a string.", param=f"{field}.{key}")
        if len(value) > MAX_VALUE:
            raise InvalidRequest(
                f"{field}.{key} is longer than {MAX_VALUE} characters.", param=f"{field}.{key}"
            )


class ConnectionService:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self.db = db
        self.box = box
        self._targets: dict[str, TargetResolver] = {}

    def register_target(self, kind: str, resolver: TargetResolver) -> None:
        """Let `lmfoundry` connections point at deployments of `kind` ("serverless", ...)."""
        self._targets[kind] = resolver

    # -- views -------------------------------------------------------------------------------

    @staticmethod
    def _view(row: Connection, project: str) -> ConnectionView:
        return ConnectionView(
            name=row.name,
            project=project,
            type=row.type,
            configs=dict(row.configs),
            secrets=dict.fromkeys(row.secret_names, MASK),
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _row(self, s: Session, access: ProjectAccess, name: str) -> Connection:
        row = s.scalar(
            select(Connection).where(
                Connection.project_id == access.project_id, Connection.name == name
            )
        )
        if row is None:
            raise NotFound(
                f"Connection {name!r} not found in project {access.project!r}; "
                "`lmfoundry connections list` shows them."
            )
        return row

    def _decrypt(self, row: Connection) -> dict[str, str]:
        if not row.secrets:
            return {}
        return dict(json.loads(self.box.decrypt(row.secrets)))

    # -- management --------------------------------------------------------------------------

    def put(
        self,
        access: ProjectAccess,
        name: str,
        type: str,
        configs: dict[str, str],
        secrets: dict[str, str],
    ) -> tuple[ConnectionView, bool]:
        """Create or replace a connection; returns (view, created). A secret sent as "***"
        keeps its stored value."""
        access.require(Role.developer, "create or change connections")
        check_connection_name(name)
        if type not in tuple(ConnectionType):
            raise InvalidRequest(
                f"Connection type {type!r} is not supported; use 'custom' (configs + secrets) "
                "or 'lmfoundry' (a deployment of this server, key looked up for you).",
                param="type",
            )
        _check_fields("configs", configs)
        _check_fields("secrets", secrets)
        both = sorted(set(configs) & set(secrets))
        if both:
            raise InvalidRequest(
                f"{both[0]!r} is both a config and a secret; keep it in one of them.",
                param=f"secrets.{both[0]}",
            )
        if type == ConnectionType.lmfoundry:
            self._check_lmfoundry(access, configs, secrets)
        with self.db.session() as s:
            row = s.scalar(
                select(Connection).where(
                    Connection.project_id == access.project_id, Connection.name == name
                )
            )
            stored = self._decrypt(row) if row is not None else {}
            plain: dict[str, str] = {}
            for key, value in secrets.items():
                if value == MASK:
                    if key not in stored:
                        raise InvalidRequest(
                            f"secrets.{key} is {MASK!r}, which keeps a stored value, but "
                            f"connection {name!r} has no stored secret {key!r}; send the value.",
                            param=f"secrets.{key}",
                        )
                    plain[key] = stored[key]
                else:
                    plain[key] = value
            created = row is None
            previous_type = None if row is None else row.type
            now = utcnow()
            if row is None:
                row = Connection(
                    project_id=access.project_id,
                    name=name,
                    created_by=access.principal.name,
                    created_at=now,
                )
                s.add(row)
            row.type = type
            row.configs = dict(configs)
            row.secret_names = sorted(plain)
            row.secrets = self.box.encrypt(json.dumps(plain)) if plain else ""
            row.updated_at = now
            try:
                s.flush()
            except IntegrityError as exc:  # a concurrent create won the race
                raise Conflict(f"Connection {name!r} was created meanwhile; retry.") from exc
            changed_secrets = sorted(k for k in plain if stored.get(k) != plain[k])
            record(
                s,
                access.principal.name,
                access.project_id,
                "connection.create" if created else "connection.update",
                name,
                {
                    "type": type,
                    "configs": sorted(configs),
                    "secrets": sorted(plain),
                    "secrets_changed": changed_secrets,
                    **({"previous_type": previous_type} if previous_type is not None else {}),
                },
            )
            return self._view(row, access.project), created

    def _check_lmfoundry(
        self, access: ProjectAccess, configs: dict[str, str], secrets: dict[str, str]
    ) -> None:
        kinds = ", ".join(sorted(self._targets)) or "none"
        if secrets:
            raise InvalidRequest(
                "An lmfoundry connection holds no secrets: its key is looked up when a flow "
                "runs. Remove secrets, or use type 'custom'.",
                param="secrets",
            )
        missing = [k for k in LMFOUNDRY_CONFIGS if not configs.get(k)]
        extra = sorted(set(configs) - set(LMFOUNDRY_CONFIGS))
        if missing or extra:
            raise InvalidRequest(
                "An lmfoundry connection has exactly two configs: target_kind "
                f"({kinds}) and target (the deployment's name); "
                + (f"missing {', '.join(missing)}." if missing else f"remove {', '.join(extra)}."),
                param=f"configs.{(missing or extra)[0]}",
            )
        resolver = self._targets.get(configs["target_kind"])
        if resolver is None:
            raise InvalidRequest(
                f"configs.target_kind {configs['target_kind']!r} is not one this server "
                f"resolves; use one of: {kinds}.",
                param="configs.target_kind",
            )
        if not resolver.exists(access.project_id, configs["target"]):
            raise InvalidRequest(
                f"There is no {configs['target_kind']} deployment named {configs['target']!r} "
                f"in project {access.project!r}; create it first or fix configs.target.",
                param="configs.target",
            )

    def list(self, access: ProjectAccess) -> list[ConnectionView]:
        with self.db.session() as s:
            rows = s.scalars(
                select(Connection)
                .where(Connection.project_id == access.project_id)
                .order_by(Connection.name)
            ).all()
            return [self._view(r, access.project) for r in rows]

    def get(self, access: ProjectAccess, name: str) -> ConnectionView:
        with self.db.session() as s:
            return self._view(self._row(s, access, name), access.project)

    def delete(self, access: ProjectAccess, name: str) -> None:
        access.require(Role.developer, "delete connections")
        with self.db.session() as s:
            row = self._row(s, access, name)
            s.delete(row)
            record(
                s,
                access.principal.name,
                access.project_id,
                "connection.delete",
                name,
                {"type": row.type},
            )

    # -- for flow processes ------------------------------------------------------------------

    def resolve(self, project_id: int, names: Iterable[str]) -> dict[str, ResolvedConnection]:
        """The named connections with plaintext secrets, for handing to a flow process. Raises
        NotFound naming every missing connection."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        with self.db.session() as s:
            rows = {
                r.name: r
                for r in s.scalars(
                    select(Connection).where(
                        Connection.project_id == project_id, Connection.name.in_(wanted)
                    )
                )
            }
            missing = [n for n in wanted if n not in rows]
            if missing:
                raise NotFound(
                    f"No connection named {', '.join(map(repr, missing))} in this project; "
                    "create it with `lmfoundry connections create NAME --config endpoint=... "
                    "--secret key` (or `--file connection.yaml`).",
                    param="connection",
                    detail={"missing": missing},
                )
            resolved = {}
            for name, row in rows.items():
                if row.type == ConnectionType.lmfoundry:
                    resolved[name] = self._resolve_target(project_id, row)
                else:
                    resolved[name] = ResolvedConnection(
                        name=name,
                        type=row.type,
                        configs=dict(row.configs),
                        secrets=self._decrypt(row),
                    )
            return resolved

    def _resolve_target(self, project_id: int, row: Connection) -> ResolvedConnection:
        kind, target = row.configs["target_kind"], row.configs["target"]
        resolver = self._targets.get(kind)
        if resolver is None:
            raise InvalidRequest(
                f"Connection {row.name!r} points at a {kind} deployment, which this server "
                "cannot resolve; update the connection.",
                param="connection",
            )
        found = resolver.resolve(project_id, target)
        return ResolvedConnection(
            name=row.name,
            type=ConnectionType.custom.value,  # flow code sees a CustomConnection either way
            configs={
                "endpoint": found.endpoint,
                "target_url": found.target_url,
                "target_kind": found.kind,
                "target": found.name,
            },
            secrets={"key": found.key},
        )
