from promptflow import tool


@tool
def classify(text: str) -> str:
    return "question" if text.rstrip().endswith("?") else "statement"
