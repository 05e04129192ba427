from promptflow import tool


@tool
def measure(answer: str) -> int:
    return len(answer.split())
