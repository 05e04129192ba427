from dataclasses import dataclass


@dataclass
class Reply:
    text: str
    words: int


def greet(who: str, times: int = 2, loud: bool = False) -> Reply:
    """Yields one greeting per time; Prompt flow joins the generator into a string."""

    def parts():
        for _ in range(times):
            yield (f"HELLO {who.upper()}! " if loud else f"hello {who}. ")

    if who == "crash":
        raise ValueError("no greeting for crash")
    return Reply(text=parts(), words=2 * times)
