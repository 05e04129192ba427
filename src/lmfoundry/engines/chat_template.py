"""Jinja chat templates, rendered the way Hugging Face's `apply_chat_template` does.

A template is a program that came with a model, so it runs in Jinja's sandbox and, inside
`render_limits`, under a deadline and an output cap: every call, attribute or item lookup,
`range` step, `*` / `**` and piece of output checks them, so a template that loops stops
with a 400 instead of holding a thread. A loop that touches none of those checks (over a
long string, say) is stopped from outside by `Interruptible`. `check_template` is what
registration asks before a model's template is accepted: small enough, parses, and renders
a short conversation in a child process with a deadline and CPU and memory limits.
"""

from __future__ import annotations

import ctypes
import json
import operator
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Generic, NoReturn, TypeVar

from jinja2 import TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from lmfoundry.engines.base import EngineError

MAX_TEMPLATE_CHARS = 100_000  # the largest real templates (tool-calling ones) are ~20k
T = TypeVar("T")
CHECK_SECONDS = 2.0  # wall time the registration check's child process may take
CHECK_OUTPUT_CHARS = 64 * 1024  # a four-message conversation renders to a few hundred
SAMPLE_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, who are you?"},
    {"role": "assistant", "content": "I am an assistant. How can I help?"},
    {"role": "user", "content": "What is 2 + 2?"},
]
SAMPLE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    }
]


@dataclass(frozen=True)
class _Limits:
    deadline: float  # time.monotonic()
    seconds: float
    max_chars: int


_limits: ContextVar[_Limits | None] = ContextVar("chat_template_limits", default=None)


@contextmanager
def render_limits(seconds: float, max_chars: int) -> Iterator[None]:
    """Renders in this context (this thread, or a task and the threads it starts with
    `asyncio.to_thread`) stop with an EngineError after `seconds` or `max_chars`."""
    token = _limits.set(_Limits(time.monotonic() + seconds, seconds, max_chars))
    try:
        yield
    finally:
        _limits.reset(token)


class _Interrupted(BaseException):
    """Raised inside a worker thread by `Interruptible.interrupt`."""


class Interruptible(Generic[T]):
    """`fn`, to run in a worker thread, that can be stopped from outside once its caller
    gave up on it. The checks inside the sandbox stop most runaway templates; this stops the
    rest (a plain loop over a long string touches none of them) by raising an exception in
    the thread (`PyThreadState_SetAsyncExc`, delivered between two bytecodes). It is taken
    inside `__call__` in every case, never in the thread pool's own code."""

    def __init__(self, fn: Callable[[], T], what: str) -> None:
        self.fn = fn
        self.what = what
        self._lock = threading.Lock()
        self._thread: int | None = None
        self._cancelled = self._sent = self._raised = self._done = False

    def __call__(self) -> T:
        try:
            try:
                with self._lock:
                    if self._cancelled:
                        raise _Interrupted
                    self._thread = threading.get_ident()
                return self.fn()
            except _Interrupted:
                self._raised = True
                raise
            finally:
                with self._lock:
                    self._done = True
                while self._sent and not self._raised:
                    time.sleep(0.001)  # the exception is on its way: take it here
        except _Interrupted:
            raise EngineError(f"{self.what} was stopped at its deadline.") from None

    def interrupt(self) -> None:
        """Stop the call: at once when it is running, at its start when it is not yet."""
        with self._lock:
            self._cancelled = True
            if self._done or self._thread is None or self._sent:
                return
            self._sent = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self._thread), ctypes.py_object(_Interrupted)
            )


def _check_time() -> None:
    limits = _limits.get()
    if limits is not None and time.monotonic() > limits.deadline:
        raise EngineError(
            f"The model's chat template took more than {limits.seconds:g} s on these "
            "messages; send fewer or shorter messages.",
            param="messages",
        )


def _check_size(size: int) -> None:
    limits = _limits.get()
    if limits is not None and size > limits.max_chars:
        raise EngineError(
            f"The model's chat template renders these messages to more than "
            f"{limits.max_chars:,} characters; send fewer or shorter messages.",
            param="messages",
        )


class _Steps:
    """`range(...)` in a template: the same numbers, checking the deadline as it goes."""

    def __init__(self, steps: range) -> None:
        self._steps = steps

    def __iter__(self) -> Iterator[int]:
        for i, value in enumerate(self._steps):
            if i % 1024 == 0:
                _check_time()
            yield value

    def __len__(self) -> int:
        return len(self._steps)

    def __getitem__(self, index: Any) -> Any:
        return self._steps[index]


