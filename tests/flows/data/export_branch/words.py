from promptflow import tool


@tool
def words(parts: list):
    for part in parts:
        yield part.lower() + ";"
