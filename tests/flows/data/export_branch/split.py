from promptflow import tool


@tool
def split(text: str) -> dict:
    first, *rest = text.split() or [""]
    return {"first": first, "rest": rest}
