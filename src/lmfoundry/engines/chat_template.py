"""Jinja chat templates, rendered the way Hugging Face's `apply_chat_template` does."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lmfoundry.engines.base import EngineError


def _raise_exception(message: str) -> NoReturn:
    raise EngineError(
        f"The model's chat template refused the messages: {message}", param="messages"
    )


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    try:
        return str(
            _compile(template).render(
                messages=messages,
                tools=tools,
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
            )
        )
    except EngineError:
        raise
    except TemplateError as exc:
        raise EngineError(
            f"The model's chat template failed on these messages: {exc}", param="messages"
        ) from exc


def template_mentions_tools(template: str) -> bool:
    return "tools" in template
