from promptflow import tool


@tool
def merge(question: str = "(no question)", statement=None, separator: str = ",") -> str:
    # a bypassed `question` falls back to its default; a bypassed `statement` is None
    return separator.join([question, repr(statement)])
