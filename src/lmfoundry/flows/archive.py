"""Flow folders on the wire: packed by the CLI and SDK (tar.gz), unpacked safely by the server.

Unpacking accepts tar.gz and zip and reads them as a stream, member by member, straight to
disk: every limit is checked as the bytes arrive, before the next member is read, so a bomb
costs what its limit allows and no more. It refuses absolute paths, `..`, links and device
files, more than MAX_MEMBERS members, more than `max_bytes` packed or unpacked, and data that
unpacks to more than MAX_RATIO times its packed size. A refused archive leaves nothing
behind. A single top-level folder holding flow.dag.yaml is taken as the flow.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from lmfoundry.errors import InvalidRequest, PayloadTooLarge
from lmfoundry.flows.flex import is_flow_folder
from lmfoundry.flows.includes import included_files

# Never part of a flow: caches, virtual environments, version control, local run output.
SKIPPED = {"__pycache__", ".git", ".venv", "venv", ".promptflow", ".runs", "node_modules"}
MAX_MEMBERS = 2_000  # files and folders; a flow is code and templates
MAX_RATIO = 100  # unpacked bytes per packed byte; source code packs 3-10x
RATIO_FREE_BYTES = 1024 * 1024  # below this much unpacked, any ratio is fine
CHUNK = 64 * 1024


def pack(folder: Path, max_bytes: int | None = None) -> bytes:
    """The flow folder as tar.gz, without caches and virtual environments, with its
    `additional_includes` added under their own names (as Prompt flow's snapshot)."""
    folder = folder.expanduser().resolve()
    if not is_flow_folder(folder):
        raise InvalidRequest(
            f"{folder} has no flow.dag.yaml (or flow.flex.yaml, or a .prompty); give the "
            "folder that holds it.",
            param="flow",
        )
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        roots = [(folder, PurePosixPath())] + [
            (path, PurePosixPath(name)) for path, name in included_files(folder)
        ]
        for root, under in roots:
            members = [root] if root.is_file() else sorted(root.rglob("*"))
            for path in members:
                relative = path.relative_to(root)  # "." for an included file itself
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
                tar.add(path, arcname=(under / relative).as_posix(), recursive=False)
    return buffer.getvalue()


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\0" in name:
        raise InvalidRequest(f"The flow archive has an unsafe path {name!r}.", param="file")
    return path


def unpack(data: bytes | BinaryIO, dest: Path, max_bytes: int) -> Path:
    """Unpack a tar.gz or zip (bytes, or a seekable file such as an upload's spooled file)
    into `dest`; returns the folder that holds flow.dag.yaml. On any refusal `dest` is
    removed again."""
    source: BinaryIO = io.BytesIO(data) if isinstance(data, bytes) else data
    packed = source.seek(0, io.SEEK_END)
    source.seek(0)
    if packed > max_bytes:
        raise PayloadTooLarge(
            f"The flow archive is {packed:,} bytes, more than {max_bytes:,} "
            "(LMFOUNDRY_FLOW_MAX_BYTES); keep data and models out of the flow folder."
        )
    magic = source.read(2)
    source.seek(0)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        budget = _Budget(max_bytes, packed)
        if magic == b"PK":
            _unzip(source, dest, budget)
        else:
            _untar(source, dest, budget)
        return _flow_folder(dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _flow_folder(dest: Path) -> Path:
    if is_flow_folder(dest):
        return dest
    children = [p for p in dest.iterdir() if p.is_dir()]
    if len(children) == 1 and is_flow_folder(children[0]):
        return children[0]
    raise InvalidRequest(
        "The flow archive has no flow.dag.yaml at its top (or in its one top-level folder).",
        param="file",
    )


class _Budget:
    """What an archive may still unpack to: members, bytes, and bytes per packed byte."""

    def __init__(self, max_bytes: int, packed: int) -> None:
        self.max_bytes = max_bytes
        self.packed = max(packed, 1)
        self.members = 0
        self.unpacked = 0

    def member(self, declared_size: int) -> None:
        """Called before a member is read, with the size its header declares."""
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise PayloadTooLarge(
                f"The flow archive has more than {MAX_MEMBERS:,} files and folders; a flow is "
                "code and templates, keep data, caches and dependencies out of its folder."
            )
        self._check(self.unpacked + declared_size)

    def wrote(self, size: int) -> None:
        self.unpacked += size
        self._check(self.unpacked)

    def _check(self, unpacked: int) -> None:
        if unpacked > self.max_bytes:
            raise PayloadTooLarge(
                f"The flow unpacks to more than {self.max_bytes:,} bytes "
                "(LMFOUNDRY_FLOW_MAX_BYTES); keep data and models out of the flow folder."
            )
        if unpacked > RATIO_FREE_BYTES and unpacked > MAX_RATIO * self.packed:
            raise PayloadTooLarge(
                f"The flow archive unpacks to more than {MAX_RATIO} times its packed size "
                f"({self.packed:,} bytes); it looks like a compression bomb. Pack the flow "
                "folder as it is (`lmfoundry flow upload DIR` does) without padding files."
            )


def _write(source: BinaryIO, target: Path, budget: _Budget) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := source.read(CHUNK):
            budget.wrote(len(chunk))
            out.write(chunk)


def _not_readable(exc: BaseException) -> InvalidRequest:
    return InvalidRequest(f"The flow archive is not a readable tar.gz or zip: {exc}", param="file")


def _untar(source: BinaryIO, dest: Path, budget: _Budget) -> None:
    try:
        # "r|*": a stream, one header and its data at a time; nothing is read ahead.
        with tarfile.open(fileobj=source, mode="r|*") as tar:
            for member in tar:
                path = _safe_name(member.name)
                if not (member.isfile() or member.isdir()):
                    raise InvalidRequest(
                        f"The flow archive has {member.name!r}, which is not a plain file or "
                        "folder (links are not allowed).",
                        param="file",
                    )
                budget.member(member.size)
                if member.isdir():
                    (dest / path).mkdir(parents=True, exist_ok=True)
                    continue
                data = tar.extractfile(member)
                if data is not None:
                    _write(data, dest / path, budget)  # type: ignore[arg-type]
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise _not_readable(exc) from exc


def _unzip(source: BinaryIO, dest: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                path = _safe_name(info.filename)
                budget.member(info.file_size)
                if info.is_dir():
                    (dest / path).mkdir(parents=True, exist_ok=True)
                    continue
                with archive.open(info) as data:
                    _write(data, dest / path, budget)  # type: ignore[arg-type]
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise _not_readable(exc) from exc
