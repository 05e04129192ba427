"""The Azure ML `/score` contract for chat models, translated to a chat completion.

{"input_data": {"input_string": [{"role": "user", "content": "..."}],
                "parameters": {"temperature": 0.7, "max_new_tokens": 128}}}
-> {"output": "..."}
"""

from __future__ import annotations

import json
from typing import Any

from lmfoundry.errors import InvalidRequest

EXAMPLE = (
    '{"input_data": {"input_string": [{"role": "user", "content": "Hi"}], '
    '"parameters": {"temperature": 0.7, "max_new_tokens": 128}}}'
)

# Hugging Face generation parameters -> chat completion fields (None: handled specially).
PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_new_tokens": "max_tokens",
    "max_tokens": "max_tokens",
    "seed": "seed",
    "stop": "stop",
    "top_k": "top_k",
    "repetition_penalty": "repeat_penalty",
    "do_sample": None,
    "return_full_text": None,
}


def score_to_chat(body: bytes) -> bytes:
    """The chat completions body for a /score body; 400 naming what is wrong otherwise."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(
            f"The /score body is not valid JSON ({exc}); send {EXAMPLE}", param="body"
        ) from exc
    if not isinstance(data, dict) or "input_data" not in data:
        raise InvalidRequest(
            f"The /score body needs `input_data`, like {EXAMPLE}", param="input_data"
        )
    input_data = data["input_data"]
    if not isinstance(input_data, dict) or "input_string" not in input_data:
        raise InvalidRequest(
            f"input_data needs `input_string` (the chat messages), like {EXAMPLE}",
            param="input_data.input_string",
        )
    messages = _messages(input_data["input_string"])
    parameters = input_data.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            "input_data.parameters must be an object.", param="input_data.parameters"
        )
    chat: dict[str, Any] = {"messages": messages}
    for name, value in parameters.items():
        if name not in PARAMETERS:
            raise InvalidRequest(
                f"input_data.parameters.{name} is not a supported parameter; use "
                f"{', '.join(sorted(PARAMETERS))}.",
                param=f"input_data.parameters.{name}",
            )
        field = PARAMETERS[name]
        if field is not None:
            chat[field] = value
    if parameters.get("do_sample") is False:
        chat["temperature"] = 0.0  # greedy, as transformers does without sampling
    return json.dumps(chat).encode()


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            "input_data.input_string must be a non-empty list of messages "
            '({"role": "user", "content": "..."}) or of strings.',
            param="input_data.input_string",
        )
    return [{"role": "user", "content": item} if isinstance(item, str) else item for item in value]
