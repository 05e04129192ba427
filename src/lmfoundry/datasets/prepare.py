"""Build train and test JSONL files from a Hugging Face `datasets` source, client-side.

    prepare("HuggingFaceH4/ultrachat_200k", Path("data"), config="default",
            split="train_sft[:1%]")                       # the hub, where the network allows
    prepare("ultrachat/data", Path("data"), split="train_sft[:1%]")   # local parquet / JSONL

This is the Azure tutorial's download_dataset.py: `load_dataset(...)`, then
`train_test_split(test_size=0.2)`, then one JSON object per line. Local files are read with
the `json` or `parquet` builder; the split's name in the expression (`train_sft` in
`train_sft[:1%]`) names them, so the same expression works on the hub and on a local copy.
Needs the `datasets` package (the `train` extra).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from lmfoundry.errors import InvalidRequest, Unavailable

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_NAME = re.compile(r"^\s*([A-Za-z0-9_.-]+)")


@dataclass(frozen=True)
class Prepared:
    train_path: Path
    test_path: Path
    train_rows: int
    test_rows: int
    source_rows: int


def _local_files(source: Path) -> tuple[str, list[str]]:
    """The builder and files of a local file or folder of parquet / JSONL files."""
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    files = [p for p in files if p.suffix in BUILDERS]
    builders = {BUILDERS[p.suffix] for p in files}
    if not files:
        raise InvalidRequest(
            f"{source} has no .parquet, .jsonl or .json files to read.", param="source"
        )
    if len(builders) > 1:
        raise InvalidRequest(
            f"{source} mixes parquet and JSON files; point at one kind.", param="source"
        )
    return builders.pop(), [str(p) for p in files]


def load(source: str, config: str | None = None, split: str = "train") -> Any:
    """The rows of `split` from a local path or a hub id, as a `datasets.Dataset`."""
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise Unavailable(
            "Preparing datasets needs the `datasets` package: pip install 'lmfoundry[train]'."
        ) from exc
    match = SPLIT_NAME.match(split)
    if match is None:
        raise InvalidRequest(
            f"Invalid split {split!r}; use a split name with an optional slice, such as "
            "train, train[:1000] or train_sft[:1%].",
            param="split",
        )
    local = Path(source).expanduser()
    try:
        if local.exists():
            builder, files = _local_files(local)
            return load_dataset(builder, data_files={match.group(1): files}, split=split)
        return load_dataset(source, config, split=split)
    except (FileNotFoundError, ConnectionError, OSError) as exc:
        raise Unavailable(
            f"Could not load {source!r} ({type(exc).__name__}: {exc}). Without network access, "
            "download the dataset's parquet or JSONL files elsewhere and pass their folder."
        ) from exc
    except ValueError as exc:  # e.g. an unknown split or a bad slice
        raise InvalidRequest(f"Could not load split {split!r} of {source!r}: {exc}") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def write_jsonl(rows: Any, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_plain) + "\n")
            count += 1
    return count


def prepare(
    source: str,
    output_dir: Path,
    *,
    config: str | None = None,
    split: str = "train",
    test_fraction: float = 0.2,
    seed: int = 42,
    train_name: str = "train_data.jsonl",
    test_name: str = "test_data.jsonl",
) -> Prepared:
    """Split `source` into `train_name` and `test_name` under `output_dir`."""
    if not 0 < test_fraction < 1:
        raise InvalidRequest(
            f"test_fraction must be between 0 and 1 (got {test_fraction}).", param="test_fraction"
        )
    rows = load(source, config, split)
    if "messages" not in rows.column_names:
        raise InvalidRequest(
            f"{source} has no `messages` column (it has {', '.join(rows.column_names)}); "
            "lmfoundry trains on chat rows with a messages list.",
            param="source",
        )
    if len(rows) < 2:
        raise InvalidRequest(
            f"{source} split {split!r} has {len(rows)} row(s); a train/test split needs two.",
            param="split",
        )
    parts = rows.train_test_split(test_size=test_fraction, seed=seed)
    train_path, test_path = output_dir / train_name, output_dir / test_name
    return Prepared(
        train_path=train_path,
        test_path=test_path,
        train_rows=write_jsonl(parts["train"], train_path),
        test_rows=write_jsonl(parts["test"], test_path),
        source_rows=len(rows),
    )
