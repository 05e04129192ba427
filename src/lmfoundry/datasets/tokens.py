"""Count a conversation's tokens the way training will: the model's chat template, rendered
without a generation prompt, then its tokenizer without extra special tokens.

GGUF models use llama.cpp's vocabulary-only loader (milliseconds, part of the serving
install); Hugging Face folders use their `tokenizer.json` through the `tokenizers` library.
Neither needs torch, so the server can check datasets without the training stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmfoundry.catalog.service import ResolvedModel
from lmfoundry.engines.chat_template import render_chat
from lmfoundry.errors import InvalidRequest


class GGUFCounter:
    def __init__(self, model: ResolvedModel) -> None:
        from lmfoundry.engines.gguf import GGUFTokenizer

        self.model = model.card.id
        self._tokenizer = GGUFTokenizer(
            model.path, model.card.chat_template, model.card.context_length
        )
        self.context_length = self._tokenizer.context_length

    def count(self, messages: list[dict[str, str]]) -> int:
        tok = self._tokenizer
        text = render_chat(
            tok.template,
            messages,
            bos_token=tok.bos_token,
            eos_token=tok.eos_token,
            add_generation_prompt=False,
        )
        return len(tok.encode(text))

    def close(self) -> None:
        self._tokenizer.close()


def _token_text(value: Any) -> str:
    """tokenizer_config.json writes special tokens as strings or as {"content": ...}."""
    if isinstance(value, dict):
        return str(value.get("content") or "")
    return str(value or "")


class HFCounter:
    def __init__(self, model: ResolvedModel) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise InvalidRequest(
                f"Counting tokens for {model.card.id} needs the `tokenizers` package: "
                "pip install 'lmfoundry[train]'.",
                param="model",
            ) from exc
        folder = model.path
        if not (folder / "tokenizer.json").exists():
            raise InvalidRequest(
                f"{model.card.id} has no tokenizer.json in {folder}; lmfoundry counts tokens "
                "with a fast (tokenizer.json) tokenizer.",
                param="model",
            )
        self.model = model.card.id
        self.context_length = model.card.context_length
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = _read_json(folder / "tokenizer_config.json")
        template = model.card.chat_template or config.get("chat_template")
        if template is None and (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        if not template:
            raise InvalidRequest(
                f"{model.card.id} has no chat template, so its conversations cannot be "
                "rendered; import it with one in tokenizer_config.json or chat_template.jinja.",
                param="model",
            )
        self._template = str(template)
        self._bos = _token_text(config.get("bos_token"))
        self._eos = _token_text(config.get("eos_token"))

    def count(self, messages: list[dict[str, str]]) -> int:
        text = render_chat(
            self._template,
            messages,
            bos_token=self._bos,
            eos_token=self._eos,
            add_generation_prompt=False,
        )
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def close(self) -> None:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def token_counter(model: ResolvedModel) -> GGUFCounter | HFCounter:
    """A counter for a resolved catalog model; 400 when it has no tokenizer to count with."""
    if model.path.is_file() and model.path.suffix == ".gguf":
        return GGUFCounter(model)
    if model.path.is_dir():
        return HFCounter(model)
    raise InvalidRequest(
        f"{model.card.id} has no tokenizer (it is not a GGUF file or a Hugging Face folder), "
        "so lmfoundry cannot count tokens or fine-tune it.",
        param="model",
    )
