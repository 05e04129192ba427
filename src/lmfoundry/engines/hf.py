"""Hugging Face model folders: the gateway-side tokenizer and the helpers the `transformers`
engine shares with it (loading, end-of-turn tokens, incremental detokenization).

transformers comes with the `train` extra, so it is imported lazily and its absence is a
clear `Unavailable`, never an ImportError deep in a request.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from lmfoundry.engines.chat_template import render_chat, template_mentions_tools
from lmfoundry.engines.gguf import PLAIN_TEMPLATE
from lmfoundry.errors import Unavailable

# Special tokens that end an assistant turn in common chat formats; generation stops on
# them when the model's own config does not list them as end-of-sequence tokens.
END_OF_TURN_TOKENS = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>")

DEFAULT_CONTEXT = 2048


def load_tokenizer(path: Path) -> Any:
    """The folder's tokenizer (`transformers.AutoTokenizer`), offline."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise Unavailable(
            "Serving Hugging Face models needs transformers; install it with "
            "`pip install 'lmfoundry[train]'`."
        ) from exc
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def read_config(path: Path) -> dict[str, Any]:
    config_path = Path(path) / "config.json"
    if not config_path.exists():
        return {}
    config: dict[str, Any] = json.loads(config_path.read_text())
    return config


def context_length_of(config: dict[str, Any]) -> int:
    """`max_position_embeddings` of the model (or of its text model, for multimodal ones)."""
    for section in (config, config.get("text_config") or {}):
        value = section.get("max_position_embeddings")
        if value:
            return int(value)
    return DEFAULT_CONTEXT


def chat_template_of(tokenizer: Any) -> str | None:
    """The tokenizer's own template (tokenizer_config.json `chat_template` or
    chat_template.jinja); of several named templates, the default one."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template or None


def end_token_ids(tokenizer: Any, config: dict[str, Any], generation: dict[str, Any]) -> set[int]:
    """Token ids that end generation: the eos ids of generation_config.json and config.json,
    the tokenizer's eos token, and known end-of-turn tokens the vocabulary has as special."""
    ids: set[int] = set()
    for source in (generation, config):
        value = source.get("eos_token_id")
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    special = set(tokenizer.all_special_tokens)
    for token in END_OF_TURN_TOKENS:
        if token in special:
            ids.add(int(tokenizer.convert_tokens_to_ids(token)))
    return ids


class HFTokenizer:
    """Renders chat messages with the model's template and counts tokens in the gateway."""

    def __init__(
        self, path: Path, chat_template: str | None = None, context_length: int | None = None
    ) -> None:
        self._tokenizer = load_tokenizer(path)
        self.template = chat_template or chat_template_of(self._tokenizer) or PLAIN_TEMPLATE
        self.context_length = context_length or context_length_of(read_config(path))
        self.supports_tools = template_mentions_tools(self.template)
        self.bos_token = self._tokenizer.bos_token or ""
        self.eos_token = self._tokenizer.eos_token or ""
        self._lock = threading.Lock()  # fast tokenizers are not safe to share across threads

    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        return render_chat(
            self.template, messages, bos_token=self.bos_token, eos_token=self.eos_token, tools=tools
        )

    def encode(self, text: str) -> list[int]:
        # As `apply_chat_template(tokenize=True)` does: the template writes any BOS itself,
        # so the tokenizer adds no special tokens (adding them would double the BOS).
        with self._lock:
            ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False)
        return ids


class IncrementalDetokenizer:
    """Turns generated token ids into text deltas whose concatenation equals decoding all the
    ids at once (special tokens skipped).

    A token may end in the middle of a multi-byte character (byte-level BPE) or change how
    the previous token decodes (SentencePiece spaces), so each step decodes a short window
    of recent tokens and emits only what lies past the text already emitted, and only once it
    no longer ends in U+FFFD (an incomplete character)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: text of ids[prefix:read] was emitted already
        self._read = 0

    @property
    def ids(self) -> list[int]:
        """The tokens added so far."""
        return self._ids

    def _decode(self, ids: list[int]) -> str:
        text: str = self._tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def add(self, token: int) -> str:
        self._ids.append(token)
        done = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        """What is left at the end; the first bytes of an unfinished character are dropped
        (as the llamacpp engine does), not sent as U+FFFD."""
        done = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(done) :].rstrip("\ufffd")
