"""`lmfoundry catalog list|show` and `lmfoundry models import|remove`."""

from __future__ import annotations

from typing import Annotated

import typer

from lmfoundry.cli._output import JsonOpt, client, console, show

catalog_app = typer.Typer(help="Model cards.", no_args_is_help=True)
models_app = typer.Typer(help="Add local models to the catalog.", no_args_is_help=True)

CARD_COLUMNS = [
    "id",
    "parameters",
    "context_length",
    "engine",
    "license",
    "price_input_per_1k",
    "price_output_per_1k",
    "weights_present",
]


@catalog_app.command("list")
def catalog_list(json_: JsonOpt = False) -> None:
    """Every model card, and whether its weights are on this machine."""
    with client() as lmf:
        show(lmf.catalog(), json_, CARD_COLUMNS)


@catalog_app.command("show")
def catalog_show(model: str, json_: JsonOpt = False) -> None:
    """One model card in full."""
    with client() as lmf:
        card = lmf.card(model)
    if json_:
        show(card, True)
        return
    card = {k: v for k, v in card.items() if k != "chat_template"}
    card["source"] = ", ".join(f"{k}={v}" for k, v in card["source"].items() if v)
    show(card, False)


@models_app.command("import")
def models_import(
    path: str,
    id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="Model id (default: file name). "
            "Use a catalog id, e.g. Phi-3-mini-4k-instruct, "
            "to supply that card's weights.",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Add a local GGUF file or Hugging Face folder to the catalog (admins only)."""
    with client() as lmf:
        card = lmf.import_model(path, id)
    if json_:
        show(card, True)
    else:
        console.print(
            f"Imported [bold]{card['id']}[/] ({card['engine']}, context "
            f"{card['context_length']}). Deploy it with `lmfoundry serverless create "
            f"NAME --model {card['id']}`."
        )


@models_app.command("remove")
def models_remove(model: str) -> None:
    """Remove an imported model from the catalog (the files stay)."""
    with client() as lmf:
        lmf.remove_import(model)
    console.print(f"Removed {model} from the catalog.")
