from promptflow import tool


@tool
def count(chat_history: list) -> int:
    return len(chat_history) + 1
