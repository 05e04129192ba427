"""Conversations to training rows: token ids plus a mask of the assistant's tokens.

The loss is taken on assistant tokens only. TRL computes that mask from `{% generation %}`
markers in the chat template, which most templates (SmolLM2's, Phi-3's) do not have, so we
find the assistant text the way the template itself draws the line, prefix by prefix:

- the conversation up to turn i, rendered with the generation prompt, is the text before
  assistant turn i starts (its header, e.g. `<|assistant|>\n`, is context, not a target);
- the conversation through turn i, rendered without it, ends where turn i ends (so the
  end-of-turn token, `<|end|>` or `<|im_end|>`, is a target: the model learns to stop).

Both are compared with the full rendering by common prefix, so templates that render a
prefix slightly differently (an end-of-text token only at the very end) still line up. The
full text is tokenized once, and a token is an assistant token when it lies wholly inside one
of those spans (a common prefix can end inside the next turn's header: `<|end|>\n<|` of
`<|endoftext|>` and `<|user|>`; the header token itself is then left out). The result goes
to TRL as `input_ids` + `assistant_masks`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

Messages = list[dict[str, str]]
Render = Callable[[Messages, bool], str]


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))  # noqa: RUF071 - texts, not paths


def assistant_spans(render: Render, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the [start, end) character spans of the assistant turns."""
    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = _common_prefix(render(messages[:i], True), full) if i else 0
        end = _common_prefix(render(messages[: i + 1], False), full)
        if end > start:
            spans.append((start, end))
    return full, spans


def tokenize_conversation(
    tokenizer: Any, messages: Messages, chat_template: str | None = None
) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` (1 on tokens the loss is taken on) for one row."""

    def render(part: Messages, generation_prompt: bool) -> str:
        return str(
            tokenizer.apply_chat_template(
                part,
                chat_template=chat_template,
                tokenize=False,
                add_generation_prompt=generation_prompt,
            )
        )

    text, spans = assistant_spans(render, messages)
    if tokenizer.is_fast:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        mask = [
            int(any(start <= first and last <= end for start, end in spans))
            for first, last in encoded["offset_mapping"]
        ]
        return {"input_ids": ids, "assistant_masks": mask}
    # Slow tokenizers have no offsets: count the tokens of each span's prefix instead.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    mask = [0] * len(ids)
    for start, end in spans:
        first = len(tokenizer(text[:start], add_special_tokens=False)["input_ids"])
        last = len(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
        mask[first:last] = [1] * (last - first)
    return {"input_ids": list(ids), "assistant_masks": mask}
