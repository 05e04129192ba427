"""Register-by-path: which server folders a project may copy a model from, and the copy.

A path is accepted only below one of the operator's import roots (LMFOUNDRY_IMPORT_ROOTS),
never inside $LMFOUNDRY_HOME (other projects' models, job outputs, the master key), never
through a symlink, and only up to a total size and file count. The copy walks the tree by
directory descriptors and opens every file with O_NOFOLLOW, so a symlink swapped in after
the checks is refused too instead of being followed.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from lmfoundry.errors import Forbidden, InvalidRequest, PayloadTooLarge

CHUNK = 1024 * 1024  # bytes per read while copying
MAX_DEPTH = 32  # folders deep; model folders are a few levels, and the copy recurses


@dataclass(frozen=True)
class ImportPolicy:
    roots: tuple[Path, ...]
    home: Path
    max_bytes: int
    max_files: int

    def source(self, given: str) -> Path:
        """The folder or file `given` names, once it passed every rule; 4xx naming the rule
        it broke. Errors name the path as given, never what it resolves to."""
        if not self.roots:
            raise Forbidden(
                "Registering a model by path is switched off on this server: the operator "
                "lists the folders it may read in LMFOUNDRY_IMPORT_ROOTS. Register a "
                "fine-tuning job's output with from_job instead.",
                param="path",
            )
        if not given or not os.path.isabs(os.path.expanduser(given)):
            raise InvalidRequest(
                f"path {given!r} must be an absolute path on the server, below one of its "
                "import roots (LMFOUNDRY_IMPORT_ROOTS).",
                param="path",
            )
        wanted = Path(os.path.normpath(os.path.expanduser(given)))
        for root in self.roots:
            below = _below(wanted, root)
            if below is not None:
                break
        else:
            raise Forbidden(
                f"{given} is not below an import root of this server; the operator lists "
                "the folders models may be registered from in LMFOUNDRY_IMPORT_ROOTS.",
                param="path",
            )
        real_root, parts = below
        path = real_root
        try:
            mode = real_root.stat().st_mode
            for part in parts:  # no symlink between the root and the path
                path = path / part
                mode = path.lstat().st_mode
                if stat.S_ISLNK(mode):
                    break
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidRequest(
                f"{given} does not exist; give a model folder or a .gguf file.",
                param="path",
            ) from None
        if stat.S_ISLNK(mode):
            raise InvalidRequest(
                f"{given} goes through a symlink ({path.name}); give the real folder, or copy "
                "the model into an import root.",
                param="path",
            )
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise InvalidRequest(f"{given} is neither a folder nor a file.", param="path")
        home = self.home.resolve()
        if path.is_relative_to(home) or home.is_relative_to(path):
            raise Forbidden(
                f"{given} is inside (or holds) this server's LMFOUNDRY_HOME, where projects "
                "keep their models and jobs; register a job's output with from_job.",
                param="path",
            )
        self.measure(path, given)
        return path

    def measure(self, path: Path, given: str) -> tuple[int, int]:
        """(bytes, files) of the tree; 4xx for a symlink or special file in it, or when it
        passes the caps."""
        if path.is_file():
            size = path.stat().st_size
            self._check_caps(given, size, 1)
            return size, 1
        total = files = 0
        for folder, dirs, names, fd in os.fwalk(path, follow_symlinks=False):
            if len(Path(folder).relative_to(path).parts) >= MAX_DEPTH:
                raise InvalidRequest(
                    f"{given} is more than {MAX_DEPTH} folders deep; a model folder is a few.",
                    param="path",
                )
            for name in [*dirs, *names]:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                mode = info.st_mode
                inside = os.path.relpath(os.path.join(folder, name), path)
                if stat.S_ISLNK(mode):
                    raise InvalidRequest(
                        f"{given} holds a symlink ({inside}); registering copies only real "
                        "files: replace it with the file it points to.",
                        param="path",
                    )
                files += 1  # folders count too: they bound the copy's work as files do
                if stat.S_ISREG(mode):
                    total += info.st_size
                elif not stat.S_ISDIR(mode):
                    raise InvalidRequest(
                        f"{given} holds {inside}, which is neither a file nor a folder.",
                        param="path",
                    )
                self._check_caps(given, total, files)
        return total, files

    def _check_caps(self, given: str, total: int, files: int) -> None:
        if files > self.max_files:
            raise PayloadTooLarge(
                f"{given} holds more than {self.max_files:,} files and folders "
                "(LMFOUNDRY_IMPORT_MAX_FILES).",
                param="path",
            )
        if total > self.max_bytes:
            raise PayloadTooLarge(
                f"{given} is larger than {self.max_bytes:,} bytes (LMFOUNDRY_IMPORT_MAX_BYTES).",
                param="path",
            )

    def copy(self, source: Path, target: Path, given: str) -> None:
        """Copy the checked tree (or file) into `target` (a new folder), refusing anything
        that changed into a symlink or grew past the caps since `source` looked at it."""
        target.mkdir(parents=True)
        counts = [0, 0]  # bytes, files
        try:
            if source.is_file():
                counts[1] = 1
                self._copy_file(os.open(source, _READ), target / source.name, given, counts)
                return
            top = os.open(source, _READ | os.O_DIRECTORY)
            try:
                self._copy_dir(top, target, given, counts)
            finally:
                os.close(top)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                raise
            raise InvalidRequest(
                f"{given} changed while it was copied (a file became a symlink or went "
                "away); register it again.",
                param="path",
            ) from None

    def _copy_dir(self, fd: int, target: Path, given: str, counts: list[int]) -> None:
        for entry in sorted(os.listdir(fd)):
            mode = os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode
            counts[1] += 1
            if stat.S_ISDIR(mode):
                child = os.open(entry, _READ | os.O_DIRECTORY, dir_fd=fd)
                try:
                    (target / entry).mkdir()
                    self._copy_dir(child, target / entry, given, counts)
                finally:
                    os.close(child)
            elif stat.S_ISREG(mode):
                self._copy_file(os.open(entry, _READ, dir_fd=fd), target / entry, given, counts)
            else:
                raise InvalidRequest(
                    f"{given} changed while it was copied ({entry} is no longer a plain "
                    "file); register it again.",
                    param="path",
                )

    def _copy_file(self, fd: int, target: Path, given: str, counts: list[int]) -> None:
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise InvalidRequest(f"{given}: {target.name} is not a plain file.", param="path")
            with open(target, "wb") as out:
                while chunk := src.read(CHUNK):
                    counts[0] += len(chunk)
                    self._check_caps(given, counts[0], counts[1])
                    out.write(chunk)


# O_NOFOLLOW: opening a symlink fails (ELOOP) instead of reading what it points to.
_READ = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _below(wanted: Path, root: Path) -> tuple[Path, tuple[str, ...]] | None:
    """(the root resolved, the parts of `wanted` below it) when `wanted` is the root or below
    it, as the operator wrote the root or as it resolves."""
    real = root.expanduser().resolve()
    for form in (Path(os.path.normpath(root.expanduser().absolute())), real):
        if wanted.is_relative_to(form):
            return real, wanted.relative_to(form).parts
    return None
