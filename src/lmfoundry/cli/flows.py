"""`lmfoundry flow validate|test|upload|list|show|delete|deploy|undeploy|keys|run` and
`lmfoundry flow runs list|show|cancel`.

Flows run on the server, in their own processes, with the project's connections: the CLI
sends the folder and the inputs and prints what comes back, so no secret ever reaches it.
`flow test DIR --local` runs the folder on this machine instead, in the same sandbox, with
connections from a local connection.yaml. Prompt flow's flags work too (`--flow`, `--inputs
a=1 b=2`, `--connections node.input=name`, `--column-mapping`, `--name`, `--stream`).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from lmfoundry.cli._output import (
    JsonOpt,
    ProjectOpt,
    client,
    console,
    err_console,
    print_json,
    show,
)
from lmfoundry.cli._pf import PfCommand, flow_and_pairs, say_bindings
from lmfoundry.client import Client
from lmfoundry.config import get_settings
from lmfoundry.errors import InvalidRequest, Unavailable
from lmfoundry.flows import local
from lmfoundry.flows.bindings import parse_pairs
from lmfoundry.flows.dag import load_dag
from lmfoundry.flows.flex import folder_of_flow_file
from lmfoundry.flows.views import FlowResult, RunDetail

app = typer.Typer(help="Prompt flows: test, upload, run in batch, deploy.", no_args_is_help=True)
runs_app = typer.Typer(help="Batch runs of flows.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")

FLOW_COLUMNS = ["name", "version", "kind", "connections", "deployed_version", "updated_at"]
RUN_COLUMNS = [
    "id",
    "flow",
    "status",
    "total_lines",
    "completed_lines",
    "failed_lines",
    "created_at",
]
FlowArg = Annotated[
    str, typer.Argument(help="A flow folder (with flow.dag.yaml), or the name of an uploaded flow.")
]
PairsArg = Annotated[
    list[str] | None,
    typer.Argument(help="More NAME=VALUE pairs (Prompt flow's CLI style).", show_default=False),
]
FlowOptArg = Annotated[
    str | None,
    typer.Argument(
        help="A flow folder (with flow.dag.yaml), or the name of an uploaded flow.",
        show_default=False,
    ),
]
FlowOpt = Annotated[
    str | None,
    typer.Option("--flow", "-f", help="The flow (Prompt flow's form of the first argument)."),
]
ConnectionsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--connections",
        help="Bind a node input to a connection: NODE.INPUT=CONNECTION (repeatable; pf's "
        "form). An input left open takes the project's only connection of a fitting type.",
    ),
]


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{what} takes NAME=VALUE pairs, not {value!r}.", param=what)
        pairs[key] = item
    return pairs


def _is_folder(flow: str) -> bool:
    return Path(flow).expanduser().is_dir()


InitOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--init",
        help="A flex flow's init argument as NAME=VALUE (a connection's name for a connection, "
        "JSON for a model configuration), or a JSON file of them, as pf's --init (repeatable).",
    ),
]


def _init(values: list[str] | None) -> dict[str, Any] | None:
    if not values:
        return None
    init: dict[str, Any] = {}
    for value in values:
        path = Path(value).expanduser()
        if "=" not in value and path.suffix == ".json" and path.is_file():
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise InvalidRequest(f"{value} must hold a JSON object of init arguments.")
            init.update(loaded)
        else:
            init.update(_pairs([value], "--init"))
    return init


def _default_name(folder: Path) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", folder.resolve().name.lower()).strip("-")
    if not name:
        raise InvalidRequest(f"Name the flow with --name (its folder {folder} gives none).")
    return name[:64]


def _print_error(error: dict[str, Any] | None) -> None:
    error = error or {}
    err_console.print(f"[bold red]Failed:[/] {error.get('message')}", highlight=False)
    if error.get("traceback"):
        err_console.print(error["traceback"].rstrip(), style="dim", highlight=False, markup=False)


# -- local ----------------------------------------------------------------------------------


@app.command("validate")
def validate(folder: Path, json_: JsonOpt = False) -> None:
    """Check a flow folder without running it: references, cycles, @tool functions, templates."""
    try:
        dag = load_dag(folder.expanduser())
    except InvalidRequest as exc:
        problems = (exc.detail or {}).get("problems") or [{"message": exc.message}]
        if json_:
            print_json({"valid": False, "problems": problems})
        else:
            err_console.print(f"[bold red]Invalid flow[/] {folder}:", highlight=False)
            for item in problems:
                err_console.print(f"  - {item['message']}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    if json_:
        print_json(dag.interface())
        return
    interface = dag.interface()
    console.print(
        f"[green]Valid[/] {interface['kind']} flow: {len(interface['nodes'])} node(s), inputs "
        f"{', '.join(dag.inputs) or 'none'}, outputs {', '.join(dag.outputs) or 'none'}"
        + (f", connections {', '.join(dag.connection_names)}" if dag.connection_names else ""),
        highlight=False,
    )


# -- one line -------------------------------------------------------------------------------


@app.command("test", cls=PfCommand)
def test(
    flow: FlowOptArg = None,
    pairs: PairsArg = None,
    flow_option: FlowOpt = None,
    inputs: Annotated[
        list[str] | None, typer.Option("--inputs", "-i", help="An input as NAME=VALUE.")
    ] = None,
    connections: ConnectionsOpt = None,
    init_: InitOpt = None,
    local_: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Run the folder on this machine, no server: in the same sandbox, with "
            "connections from --connection-file or the folder's connection.yaml.",
        ),
    ] = False,
    connection_file: Annotated[
        list[Path] | None,
        typer.Option(
            "--connection-file",
            help="With --local: a connection.yaml as `pf connection create -f` takes it "
            "(repeatable; default: DIR/connection.yaml).",
        ),
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="Print a streamed output as it comes.")
    ] = False,
    interactive: Annotated[
        bool, typer.Option("--interactive", help="Chat with a chat flow, keeping the history.")
    ] = False,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run one line of a flow on the server with the project's connections (or, with
    --local, on this machine)."""
    flow, rest = flow_and_pairs(flow, flow_option, pairs)
    flow = folder_of_flow_file(flow)  # `pf flow test --flow x.prompty` (or its flow.flex.yaml)
    values = _pairs([*(inputs or []), *rest], "--inputs")
    bound = parse_pairs(connections or [])
    init = _init(init_)
    if connection_file and not local_:
        raise InvalidRequest("--connection-file goes with --local (the server has its own).")
    if local_:
        if interactive or not _is_folder(flow):
            raise InvalidRequest(
                "--local runs a flow folder once; give its folder, without --interactive."
            )
        files = connection_file or []
        result = _run_local(Path(flow), values, files, bound, init, stream and not json_)
        _print_result(result, json_, streamed=stream and not json_, where="the connection files")
        return
    target: str | Path = Path(flow).expanduser() if _is_folder(flow) else flow
    with client(project) as lmf:
        if interactive:
            _chat(lmf, target, values, bound)
            return
        if stream and not json_:
            last = None
            for event in lmf.stream_test_flow(target, values, connections=bound, init=init):
                last = _chunk_or_result(event) or last
            result = _finished(last)
        else:
            result = lmf.test_flow(target, values, connections=bound, init=init)
    _print_result(result, json_, streamed=stream and not json_)


