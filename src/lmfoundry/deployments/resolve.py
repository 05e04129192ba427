"""What a deployment's `model` names: a catalog model, or a registered `name:version`."""

from __future__ import annotations

from pathlib import Path

from lmfoundry.catalog.models import ModelCard, ModelSource
from lmfoundry.catalog.service import CatalogService, ResolvedModel
from lmfoundry.errors import InvalidRequest, NotFound
from lmfoundry.registry.service import RegistryService, parse_ref
from lmfoundry.storage.models import RegisteredModel


class ModelResolver:
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
            base = (
                self.catalog.resolve(row.base_model or "")
                if load
                else ResolvedModel(
                    card=self.catalog.get_card(row.base_model or ""),
                    path=Path("."),
                    engine="llamacpp",
                )
            )
            card = base.card.model_copy(
                update={
                    "id": ref,
                    "display_name": f"{ref} (LoRA on {base.card.id})",
                    "base_model": base.card.id,
                    "description": row.description or base.card.description,
                    "tags": ["fine-tuned"],
                }
            )
            return ResolvedModel(
                card=card, path=base.path, engine=base.engine, adapter=Path(row.path)
            )
        path = Path(row.path)
        gguf = path if path.suffix == ".gguf" else next(iter(sorted(path.glob("*.gguf"))), None)
        base_card = None
        if row.base_model:
            try:
                base_card = self.catalog.get_card(row.base_model)
            except NotFound:
                base_card = None
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
            if not info:
                raise InvalidRequest(f"Cannot tell how to serve {ref}.", param="model")
            card = ModelCard(
                id=ref,
                display_name=ref,
                publisher="registry",
                description=row.description or f"Registered model {ref}.",
                architecture=info["architecture"],
                parameters="unknown",
                context_length=info["context_length"],
                format=info["format"],
                engine=info["engine"],
                source=ModelSource(kind="local", path=str(path)),
                license="unknown",
                chat_template=info.get("chat_template"),
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
        return ResolvedModel(
            card=card.model_copy(update={"format": "hf", "engine": "transformers"}),
            path=path,
            engine="transformers",
        )
