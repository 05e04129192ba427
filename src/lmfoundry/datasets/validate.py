"""Line-by-line validation of chat JSONL, with the statistics a dataset view shows.

A row is a JSON object with a `messages` list of `{"role", "content"}` objects; other
top-level fields (ultrachat's `prompt`, `prompt_id`) are kept as they are and ignored by
training. Blank lines are skipped. Every problem is reported with its line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

from lmfoundry.datasets.models import DatasetStats, RowSpread, TokenSpread

ROLES = ("system", "user", "assistant")
MESSAGE_FIELDS = ("role", "content")
MAX_REPORTED = 10  # errors listed in a rejection; the total is counted


class TokenCounter(Protocol):
    """Counts the tokens of a conversation with a model's tokenizer and chat template."""

    model: str
    context_length: int

    def count(self, messages: list[dict[str, str]]) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Spread:
    """Min, mean and max of a per-row quantity."""

    count: int = 0
    total: int = 0
    low: int | None = None
    high: int | None = None

    def add(self, value: int) -> None:
        self.count += 1
        self.total += value
        self.low = value if self.low is None else min(self.low, value)
        self.high = value if self.high is None else max(self.high, value)

    def view(self) -> RowSpread:
        mean = round(self.total / self.count, 1) if self.count else None
        return RowSpread(min=self.low, mean=mean, max=self.high, total=self.total)


def check_row(raw: bytes) -> tuple[list[dict[str, str]] | None, str | None]:
    """The messages of one line, or what is wrong with it."""
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start})"
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(row, dict):
        return None, 'expected a JSON object like {"messages": [...]}'
    messages = row.get("messages")
    if messages is None:
        return None, 'no "messages" field'
    if not isinstance(messages, list) or not messages:
        return None, '"messages" must be a non-empty list'
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            return None, f'{where} must be an object with "role" and "content"'
        unknown = sorted(set(message) - set(MESSAGE_FIELDS))
        if unknown:
            return None, f"{where} has unknown field {unknown[0]!r}; a message has role and content"
        role = message.get("role")
        if role is None:
            return None, f"{where} has no role"
        if role not in ROLES:
            return None, f"{where}.role {role!r} is not one of {', '.join(ROLES)}"
        content = message.get("content")
        if not isinstance(content, str):
            return None, f"{where}.content must be a string"
        if not content.strip():
            return None, f"{where}.content is empty"
    if not any(m["role"] == "assistant" for m in messages):
        return None, "no assistant message: there is nothing to learn from this row"
    return messages, None


@dataclass
class Validator:
    """Feed it lines; it keeps the first errors, the error count and the statistics."""

    counter: TokenCounter | None = None
    rows: int = 0
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    messages: Spread = field(default_factory=Spread)
    chars: Spread = field(default_factory=Spread)
    tokens: Spread = field(default_factory=Spread)

    def feed(self, line: int, raw: bytes) -> None:
        if not raw.strip():
            return
        messages, problem = check_row(raw)
        if messages is not None and self.counter is not None:
            n = self.counter.count(messages)
            if n > self.counter.context_length:
                problem = (
                    f"{n} tokens, over the {self.counter.context_length}-token context "
                    f"of {self.counter.model}"
                )
            else:
                self.tokens.add(n)
        if problem is not None or messages is None:
            self.error_count += 1
            if len(self.errors) < MAX_REPORTED:
                self.errors.append(LineError(line, problem or "invalid"))
            return
        self.rows += 1
        self.messages.add(len(messages))
        self.chars.add(sum(len(m["content"]) for m in messages))

    def problem(self, filename: str) -> str | None:
        """One message for the whole file, or None when it is valid."""
        if self.error_count:
            shown = "; ".join(str(e) for e in self.errors)
            more = self.error_count - len(self.errors)
            tail = f"; and {more} more invalid line(s)" if more else ""
            return (
                f"{filename} has {self.error_count} invalid line(s): {shown}{tail}. Fix them "
                "and upload again; nothing was stored."
            )
        if self.rows == 0:
            return f'{filename} has no rows; each line must be a JSON object with "messages".'
        return None

    def stats(self) -> DatasetStats:
        tokens: dict[str, TokenSpread] = {}
        if self.counter is not None:
            tokens[self.counter.model] = token_stats(self.tokens, self.counter)
        return DatasetStats(
            messages_per_row=self.messages.view(),
            chars_per_row=self.chars.view(),
            tokens_per_row=tokens,
        )


def token_stats(spread: Spread, counter: TokenCounter) -> TokenSpread:
    return TokenSpread(**spread.view().model_dump(), context_length=counter.context_length)
