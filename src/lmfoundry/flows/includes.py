"""`additional_includes`: files and folders outside a flow's folder that the flow needs.

Prompt flow copies each entry (a path relative to the flow folder, or absolute) into the
flow's snapshot under its own name before the flow runs, so `../shared/utils.py` is
`utils.py` in the snapshot and a node's `source: {path: utils.py}` finds it. lmfoundry does
the same where the flow's folder is read from the user's disk (the CLI packing a flow for
upload, local runs): `included_files` lists what to add, `with_includes` makes a snapshot.
On the server, an uploaded flow already holds its includes (it was packed with them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from lmfoundry.errors import InvalidRequest, LmfError
from lmfoundry.flows.models import DAG_FILES
from lmfoundry.flows.yamlfile import load_yaml


def additional_includes(folder: Path) -> list[str]:
    """The flow's `additional_includes` as written (none for a flow without a dag file)."""
    dag_file = next((folder / n for n in DAG_FILES if (folder / n).is_file()), None)
    if dag_file is None:
        return []
    try:
        data = load_yaml(dag_file.read_text(encoding="utf-8"), dag_file.name)
    except (LmfError, yaml.YAMLError, UnicodeDecodeError):  # load_dag says what is wrong
        return []
    includes = data.get("additional_includes") if isinstance(data, dict) else None
    return [i for i in includes or [] if isinstance(i, str)]


def included_files(folder: Path) -> list[tuple[Path, str]]:
    """(path on disk, name in the snapshot) for every additional include; a missing one is
    refused, naming it."""
    found = []
    for entry in additional_includes(folder):
        path = Path(entry).expanduser()
        path = (path if path.is_absolute() else folder / path).resolve()
        if not path.exists():
            raise InvalidRequest(
                f"additional_includes names {entry!r}, which does not exist (paths are relative "
                f"to the flow folder {folder.name}); fix the path or remove the entry.",
                param="additional_includes",
            )
        found.append((path, path.name))
    return found


def with_includes(folder: Path, snapshot: Path) -> Path:
    """Copy the flow folder to `snapshot` with its additional includes added under their
    names, as Prompt flow's snapshot; returns `snapshot`."""
    folder = folder.resolve()
    shutil.copytree(folder, snapshot, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path, name in included_files(folder):
        target = snapshot / name
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target)
    return snapshot
