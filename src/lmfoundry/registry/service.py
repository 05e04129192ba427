"""The model registry: numbered versions of models with their lineage.

A version is a folder in the artifact store: an MLflow model (transformers flavour, as a
fine-tuning job writes it), a Hugging Face folder, a PEFT LoRA adapter, or a GGUF file.
Adapters are served on their base catalog model, so registering one costs megabytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, select

from lmfoundry.access.audit import record
from lmfoundry.access.models import ProjectAccess, Role
from lmfoundry.access.service import check_name
from lmfoundry.catalog.service import CatalogService
from lmfoundry.engines.chat_template import check_template
from lmfoundry.errors import Conflict, InvalidRequest, NotFound, Unavailable
from lmfoundry.finetune.models import JobOutput
from lmfoundry.quotas.projects import ProjectQuotas, folder_bytes
from lmfoundry.registry.imports import ImportPolicy
from lmfoundry.registry.models import ModelVersionView
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import (
    EndpointDeployment,
    OnlineEndpoint,
    RegisteredModel,
    ServerlessDeployment,
)


@dataclass(frozen=True)
class ModelFiles:
    """What a registered folder holds, found by looking at it."""

    format: str  # mlflow | hf | peft | gguf | onnx
    weights: Path  # the folder (or file) an engine loads
    adapter: bool
    base_model: str | None
    lineage: dict[str, Any]


def inspect_folder(path: Path) -> ModelFiles:
    """Recognise an MLflow model, an HF folder, a PEFT adapter, a GGUF file or an ONNX
    Runtime GenAI folder."""
    if path.is_file():
        if path.suffix == ".gguf":
            return ModelFiles("gguf", path, False, None, {})
        raise InvalidRequest(
            f"{path.name} is neither a model folder nor a .gguf file.", param="path"
        )
    lineage = _read_json(path / "lineage.json")
    if (path / "genai_config.json").is_file():  # served by the onnx engine
        return ModelFiles("onnx", path, False, lineage.get("base_model"), lineage)
    fmt = "hf"
    weights = path
    if (path / "MLmodel").exists():
        fmt = "mlflow"
        weights = _mlflow_weights(path)
    adapter_config = _find(weights, "adapter_config.json")
    if adapter_config is not None:
        base = lineage.get("base_model") or _read_json(adapter_config).get(
            "base_model_name_or_path"
        )
        return ModelFiles(
            "peft" if fmt == "hf" else fmt, adapter_config.parent, True, base, lineage
        )
    if not (weights / "config.json").exists() and not list(weights.glob("*.gguf")):
        raise InvalidRequest(
            f"{path} holds no model: expected an MLflow model (MLmodel), a Hugging Face "
            "folder (config.json), a PEFT adapter (adapter_config.json) or a .gguf file.",
            param="path",
        )
    return ModelFiles(fmt, weights, False, lineage.get("base_model"), lineage)


def _mlflow_weights(path: Path) -> Path:
    """The folder with the weights inside an MLflow transformers model."""
    for candidate in (path / "peft", path / "model", path / "components" / "model", path):
        if (candidate / "adapter_config.json").exists() or (candidate / "config.json").exists():
            return candidate
    found = _find(path, "adapter_config.json") or _find(path, "config.json")
    return found.parent if found else path


def _find(path: Path, name: str) -> Path | None:
    return next(iter(sorted(path.rglob(name))), None)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def chat_templates(root: Path) -> list[tuple[str, str]]:
    """(file, template) for each chat template a model file or folder carries: GGUF
    metadata, tokenizer_config.json (one template, or a list of named ones) and
    chat_template.jinja, anywhere in the folder (an MLflow model keeps its tokenizer in
    components/)."""
    found: list[tuple[str, str]] = []
    ggufs = [root] if root.is_file() else sorted(root.glob("*.gguf"))
    if ggufs:
        from lmfoundry.engines.gguf import read_metadata

        for gguf in ggufs:
            template = read_metadata(gguf).get("tokenizer.chat_template")
            if template:
                found.append((gguf.name, template))
    if root.is_file():
        return found
    for config in sorted(root.rglob("tokenizer_config.json")):
        value = _read_json(config).get("chat_template")
        named = value if isinstance(value, list) else [{"template": value}]
        for item in named:
            if isinstance(item, dict) and isinstance(item.get("template"), str):
                found.append((str(config.relative_to(root)), item["template"]))
    for jinja in sorted(root.rglob("chat_template.jinja")):
        found.append((str(jinja.relative_to(root)), jinja.read_text(errors="replace")))
    return found


def check_chat_templates(root: Path) -> None:
    """400 for a chat template that is huge, does not parse, or loops on a short
    conversation (engines/chat_template.py), before the model is copied or served."""
    for where, template in chat_templates(root):
        problem = check_template(template)
        if problem is not None:
            raise InvalidRequest(
                f"{where}: {problem} Fix or remove the template in {where}, then register "
                "the model again.",
                param="path",
            )


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`name:3` -> ("name", 3); `name` -> ("name", None): the latest version."""
    name, _, version = ref.removeprefix("azureml:").partition(":")
    if version and not version.isdigit():
        raise InvalidRequest(
            f"Model reference {ref!r}: the version after ':' must be a number (e.g. my-model:2).",
            param="model",
        )
    return name, int(version) if version else None


