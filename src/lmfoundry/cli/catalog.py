"""`lmfoundry catalog list|show|import|build-onnx|remove` (model cards, and local models
added to the catalog); `lmfoundry models register|list|show|delete` (registered models)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, records, show

catalog_app = typer.Typer(
    help="Model cards, and local models added to the catalog.", no_args_is_help=True
)
models_app = typer.Typer(
    help="Registered models: versions and their lineage.", no_args_is_help=True
)

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
    shown = records(card)
    del shown["chat_template"]
    shown["source"] = ", ".join(f"{k}={v}" for k, v in shown["source"].items() if v)
    show(shown, False)


@catalog_app.command("import")
def catalog_import(
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
            f"Imported [bold]{card.id}[/] ({card.engine}, context "
            f"{card.context_length}). Deploy it with `lmfoundry serverless create "
            f"NAME --model {card.id}`."
        )


@catalog_app.command("build-onnx")
def catalog_build_onnx(
    source: Annotated[
        str,
        typer.Argument(
            help="A catalog model whose weights are here (e.g. SmolLM2-135M-Instruct), a "
            "Hugging Face folder or a .gguf file."
        ),
    ],
    id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="Catalog id to add it under (default: SOURCE-onnx). A built-in card's id, "
            "e.g. SmolLM2-135M-Instruct, makes that card serve the ONNX build.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Folder to write (default: $LMFOUNDRY_HOME/models/onnx/ID)."),
    ] = None,
    precision: Annotated[str, typer.Option(help="int4, int8, fp16 or fp32.")] = "int4",
    register: Annotated[
        bool, typer.Option(help="Add the folder to the catalog (admins only).")
    ] = True,
    json_: JsonOpt = False,
) -> None:
    """Build an ONNX Runtime GenAI folder (served by the `onnx` engine), here, offline."""
    from lmfoundry.catalog.onnx_build import build_onnx
    from lmfoundry.config import get_settings

    settings = get_settings()
    path = Path(source).expanduser()
    template = None
    if path.exists():
        default_id = f"{path.stem if path.is_file() else path.name}-onnx"
    else:  # a catalog model: its weights, and its own template (gemma's is not in its GGUF)
        with client() as lmf:
            card = lmf.card(source)
        if not card.weights_path:
            raise typer.BadParameter(
                f"the weights of {source} are not on this machine. {card.how_to_get}"
            )
        path, template = Path(card.weights_path), card.chat_template
        default_id = f"{card.id}-onnx"
    model_id = id or default_id
    folder = build_onnx(
        path,
        output or settings.home / "models" / "onnx" / model_id,
        model_id=model_id,
        models_dir=settings.home / "models",
        precision=precision,
        chat_template=template,
        log=lambda line: console.print(line, highlight=False),
    )
    result = {"id": model_id, "path": str(folder), "engine": "onnx", "registered": False}
    if register:
        with client() as lmf:
            added = lmf.import_model(str(folder), model_id)
        result["registered"] = True
        result["context_length"] = added.context_length
    if json_:
        show(result, True)
    elif register:
        console.print(
            f"Added [bold]{model_id}[/] (onnx engine). Deploy it with `lmfoundry serverless "
            f"create NAME --model {model_id}`."
        )
    else:
        console.print(
            f"Built {folder}. Add it with `lmfoundry catalog import {folder} --id {model_id}`."
        )


@catalog_app.command("remove")
def catalog_remove(model: str) -> None:
    """Remove an imported model from the catalog (the files stay)."""
    with client() as lmf:
        lmf.remove_import(model)
    console.print(f"Removed {model} from the catalog.")


MODEL_COLUMNS = ["name", "version", "format", "adapter", "base_model", "job_id", "created_at"]


@models_app.command("register")
def models_register(
    name: str,
    from_job: Annotated[str | None, typer.Option("--from-job", help="A completed job id.")] = None,
    path: Annotated[
        str | None, typer.Option(help="An MLflow/HF/PEFT folder or .gguf file.")
    ] = None,
    base_model: Annotated[str | None, typer.Option(help="For adapters: the base model.")] = None,
    description: Annotated[str, typer.Option(help="What this version is.")] = "",
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Register a job's output (or a model folder) as the next version of NAME."""
    with client(project) as lmf:
        registered = lmf.register_model(
            name, from_job=from_job, path=path, base_model=base_model, description=description
        )
    if json_:
        show(registered, True)
    else:
        ref = f"{registered.name}:{registered.version}"
        kind = registered.format
        if registered.adapter:
            kind += f", LoRA on {registered.base_model}"
        console.print(
            f"Registered [bold]{ref}[/] ({kind}). Deploy it with "
            f"`lmfoundry endpoints deploy ENDPOINT blue --model {ref}`."
        )


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Registered models and their versions."""
    with client(project) as lmf:
        show(lmf.registered_models(name), json_, MODEL_COLUMNS)


@models_app.command("show")
def models_show(ref: str, project: ProjectOpt = None, json_: JsonOpt = False) -> None:
    """One version (NAME:VERSION, or NAME for the latest) with its lineage."""
    with client(project) as lmf:
        show(lmf.registered_model(ref), json_)


@models_app.command("delete")
def models_delete(ref: str, project: ProjectOpt = None) -> None:
    """Delete a version (NAME:VERSION); refused while a deployment uses it."""
    with client(project) as lmf:
        lmf.delete_registered_model(ref)
    console.print(f"Deleted {ref}.")