def _chunk_or_result(event: dict[str, Any]) -> FlowResult | None:
    """Print a streamed line's chunk as it comes; the `result` event read as a FlowResult."""
    if event["event"] == "chunk":
        console.print(event["text"], end="", highlight=False, markup=False)
    elif event["event"] == "result":
        return FlowResult.model_validate(event)
    return None


def _finished(result: FlowResult | None) -> FlowResult:
    if result is None:
        raise Unavailable(
            "The stream ended before the line's result (the connection or the flow process "
            "stopped); run the test again, or without --stream to get the error."
        )
    return result


def _run_local(
    folder: Path,
    values: dict[str, Any],
    files: list[Path],
    bound: dict[str, str],
    init: dict[str, Any] | None,
    stream: bool,
) -> FlowResult:
    settings = get_settings()
    if not stream:
        return asyncio.run(local.test(folder, values, settings, files, bound, init))

    async def streamed() -> FlowResult | None:
        last = None
        async for event in local.stream(folder, values, settings, files, bound, init):
            last = _chunk_or_result(event) or last
        return last

    return _finished(asyncio.run(streamed()))


def _print_result(
    result: FlowResult, json_: bool, streamed: bool = False, where: str = "the project"
) -> None:
    if json_:
        print_json(result)
    else:
        say_bindings(result.defaulted_connections, where)
    if not json_ and result.status == "completed":
        outputs = result.outputs
        if streamed:
            console.print()
        elif len(outputs) == 1:
            value = next(iter(outputs.values()))
            typer.echo(value if isinstance(value, str) else json.dumps(value, indent=2))
        else:
            print_json(outputs)
        if result.metrics:
            console.print(f"metrics: {json.dumps(result.metrics)}", highlight=False)
    if result.status != "completed":
        if not json_:
            _print_error(result.error)
        raise typer.Exit(1)


