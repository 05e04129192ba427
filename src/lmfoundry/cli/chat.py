"""`lmfoundry chat`: one message, or an interactive conversation, streamed."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer

from lmfoundry.cli._output import JsonOpt, ProjectOpt, client, console, print_json
from lmfoundry.client import chat_stream
from lmfoundry.client.base import raise_for
from lmfoundry.config import get_settings


def chat(
    message: Annotated[
        str | None, typer.Argument(help="The message; leave out for an interactive chat.")
    ] = None,
    deployment: Annotated[
        str | None,
        typer.Option(
            "--deployment", "-d", help="Serverless deployment (default: smollm2-135m-instruct)."
        ),
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 to 2.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Completion cap.")] = None,
    project: ProjectOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Chat with a deployment, streaming the answer."""
    name = deployment or get_settings().default_deployment
    with client(project) as lmf:
        target = lmf.get_serverless(name).target_url
        key = lmf.serverless_keys(name).primary_key
    params: dict[str, Any] = {
        k: v
        for k, v in {"temperature": temperature, "max_tokens": max_tokens}.items()
        if v is not None
    }
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    if message is not None:
        history.append({"role": "user", "content": message})
        if json_:
            response = httpx.post(
                target + "chat/completions",
                headers={"api-key": key},
                json={"messages": history, **params},
                timeout=300,
            )
            raise_for(response)
            print_json(response.json())
            return
        _answer(target, key, history, params)
        return
    console.print(f"Chatting with [bold]{name}[/]; an empty line or Ctrl-D ends.")
    while True:
        try:
            text = console.input("[bold green]you>[/] ")
        except EOFError:
            break
        if not text.strip():
            break
        history.append({"role": "user", "content": text})
        history.append({"role": "assistant", "content": _answer(target, key, history, params)})


def _answer(target: str, key: str, history: list[dict[str, str]], params: dict[str, Any]) -> str:
    parts: list[str] = []
    usage: dict[str, int] = {}
    for chunk in chat_stream(target, key, history, **params):
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            text = choice["delta"].get("content") or ""
            parts.append(text)
            console.print(text, end="", highlight=False, markup=False)
    console.print()
    if usage:
        console.print(
            f"[dim]{usage['prompt_tokens']} prompt + "
            f"{usage['completion_tokens']} completion tokens[/]"
        )
    return "".join(parts)
