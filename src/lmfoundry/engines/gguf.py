"""GGUF files: metadata and the gateway-side tokenizer (llama.cpp, vocabulary only)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from lmfoundry.engines.chat_template import render_chat, template_mentions_tools

# Used when neither the weights nor the card carry a chat template (imported base models).
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)

_lock = threading.Lock()


def quiet_llama() -> None:
    """Keep llama.cpp's per-load chatter off stderr (errors still show)."""
    from llama_cpp._logger import set_verbose

    set_verbose(False)


def load_vocab(path: Path) -> Any:
    """A `LlamaModel` holding only the vocabulary and metadata (milliseconds, a few MB)."""
    import llama_cpp
    from llama_cpp._internals import LlamaModel

    with _lock:
        quiet_llama()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        return LlamaModel(path_model=str(path), params=params, verbose=False)


def read_metadata(path: Path) -> dict[str, str]:
    model = load_vocab(path)
    try:
        return dict(model.metadata())
    finally:
        model.close()


class GGUFTokenizer:
    def __init__(
        self, path: Path, chat_template: str | None = None, context_length: int | None = None
    ) -> None:
        self._model = load_vocab(path)
        meta = self._model.metadata()
        self.template = chat_template or meta.get("tokenizer.chat_template") or PLAIN_TEMPLATE
        arch = meta.get("general.architecture", "")
        self.context_length = context_length or int(meta.get(f"{arch}.context_length", 2048))
        self.supports_tools = template_mentions_tools(self.template)
        self.bos_token = self._piece(self._model.token_bos())
        self.eos_token = self._piece(self._model.token_eos())
        self._add_bos = bool(self._model.add_bos_token())
        self._lock = threading.Lock()

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self._model.token_get_text(token)

    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        return render_chat(
            self.template, messages, bos_token=self.bos_token, eos_token=self.eos_token, tools=tools
        )

    def encode(self, text: str) -> list[int]:
        add_bos = self._add_bos and not (self.bos_token and text.startswith(self.bos_token))
        with self._lock:
            return self._model.tokenize(text.encode(), add_bos, True)

    def close(self) -> None:
        self._model.close()