class JobOutputs(Protocol):
    """Where a completed fine-tuning job left its model (the fine-tuning service)."""

    def job_output(self, project_id: int, job_id: str) -> JobOutput:
        """The job's MLflow folder, base catalog model and lineage; 404/409 when there is
        none."""
        ...


class RegistryService:
    project_quotas: ProjectQuotas | None = None  # storage_bytes

    def __init__(
        self,
        db: Database,
        catalog: CatalogService,
        artifacts: Path,
        jobs: JobOutputs | None = None,
        imports: ImportPolicy | None = None,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.root = artifacts / "registry"
        self.jobs = jobs
        # Where register-by-path may read (LMFOUNDRY_IMPORT_ROOTS); None: nowhere.
        self.imports = imports or ImportPolicy((), artifacts, 1, 1)

    def register_job(
        self,
        access: ProjectAccess,
        name: str,
        job_id: str,
        description: str = "",
        tags: dict[str, str] | None = None,
    ) -> ModelVersionView:
        """Register a completed fine-tuning job's output (the tutorial's "from a job
        output", MLflow type)."""
        if self.jobs is None:
            raise Unavailable(
                "Fine-tuning is not part of this installation; install "
                "lmfoundry[train] to run jobs, or register a folder with path."
            )
        output = self.jobs.job_output(access.project_id, job_id)
        return self.register(
            access,
            name,
            output.path,
            base_model=output.base_model,
            job_id=job_id,
            lineage=output.lineage,
            tags=tags,
            description=description,
        )

    def register_path(
        self,
        access: ProjectAccess,
        name: str,
        path: str,
        *,
        base_model: str | None = None,
        tags: dict[str, str] | None = None,
        description: str = "",
    ) -> ModelVersionView:
        """Register a model folder (or .gguf file) from the server's disk: only below the
        operator's import roots, never from $LMFOUNDRY_HOME, never through a symlink."""
        access.require(Role.developer, "register models")
        check_name("model", name)
        source = self.imports.source(path)
        return self.register(
            access,
            name,
            source,
            base_model=base_model,
            tags=tags,
            description=description,
            copy=lambda src, tmp: self.imports.copy(src, tmp, path),
        )

    def _view(self, row: RegisteredModel) -> ModelVersionView:
        return ModelVersionView(
            name=row.name,
            version=row.version,
            format=row.format,
            adapter=row.adapter,
            base_model=row.base_model,
            job_id=row.job_id,
            # jobs before 2026-12-07 wrote the base's folder here: answers name no server paths
            lineage={k: v for k, v in row.lineage.items() if k != "base_model_path"},
            tags=row.tags,
            description=row.description,
            created_by=row.created_by,
            created_at=row.created_at,
        )

    def register(
        self,
        access: ProjectAccess,
        name: str,
        path: Path,
        *,
        base_model: str | None = None,
        job_id: str | None = None,
        lineage: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        description: str = "",
        copy: Callable[[Path, Path], None] | None = None,
    ) -> ModelVersionView:
        """Copy a model folder into the artifact store as the next version of `name`: a
        path the server trusts (a job's output); a caller's path goes through
        `register_path`, whose `copy` refuses symlinks and oversized trees."""
        access.require(Role.developer, "register models")
        check_name("model", name)
        source = path.expanduser().resolve()
        if not source.exists():
            raise InvalidRequest(
                f"{source} does not exist; give a model folder or a job.", param="path"
            )
        files = inspect_folder(source)
        check_chat_templates(source)  # 400 before anything is copied
        if self.project_quotas is not None:  # 409 before anything is copied
            self.project_quotas.check_storage(access, folder_bytes(source))
        base = base_model or files.base_model
        if files.adapter:
            if not base:
                raise InvalidRequest(
                    "This is a LoRA adapter: say which catalog model it adapts (base_model).",
                    param="base_model",
                )
            base = self.catalog.get_card(_catalog_id(base)).id
        with self.db.session() as s:
            latest = s.scalar(
                select(func.max(RegisteredModel.version)).where(
                    RegisteredModel.project_id == access.project_id, RegisteredModel.name == name
                )
            )
            version = (latest or 0) + 1
            target = self.root / access.project / name / str(version)
            if target.exists():
                shutil.rmtree(target)
            tmp = target.with_name(f".{version}.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            try:
                if copy is not None:
                    copy(source, tmp)
                elif source.is_file():
                    tmp.mkdir(parents=True)
                    shutil.copy2(source, tmp / source.name)
                else:
                    shutil.copytree(source, tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            tmp.rename(target)  # all or nothing: no half-copied version is ever visible
            copied = inspect_folder(target / source.name if source.is_file() else target)
            row = RegisteredModel(
                project_id=access.project_id,
                name=name,
                version=version,
                path=str(copied.weights),
                format=copied.format,
                base_model=base,
                adapter=copied.adapter,
                job_id=job_id,
                lineage={**copied.lineage, **(lineage or {})},
                tags=tags or {},
                description=description,
                created_by=access.principal.name,
            )
            s.add(row)
            try:
                s.flush()
            except Exception:
                shutil.rmtree(target, ignore_errors=True)
                raise
            record(
                s,
                access.principal.name,
                access.project_id,
                "model.register",
                f"{name}:{version}",
                {"job_id": job_id, "base_model": base},
            )
            return self._view(row)

    def versions(self, access: ProjectAccess, name: str | None = None) -> list[ModelVersionView]:
        with self.db.session() as s:
            query = select(RegisteredModel).where(RegisteredModel.project_id == access.project_id)
            if name:
                query = query.where(RegisteredModel.name == name)
            rows = s.scalars(query.order_by(RegisteredModel.name, RegisteredModel.version))
            return [self._view(r) for r in rows]

    def get(self, access: ProjectAccess, ref: str) -> ModelVersionView:
        with self.db.session() as s:
            return self._view(self._row(s, access.project_id, access.project, ref))

    def _row(self, s: Any, project_id: int, project: str, ref: str) -> RegisteredModel:
        name, version = parse_ref(ref)
        query = select(RegisteredModel).where(
            RegisteredModel.project_id == project_id, RegisteredModel.name == name
        )
        if version is not None:
            query = query.where(RegisteredModel.version == version)
        row = s.scalar(query.order_by(RegisteredModel.version.desc()).limit(1))
        if row is None:
            raise NotFound(
                f"Model {ref!r} is not registered in project {project!r}; "
                "`lmfoundry models list` shows the registered models."
            )
        return row

    def find(self, project_id: int, ref: str) -> RegisteredModel | None:
        with self.db.session() as s:
            try:
                return self._row(s, project_id, "", ref)
            except NotFound:
                return None

    def delete(self, access: ProjectAccess, ref: str) -> None:
        access.require(Role.developer, "delete models")
        name, version = parse_ref(ref)
        if version is None:
            raise InvalidRequest("Say which version to delete (name:version).", param="model")
        with self.db.session() as s:
            row = self._row(s, access.project_id, access.project, ref)
            users = self._users(s, access.project_id, row)
            if users:
                raise Conflict(
                    f"{name}:{version} is in use by {', '.join(users)}; delete or "
                    "update those deployments first."
                )
            path = Path(row.path)
            s.delete(row)
            record(s, access.principal.name, access.project_id, "model.delete", ref, {})
        folder = self.root / access.project / name / str(version)
        shutil.rmtree(folder if folder.exists() else path, ignore_errors=True)

    @staticmethod
    def _users(s: Any, project_id: int, row: RegisteredModel) -> list[str]:
        refs = {f"{row.name}:{row.version}", f"azureml:{row.name}:{row.version}"}
        endpoint_users = s.execute(
            select(OnlineEndpoint.name, EndpointDeployment.name)
            .join(EndpointDeployment, EndpointDeployment.endpoint_id == OnlineEndpoint.id)
            .where(OnlineEndpoint.project_id == project_id, EndpointDeployment.model.in_(refs))
        ).all()
        serverless_users = s.scalars(
            select(ServerlessDeployment.name).where(
                ServerlessDeployment.project_id == project_id, ServerlessDeployment.model.in_(refs)
            )
        ).all()
        return [f"endpoint deployment {e}/{d}" for e, d in endpoint_users] + [
            f"serverless deployment {n}" for n in serverless_users
        ]


def _catalog_id(base: str) -> str:
    """`HuggingFaceTB/SmolLM2-135M-Instruct` or a local path -> the catalog id it names."""
    return base.rstrip("/").rsplit("/", 1)[-1]
