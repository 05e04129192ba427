from pathlib import Path

from promptflow.core import Prompty, tool


@tool
def ask(question: str) -> str:
    prompty = Prompty.load(source=Path(__file__).parent / "ask.prompty")
    return prompty(question=question)
