from promptflow import ToolProvider, tool


class Greeter(ToolProvider):
    def __init__(self, prefix: str, times: int):
        self.prefix = prefix
        self.times = times

    @tool
    def greet(self, text: str) -> str:
        return " ".join([f"{self.prefix}, {text}"] * self.times)
