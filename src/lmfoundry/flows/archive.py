"""Flow folders on the wire: packed by the CLI and SDK (tar.gz), unpacked safely by the server.

Unpacking accepts tar.gz and zip, refuses absolute paths, `..`, links and device files, and
stops at a size limit; a single top-level folder holding flow.dag.yaml is taken as the flow.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from lmfoundry.errors import InvalidRequest, PayloadTooLarge
from lmfoundry.flows.models import DAG_FILES

# Never part of a flow: caches, virtual environments, version control, local run output.
SKIPPED = {"__pycache__", ".git", ".venv", "venv", ".promptflow", ".runs", "node_modules"}


def pack(folder: Path, max_bytes: int | None = None) -> bytes:
    """The flow folder as tar.gz, without caches and virtual environments."""
    folder = folder.expanduser().resolve()
    if not any((folder / name).is_file() for name in DAG_FILES):
        raise InvalidRequest(
            f"{folder} has no flow.dag.yaml; give the folder that holds it.", param="flow"
        )
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if any(part in SKIPPED for part in relative.parts) or path.suffix == ".pyc":
                continue
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            if path.is_file():
                total += path.stat().st_size
                if max_bytes is not None and total > max_bytes:
                    raise PayloadTooLarge(
                        f"{folder} holds more than {max_bytes:,} bytes; a flow is code and "
                        "templates, keep data and models out of its folder."
                    )
            tar.add(path, arcname=relative.as_posix(), recursive=False)
    return buffer.getvalue()


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise InvalidRequest(f"The flow archive has an unsafe path {name!r}.", param="file")
    return path


def unpack(data: bytes, dest: Path, max_bytes: int) -> Path:
    """Unpack a tar.gz or zip into `dest`; returns the folder that holds flow.dag.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    if data[:2] == b"PK":
        _unzip(data, dest, max_bytes)
    else:
        _untar(data, dest, max_bytes)
    if any((dest / name).is_file() for name in DAG_FILES):
        return dest
    children = [p for p in dest.iterdir() if p.is_dir()]
    if len(children) == 1 and any((children[0] / n).is_file() for n in DAG_FILES):
        return children[0]
    raise InvalidRequest(
        "The flow archive has no flow.dag.yaml at its top (or in its one top-level folder).",
        param="file",
    )


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The flow unpacks to more than {max_bytes:,} bytes (LMFOUNDRY_FLOW_MAX_BYTES); keep "
        "data and models out of the flow folder."
    )


def _untar(data: bytes, dest: Path, max_bytes: int) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
            total = 0
            for member in members:
                _safe_name(member.name)
                if not (member.isfile() or member.isdir()):
                    raise InvalidRequest(
                        f"The flow archive has {member.name!r}, which is not a plain file or "
                        "folder (links are not allowed).",
                        param="file",
                    )
                total += member.size
                if total > max_bytes:
                    raise _too_large(max_bytes)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidRequest(
            f"The flow archive is not a readable tar.gz or zip: {exc}", param="file"
        ) from exc


def _unzip(data: bytes, dest: Path, max_bytes: int) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            if sum(i.file_size for i in infos) > max_bytes:
                raise _too_large(max_bytes)
            for info in infos:
                target = dest / _safe_name(info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidRequest(
            f"The flow archive is not a readable tar.gz or zip: {exc}", param="file"
        ) from exc
