from promptflow import tool


@tool
def shape(text: str) -> dict:
    return {"words": text.split(), "length": len(text)}
