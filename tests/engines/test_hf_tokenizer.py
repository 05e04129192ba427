"""The gateway-side tokenizer for Hugging Face folders: the same prompt tokens as
transformers' `apply_chat_template`, rendered by lmfoundry's own template renderer."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.train]

pytest.importorskip("transformers")

from transformers import AutoTokenizer  # noqa: E402

from lmfoundry.engines.capabilities import create_tokenizer  # noqa: E402
from lmfoundry.engines.gguf import PLAIN_TEMPLATE  # noqa: E402
from lmfoundry.engines.hf import HFTokenizer, IncrementalDetokenizer  # noqa: E402
from lmfoundry.errors import Unavailable  # noqa: E402

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello there"}],
    [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "Ein Hund trägt déjà vu 🙂"},
        {"role": "assistant", "content": "La señora mange."},
        {"role": "user", "content": "Again?\n\nAnd again."},
    ],
]


@pytest.fixture(scope="module")
def hf(tiny_phi3: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_phi3)


def chat_ids(hf: Any, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    ids: list[int] = hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs
    )
    return ids


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_prompt_tokens_match_apply_chat_template(
    tiny_phi3: Path, hf: Any, messages: list[dict[str, Any]]
) -> None:
    tokenizer = HFTokenizer(tiny_phi3)
    text = tokenizer.render(messages)
    assert text == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|assistant|>\n")
    assert tokenizer.encode(text) == chat_ids(hf, messages)
    # The Phi-3 template writes no BOS, and none is added, although plain text gets one.
    assert hf.encode("Hello")[0] == hf.bos_token_id
    assert hf.bos_token_id not in tokenizer.encode(text)


def test_template_with_bos_gets_exactly_one(tiny_phi3: Path, hf: Any) -> None:
    template = "{{ bos_token }}" + hf.chat_template
    tokenizer = HFTokenizer(tiny_phi3, chat_template=template)
    ids = tokenizer.encode(tokenizer.render(CONVERSATIONS[0]))
    assert ids == chat_ids(hf, CONVERSATIONS[0], chat_template=template)
    assert ids[0] == hf.bos_token_id and ids.count(hf.bos_token_id) == 1


def test_template_and_context_length_sources(tiny_phi3: Path, tmp_path: Path, hf: Any) -> None:
    own = HFTokenizer(tiny_phi3)
    assert own.context_length == 4096  # config.json max_position_embeddings
    assert own.template == hf.chat_template  # from chat_template.jinja
    assert (own.bos_token, own.eos_token, own.supports_tools) == ("<s>", "<|endoftext|>", False)

    card = HFTokenizer(tiny_phi3, chat_template="{{ messages[0]['content'] }}", context_length=512)
    assert card.render(CONVERSATIONS[0]) == "Hello there"
    assert card.context_length == 512

    # The template in tokenizer_config.json (older folders), then no template at all.
    folder = Path(shutil.copytree(tiny_phi3, tmp_path / "model"))
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": template}))
    assert HFTokenizer(folder).template == template
    config_path.write_text(json.dumps(config))
    plain = HFTokenizer(folder)
    assert plain.template == PLAIN_TEMPLATE
    assert plain.render(CONVERSATIONS[0]) == "user: Hello there\nassistant:"


def test_registry_and_missing_extra(tiny_phi3: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(create_tokenizer("transformers", str(tiny_phi3), None, None), HFTokenizer)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(Unavailable, match=r"lmfoundry\[train\]"):
        HFTokenizer(tiny_phi3)


def test_incremental_detokenizer_never_splits_a_character(hf: Any) -> None:
    # "é 🙂" as single-byte tokens of the byte-level alphabet: 2 + 1 + 4 bytes.
    byte_chars = hf.convert_ids_to_tokens(hf.encode(" é 🙂", add_special_tokens=False))
    pieces = [c for token in byte_chars for c in token]
    ids = hf.convert_tokens_to_ids(pieces)
    assert len(ids) == len(" é 🙂".encode())
    detok = IncrementalDetokenizer(hf)
    deltas = [detok.add(token) for token in ids]
    assert deltas == [" ", "", "é", " ", "", "", "", "🙂"]
    assert detok.flush() == ""
    # An unfinished character at the very end is dropped, not sent as U+FFFD.
    detok = IncrementalDetokenizer(hf)
    assert [detok.add(token) for token in ids[:-1]] == [" ", "", "é", " ", "", "", ""]
    assert detok.flush() == ""
