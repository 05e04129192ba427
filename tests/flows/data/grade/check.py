from promptflow import tool


@tool
def check(prediction: int, expected: int) -> bool:
    return prediction == expected
