"""Datasets: upload (validated, versioned), list, look up, and check against a model.

Files live at `$LMFOUNDRY_HOME/artifacts/datasets/{id}/data.jsonl`. An upload is written to a
temporary file in the same folder tree while it is validated, and renamed into place only in
the transaction that adds its row, so a rejected or interrupted upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from lmfoundry.access.audit import record
from lmfoundry.access.models import ProjectAccess, Role
from lmfoundry.access.service import check_name
from lmfoundry.catalog.service import CatalogService, ResolvedModel
from lmfoundry.datasets.models import DatasetStats, DatasetView, TokenSpread
from lmfoundry.datasets.tokens import token_counter
from lmfoundry.datasets.validate import Spread, TokenCounter, Validator, check_row, token_stats
from lmfoundry.errors import Conflict, InvalidRequest, NotFound, Unavailable
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import Dataset

if TYPE_CHECKING:
    from lmfoundry.quotas.projects import ProjectQuotas

ID_PREFIX = "ds-"


def new_id() -> str:
    return ID_PREFIX + secrets.token_hex(8)


def read_rows(path: Path) -> Iterable[tuple[int, list[dict[str, str]]]]:
    """(line number, messages) of a stored dataset, blank lines skipped."""
    with path.open("rb") as f:
        for line, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            messages, problem = check_row(raw)
            if messages is None:
                raise InvalidRequest(
                    f"The stored dataset {path.stem} line {line} became invalid: {problem}"
                )
            yield line, messages


class DatasetService:
    project_quotas: ProjectQuotas | None = None  # storage_bytes

    def __init__(self, db: Database, catalog: CatalogService, artifacts_dir: Path) -> None:
        self.db = db
        self.catalog = catalog
        self.root = artifacts_dir / "datasets"

    # -- upload ------------------------------------------------------------------------------

    def upload(
        self,
        access: ProjectAccess,
        name: str,
        filename: str,
        stream: Iterable[bytes],
        model: str | None = None,
    ) -> DatasetView:
        """Validate every line of `stream` and store it as the next version of `name`."""
        access.require(Role.developer, "upload datasets")
        check_name("dataset", name)
        filename = Path(filename or "data.jsonl").name[:255]
        counter = self._counter(model) if model else None
        quotas = self.project_quotas
        room = quotas.storage_room(access) if quotas is not None else None
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=".jsonl", dir=self.root)
        tmp = Path(tmp_name)
        try:
            validator = Validator(counter)
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as out:
                for line, raw in enumerate(stream, 1):
                    out.write(raw)
                    digest.update(raw)
                    size += len(raw)
                    if quotas is not None and room is not None and size > room:
                        # stop reading at once; the temporary file goes in `finally`
                        raise quotas.storage_error(access, size, so_far=True)
                    validator.feed(line, raw)
            problem = validator.problem(filename)
            if problem:
                raise InvalidRequest(
                    problem,
                    param="file",
                    detail=[{"line": e.line, "message": e.message} for e in validator.errors],
                )
            if quotas is not None:  # another upload may have taken the room meanwhile
                quotas.check_storage(access, size)
            return self._store(access, name, filename, tmp, size, digest.hexdigest(), validator)
        finally:
            tmp.unlink(missing_ok=True)
            if counter is not None:
                counter.close()

    def _store(
        self,
        access: ProjectAccess,
        name: str,
        filename: str,
        tmp: Path,
        size: int,
        sha256: str,
        validator: Validator,
    ) -> DatasetView:
        dataset_id = new_id()
        final = self.root / dataset_id / "data.jsonl"
        try:
            with self.db.session() as s:
                latest = s.scalar(
                    select(func.max(Dataset.version)).where(
                        Dataset.project_id == access.project_id, Dataset.name == name
                    )
                )
                row = Dataset(
                    id=dataset_id,
                    project_id=access.project_id,
                    name=name,
                    version=(latest or 0) + 1,
                    filename=filename,
                    path=str(final),
                    size_bytes=size,
                    sha256=sha256,
                    rows=validator.rows,
                    stats=validator.stats().model_dump(),
                    created_by=access.principal.name,
                )
                s.add(row)
                s.flush()  # the version is taken: a concurrent upload of `name` fails here
                record(
                    s,
                    access.principal.name,
                    access.project_id,
                    "dataset.upload",
                    f"{name}:{row.version}",
                    {"id": dataset_id, "rows": validator.rows, "sha256": sha256},
                )
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
                view = self._view(row, access.project)
        except IntegrityError as exc:
            _remove(final)
            raise Conflict(
                f"Another upload of {name!r} took the same version number at the same time; "
                "upload again.",
                param="name",
            ) from exc
        except BaseException:
            _remove(final)
            raise
        return view

    def _counter(self, model: str) -> TokenCounter:
        try:
            resolved = self.catalog.resolve(model)
        except Unavailable as exc:
            raise InvalidRequest(exc.message, param="model") from exc
        return token_counter(resolved)

    # -- reading -----------------------------------------------------------------------------

    def list(self, access: ProjectAccess, name: str | None = None) -> list[DatasetView]:
        with self.db.session() as s:
            query = select(Dataset).where(Dataset.project_id == access.project_id)
            if name is not None:
                query = query.where(Dataset.name == name)
            rows = s.scalars(query.order_by(Dataset.name, Dataset.version))
            return [self._view(row, access.project) for row in rows]

    def get(self, access: ProjectAccess, ref: str) -> DatasetView:
        with self.db.session() as s:
            return self._view(self.find(s, access, ref), access.project)

    def find(self, s: Session, access: ProjectAccess, ref: str) -> Dataset:
        """A dataset by id (`ds-…`), `name:version`, or `name` (its newest version)."""
        if ref.startswith(ID_PREFIX):
            row = s.get(Dataset, ref)
            if row is None or row.project_id != access.project_id:
                raise NotFound(f"No dataset with id {ref!r} in project {access.project!r}.")
            return row
        name, _, version = ref.partition(":")
        query = select(Dataset).where(Dataset.project_id == access.project_id, Dataset.name == name)
        if version:
            if not version.isdigit():
                raise InvalidRequest(
                    f"Invalid dataset reference {ref!r}: use NAME, NAME:VERSION (a number) or "
                    "the dataset id."
                )
            query = query.where(Dataset.version == int(version))
        row = s.scalar(query.order_by(Dataset.version.desc()).limit(1))
        if row is None:
            raise NotFound(
                f"No dataset {ref!r} in project {access.project!r}; "
                "`lmfoundry datasets list` shows them, `lmfoundry datasets upload` adds one."
            )
        return row

    def _view(self, row: Dataset, project: str) -> DatasetView:
        return DatasetView(
            id=row.id,
            name=row.name,
            version=row.version,
            project=project,
            filename=row.filename,
            rows=row.rows,
            size_bytes=row.size_bytes,
            sha256=row.sha256,
            stats=DatasetStats.model_validate(row.stats),
            created_by=row.created_by,
            created_at=row.created_at,
        )

    # -- checking against a model ------------------------------------------------------------

    def check_for_model(
        self, s: Session, row: Dataset, model: ResolvedModel, param: str
    ) -> TokenSpread:
        """Token statistics of `row` for `model` (counted once, then kept in the row); a 400
        naming the lines when a conversation is longer than the model's context."""
        counted = row.stats.get("tokens_per_row", {}).get(model.card.id)
        known = TokenSpread.model_validate(counted) if counted is not None else None
        if known is not None and known.max is not None and known.max <= known.context_length:
            return known
        counter = token_counter(model)
        try:
            spread = Spread()
            too_long: list[str] = []
            for line, messages in read_rows(Path(row.path)):
                n = counter.count(messages)
                if n > counter.context_length:
                    too_long.append(f"line {line} ({n} tokens)")
                spread.add(n)
        finally:
            counter.close()
        if too_long:
            raise InvalidRequest(
                f"Dataset {row.name}:{row.version} has {len(too_long)} conversation(s) longer "
                f"than the {counter.context_length}-token context of {model.card.id}: "
                f"{', '.join(too_long[:10])}. Shorten or remove them and upload a new version.",
                param=param,
            )
        stats = token_stats(spread, counter)
        row.stats = {
            **row.stats,
            "tokens_per_row": {
                **row.stats.get("tokens_per_row", {}),
                model.card.id: stats.model_dump(),
            },
        }
        flag_modified(row, "stats")
        return stats


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
        path.parent.rmdir()
