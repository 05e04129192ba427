from promptflow import tool


@tool
def merge(question: str, statement: str = "(no statement)") -> str:
    return f"{question} | {statement}"
