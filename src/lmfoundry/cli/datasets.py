"""`lmfoundry datasets upload|list|show|prepare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, print_json, show
from lmfoundry.datasets.models import DatasetView, RowSpread, TokenSpread

app = typer.Typer(
    help="Chat datasets: validated JSONL files, versioned by name.", no_args_is_help=True
)

COLUMNS = ["id", "name", "version", "rows", "size_bytes", "filename", "created_at"]
ModelOpt = Annotated[
    str | None,
    typer.Option(help="Catalog model: count tokens with it and check its context length."),
]


def _summary(dataset: DatasetView) -> dict[str, Any]:
    """The view with the statistics spelled out for a table."""
    flat = dataset.model_dump(exclude={"stats"})
    stats = dataset.stats
    flat["messages_per_row"] = _spread(stats.messages_per_row)
    flat["chars_per_row"] = _spread(stats.chars_per_row)
    for model, tokens in stats.tokens_per_row.items():
        flat[f"tokens_per_row ({model})"] = _spread(tokens)
    return flat


def _spread(s: RowSpread) -> str:
    """`min 2, mean 3.1, max 5`, with the context for a token count."""
    text = f"min {s.min}, mean {s.mean}, max {s.max}"
    return f"{text} (context {s.context_length})" if isinstance(s, TokenSpread) else text


@app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(help='Chat JSONL: one {"messages": [...]} a line.')],
    name: Annotated[str, typer.Option(help="Dataset name; uploading it again adds a version.")],
    model: ModelOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Validate and upload a chat JSONL file; invalid lines are listed and nothing is stored."""
    with client(project) as lmf:
        dataset = lmf.upload_dataset(file, name, model)
    show(dataset if json_ else _summary(dataset), json_)


@app.command("list")
def list_(
    name: Annotated[str | None, typer.Option(help="Only the versions of this name.")] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Datasets of a project, every version."""
    with client(project) as lmf:
        show(lmf.datasets(name), json_, COLUMNS)


@app.command("show")
def show_(
    ref: Annotated[str, typer.Argument(help="NAME, NAME:VERSION or the dataset id.")],
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """One dataset version and its statistics."""
    with client(project) as lmf:
        dataset = lmf.dataset(ref)
    show(dataset if json_ else _summary(dataset), json_)


@app.command("prepare")
def prepare(
    source: Annotated[
        str,
        typer.Argument(
            help="A Hugging Face hub id (e.g. HuggingFaceH4/ultrachat_200k) or a local "
            "parquet / JSONL file or folder."
        ),
    ],
    config: Annotated[str | None, typer.Option(help="The dataset's config name.")] = None,
    split: Annotated[
        str, typer.Option(help="Split expression, e.g. train_sft[:1%] or train[:1000].")
    ] = "train",
    test_fraction: Annotated[float, typer.Option(help="Share of rows for the test file.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the shuffle before the split.")] = 42,
    output_dir: Annotated[
        Path, typer.Option(help="Where train_data.jsonl and test_data.jsonl are written.")
    ] = Path("data"),
    upload: Annotated[
        str | None,
        typer.Option(help="Also upload the files as datasets NAME-train and NAME-test."),
    ] = None,
    model: ModelOpt = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Build train/test JSONL files from a `datasets` source (runs here, not on the server)."""
    from lmfoundry.datasets.prepare import prepare as build

    prepared = build(
        source, output_dir, config=config, split=split, test_fraction=test_fraction, seed=seed
    )
    result: dict = {
        "source_rows": prepared.source_rows,
        "train_path": str(prepared.train_path),
        "train_rows": prepared.train_rows,
        "test_path": str(prepared.test_path),
        "test_rows": prepared.test_rows,
    }
    if upload:
        with client(project) as lmf:
            train = lmf.upload_dataset(prepared.train_path, f"{upload}-train", model)
            test = lmf.upload_dataset(prepared.test_path, f"{upload}-test", model)
        result["training_data"] = f"{train.name}:{train.version}"
        result["validation_data"] = f"{test.name}:{test.version}"
    if json_:
        print_json(result)
        return
    console.print(
        f"{prepared.source_rows} rows: {prepared.train_rows} in {prepared.train_path}, "
        f"{prepared.test_rows} in {prepared.test_path}."
    )
    if upload:
        console.print(
            f"Uploaded {result['training_data']} and {result['validation_data']}. Fine-tune: "
            f"lmfoundry jobs create --model {model or 'MODEL'} "
            f"--training-data {result['training_data']} "
            f"--validation-data {result['validation_data']}"
        )
