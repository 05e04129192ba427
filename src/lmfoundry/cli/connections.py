"""`lmfoundry connections create|list|show|update|delete`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, show
from lmfoundry.connections.models import MASK, ConnectionType, parse_connection_file
from lmfoundry.errors import Conflict, InvalidRequest, NotFound

app = typer.Typer(
    help="Connections: configs and encrypted secrets that flows read.", no_args_is_help=True
)

COLUMNS = ["name", "type", "configs", "secrets", "updated_at"]
ConfigOpt = Annotated[
    list[str] | None,
    typer.Option("--config", "-c", help="A config as NAME=VALUE (repeat for more)."),
]
SecretOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--secret",
        "-s",
        help="A secret as NAME=VALUE, or NAME alone to type the value unseen (repeat for more).",
    ),
]
ServerlessOpt = Annotated[
    str | None,
    typer.Option(help="Make an lmfoundry connection to this serverless deployment."),
]
EndpointOpt = Annotated[
    str | None, typer.Option(help="Make an lmfoundry connection to this online endpoint.")
]


def _pairs(values: list[str] | None, what: str) -> dict[str, str]:
    pairs = {}
    for value in values or []:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"--{what} takes NAME=VALUE, not {value!r}.", param=what)
        pairs[key] = item
    return pairs


def _secrets(values: list[str] | None) -> dict[str, str]:
    secrets = {}
    for value in values or []:
        if "=" in value:
            secrets.update(_pairs([value], "secret"))
        elif value:
            secrets[value] = typer.prompt(f"Value of secret {value!r}", hide_input=True)
        else:
            raise InvalidRequest("--secret takes NAME=VALUE or NAME.", param="secret")
    return secrets


def _body(
    config: list[str] | None,
    secret: list[str] | None,
    serverless: str | None,
    endpoint: str | None,
) -> dict[str, Any]:
    if serverless or endpoint:
        if serverless and endpoint:
            raise InvalidRequest("Give --serverless or --endpoint, not both.")
        if config or secret:
            raise InvalidRequest(
                "An lmfoundry connection (--serverless/--endpoint) takes no --config or "
                "--secret: its URL and key are looked up when a flow runs."
            )
        kind, target = ("serverless", serverless) if serverless else ("endpoint", endpoint)
        return {
            "type": ConnectionType.lmfoundry.value,
            "configs": {"target_kind": kind, "target": target},
            "secrets": {},
        }
    return {
        "type": ConnectionType.custom.value,
        "configs": _pairs(config, "config"),
        "secrets": _secrets(secret),
    }


@app.command("create")
def create(
    name: Annotated[
        str | None, typer.Argument(help="Connection name (default: the file's name).")
    ] = None,
    config: ConfigOpt = None,
    secret: SecretOpt = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="A Prompt flow connection.yaml (type: custom)."),
    ] = None,
    serverless: ServerlessOpt = None,
    endpoint: EndpointOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create a connection: configs + secrets, a connection.yaml, or --serverless NAME."""
    if file is not None:
        if config or secret or serverless or endpoint:
            raise InvalidRequest("Give --file alone, or the connection's fields as options.")
        body = parse_connection_file(file.read_text(encoding="utf-8"), file.name)
        name = name or body.pop("name", None)
        body.pop("name", None)
    else:
        body = _body(config, secret, serverless, endpoint)
    if not name:
        raise InvalidRequest("Give the connection a name (or a file with `name:`).", param="name")
    with client(project) as lmf:
        try:
            lmf.get_connection(name)
        except NotFound:
            pass
        else:
            raise Conflict(
                f"Connection {name!r} already exists; change it with "
                f"`lmfoundry connections update {name}`."
            )
        show(lmf.put_connection(name, **body), json_)


@app.command("list")
def list_(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Connections of a project (secret values are never shown)."""
    with client(project) as lmf:
        show(lmf.connections(), json_, COLUMNS)


@app.command("show")
def show_(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """One connection; secrets show as ***."""
    with client(project) as lmf:
        show(lmf.get_connection(name), json_)


@app.command("update")
def update(
    name: str,
    config: ConfigOpt = None,
    secret: SecretOpt = None,
    remove: Annotated[
        list[str] | None, typer.Option("--remove", help="Drop a config or secret (repeat).")
    ] = None,
    serverless: ServerlessOpt = None,
    endpoint: EndpointOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change some configs or secrets; the others keep their values."""
    with client(project) as lmf:
        current = lmf.get_connection(name)
        if serverless or endpoint:
            body = _body(None, None, serverless, endpoint)
        else:
            configs = {**current.configs, **_pairs(config, "config")}
            secrets = {**current.secrets, **_secrets(secret)}  # "***" keeps stored values
            body = {"type": current.type, "configs": configs, "secrets": secrets}
        for key in remove or []:
            if key not in body["configs"] and key not in body["secrets"]:
                raise InvalidRequest(f"Connection {name!r} has no config or secret {key!r}.")
            body["configs"].pop(key, None)
            body["secrets"].pop(key, None)
        show(lmf.put_connection(name, **body), json_)
    if not json_ and any(v == MASK for v in body["secrets"].values()):
        console.print("[dim]Secrets not given kept their stored values.[/]")


@app.command("delete")
def delete(name: str, project: ProjectOpt = None) -> None:
    """Delete a connection; flows that name it fail validation until it exists again."""
    with client(project) as lmf:
        lmf.delete_connection(name)
    console.print(f"Deleted {name}.")
