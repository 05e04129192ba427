"""Flows: upload (a new version per upload), test, deploy behind a key, and score.

A flow's folders live under `$LMFOUNDRY_HOME/artifacts/flows/{name}/{version}/`. Every
execution happens in a flow process (`launcher.py`) that receives only the connections the
flow names; a test or a score runs one line in a fresh process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmfoundry.access.audit import record
from lmfoundry.access.keys import KeyStore
from lmfoundry.access.models import Keys, ProjectAccess, Role
from lmfoundry.access.service import check_name
from lmfoundry.config import Settings
from lmfoundry.connections.models import ResolvedConnection
from lmfoundry.connections.service import ConnectionService
from lmfoundry.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from lmfoundry.flows import bindings
from lmfoundry.flows.archive import unpack
from lmfoundry.flows.call import FlowCall
from lmfoundry.flows.dag import load_dag
from lmfoundry.flows.flex import FlexFlow, with_init
from lmfoundry.flows.launcher import FlowProcess
from lmfoundry.flows.models import Dag
from lmfoundry.flows.views import (
    ConnectionInput,
    DeployedFlowView,
    FlowNode,
    FlowView,
)
from lmfoundry.quotas.projects import ProjectQuotas, folder_bytes
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Connection, Flow, Project, utcnow

KIND = "flow"  # target kind of flow keys in the key store
DEPLOYED_INIT = "deployed_init"  # in a flow's interface: a flex flow's init at deploy


class FlowService:
    project_quotas: ProjectQuotas | None = None  # flow calls per minute, storage

    def __init__(
        self, db: Database, settings: Settings, connections: ConnectionService, keys: KeyStore
    ) -> None:
        self.db = db
        self.settings = settings
        self.connections = connections
        self.keys = keys
        self.root = settings.artifacts_dir / "flows"
        self.logs = settings.home / "logs" / "flows"
        self.base_url = settings.base_url.rstrip("/")

    def folder(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def scoring_uri(self, name: str) -> str:
        return f"{self.base_url}/flows/{name}/score"

    def _view(self, row: Flow, project: str) -> FlowView:
        interface = row.interface
        saved = dict(interface.get("connection_bindings") or {})
        return FlowView(
            name=row.name,
            project=project,
            version=row.version,
            kind=interface["kind"],
            inputs=interface["inputs"],
            outputs=interface["outputs"],
            nodes=[FlowNode.model_validate(node) for node in interface["nodes"]],
            connections=interface["connections"],
            connection_bindings=saved,
            connection_inputs=[
                ConnectionInput.model_validate({**slot, "bound": saved.get(slot["key"])})
                for slot in interface.get("connection_inputs") or []
            ],
            deployed_version=row.deployed_version,
            scoring_uri=self.scoring_uri(row.name) if row.deployed_version else None,
            created_by=row.created_by,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _row(self, s: Session, access: ProjectAccess, name: str) -> Flow:
        row = s.scalar(select(Flow).where(Flow.project_id == access.project_id, Flow.name == name))
        if row is None:
            raise NotFound(
                f"Flow {name!r} not found in project {access.project!r}; `lmfoundry flow list` "
                "shows them and `lmfoundry flow upload DIR --name NAME` adds one."
            )
        return row

    def flows_enabled(self, project_id: int) -> bool:
        """Whether an owner switched flows on in the project (a deleted one: no)."""
        with self.db.session() as s:
            enabled = s.scalar(select(Project.flows_enabled).where(Project.id == project_id))
        return bool(enabled)

    def require_flows(self, access: ProjectAccess, what: str) -> None:
        """403 unless the actor may run code in the project: the developer role or higher,
        in a project whose owner switched flows on (flow code is what members upload)."""
        access.require(Role.developer, what)
        if not self.flows_enabled(access.project_id):
            raise Forbidden(
                f"Flows are switched off in project {access.project!r}; to {what}, an owner "
                "of the project (or an admin) must switch them on with `lmfoundry "
                f"projects flows enable --project {access.project}` (PATCH "
                f'/api/v1/projects/{access.project} {{"flows_enabled": true}}).'
            )

    # -- storage -----------------------------------------------------------------------------

    def _unpack_checked(self, archive: bytes | BinaryIO, into: Path) -> tuple[Path, Dag]:
        folder = unpack(archive, into, self.settings.flow_max_bytes)  # checks every limit
        return folder, load_dag(folder)

    def upload(
        self, access: ProjectAccess, name: str, archive: bytes | BinaryIO
    ) -> tuple[FlowView, bool]:
        """Validate the packed flow and store it as the next version; returns (view, created)."""
        access.require(Role.developer, "upload flows")
        check_name("flow", name)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))
        try:
            folder, dag = self._unpack_checked(archive, staging / "flow")
            if self.project_quotas is not None:  # 409 before anything is stored
                self.project_quotas.check_storage(access, folder_bytes(folder))
            with self.db.session() as s:
                row = s.scalar(select(Flow).where(Flow.name == name))
                if row is not None and row.project_id != access.project_id:
                    raise Conflict(
                        f"A flow named {name!r} exists in another project; flow names are "
                        "unique because a deployed flow answers at /flows/{name}/score.",
                        param="name",
                    )
                created = row is None
                now = utcnow()
                if row is None:
                    row = Flow(
                        project_id=access.project_id,
                        name=name,
                        version=0,
                        created_by=access.principal.name,
                        created_at=now,
                    )
                    s.add(row)
                row.version += 1
                row.kind = dag.kind
                saved = (row.interface or {}).get("connection_bindings") or {}
                row.interface = {
                    **dag.interface(),
                    "connection_inputs": [s.view(None) for s in bindings.slots(dag)],
                    "connection_bindings": bindings.carry_over(dag, saved),
                }
                row.updated_at = now
                target = self.folder(name, row.version)
                if target.exists():  # left over from a flow of the same name, deleted
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(folder, target)
                record(
                    s,
                    access.principal.name,
                    access.project_id,
                    "flow.upload",
                    name,
                    {"version": row.version, "connections": dag.connection_names},
                )
                s.flush()
                return self._view(row, access.project), created
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def list(self, access: ProjectAccess) -> list[FlowView]:
        with self.db.session() as s:
            rows = s.scalars(
                select(Flow).where(Flow.project_id == access.project_id).order_by(Flow.name)
            ).all()
            return [self._view(r, access.project) for r in rows]

    def get(self, access: ProjectAccess, name: str) -> FlowView:
        with self.db.session() as s:
            return self._view(self._row(s, access, name), access.project)

    def delete(self, access: ProjectAccess, name: str) -> None:
        access.require(Role.developer, "delete flows")
        with self.db.session() as s:
            row = self._row(s, access, name)
            self.keys.delete(s, KIND, row.id)
            s.delete(row)
            record(s, access.principal.name, access.project_id, "flow.delete", name, {})
        shutil.rmtree(self.root / name, ignore_errors=True)

    def dag_of(self, access: ProjectAccess, name: str) -> tuple[Dag, int]:
        """The latest version of an uploaded flow, loaded: (dag, version)."""
        with self.db.session() as s:
            version = self._row(s, access, name).version
        return load_dag(self.folder(name, version)), version

    def saved_bindings(self, access: ProjectAccess, name: str) -> dict[str, str]:
        """The connection bindings saved on an uploaded flow (studio picker, deploy)."""
        with self.db.session() as s:
            return dict(self._row(s, access, name).interface.get("connection_bindings") or {})

    def available_connections(self, project_id: int) -> dict[str, str]:
        """The project's connections: name -> type (nothing decrypted)."""
        with self.db.session() as s:
            rows = s.execute(
                select(Connection.name, Connection.type).where(Connection.project_id == project_id)
            ).all()
        return {name: kind for name, kind in rows}

    def bind(
        self, project_id: int, dag: Dag, given: dict[str, Any], defaults: bool = True
    ) -> tuple[Dag, bindings.Resolution]:
        """The flow with its connection inputs bound (given, else the project's only
        fitting connection); 400 naming the input for each one that cannot be."""
        resolution = bindings.check(dag, given, self.available_connections(project_id), defaults)
        return bindings.apply(dag, resolution.bindings), resolution

    def save_bindings(self, access: ProjectAccess, name: str, given: dict[str, Any]) -> FlowView:
        """Replace the bindings saved on a flow (what the studio's picker stores; a test, a run
        or a deploy of the flow uses them); an empty name leaves that input unbound."""
        self.require_flows(access, "bind connections of flows")
        chosen = {k: v for k, v in given.items() if v not in (None, "")}
        dag, _ = self.dag_of(access, name)
        resolution = bindings.check(
            dag, chosen, self.available_connections(access.project_id), defaults=False
        )
        with self.db.session() as s:
            row = self._row(s, access, name)
            row.interface = {**row.interface, "connection_bindings": resolution.bindings}
            record(
                s,
                access.principal.name,
                access.project_id,
                "flow.bind_connections",
                name,
                {"connections": resolution.bindings},
            )
            return self._view(row, access.project)

    # -- running -----------------------------------------------------------------------------

    def resolve_connections(self, project_id: int, dag: Dag) -> dict[str, ResolvedConnection]:
        """The flow's connections, decrypted; 400 naming the node for each missing one."""
        try:
            return self.connections.resolve(project_id, dag.connection_names)
        except NotFound as exc:
            missing = (exc.detail or {}).get("missing")
            if not missing:  # an lmfoundry connection whose deployment is gone
                raise InvalidRequest(exc.message, param="connection") from exc
            uses = [(n, i, c) for n, i, c in dag.connection_uses() if c in missing]
            node, field, name = uses[0]
            raise InvalidRequest(
                f"Node {node!r} input {field!r} names connection {name!r}, which does not "
                "exist in this project; create it with `lmfoundry connections create "
                f"{name} --config endpoint=URL --secret key` (or --file connection.yaml).",
                param=f"nodes.{node}.inputs.{field}",
                detail={"missing": missing},
            ) from exc

    def process(
        self,
        dag: Dag,
        connections: dict[str, ResolvedConnection],
        log: str,
        bound: dict[str, str] | None = None,
    ) -> FlowProcess:
        return FlowProcess(
            dag,
            connections,
            self.settings.flow_line_timeout,
            self.logs / log,
            self.settings,
            bindings=bound,
        )

    async def _call(
        self,
        project_id: int,
        dag: Dag,
        inputs: dict[str, Any],
        log: str,
        aggregate: bool,
        hidden: frozenset[str] = frozenset(),
        cleanup: Callable[[], None] | None = None,
        given: dict[str, Any] | None = None,
    ) -> FlowCall:
        try:
            dag, resolution = await asyncio.to_thread(self.bind, project_id, dag, given or {})
            connections = await asyncio.to_thread(self.resolve_connections, project_id, dag)
            process = self.process(dag, connections, log, resolution.bindings)
            await process.start()
        except BaseException:
            if cleanup is not None:
                cleanup()
            raise
        return FlowCall(process, inputs, aggregate, hidden, cleanup, resolution)

    async def test(
        self,
        access: ProjectAccess,
        inputs: dict[str, Any],
        name: str | None = None,
        archive: bytes | BinaryIO | None = None,
        connections: dict[str, Any] | None = None,
        init: dict[str, Any] | None = None,
    ) -> FlowCall:
        """Start one line of an uploaded flow (`name`) or of a packed folder (`archive`), with
        its aggregation nodes run over that one line, as `pf flow test` does. `connections`
        binds connection inputs ({node.input: name}) over those saved on the flow; `init`
        gives a flex flow's init arguments (`--init`)."""
        given = dict(connections or {})
        self.require_flows(access, "test flows (they run code with the project's connections)")
        if self.project_quotas is not None:
            await self.project_quotas.admit_flow_call(access.project_id, access.project)
        cleanup = None
        if archive is not None:
            staging = Path(tempfile.mkdtemp(prefix="lmfoundry-flow-test-"))
            cleanup = _remover(staging)
            try:
                _, dag = await asyncio.to_thread(self._unpack_checked, archive, staging / "flow")
                log = f"{access.project}/draft.log"
            except BaseException:
                cleanup()
                raise
        elif name is not None:
            dag, _ = await asyncio.to_thread(self.dag_of, access, name)
            saved = await asyncio.to_thread(self.saved_bindings, access, name)
            given = {**saved, **given}
            log = f"{access.project}/{name}.log"
        else:
            raise InvalidRequest("Give a flow: its name, or the packed folder.", param="flow")
        try:
            dag = with_init(dag, init)
            values = dag.resolve_inputs(inputs, strict=True)
        except BaseException:
            if cleanup is not None:
                cleanup()
            raise
        return await self._call(
            access.project_id, dag, values, log, True, cleanup=cleanup, given=given
        )

    # -- deployment --------------------------------------------------------------------------

    def deploy(
        self,
        access: ProjectAccess,
        name: str,
        connections: dict[str, Any] | None = None,
        init: dict[str, Any] | None = None,
    ) -> DeployedFlowView:
        """Serve the latest version at /flows/{name}/score behind a key (keys are created on
        the first deploy and kept on later ones). `connections` ({node.input: name}) are saved
        on the flow with the saved ones; inputs still open are bound to the project's only
        fitting connection now, so the deployed flow keeps answering the same way. `init`
        (a flex flow's init arguments) is kept with the deployment."""
        self.require_flows(access, "deploy flows")
        dag, _ = self.dag_of(access, name)
        dag = with_init(dag, init)
        given = {**self.saved_bindings(access, name), **(connections or {})}
        _, resolution = self.bind(access.project_id, dag, given)
        with self.db.session() as s:
            row = self._row(s, access, name)
            row.interface = {**row.interface, "connection_bindings": resolution.bindings}
            if isinstance(dag, FlexFlow):  # what score builds the entry with
                row.interface = {**row.interface, DEPLOYED_INIT: dag.init_kwargs}
            if row.deployed_version is None and not self.keys.read(s, KIND, row.id):
                self.keys.create(s, KIND, row.id)
            previous, row.deployed_version = row.deployed_version, row.version
            record(
                s,
                access.principal.name,
                access.project_id,
                "flow.deploy",
                name,
                {
                    "version": row.version,
                    "previous_version": previous,
                    "connections": resolution.bindings,
                },
            )
            view = self._view(row, access.project)  # its bindings: resolution.bindings
            return DeployedFlowView(**dict(view), defaulted_connections=resolution.defaulted)

    def undeploy(self, access: ProjectAccess, name: str) -> FlowView:
        access.require(Role.developer, "undeploy flows")
        with self.db.session() as s:
            row = self._row(s, access, name)
            row.deployed_version = None
            self.keys.delete(s, KIND, row.id)
            record(s, access.principal.name, access.project_id, "flow.undeploy", name, {})
            return self._view(row, access.project)

    def _deployed(self, s: Session, access: ProjectAccess, name: str) -> Flow:
        row = self._row(s, access, name)
        if row.deployed_version is None:
            raise InvalidRequest(
                f"Flow {name!r} is not deployed; `lmfoundry flow deploy {name}` serves it "
                "behind a key.",
                param="name",
            )
        return row

    def read_keys(self, access: ProjectAccess, name: str) -> Keys:
        access.require(Role.developer, "read keys")
        with self.db.session() as s:
            return self.keys.read_existing(s, KIND, self._deployed(s, access, name).id)

    def regenerate_key(self, access: ProjectAccess, name: str, slot: str) -> Keys:
        access.require(Role.developer, "regenerate keys")
        with self.db.session() as s:
            row = self._deployed(s, access, name)
            keys = self.keys.regenerate(s, KIND, row.id, slot)
            record(
                s,
                access.principal.name,
                access.project_id,
                "flow.regenerate_key",
                name,
                {"key_type": slot},
            )
            return keys

    # -- data plane --------------------------------------------------------------------------

    async def score(self, name: str, key: str | None, body: bytes) -> FlowCall:
        """Start one line of a deployed flow for `POST /flows/{name}/score` (Prompt flow's
        contract: the body is the flow's inputs as JSON, or the text of its only input)."""
        project_id, project, version, saved = await asyncio.to_thread(self._check_key, name, key)
        if self.project_quotas is not None:
            await self.project_quotas.admit_flow_call(project_id, project)
        dag = await asyncio.to_thread(load_dag, self.folder(name, version))
        dag = with_init(dag, await asyncio.to_thread(self._deployed_init, name))
        given = _score_inputs(dag, body)
        values = dag.resolve_inputs(given, strict=False)
        hidden = frozenset(o.name for o in dag.outputs.values() if o.evaluation_only)
        log = f"{project}/{name}.log"
        return await self._call(project_id, dag, values, log, False, hidden, given=saved)

    def _deployed_init(self, name: str) -> dict[str, Any] | None:
        with self.db.session() as s:
            row = s.scalar(select(Flow).where(Flow.name == name))
            return (row.interface or {}).get(DEPLOYED_INIT) if row is not None else None

    def _check_key(self, name: str, key: str | None) -> tuple[int, str, int, dict[str, str]]:
        if not key:
            raise Unauthorized(
                "Missing key: send `Authorization: Bearer <key>` or `api-key: <key>` "
                "(`lmfoundry flow keys NAME` shows them)."
            )
        with self.db.session() as s:
            row = s.scalar(select(Flow).where(Flow.name == name))
            if row is None or row.deployed_version is None:
                raise NotFound(
                    f"No deployed flow named {name!r}; `lmfoundry flow deploy NAME` serves one."
                )
            match = self.keys.match(s, key)
            if match is None:
                raise Unauthorized(
                    "Invalid key for this flow; check it or regenerate it with "
                    "`lmfoundry flow keys NAME --regenerate primary`."
                )
            if (match.target_kind, match.target_id) != (KIND, row.id):
                raise Forbidden(
                    f"This key belongs to something else, not flow {name!r}; each key opens "
                    "only its own flow or deployment."
                )
            project = s.get(Project, row.project_id)
            if project is None or not project.flows_enabled:
                raise Forbidden(
                    f"Flows are switched off in the project of flow {name!r}, so it does not "
                    "answer; an owner of the project (or an admin) switches them on with "
                    "`lmfoundry projects flows enable`."
                )
            saved = dict(row.interface.get("connection_bindings") or {})
            return row.project_id, project.name, row.deployed_version, saved


def _score_inputs(dag: Dag, body: bytes) -> dict[str, Any]:
    if not dag.inputs:
        return {}
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        if len(dag.inputs) > 1:
            raise InvalidRequest(
                "The body is not JSON; send the flow's inputs as a JSON object "
                f"({', '.join(dag.inputs)}).",
            ) from None
        return {next(iter(dag.inputs)): body.decode("utf-8", errors="replace")}
    if not isinstance(data, dict):
        raise InvalidRequest(
            f"Send the flow's inputs as a JSON object with {', '.join(dag.inputs)}."
        )
    return data


def _remover(path: Path) -> Callable[[], None]:
    def remove() -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(path)

    return remove
