from promptflow import tool


@tool
def count(text: str, limit: int, loud: bool, note: str = "(none)") -> str:
    words = len(text.split())
    summary = f"{words} words, over {limit}: {words > limit}, note {note}"
    return summary.upper() if loud else summary
