"""Batch runs: a flow over every line of a JSONL file, executed by the server in the background.

A run snapshots the flow version and the data under `$LMFOUNDRY_HOME/artifacts/runs/{id}/`,
so later uploads change nothing about it. Lines are shared by `flow_workers` flow processes;
each finished line is written to the database at once (inputs, outputs or error), so a
failing line never stops the others and a server that stops mid-run resumes where it was:
runs left `queued` or `running` start again on the next start, skipping recorded lines.
Aggregation nodes run once at the end over the completed lines.

Connection inputs are bound when the run is created (`connections`, over those saved on the
flow, then the project's only fitting connection; flows/bindings.py) and the binding is kept
in the run's folder (`bindings.json`), so a resumed run binds the same connections.

Column mapping follows Prompt flow: `${data.COLUMN}`, and for an evaluation run over an
earlier run `${run.outputs.NAME}` and `${run.inputs.NAME}` (lines matched by number); an
input left unmapped reads the column of its own name, else its default.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from lmfoundry.access.audit import record
from lmfoundry.access.models import ProjectAccess, Role
from lmfoundry.config import Settings
from lmfoundry.errors import Conflict, Forbidden, InvalidRequest, LmfError, NotFound, Unavailable
from lmfoundry.flows import bindings
from lmfoundry.flows.dag import load_dag
from lmfoundry.flows.flex import read_init, with_init, write_init
from lmfoundry.flows.launcher import FlowProcess
from lmfoundry.flows.mapping import LineSource, check_mapping, parse_jsonl
from lmfoundry.flows.models import Dag
from lmfoundry.flows.service import FlowService
from lmfoundry.flows.views import RunDetail, RunLine, RunView
from lmfoundry.quotas.projects import ProjectQuotas, folder_bytes
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import FlowRun, FlowRunLine, utcnow

log = logging.getLogger("lmfoundry.flows")

UNFINISHED = ("queued", "running")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
STOP_SECONDS = 10.0  # how long a server stop waits for its runs to unwind
CONCURRENT_RUNS = 2  # runs executing at once; each uses up to flow_workers processes


BINDINGS = "bindings.json"  # in a run's folder: the connection bindings it runs with


def _read_bindings(folder: Path) -> dict[str, str]:
    try:
        return dict(json.loads((folder / BINDINGS).read_text()))
    except (OSError, ValueError):  # a run created before bindings were kept, or gone
        return {}


class RunService:
    project_quotas: ProjectQuotas | None = None  # runs per minute, storage of their copies

    def __init__(self, db: Database, settings: Settings, flows: FlowService) -> None:
        self.db = db
        self.settings = settings
        self.flows = flows
        self.root = settings.artifacts_dir / "runs"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run the server's runs from now on, and resume those a stopped server left."""
        self._loop = asyncio.get_running_loop()
        self._slots = asyncio.Semaphore(CONCURRENT_RUNS)
        with self.db.session() as s:
            ids = s.scalars(
                select(FlowRun.id).where(FlowRun.status.in_(UNFINISHED)).order_by(FlowRun.id)
            ).all()
        for run_id in ids:
            log.info("resuming flow run %s", run_id)
            self._spawn(run_id)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            # Each run kills its flow processes as it unwinds; a stop does not wait on one
            # that takes longer (it is left `running`, to resume on the next start).
            _, late = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            for task in late:
                log.warning(
                    "flow run task %s did not stop within %s s", task.get_name(), STOP_SECONDS
                )
        self._loop = None

    def _submit(self, run_id: str) -> None:
        if self._loop is None:
            raise Unavailable("Runs execute in the server; start it with `lmfoundry up`.")
        self._loop.call_soon_threadsafe(self._spawn, run_id)

    def _spawn(self, run_id: str) -> None:
        if run_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._execute(run_id))
        self._tasks[run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(run_id, None))

    # -- management --------------------------------------------------------------------------

    def _view(self, row: FlowRun, project: str, defaulted: dict[str, str] | None = None) -> RunView:
        """The run; `defaulted`: on creation, the bindings chosen by default."""
        return RunView(
            id=row.id,
            project=project,
            flow=row.flow,
            flow_version=row.flow_version,
            status=row.status,
            data=row.data_name,
            column_mapping=row.column_mapping,
            run=row.parent_run,
            total_lines=row.total_lines,
            completed_lines=row.completed_lines,
            failed_lines=row.failed_lines,
            metrics=row.metrics,
            connection_bindings=_read_bindings(self.root / row.id),
            defaulted_connections=defaulted,
            error=row.error,
            created_by=row.created_by,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )

    def _row(self, s: Session, access: ProjectAccess, run_id: str) -> FlowRun:
        row = s.get(FlowRun, run_id)
        if row is None or row.project_id != access.project_id:
            raise NotFound(
                f"Run {run_id!r} not found in project {access.project!r}; "
                "`lmfoundry flow runs list` shows them."
            )
        return row

    def create(
        self,
        access: ProjectAccess,
        flow: str,
        column_mapping: dict[str, str] | None = None,
        data: bytes | None = None,
        data_name: str = "data.jsonl",
        run: str | None = None,
        connections: dict[str, Any] | None = None,
        name: str | None = None,
        init: dict[str, Any] | None = None,
    ) -> RunView:
        """Queue a run of the flow's latest version over `data` (JSONL) or over the lines of
        an earlier run (`run`, for evaluations); returns the run. `connections` binds
        connection inputs ({node.input: name}) over those saved on the flow; `name` is the
        run's id (Prompt flow's `--name`), generated when not given; `init` gives a flex
        flow's init arguments (`--init`)."""
        self.flows.require_flows(access, "start runs")
        if name is not None:
            self._check_run_name(name)
        mapping = dict(column_mapping or {})
        dag, version = self.flows.dag_of(access, flow)
        dag = with_init(dag, init)
        given = {**self.flows.saved_bindings(access, flow), **(connections or {})}
        _, resolution = self.flows.bind(access.project_id, dag, given)
        parent_dag = None
        rows = parse_jsonl(data, data_name) if data is not None else None
        if run is not None:
            with self.db.session() as s:
                parent = self._row(s, access, run)
                if parent.status in UNFINISHED:
                    raise InvalidRequest(
                        f"Run {run} is {parent.status}; evaluate it once it has finished.",
                        param="run",
                    )
                total = parent.total_lines
            parent_dag = load_dag(self.root / run / "flow")
            if rows is None:
                rows = parse_jsonl((self.root / run / "data.jsonl").read_bytes(), "run data")
                data_name = f"{run} (data)"
            elif len(rows) != total:
                raise InvalidRequest(
                    f"{data_name} has {len(rows)} lines but run {run} has {total}; lines are "
                    "matched by number, so give data with as many lines (or none).",
                    param="data",
                )
        if rows is None:
            raise InvalidRequest(
                "Give the data: a JSONL file (--data), or an earlier run to evaluate (--run).",
                param="data",
            )
        check_mapping(dag, mapping, rows[0], parent_dag)
        lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
        if self.project_quotas is not None:  # 429 / 409 before anything is copied
            with self.db.session() as s:
                self.project_quotas.check_run(
                    s, access, len(lines) + folder_bytes(self.flows.folder(flow, version))
                )
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        run_id = name or f"{flow}-{stamp}-{secrets.token_hex(3)}"
        folder = self.root / run_id
        shutil.copytree(
            self.flows.folder(flow, version),
            folder / "flow",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        (folder / "data.jsonl").write_bytes(lines)
        (folder / BINDINGS).write_text(json.dumps(resolution.bindings))
        write_init(folder, dag)
        with self.db.session() as s:
            row = FlowRun(
                id=run_id,
                project_id=access.project_id,
                flow=flow,
                flow_version=version,
                status="queued",
                data_name=data_name[:200],
                column_mapping=mapping,
                parent_run=run,
                total_lines=len(rows),
                completed_lines=0,
                failed_lines=0,
                metrics={},
                created_by=access.principal.name,
            )
            s.add(row)
            record(
                s,
                access.principal.name,
                access.project_id,
                "run.create",
                run_id,
                {"flow": flow, "version": version, "lines": len(rows), "run": run},
            )
            s.flush()
            # its bindings are resolution.bindings, read back from the run's folder
            view = self._view(row, access.project, resolution.defaulted)
        self._submit(run_id)
        return view

    def _check_run_name(self, name: str) -> None:
        if not RUN_NAME.match(name):
            raise InvalidRequest(
                f"Invalid run name {name!r}: use 1-100 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit (for example my_run_1).",
                param="name",
            )
        with self.db.session() as s:
            taken = s.get(FlowRun, name) is not None
        if taken or (self.root / name).exists():
            raise Conflict(
                f"A run named {name!r} exists; give another --name, or leave it out for a "
                "generated one.",
                param="name",
            )

    def list(self, access: ProjectAccess, flow: str | None = None) -> list[RunView]:
        with self.db.session() as s:
            query = select(FlowRun).where(FlowRun.project_id == access.project_id)
            if flow is not None:
                query = query.where(FlowRun.flow == flow)
            rows = s.scalars(query.order_by(FlowRun.created_at.desc()).limit(500)).all()
            return [self._view(r, access.project) for r in rows]

    def get(
        self, access: ProjectAccess, run_id: str, offset: int = 0, limit: int | None = 1000
    ) -> RunDetail:
        """The run with its finished lines (`offset`/`limit` page through them)."""
        with self.db.session() as s:
            row = self._row(s, access, run_id)
            query = (
                select(FlowRunLine)
                .where(FlowRunLine.run_id == run_id)
                .order_by(FlowRunLine.line_number)
                .offset(max(offset, 0))
            )
            if limit is not None:
                query = query.limit(max(limit, 0))
            lines = [
                RunLine(
                    line_number=line.line_number,
                    status=line.status,
                    inputs=line.inputs,
                    outputs=line.outputs,
                    error=line.error,
                    duration_s=line.duration_s,
                )
                for line in s.scalars(query)
            ]
            return RunDetail(**dict(self._view(row, access.project)), lines=lines)

    def cancel(self, access: ProjectAccess, run_id: str) -> RunView:
        access.require(Role.developer, "cancel runs")
        with self.db.session() as s:
            row = self._row(s, access, run_id)
            if row.status in UNFINISHED:
                row.status, row.finished_at = "canceled", utcnow()
                record(s, access.principal.name, access.project_id, "run.cancel", run_id, {})
            view = self._view(row, access.project)
        task = self._tasks.get(run_id)
        if task is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(task.cancel)
        return view

    # -- execution ---------------------------------------------------------------------------

    async def _execute(self, run_id: str) -> None:
        if self._slots is None:
            return
        async with self._slots:
            # A cancel is recorded by cancel(); a server stop leaves the run `running`, to be
            # resumed on the next start. Either way the CancelledError goes on up.
            try:
                await self._run(run_id)
            except LmfError as exc:
                self._finish(run_id, "failed", exc.message)
            except Exception:
                log.exception("flow run %s failed", run_id)
                self._finish(run_id, "failed", "Internal error; the server log has the details.")

    def _finish(self, run_id: str, status: str, error: str | None = None, **extra: Any) -> None:
        with self.db.session() as s:
            row = s.get(FlowRun, run_id)
            if row is None or row.status not in UNFINISHED:
                return  # canceled meanwhile
            row.status, row.error, row.finished_at = status, error, utcnow()
            for key, value in extra.items():
                setattr(row, key, value)

    def _load(self, run_id: str) -> tuple[FlowRun, set[int], dict[int, FlowRunLine] | None]:
        with self.db.session() as s:
            row = s.get(FlowRun, run_id)
            if row is None:
                raise NotFound(f"Run {run_id} is gone.")
            done = set(
                s.scalars(select(FlowRunLine.line_number).where(FlowRunLine.run_id == run_id)).all()
            )
            parent = None
            if row.parent_run:
                parent = {
                    line.line_number: line
                    for line in s.scalars(
                        select(FlowRunLine).where(FlowRunLine.run_id == row.parent_run)
                    )
                }
            if row.status in UNFINISHED:
                row.status = "running"
                row.started_at = row.started_at or utcnow()
            return row, done, parent

    async def _run(self, run_id: str) -> None:
        row, done, parent_lines = await asyncio.to_thread(self._load, run_id)
        if row.status != "running":
            return
        if not await asyncio.to_thread(self.flows.flows_enabled, row.project_id):
            raise Forbidden(  # switched off while the run was queued, or before a restart
                "Flows were switched off in this run's project before it ran; an owner of "
                "the project switches them on with `lmfoundry projects flows enable` and the "
                "run can then be started again."
            )
        folder: Path = self.root / run_id
        bound = _read_bindings(folder)
        dag = bindings.apply(await asyncio.to_thread(load_dag, folder / "flow"), bound)
        dag = with_init(dag, read_init(folder))
        rows = parse_jsonl((folder / "data.jsonl").read_bytes(), "run data")
        source = LineSource(dag, row.column_mapping, rows, row.parent_run, parent_lines)
        connections = await asyncio.to_thread(self.flows.resolve_connections, row.project_id, dag)
        pending: asyncio.Queue[int] = asyncio.Queue()
        for index in range(row.total_lines):
            if index not in done:
                pending.put_nowait(index)
        log_name = f"runs/{run_id}.log"

        async def worker() -> None:
            process: FlowProcess | None = None
            try:
                while not pending.empty():
                    index = pending.get_nowait()
                    try:
                        inputs = source.inputs(index)
                    except InvalidRequest as exc:
                        error = {"type": "InputError", "message": exc.message, "node": None}
                        self._record(run_id, index, {}, "failed", None, error, {}, 0.0)
                        continue
                    if process is None or not process.alive:
                        process = self.flows.process(dag, connections, log_name, bound)
                        await process.start()  # FlowFailed: every line would fail; stop the run
                    event = await process.run_line(index, inputs)
                    self._record(
                        run_id,
                        index,
                        inputs,
                        event["status"],
                        event.get("outputs"),
                        event.get("error"),
                        event.get("aggregation_inputs") or {},
                        event.get("duration_s") or 0.0,
                    )
            finally:
                if process is not None:
                    await process.close()

        workers = max(1, min(self.settings.flow_workers, pending.qsize()))
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(worker())
        except ExceptionGroup as failures:  # a flow process that cannot start fails the run
            first = next((e for e in failures.exceptions if isinstance(e, LmfError)), None)
            if first is None:
                raise
            raise first from None
        metrics, error = await self._aggregate(run_id, dag, connections, log_name, bound)
        with self.db.session() as s:
            final = s.get(FlowRun, run_id)
            completed = final.completed_lines if final else 0
        if error is None and completed == 0 and row.total_lines > 0:
            error = f"All {row.total_lines} lines failed; `lmfoundry flow runs show {run_id}` "
            error += "has each line's error."
        self._finish(run_id, "failed" if error else "completed", error, metrics=metrics)

    def _record(
        self,
        run_id: str,
        index: int,
        inputs: dict[str, Any],
        status: str,
        outputs: dict[str, Any] | None,
        error: dict[str, Any] | None,
        aggregation_inputs: dict[str, Any],
        duration: float,
    ) -> None:
        with self.db.session() as s:
            s.add(
                FlowRunLine(
                    run_id=run_id,
                    line_number=index,
                    status=status,
                    inputs=inputs,
                    outputs=outputs,
                    error=error,
                    aggregation_inputs=aggregation_inputs or None,
                    duration_s=duration,
                )
            )
            counter = FlowRun.completed_lines if status == "completed" else FlowRun.failed_lines
            s.execute(update(FlowRun).where(FlowRun.id == run_id).values({counter: counter + 1}))

    async def _aggregate(
        self,
        run_id: str,
        dag: Dag,
        connections: dict[str, Any],
        log_name: str,
        bound: dict[str, str],
    ) -> tuple[dict[str, Any], str | None]:
        """Run the aggregation nodes over the completed lines: (metrics, error or None)."""
        if not dag.aggregation_nodes:
            return {}, None
        with self.db.session() as s:
            values = s.scalars(
                select(FlowRunLine.aggregation_inputs)
                .where(FlowRunLine.run_id == run_id, FlowRunLine.status == "completed")
                .order_by(FlowRunLine.line_number)
            ).all()
        lists: dict[str, dict[str, list[Any]]] = {}
        for node in dag.aggregation_nodes:
            for key in node.inputs:
                if any(key in (v or {}).get(node.name, {}) for v in values):
                    lists.setdefault(node.name, {})[key] = [
                        (v or {}).get(node.name, {}).get(key) for v in values
                    ]
        process = self.flows.process(dag, connections, log_name, bound)
        await process.start()
        try:
            result = await process.aggregate(lists)
        finally:
            await process.close()
        if result.get("status") != "completed":
            return {}, (result.get("error") or {}).get("message", "Aggregation failed.")
        return dict(result.get("metrics") or {}), None
