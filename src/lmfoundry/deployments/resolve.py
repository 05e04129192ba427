"""What a deployment's `model` names: a catalog model, or a registered `name:version`."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

from lmfoundry.catalog.models import ModelCard, ModelSource
from lmfoundry.catalog.service import CatalogService, ResolvedModel
from lmfoundry.errors import InvalidRequest, NotFound
from lmfoundry.registry.service import RegistryService, parse_ref
from lmfoundry.storage.models import RegisteredModel


class ModelResolver:
    """Registered LoRA adapters of a GGUF base are served by llama.cpp's server (the
    `llamacpp` engine) on the base's GGUF file: the PEFT adapter is converted once with
    llama.cpp's own `convert_lora_to_gguf.py` (against the Hugging Face folder the job trained
    on) and chosen per request, so several adapters of one base share its instances and the
    base's memory is paid once. The adapter applies to the quantised base it was trained
    against in dequantised form: its answers are the fine-tune's, not bit for bit those of
    the fp32 weights.

    Adapters of a Hugging Face base, or where the converter cannot run (no llama-server
    build beside the binary, no torch/transformers), are served by the `transformers` engine
    on the base's Hugging Face weights, with PEFT switching adapters per batch
    (engines/transformers.py); their instances are shared the same way
    (`ResolvedModel.instance_key` is the base)."""

    def __init__(self, catalog: CatalogService, registry: RegistryService) -> None:
        self.catalog = catalog
        self.registry = registry

    def card(self, project_id: int, ref: str) -> ModelCard:
        """The card a deployment shows and bills by (prices, context, template)."""
        return self.resolve(project_id, ref, load=False).card

    def resolve(self, project_id: int, ref: str, load: bool = True) -> ResolvedModel:
        """Catalog ids first; `name:version` (or a registered name: its latest version)
        from the project's registry."""
        if ":" not in ref:
            try:
                if load:
                    return self.catalog.resolve(ref)
                card = self.catalog.get_card(ref)
                return ResolvedModel(
                    card=card, path=Path(card.weights_path or "."), engine=card.engine
                )
            except NotFound:
                if self.registry.find(project_id, ref) is None:
                    raise
        row = self.registry.find(project_id, ref)
        if row is None:
            parse_ref(ref)  # a malformed reference gets its own 400
            raise NotFound(
                f"Model {ref!r} is neither a catalog model nor registered in this "
                f"project; `lmfoundry models list` shows registered models."
            )
        return self._registered(row, load)

    def _registered(self, row: RegisteredModel, load: bool) -> ResolvedModel:
        ref = f"{row.name}:{row.version}"
        if row.adapter:
            return self._adapter(row, ref, load)
        path = Path(row.path)
        gguf = path if path.suffix == ".gguf" else next(iter(sorted(path.glob("*.gguf"))), None)
        base_card = None
        if row.base_model:
            try:
                base_card = self.catalog.get_card(row.base_model)
            except NotFound:
                base_card = None
        card: ModelCard
        if base_card is not None:
            card = base_card.model_copy(
                update={
                    "id": ref,
                    "display_name": ref,
                    "base_model": base_card.id,
                    "source": ModelSource(kind="local", path=str(path)),
                }
            )
        else:
            from lmfoundry.catalog.service import inspect_weights

            info = inspect_weights(gguf or path)
            card = ModelCard(
                id=ref,
                display_name=ref,
                publisher="registry",
                description=row.description or f"Registered model {ref}.",
                architecture=info.architecture,
                parameters="unknown",
                context_length=info.context_length,
                format=info.format,
                engine=info.engine,
                source=ModelSource(kind="local", path=str(path)),
                license="unknown",
                chat_template=info.chat_template,
                price_input_per_1k=0.0,
                price_output_per_1k=0.0,
                tags=["registered"],
            )
        if gguf is not None:
            return ResolvedModel(
                card=card.model_copy(update={"format": "gguf", "engine": "llamacpp"}),
                path=gguf,
                engine="llamacpp",
            )
        if (path / "genai_config.json").is_file():
            return ResolvedModel(
                card=card.model_copy(update={"format": "onnx", "engine": "onnx"}),
                path=path,
                engine="onnx",
            )
        return ResolvedModel(
            card=card.model_copy(update={"format": "hf", "engine": "transformers"}),
            path=path,
            engine="transformers",
        )

    def _adapter(self, row: RegisteredModel, ref: str, load: bool) -> ResolvedModel:
        base_card = self.catalog.get_card(row.base_model or "")
        on_gguf = _gguf_adapters() and base_card.format == "gguf"
        engine, form = ("llamacpp", "gguf") if on_gguf else ("transformers", "hf")
        card = base_card.model_copy(
            update={
                "id": ref,
                "display_name": f"{ref} (LoRA on {base_card.id})",
                "base_model": base_card.id,
                "description": row.description or base_card.description,
                "tags": ["fine-tuned"],
                "format": form,
                "engine": engine,
            }
        )
        if not load:
            return ResolvedModel(card=card, path=Path("."), engine=engine, adapter=Path(row.path))
        folder = self._base_folder(row, base_card)
        if not on_gguf:
            return ResolvedModel(card=card, path=folder, engine=engine, adapter=Path(row.path))
        from lmfoundry.catalog.convert import convert_lora

        base = self.catalog.resolve(base_card.id)
        stamp = max((f.stat().st_mtime_ns for f in Path(row.path).iterdir()), default=0)
        digest = hashlib.sha256(f"{row.path}:{stamp}".encode()).hexdigest()[:12]
        lora = convert_lora(
            Path(row.path),
            folder,
            self.catalog.models_dir / "lora-gguf" / f"p{row.project_id}-{row.name}-{digest}.gguf",
        )
        return ResolvedModel(card=card, path=base.path, engine=engine, adapter=lora)

    def _base_folder(self, row: RegisteredModel, base_card: ModelCard) -> Path:
        """The Hugging Face folder the adapter was trained on: the adapter's own
        `base_model_name_or_path` when it is a folder here (a job's converted base), the
        catalog model's folder, or the folder a fine-tuning job converted its GGUF file to."""
        config = Path(row.path) / "adapter_config.json"
        try:
            named = json.loads(config.read_text()).get("base_model_name_or_path") or ""
        except (OSError, ValueError):
            named = ""
        candidates = [Path(named)] if named else []
        base = self.catalog.resolve(base_card.id)
        candidates.append(base.path)
        converted = self.catalog.models_dir / "converted"
        candidates += sorted(
            converted.glob(f"{base_card.id}-*"), key=lambda p: p.stat().st_mtime, reverse=True
        )
        for folder in candidates:
            if folder.is_dir() and (folder / "config.json").exists():
                return folder
        raise InvalidRequest(
            f"{row.name}:{row.version} is a LoRA adapter of {base_card.id}, whose weights here "
            "are a GGUF file; adapters are served on Hugging Face weights. Run a fine-tuning "
            f"job on {base_card.id} once (it converts the file), or import the base as a "
            "Hugging Face folder (`lmfoundry catalog import`).",
            param="model",
        )


@functools.cache
def _gguf_adapters() -> bool:
    """Whether adapters can be served on llama-server here: the binary and its converters
    (scripts/install) and the converter's torch and transformers (the `train` extra)."""
    from lmfoundry.catalog.convert import converter
    from lmfoundry.errors import Unavailable

    if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers")):
        return False
    try:
        converter()
    except Unavailable:
        return False
    return True
