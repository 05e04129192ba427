from promptflow import log_metric, tool


@tool
def accuracy(results: list) -> float:
    value = sum(1 for r in results if r) / len(results)
    log_metric("accuracy", value)
    return value
