"""`lmfoundry flow test DIR --local`: one line of a flow folder on this machine, no server.

The flow runs exactly as the server runs it: in a flow process (`launcher.py`), in the same
sandbox (`sandbox.py`, unless LMFOUNDRY_FLOW_SANDBOX=off), with only the connections it
names. Those come from connection files as Prompt flow writes them for `pf connection
create -f` (`$schema`, `name`, `type: custom`, `configs`, `secrets`), given by the caller or
found in the folder (`connection.yaml`); their secrets are masked in everything the flow
process answers or logs, as on the server.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from lmfoundry.config import Settings
from lmfoundry.connections.models import ResolvedConnection, parse_connection_file
from lmfoundry.errors import InvalidRequest
from lmfoundry.flows import bindings
from lmfoundry.flows.call import FlowCall
from lmfoundry.flows.dag import load_dag
from lmfoundry.flows.flex import with_init
from lmfoundry.flows.includes import included_files, with_includes
from lmfoundry.flows.launcher import FlowProcess
from lmfoundry.flows.models import Dag
from lmfoundry.flows.views import FlowResult

FOUND = ("connection.yaml", "connection.yml")  # connection files looked for in the folder
MAX_FILE = 1 << 20  # bytes: a connection file is a few lines


def connection_files(folder: Path, given: Iterable[Path]) -> list[Path]:
    """The files given, else the folder's `connection.yaml` (if it has one)."""
    files = [Path(p).expanduser() for p in given]
    if not files:
        files = [folder / name for name in FOUND if (folder / name).is_file()]
    return files


def read_connections(files: Iterable[Path]) -> dict[str, ResolvedConnection]:
    """Each file's connection by its name; 400 naming the file for a bad one."""
    found: dict[str, ResolvedConnection] = {}
    for path in files:
        if not path.is_file():
            raise InvalidRequest(
                f"Connection file {path} does not exist; give a connection.yaml as "
                "`pf connection create -f` takes it (name, type: custom, configs, secrets).",
                param="connection_file",
            )
        if path.stat().st_size > MAX_FILE:
            raise InvalidRequest(f"{path} is larger than a connection file can be.")
        body = parse_connection_file(path.read_text(encoding="utf-8"), path.name)
        name = body.get("name")
        if not name:
            raise InvalidRequest(
                f"{path.name} has no name; add `name: my_connection` (the name flows bind).",
                param="name",
            )
        if body["type"] != "custom":
            raise InvalidRequest(
                f"{path.name}: a connection of type {body['type']!r} points at a server's "
                "deployment, so it needs the server; locally use type: custom with "
                "configs.endpoint and secrets.key.",
                param="type",
            )
        if name in found:
            raise InvalidRequest(f"Two connection files define connection {name!r}.")
        found[name] = ResolvedConnection(name, "custom", body["configs"], body["secrets"])
    return found


async def start(
    folder: Path,
    inputs: dict[str, Any],
    settings: Settings,
    files: Iterable[Path] = (),
    given: dict[str, str] | None = None,
    init: dict[str, Any] | None = None,
) -> FlowCall:
    """Start one line of the flow folder, its aggregation nodes run over that line (as `pf
    flow test` does); the caller reads `result()` or `events()` from the call. `init` gives a
    flex flow's init arguments (`--init`), a connection's by its name in the files."""
    folder = folder.expanduser().resolve()
    if not included_files(folder):  # the flow process copies the folder itself
        return await _start(folder, load_dag(folder), inputs, settings, files, given, init)
    with tempfile.TemporaryDirectory(prefix="lmfoundry-local-") as staging:
        # the snapshot with the additional includes (as Prompt flow runs one) lives only
        # until the flow process has copied it
        snapshot = with_includes(folder, Path(staging) / folder.name)
        return await _start(folder, load_dag(snapshot), inputs, settings, files, given, init)


async def _start(
    folder: Path,
    dag: Dag,
    inputs: dict[str, Any],
    settings: Settings,
    files: Iterable[Path],
    given: dict[str, str] | None,
    init: dict[str, Any] | None,
) -> FlowCall:
    known = read_connections(connection_files(folder, files))
    resolution = bindings.check(dag, given or {}, {n: c.type for n, c in known.items()})
    dag = with_init(bindings.apply(dag, resolution.bindings), init)
    missing = [(n, i, c) for n, i, c in dag.connection_uses() if c not in known]
    if missing:
        node, field, name = missing[0]
        raise InvalidRequest(
            f"Node {node!r} input {field!r} names connection {name!r}, which no connection "
            f"file defines ({', '.join(sorted(known)) or 'none read'}); give one with "
            "--connection-file connection.yaml.",
            param=f"nodes.{node}.inputs.{field}",
        )
    values = dag.resolve_inputs(inputs, strict=True)
    connections = {name: known[name] for name in dag.connection_names}
    log = settings.home / "logs" / "flows" / "local" / f"{folder.name}.log"
    process = FlowProcess(
        dag, connections, settings.flow_line_timeout, log, settings, resolution.bindings
    )
    await process.start()
    return FlowCall(process, values, True, resolution=resolution)


async def test(
    folder: Path,
    inputs: dict[str, Any],
    settings: Settings,
    files: Iterable[Path] = (),
    given: dict[str, str] | None = None,
    init: dict[str, Any] | None = None,
) -> FlowResult:
    """One line, to the end: status, outputs, error, metrics, duration_s, bindings."""
    call = await start(folder, inputs, settings, files, given, init)
    return await call.result()


async def stream(
    folder: Path,
    inputs: dict[str, Any],
    settings: Settings,
    files: Iterable[Path] = (),
    given: dict[str, str] | None = None,
    init: dict[str, Any] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """One line, streamed: `outputs` and `chunk` events, then `result`."""
    call = await start(folder, inputs, settings, files, given, init)
    async for event in call.events():
        yield event
