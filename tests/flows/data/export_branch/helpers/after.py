from promptflow import tool


@tool
def after(answer: str) -> str:
    return f"after: {answer}"