def _chat_fields(lmf: Client, target: str | Path) -> tuple[str, str | None, str]:
    if isinstance(target, Path):
        interface = load_dag(target).interface()
        inputs, outputs = interface["inputs"], interface["outputs"]
    else:
        flow = lmf.get_flow(target)
        inputs, outputs = flow.inputs, flow.outputs
    chat_input = next((k for k, v in inputs.items() if v["is_chat_input"]), None)
    chat_output = next((k for k, v in outputs.items() if v["is_chat_output"]), None)
    if chat_input is None or chat_output is None:
        raise InvalidRequest(
            "--interactive needs a chat flow: mark an input is_chat_input: true and an output "
            "is_chat_output: true in flow.dag.yaml."
        )
    history = next((k for k, v in inputs.items() if v["is_chat_history"]), None)
    return chat_input, history, chat_output


def _chat(lmf: Client, target: str | Path, fixed: dict[str, Any], bound: dict[str, str]) -> None:
    chat_input, history_input, chat_output = _chat_fields(lmf, target)
    history: list[dict[str, Any]] = []
    console.print("Chatting with the flow; an empty line or Ctrl-D ends.")
    while True:
        try:
            text = console.input("[bold green]you>[/] ")
        except EOFError:
            break
        if not text.strip():
            break
        turn = {**fixed, chat_input: text}
        inputs = {**turn, history_input: history} if history_input else turn
        last = None
        streamed = False
        for event in lmf.stream_test_flow(target, inputs, connections=bound):
            streamed = streamed or event["event"] == "chunk"
            last = _chunk_or_result(event) or last
        result = _finished(last)
        if not history:
            say_bindings(result.defaulted_connections)
        if result.status != "completed":
            console.print()
            _print_error(result.error)
            continue
        answer = result.outputs.get(chat_output)
        if streamed:
            console.print()
        else:
            console.print(str(answer), highlight=False, markup=False)
        history.append({"inputs": turn, "outputs": result.outputs})


# -- uploaded flows -------------------------------------------------------------------------


