from promptflow import tool


@tool
def describe(number: int, square: int) -> dict:
    return {"parity": "even" if number % 2 == 0 else "odd", "square": square}
