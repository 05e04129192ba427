"""The assistant-only loss mask: exactly the assistant's turns (with their end-of-turn token)
are targets, for Phi-3's template and a ChatML one, over several turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfoundry.finetune.chat import tokenize_conversation

pytestmark = [pytest.mark.slow, pytest.mark.train]  # builds the tiny Phi-3 (imports torch)

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Country facts: Paris."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]


def targets(tokenizer: object, template: str | None) -> list[str]:
    """The decoded runs of masked tokens."""
    row = tokenize_conversation(tokenizer, MESSAGES, template)
    runs, current = [], []
    for token, keep in zip(row["input_ids"], row["assistant_masks"], strict=True):
        if keep:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]  # type: ignore[attr-defined]


def test_phi3_template_targets_the_answers_and_their_end_tokens(tiny_phi3: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_phi3)
    assert targets(tokenizer, None) == [
        "Country facts: Paris.<|end|>\n",
        "Madrid.<|end|>\n<|endoftext|>",  # the template ends the conversation with eos
    ]


def test_chatml_template_targets_the_answers_and_their_end_tokens(tiny_phi3: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_phi3)
    assert targets(tokenizer, CHATML) == [
        "Country facts: Paris.<|im_end|>\n",
        "Madrid.<|im_end|>\n",
    ]
