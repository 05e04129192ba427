from promptflow import tool


@tool
def square(number: int) -> int:
    if number == 13:
        raise ValueError("13 is unlucky; this line fails on purpose")
    return number * number
