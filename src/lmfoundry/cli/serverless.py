"""`lmfoundry serverless create|list|show|update|delete|keys`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, show

app = typer.Typer(
    help="Serverless API deployments: a model behind a URL and a key.", no_args_is_help=True
)

COLUMNS = [
    "name",
    "model",
    "target_url",
    "tokens_per_minute",
    "requests_per_minute",
    "provisioning_state",
]
TpmOpt = Annotated[int | None, typer.Option(help="Quota: tokens per minute (default 200000).")]
RpmOpt = Annotated[int | None, typer.Option(help="Quota: requests per minute (default 1000).")]
PriceIn = Annotated[float | None, typer.Option(help="USD per 1K prompt tokens.")]
PriceOut = Annotated[float | None, typer.Option(help="USD per 1K completion tokens.")]


@app.command("create")
def create(
    name: str,
    model: Annotated[str, typer.Option(help="Catalog model id.")] = "SmolLM2-135M-Instruct",
    tokens_per_minute: TpmOpt = None,
    requests_per_minute: RpmOpt = None,
    price_input_per_1k: PriceIn = None,
    price_output_per_1k: PriceOut = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Deploy a catalog model as a serverless API."""
    with client(project) as lmf:
        created = lmf.create_serverless(
            name,
            model,
            tokens_per_minute=tokens_per_minute,
            requests_per_minute=requests_per_minute,
            price_input_per_1k=price_input_per_1k,
            price_output_per_1k=price_output_per_1k,
        )
    show(created, json_)
    if not json_:
        console.print(f"Keys: lmfoundry serverless keys {name}")


@app.command("list")
def list_(project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """Serverless deployments of a project."""
    with client(project) as lmf:
        show(lmf.serverless(), json_, COLUMNS)


@app.command("show")
def show_(name: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """One deployment."""
    with client(project) as lmf:
        show(lmf.get_serverless(name), json_)


@app.command("update")
def update(
    name: str,
    tokens_per_minute: TpmOpt = None,
    requests_per_minute: RpmOpt = None,
    price_input_per_1k: PriceIn = None,
    price_output_per_1k: PriceOut = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Change a deployment's quota or prices."""
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "tokens_per_minute": tokens_per_minute,
            "requests_per_minute": requests_per_minute,
            "price_input_per_1k": price_input_per_1k,
            "price_output_per_1k": price_output_per_1k,
        }.items()
        if v is not None
    }
    with client(project) as lmf:
        show(lmf.update_serverless(name, **changes), json_)


@app.command("delete")
def delete(name: str, project: ProjectOpt = None) -> None:
    """Delete a deployment; its keys stop working at once."""
    with client(project) as lmf:
        lmf.delete_serverless(name)
    console.print(f"Deleted {name}.")


@app.command("keys")
def keys(
    name: str,
    regenerate: Annotated[
        str | None, typer.Option(help="Regenerate one key: primary or secondary.")
    ] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Show a deployment's keys, or regenerate one of them."""
    with client(project) as lmf:
        result = (
            lmf.regenerate_serverless_key(name, regenerate)
            if regenerate
            else lmf.serverless_keys(name)
        )
    show(result, json_)