def _range(*args: int) -> _Steps:
    _check_time()
    return _Steps(safe_range(*args))


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        _check_time()
        if operator_ == "**" and isinstance(right, int) and abs(right) > 64:
            raise EngineError("The model's chat template raises a number to too high a power.")
        if operator_ == "*" and isinstance(right, int) and hasattr(left, "__len__"):
            _check_size(len(left) * right)
        if operator_ == "*" and isinstance(left, int) and hasattr(right, "__len__"):
            _check_size(len(right) * left)
        return {"*": operator.mul, "**": operator.pow}[operator_](left, right)


def _raise_exception(message: str) -> NoReturn:
    raise EngineError(
        f"The model's chat template refused the messages: {message}", param="messages"
    )


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=32)
def _compile(template: str) -> Any:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["range"] = _range
    return env.from_string(template)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
) -> str:
    try:
        pieces = _compile(template).generate(
            messages=messages,
            tools=tools,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
        )
        out: list[str] = []
        size = 0
        for piece in pieces:  # piece by piece, so a runaway template stops at its limits
            size += len(piece)
            _check_size(size)
            _check_time()
            out.append(piece)
        return "".join(out)
    except EngineError:
        raise
    except TemplateError as exc:
        raise EngineError(
            f"The model's chat template failed on these messages: {exc}", param="messages"
        ) from exc
    except (RecursionError, MemoryError, OverflowError) as exc:
        raise EngineError(
            f"The model's chat template failed on these messages ({type(exc).__name__}); "
            "it recurses or grows without end.",
            param="messages",
        ) from exc


def template_mentions_tools(template: str) -> bool:
    return "tools" in template


def check_template(template: str) -> str | None:
    """What is wrong with a chat template, in words, or None: too large, does not parse, or
    loops or grows on a short conversation (rendered in a child process with a deadline,
    CPU and memory limits). A template that refuses the sample with raise_exception is
    accepted: templates may refuse roles they do not take."""
    if len(template) > MAX_TEMPLATE_CHARS:
        return (
            f"the chat template is {len(template):,} characters, more than "
            f"{MAX_TEMPLATE_CHARS:,}; real templates are a few thousand."
        )
    try:
        _compile(template)
    except TemplateSyntaxError as exc:
        return f"the chat template does not parse: line {exc.lineno}: {exc.message}"
    except RecursionError:
        return "the chat template is nested too deeply to parse."
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-m", "lmfoundry.engines.chat_template"],
            input=template,
            capture_output=True,
            text=True,
            timeout=CHECK_SECONDS + 3,  # the child's own deadline, plus starting Python
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _loops(time.monotonic() - started)
    try:
        answer = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        if done.returncode < 0 or "MemoryError" in done.stderr:  # killed by a limit
            return _loops(time.monotonic() - started)
        raise RuntimeError(f"the chat template check failed: {done.stderr[-2000:]}") from None
    problem = answer.get("problem")
    return str(problem) if problem else None


def _loops(seconds: float) -> str:
    return (
        f"the chat template did not finish rendering a four-message conversation within "
        f"{seconds:.1f} s; it loops or grows without end."
    )


def _child_limits() -> None:
    cpu = int(CHECK_SECONDS) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (1024**3, 1024**3))  # bytes of address space


def _check_in_child(template: str) -> str | None:
    samples: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
        (SAMPLE_MESSAGES, None)
    ]
    if template_mentions_tools(template):
        samples.append((SAMPLE_MESSAGES, SAMPLE_TOOLS))
    for messages, tools in samples:
        try:
            with render_limits(CHECK_SECONDS, CHECK_OUTPUT_CHARS):
                render_chat(template, messages, bos_token="<s>", eos_token="</s>", tools=tools)
        except EngineError as exc:
            if "refused the messages" in exc.message:
                continue
            if "took more than" in exc.message:
                return _loops(CHECK_SECONDS)
            if "renders these messages to more than" in exc.message:
                return (
                    "the chat template renders a four-message conversation to more than "
                    f"{CHECK_OUTPUT_CHARS:,} characters; it grows without end."
                )
            return exc.message.replace("these messages", "a four-message conversation")
    return None


if __name__ == "__main__":  # the child process of check_template
    _child_limits()
    print(json.dumps({"problem": _check_in_child(sys.stdin.read())}))
