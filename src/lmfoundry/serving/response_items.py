"""Responses API items: input items checked and normalised (what is stored and replayed),
the chat messages they become, and the output items, usage and Response objects made from a
chat answer. `serving.responses` holds the request; `serving.response_stream` the events."""

from __future__ import annotations

import secrets
import time
from typing import Any

from lmfoundry.errors import InvalidRequest, Unprocessable


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def unprocessable(param: str, message: str) -> Unprocessable:
    return Unprocessable(
        f"{param}: {message}", param=param, detail={"loc": ["body", *param.split(".")]}
    )


# -- input items -----------------------------------------------------------------------------

ROLES = ("user", "system", "developer", "assistant")


def text_message(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def item_of(index: int, item: Any) -> dict[str, Any]:
    """One input item, checked and normalised; 400 / 422 name `input[index]...`."""
    where = f"input[{index}]"
    if not isinstance(item, dict):
        raise InvalidRequest(f"{where}: an input item is a JSON object.", param=where)
    kind = item.get("type", "message")
    if not isinstance(kind, str):
        raise InvalidRequest(f"{where}.type: an item's type is a string.", param=f"{where}.type")
    if kind == "message":
        role = item.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"{where}.role: unknown role {role!r}; use user, system, developer or assistant.",
                param=f"{where}.role",
            )
        return text_message(role, _text_of(item.get("content"), f"{where}.content"))
    if kind == "function_call":
        call_id, name, arguments = (item.get(k) for k in ("call_id", "name", "arguments"))
        for field, value in (("call_id", call_id), ("name", name), ("arguments", arguments)):
            if not isinstance(value, str) or (field != "arguments" and not value):
                raise InvalidRequest(
                    f"{where}.{field}: a function_call item needs `{field}` as a string.",
                    param=f"{where}.{field}",
                )
        return {
            "type": "function_call",
            "id": item.get("id") or new_id("fc"),
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": "completed",
        }
    if kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest(
                f"{where}.call_id: a function_call_output needs the `call_id` of its call.",
                param=f"{where}.call_id",
            )
        output = _text_of(item.get("output"), f"{where}.output")
        return {"type": "function_call_output", "call_id": call_id, "output": output}
    raise unprocessable(
        f"{where}.type",
        f"{kind!r} items are not supported; send messages, function_call and "
        "function_call_output items.",
    )


def _text_of(content: Any, where: str) -> str:
    """The text of a message's content or a call's output: a string or text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}: give a string or a list of text parts.", param=where)
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest(
                f'{where}[{index}]: a content part is an object such as {{"type": '
                '"input_text", "text": "..."}.',
                param=f"{where}[{index}]",
            )
        kind = part["type"]
        field = "refusal" if kind == "refusal" else "text"
        if kind in ("input_text", "output_text", "text", "refusal"):
            if not isinstance(part.get(field), str):
                raise InvalidRequest(
                    f"{where}[{index}].{field}: a {kind} part needs `{field}` as a string.",
                    param=f"{where}[{index}].{field}",
                )
            parts.append(part[field])
        else:
            raise unprocessable(
                f"{where}[{index}].type",
                f"{kind!r} content is not supported; this model reads text only "
                "(input_text / output_text).",
            )
    return "".join(parts)


def chat_messages(
    history: list[dict[str, Any]], inputs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Chat messages from stored and new items; a function_call_output must answer a call
    made earlier in the conversation (400 naming the input item otherwise)."""
    messages: list[dict[str, Any]] = []
    calls: set[str] = set()
    for origin, items in (("history", history), ("input", inputs)):
        for index, item in enumerate(items):
            kind = item["type"]
            if kind == "message":
                role = item["role"]
                text = _text_of(item["content"], f"{origin}[{index}].content")
                messages.append({"role": role, "content": text})
            elif kind == "function_call":
                calls.add(item["call_id"])
                call = {
                    "id": item["call_id"],
                    "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]},
                }
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
                    last["tool_calls"] = [call]
                elif last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                    last["tool_calls"].append(call)
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                if item["call_id"] not in calls:
                    where = f"input[{index}].call_id" if origin == "input" else "history"
                    raise InvalidRequest(
                        f"{where}: no function_call with call_id {item['call_id']!r} in this "
                        "conversation; send the function_call item before its output, or "
                        "continue the response that made the call with previous_response_id.",
                        param=where,
                    )
                messages.append(
                    {"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]}
                )
    return messages


# -- answers ---------------------------------------------------------------------------------


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call["id"],
        "name": call["function"]["name"],
        "arguments": call["function"]["arguments"],
        "status": status,
    }


def response_object(
    response_id: str,
    echo: dict[str, Any],
    model: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage_: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "usage": usage_,
        **echo,
    }


def output_of(chat: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """A chat.completion's first choice as Responses output items, and the status."""
    choice = chat["choices"][0]
    message = choice["message"]
    finish = choice.get("finish_reason")
    status = "incomplete" if finish == "length" else "completed"
    output = []
    if message.get("content"):
        output.append(message_item(new_id("msg"), message["content"], status))
    for call in message.get("tool_calls") or []:
        output.append(call_item(new_id("fc"), call))
    if not output:
        output.append(message_item(new_id("msg"), "", status))
    return output, status
