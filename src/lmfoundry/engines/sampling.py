"""Choosing the next token from torch logits, with the parameters and in the order of the
llamacpp engine: penalties -> top_k -> top_p -> min_p -> temperature -> draw, or the argmax
at temperature 0."""

from __future__ import annotations

from collections.abc import Collection

import torch

from lmfoundry.engines.base import SamplingParams

# Tokens of the sequence (prompt included) that the repeat/frequency/presence penalties see,
# as in the llamacpp engine (llama.cpp's server default).
PENALTY_LAST_N = 64


def wants_penalties(params: SamplingParams) -> bool:
    return (
        params.repeat_penalty != 1.0
        or params.frequency_penalty != 0.0
        or params.presence_penalty != 0.0
    )


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    history: Collection[int] | None = None,
) -> int:
    """One token id from a sequence's logits ([vocab]); `history` holds its recent tokens
    when penalties apply, `generator` (on the CPU) its random state when it samples."""
    if history is not None:
        logits = penalize(logits, history, params)
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float().cpu()
    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Keep the smallest top set whose probability reaches top_p (at least one token).
        drop = torch.cumsum(probs, dim=-1) - probs >= params.top_p
        drop[0] = False
        logits = logits.index_fill(0, order[drop], float("-inf"))
    if params.min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        logits = logits.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def penalize(
    logits: torch.Tensor, history: Collection[int], params: SamplingParams
) -> torch.Tensor:
    """llama.cpp's penalties over the recent tokens: repeat (divide positive logits,
    multiply negative ones), frequency (per occurrence) and presence (once)."""
    logits = logits.float().clone()
    tokens = torch.tensor(list(history), dtype=torch.long, device=logits.device)
    counts = torch.bincount(tokens, minlength=logits.shape[-1])[: logits.shape[-1]]
    present = counts > 0
    if params.repeat_penalty != 1.0:
        seen = logits[present]
        logits[present] = torch.where(
            seen > 0, seen / params.repeat_penalty, seen * params.repeat_penalty
        )
    return logits - counts * params.frequency_penalty - present * params.presence_penalty
