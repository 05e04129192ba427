import os

from promptflow.core import tool


@tool
def answer(text: str, shout: bool) -> str:
    if "boom" in text:
        raise ValueError(f"cannot answer {text!r}")
    reply = f"{os.environ['REPLY_PREFIX']}: {text}"
    return reply.upper() if shout else reply
