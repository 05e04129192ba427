from promptflow import tool


@tool
def reply(question: str, turn: int):
    for word in f"turn {turn}: you said {question}".split(" "):
        yield word + " "