@app.command("upload")
def upload(
    folder: Path,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Flow name (default: the folder's).")
    ] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Upload a flow folder to the project (a new version if the name exists)."""
    with client(project) as lmf:
        view = lmf.upload_flow(folder, name or _default_name(folder))
    show(view, json_, ["name", "version", "kind", "connections", "deployed_version"])


@app.command("list")
def list_(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Uploaded flows."""
    with client(project) as lmf:
        show(lmf.flows(), json_, FLOW_COLUMNS)


@app.command("show")
def show_(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """One uploaded flow: inputs, outputs, nodes, connections, deployment."""
    with client(project) as lmf:
        show(lmf.get_flow(name), json_)


@app.command("delete")
def delete(name: str, project: ProjectOpt = None) -> None:
    """Delete a flow, its versions and its keys (runs stay)."""
    with client(project) as lmf:
        lmf.delete_flow(name)
    console.print(f"Deleted {name}.")


@app.command("deploy", cls=PfCommand)
def deploy(
    name: Annotated[str | None, typer.Argument(help="An uploaded flow.")] = None,
    flow_option: Annotated[
        Path | None, typer.Option("--flow", "-f", help="A flow folder: upload it, then deploy.")
    ] = None,
    name_option: Annotated[
        str | None, typer.Option("--name", "-n", help="The flow's name (with --flow).")
    ] = None,
    connections: ConnectionsOpt = None,
    init_: InitOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Serve the flow's latest version at /flows/NAME/score behind a key; --connections are
    saved with the flow, --init (a flex flow's) with the deployment."""
    bound = parse_pairs(connections or [])
    init = _init(init_)
    with client(project) as lmf:
        if flow_option is not None:
            uploaded = lmf.upload_flow(
                flow_option, name_option or name or _default_name(flow_option)
            )
            name = uploaded.name
            if not json_:
                console.print(f"Uploaded flow {name} version {uploaded.version}.")
        elif name is None:
            raise InvalidRequest("Give the flow: an uploaded flow's name, or --flow DIR.")
        view = lmf.deploy_flow(name, connections=bound, init=init)
    show(view, json_, ["name", "deployed_version", "scoring_uri", "connection_bindings"])
    if not json_:
        say_bindings(view.defaulted_connections)
        console.print(f"Keys: lmfoundry flow keys {name}")


@app.command("undeploy")
def undeploy(name: str, project: ProjectOpt = None) -> None:
    """Stop serving the flow; its keys stop working."""
    with client(project) as lmf:
        lmf.undeploy_flow(name)
    console.print(f"{name} is no longer served.")


@app.command("keys")
def keys(
    name: str,
    regenerate: Annotated[
        str | None, typer.Option(help="Regenerate one key: primary or secondary.")
    ] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show a deployed flow's keys, or regenerate one."""
    with client(project) as lmf:
        result = lmf.regenerate_flow_key(name, regenerate) if regenerate else lmf.flow_keys(name)
    show(result, json_)


# -- runs -----------------------------------------------------------------------------------


@app.command("run", cls=PfCommand)
def run(
    flow: FlowOptArg = None,
    pairs: PairsArg = None,
    flow_option: FlowOpt = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="JSONL file, one line per run line.")
    ] = None,
    column_mapping: Annotated[
        list[str] | None,
        typer.Option(
            "--column-mapping", "-m", help="INPUT='${data.COLUMN}' or INPUT='${run.outputs.X}'."
        ),
    ] = None,
    connections: ConnectionsOpt = None,
    init_: InitOpt = None,
    earlier: Annotated[
        str | None, typer.Option("--run", help="An earlier run to evaluate (its lines).")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="The run's name, as in pf (default: generated)."),
    ] = None,
    flow_name: Annotated[
        str | None,
        typer.Option("--flow-name", help="Name to upload a folder under (default: its own)."),
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="Print each line as it finishes.")
    ] = False,
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish.")] = True,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run a flow over a JSONL file on the server (a folder is uploaded first)."""
    flow, rest = flow_and_pairs(flow, flow_option, pairs)
    flow = folder_of_flow_file(flow)
    mapping = _pairs([*(column_mapping or []), *rest], "--column-mapping")
    bound = parse_pairs(connections or [])
    init = _init(init_)
    with client(project) as lmf:
        if _is_folder(flow):
            folder = Path(flow).expanduser()
            uploaded = lmf.upload_flow(folder, flow_name or _default_name(folder))
            flow = uploaded.name
            if not json_:
                console.print(f"Uploaded flow {flow} version {uploaded.version}.")
        created = lmf.create_run(
            flow, data, mapping, earlier, connections=bound, name=name, init=init
        )
        if not json_:
            say_bindings(created.defaulted_connections)
        if not wait:
            show(created, json_, RUN_COLUMNS)
            return
        if not json_:
            console.print(f"Run {created.id}: {created.total_lines} lines.")
        finished = _follow(lmf, created.id) if stream and not json_ else lmf.wait_run(created.id)
    _print_run(finished, json_, lines=False)
    if finished.status != "completed":
        raise typer.Exit(1)


def _follow(lmf: Client, run_id: str) -> RunDetail:
    """Print each line of a run as it finishes (pf's --stream); the finished run."""
    printed: set[int] = set()
    while True:
        current = lmf.get_run(run_id, limit=10000)
        for line in current.lines:
            if line.line_number in printed:
                continue
            printed.add(line.line_number)
            if line.status == "completed":
                shown = json.dumps(line.outputs, default=str)
            else:
                shown = str((line.error or {}).get("message"))
            console.print(
                f"line {line.line_number}: {line.status} {shown}", highlight=False, markup=False
            )
        if current.status not in ("queued", "running"):
            return current
        time.sleep(0.5)


def _print_run(run: RunDetail, as_json: bool, lines: bool) -> None:
    summary = run.model_dump(exclude={"lines"})
    if as_json:
        print_json(run if lines else summary)
        return
    show(summary, False)
    if lines and run.lines:
        rows = [
            {
                "line": line.line_number,
                "status": line.status,
                "outputs": line.outputs,
                "error": (line.error or {}).get("message"),
            }
            for line in run.lines
        ]
        show(rows, False, ["line", "status", "outputs", "error"])


@runs_app.command("list")
def runs_list(
    flow: Annotated[str | None, typer.Option(help="Only runs of this flow.")] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Runs of the project, newest first."""
    with client(project) as lmf:
        show(lmf.runs(flow), json_, RUN_COLUMNS)


@runs_app.command("show")
def runs_show(
    run_id: str,
    lines: Annotated[bool, typer.Option(help="Show each line's result.")] = True,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """A run's progress, metrics and per-line results."""
    with client(project) as lmf:
        _print_run(lmf.get_run(run_id), json_, lines)


@runs_app.command("cancel")
def runs_cancel(run_id: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Stop a run; finished lines stay recorded."""
    with client(project) as lmf:
        show(lmf.cancel_run(run_id), json_, RUN_COLUMNS)
