"""The runtime of a flow exported to Microsoft Agent Framework (`lmfoundry flow export`).

`lmfoundry flow export` copies this file, unchanged, beside the program it writes (as
`flow_runtime.py`); lmfoundry itself never imports it. It holds what every exported flow
shares, so that the generated `main.py` is only the flow: its nodes and its edges.

- One Agent Framework executor per node. A message is the `Line`: the flow inputs, the outputs
  of the nodes that ran and the names of the nodes that were bypassed.
- A node waits until every node it reads has reported, by name: a node with `activate`
  reports either from its own executor or from its bypass executor, so the join cannot be a
  fan-in edge group (that waits for fixed executors). Activate conditions are conditional
  edges out of the node's gate.
- Bypass is Prompt flow's: a bypassed node's output is None; an input that reads one falls
  back to the tool parameter's default (or None); a node without `activate` whose inputs are
  all bypassed is bypassed too.
- Aggregation nodes run once over all lines: every line is an executor, and a fan-in edge
  group hands the first aggregation node the list of line results.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import re
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Never

import jinja2
from agent_framework import Executor, Workflow, WorkflowContext, handler
from flow_tools import collecting_metrics, connection_from_env, convert_literal

HERE = Path(__file__).resolve().parent
_ROLE_LINE = re.compile(r"^\s*#?\s*(system|user|assistant)\s*:\s*$", re.IGNORECASE | re.MULTILINE)
# llm node inputs that are chat options; the other inputs fill the template.
LLM_OPTIONS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
)
# Prompt flow names the Azure OpenAI deployment in the node; the connection fixes it here.
LLM_IGNORED = ("deployment_name", "model", "logit_bias", "user", "n", "stream")


# -- the flow's shape ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    name: str
    type: str
    default: Any = None
    has_default: bool = False
    is_chat_history: bool = False


@dataclass(frozen=True)
class Activate:
    """`activate: {when: ${...}, is: value}`; a `when` that is not a reference is compared as
    it stands (`literal`)."""

    when: str | None  # a reference: ${node.output...} or ${inputs.x}
    value: Any
    literal: Any = None

    def holds(self, line: Line) -> bool:
        if self.when is None:
            return bool(self.literal == self.value)
        if (reference(self.when) or ("", ()))[0] in line.bypassed:
            return False
        return bool(line.value(self.when) == self.value)

    def fails(self, line: Line) -> bool:
        return not self.holds(line)


_PROPERTY_PART = re.compile(r"(\w+)|(\['.*?'\])|(\[\d+\])")


def reference(text: Any) -> tuple[str, tuple[str, ...]] | None:
    """(root, path) of a reference as Prompt flow reads one, or None for a literal:
    `${inputs.x}` and `${flow.x}` are ("inputs", ("x",)); `${node}` is `${node.output}`;
    `${node.output.a['b c'][0]}` is ("node", ("output", "a", "['b c']", "[0]"))."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if len(text) < 4 or not text.startswith("${") or not text.endswith("}"):
        return None
    body = text[2:-1].strip()
    if not body or "{" in body or "}" in body:
        return None
    for prefix in ("inputs.", "flow."):
        if body.startswith(prefix):
            return "inputs", (body[len(prefix) :],)
    if "." not in body:
        return body, ("output",)
    root, port = body.split(".", 1)
    if "." not in port:
        return root, (port,)
    section, prop = port.split(".", 1)
    parts = [next(p for p in found if p) for found in _PROPERTY_PART.findall(prop)]
    return root, (section, *parts)


def follow(value: Any, parts: tuple[str, ...]) -> Any:
    """`value` along `parts`: `[0]` indexes, `['key']` looks a key up, a name is a dict key
    or an attribute (or, on a list, an index written `.0`)."""
    for part in parts:
        if part.startswith("[") and part.endswith("]"):
            index: Any = part[1:-1]
            if len(index) >= 2 and index[0] == index[-1] and index[0] in "'\"":
                index = index[1:-1]
            elif index.isdigit():
                index = int(index)
            value = value[index]
        elif isinstance(value, dict):
            value = value[part]
        elif isinstance(value, list | tuple) and part.isdigit():
            value = value[int(part)]
        else:
            value = getattr(value, part)
    return value


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        return f"(a dict with keys {', '.join(map(repr, list(value)[:8])) or 'none'})"
    return f"(a {type(value).__name__})"


class NodeError(Exception):
    def __init__(self, node: str, error: BaseException) -> None:
        super().__init__(f"node {node!r}: {type(error).__name__}: {error}")
        self.node = node
        self.error = error


@dataclass
class Line:
    """One line on its way through the workflow."""

    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    bypassed: frozenset[str] = frozenset()

    def reported(self) -> set[str]:
        return {*self.outputs, *self.bypassed}

    def merged(self, other: Line) -> Line:
        return Line(self.inputs, {**self.outputs, **other.outputs}, self.bypassed | other.bypassed)

    def value(self, text: str) -> Any:
        root, path = reference(text) or ("", ())
        if root == "inputs":
            return self.inputs[path[0]]
        value = self.outputs[root]
        try:
            return follow(value, path[1:])
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            raise NodeError(
                root, KeyError(f"{text}: the output {_shape(value)} has no {'.'.join(path[1:])}")
            ) from exc

    def output(self, name: str, text: str) -> Any:
        """Flow output `name`, which reads `text`: None when it reads a bypassed node's
        output, a failure when it reads a field of one (as in Prompt flow)."""
        root, path = reference(text) or ("", ())
        if root in self.bypassed:
            if len(path) > 1:
                raise NodeError(
                    root,
                    KeyError(
                        f"output {name!r} reads {text}, but node {root!r} was bypassed, so its "
                        "output is None"
                    ),
                )
            return None
        return self.value(text)


def load_tool(path: str, function: str) -> Callable[..., Any]:
    """The @tool function of a flow file that cannot be imported by its plain name (it is in
    a subfolder, or its name is taken by another module)."""
    import importlib.util

    name = "_flow_" + ".".join(Path(path).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, HERE / path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return getattr(module, function)  # type: ignore[no-any-return]


# -- what a node does ----------------------------------------------------------------------------


class Action:
    """A node's work, given its keyword arguments."""

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError


@dataclass
class PythonTool(Action):
    function: Callable[..., Any]

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        result = self.function(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        if isinstance(result, AsyncIterator):
            return "".join([str(chunk) async for chunk in result])
        if isinstance(result, Iterator) and not isinstance(result, str):
            return "".join(str(chunk) for chunk in result)  # a generator output, joined
        return result


_jinja = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True)


@dataclass
class Prompt(Action):
    template: str  # a file beside main.py

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        return _jinja.from_string((HERE / self.template).read_text(encoding="utf-8")).render(
            **kwargs
        )


@dataclass
class ChatCall(Action):
    """An llm node: its chat template rendered, then one call to an OpenAI-compatible chat
    completions API (an lmfoundry deployment's `{target}v1`) through Agent Framework."""

    template: str
    connection: str

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        from agent_framework import Message
        from agent_framework.openai import OpenAIChatCompletionClient

        options = {
            k: kwargs.pop(k) for k in LLM_OPTIONS if k in kwargs and kwargs[k] not in (None, "", [])
        }
        model = kwargs.get("model") or kwargs.get("deployment_name")
        for key in LLM_IGNORED:
            kwargs.pop(key, None)
        text = await Prompt(self.template)(kwargs)
        messages = [Message(m["role"], [m["content"]]) for m in parse_chat(text)]
        connection = connection_from_env(self.connection)
        prefix = re.sub(r"\W", "_", self.connection).upper()
        client = OpenAIChatCompletionClient(
            model=os.environ.get(f"{prefix}_MODEL") or model or self.connection,
            base_url=connection["target_url"] + "v1",
            api_key=connection.get("key") or connection.get("api_key") or "",
        )
        response = await client.get_response(messages, options=options)  # type: ignore[call-overload]
        return response.text


def parse_chat(text: str) -> list[dict[str, str]]:
    """A rendered template in Prompt flow's chat format (`# system:`, `# user:` ...)."""
    parts = _ROLE_LINE.split(text)
    if parts[0].strip():
        raise ValueError(
            "The chat template must start with a role line such as '# system:' or '# user:' "
            f"(it starts with {parts[0].strip()[:40]!r})."
        )
    messages = [
        {"role": role.lower(), "content": content.strip()}
        for role, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if not messages:
        raise ValueError("The chat template has no '# user:' line, so there is nothing to send.")
    return messages


@dataclass
class Spec:
    """A node as the flow declares it."""

    name: str
    action: Action
    inputs: dict[str, Any]
    defaults: frozenset[str] = frozenset()  # tool parameters with a default
    connections: dict[str, str] = field(default_factory=dict)  # input -> connection name

    def kwargs(self, lookup: Callable[[str, str], tuple[bool, Any]]) -> dict[str, Any]:
        """The node's keyword arguments; `lookup(input, reference)` -> (bypassed, value)."""
        kwargs: dict[str, Any] = {}
        for key, raw in self.inputs.items():
            if key in self.connections:
                kwargs[key] = connection_from_env(self.connections[key])
            elif reference(raw) is not None:
                bypassed, value = lookup(key, raw)
                if not bypassed:
                    kwargs[key] = value
                elif key not in self.defaults:
                    kwargs[key] = None
            elif not isinstance(self.action, PythonTool):
                kwargs[key] = raw
            elif raw is not None and raw != "":  # Prompt flow leaves empty literals out
                try:
                    kwargs[key] = convert_literal(self.action.function, key, raw)
                except (TypeError, ValueError) as exc:
                    raise NodeError(self.name, exc) from exc
        return kwargs

    async def run(self, kwargs: dict[str, Any]) -> Any:
        try:
            return await self.action(kwargs)
        except Exception as exc:  # flow code: its failure fails the line, naming the node
            raise NodeError(self.name, exc) from exc


# -- the executors of one line -------------------------------------------------------------------


class Joining(Executor):
    """An executor that waits for every node in `reads` to report (run or bypassed)."""

    def __init__(self, id: str, reads: tuple[str, ...]) -> None:
        super().__init__(id=id)
        self.reads = reads
        self._line: Line | None = None

    def join(self, line: Line) -> Line | None:
        self._line = line if self._line is None else self._line.merged(line)
        if set(self.reads) <= self._line.reported():
            return self._line
        return None


class Start(Executor):
    """The start of a line: sends the flow inputs to the nodes that read only inputs."""

    @handler
    async def start(self, inputs: dict[str, Any], ctx: WorkflowContext[Line]) -> None:
        await ctx.send_message(Line(inputs))


class NodeExecutor(Joining):
    """One node. `gated`: the node has `activate`, and its gate already joined its inputs."""

    def __init__(self, spec: Spec, reads: tuple[str, ...], gated: bool = False) -> None:
        super().__init__(spec.name, () if gated else reads)
        self.spec = spec
        self.gated = gated
        self.depends = reads

    @handler
    async def on_line(self, line: Line, ctx: WorkflowContext[Line]) -> None:
        joined = self.join(line)
        if joined is None:
            return
        if not self.gated and self.depends and set(self.depends) <= joined.bypassed:
            await ctx.send_message(Line(joined.inputs, joined.outputs, joined.bypassed | {self.id}))
            return

        def lookup(key: str, raw: str) -> tuple[bool, Any]:
            root = (reference(raw) or ("", ()))[0]
            if root in joined.bypassed:
                return True, None
            try:
                return False, joined.value(raw)
            except NodeError:
                raise
            except Exception as exc:  # a reference into user data failed
                raise NodeError(self.id, exc) from exc

        output = await self.spec.run(self.spec.kwargs(lookup))
        await ctx.send_message(
            Line(joined.inputs, {**joined.outputs, self.id: output}, joined.bypassed)
        )


class Gate(Joining):
    """Joins an `activate` node's inputs; its two conditional edges go to the node (the
    condition holds) or to its bypass executor (it does not)."""

    @handler
    async def on_line(self, line: Line, ctx: WorkflowContext[Line]) -> None:
        joined = self.join(line)
        if joined is not None:
            await ctx.send_message(joined)


class Bypass(Executor):
    """Reports node `node` as bypassed."""

    def __init__(self, node: str) -> None:
        super().__init__(id=f"{node} (bypassed)")
        self.node = node

    @handler
    async def on_line(self, line: Line, ctx: WorkflowContext[Line]) -> None:
        await ctx.send_message(Line(line.inputs, line.outputs, line.bypassed | {self.node}))


class End(Joining):
    """The end of a line: yields it once every node has reported."""

    @handler
    async def on_line(self, line: Line, ctx: WorkflowContext[Never, Line]) -> None:
        joined = self.join(line)
        if joined is not None:
            await ctx.yield_output(joined)


# -- a batch: lines, then the aggregation nodes -------------------------------------------------


@dataclass
class Flow:
    """What main.py declares: the flow's interface and how to build its workflows."""

    name: str
    inputs: dict[str, Input]
    outputs: dict[str, str]  # output name -> reference
    line_workflow: Callable[[], Workflow]  # one line
    batch_workflow: Callable[[int, bool], Workflow]  # (lines, single) -> lines + aggregation


@dataclass
class LineResult:
    index: int
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    line: Line | None = None


@dataclass
class Batch:
    lines: list[LineResult]
    outputs: dict[str, Any] = field(default_factory=dict)  # aggregation node -> output
    metrics: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None


class Data(Executor):
    """The start of a batch: hands every line executor the rows (each takes its own)."""

    @handler
    async def start(
        self, rows: list[dict[str, Any]], ctx: WorkflowContext[list[dict[str, Any]]]
    ) -> None:
        await ctx.send_message(rows)


class LineRunner(Executor):
    """Runs line `index` of the data through a fresh line workflow."""

    def __init__(self, flow: Flow, index: int) -> None:
        super().__init__(id=f"line {index}")
        self.flow = flow
        self.index = index

    @handler
    async def run_line(self, rows: list[dict[str, Any]], ctx: WorkflowContext[LineResult]) -> None:
        try:
            async with _line_slots.get():
                result = await self.flow.line_workflow().run(rows[self.index])
            (line,) = result.get_outputs()
            outputs = {name: line.output(name, ref) for name, ref in self.flow.outputs.items()}
        except Exception as exc:  # noqa: BLE001 - a failed line is reported, the others go on
            await ctx.send_message(LineResult(self.index, "failed", error=describe(exc)))
            return
        await ctx.send_message(LineResult(self.index, "completed", outputs, line=line))


class Aggregation(Executor):
    """An aggregation node: one call with, for each input, the list of the lines' values."""

    def __init__(self, spec: Spec, single: bool) -> None:
        super().__init__(id=spec.name)
        self.spec = spec
        self.single = single  # one line, as `flow test`: no aggregation when it failed

    @handler
    async def on_lines(self, lines: list[LineResult], ctx: WorkflowContext[Batch]) -> None:
        await self.on_batch(Batch(sorted(lines, key=lambda r: r.index)), ctx)

    @handler
    async def on_line(self, line: LineResult, ctx: WorkflowContext[Batch]) -> None:
        await self.on_batch(Batch([line]), ctx)  # one line: a plain edge, not a fan-in

    @handler
    async def on_batch(self, batch: Batch, ctx: WorkflowContext[Batch]) -> None:
        completed = [r.line for r in batch.lines if r.line is not None]
        if batch.error is None and (completed or not self.single):

            def lookup(key: str, raw: str) -> tuple[bool, Any]:
                root = (reference(raw) or ("", ()))[0]
                if root in batch.outputs:
                    return False, Line({}, batch.outputs).value(raw)
                values = [None if root in line.bypassed else line.value(raw) for line in completed]
                return False, values

            try:
                with collecting_metrics() as metrics:
                    batch.outputs[self.id] = await self.spec.run(self.spec.kwargs(lookup))
                batch.metrics.update(metrics)
            except Exception as exc:  # noqa: BLE001 - flow code: the aggregation fails, no metrics
                batch.error = describe(exc)
                batch.metrics = {}
        await ctx.send_message(batch)


class Report(Executor):
    @handler
    async def on_lines(self, lines: list[LineResult], ctx: WorkflowContext[Never, Batch]) -> None:
        await ctx.yield_output(Batch(sorted(lines, key=lambda r: r.index)))

    @handler
    async def on_line(self, line: LineResult, ctx: WorkflowContext[Never, Batch]) -> None:
        await ctx.yield_output(Batch([line]))

    @handler
    async def on_batch(self, batch: Batch, ctx: WorkflowContext[Never, Batch]) -> None:
        await ctx.yield_output(batch)


# How many lines run at once (`--workers`): the line executors all start in one superstep.
_line_slots: contextvars.ContextVar[asyncio.Semaphore] = contextvars.ContextVar("line_slots")


async def run_batch(
    flow: Flow, rows: list[dict[str, Any]], single: bool = False, workers: int = 4
) -> Batch:
    _line_slots.set(asyncio.Semaphore(max(1, workers)))
    (batch,) = (await flow.batch_workflow(len(rows), single).run(rows)).get_outputs()
    return batch  # type: ignore[no-any-return]


def describe(exc: BaseException) -> dict[str, Any]:
    """An error as `lmfoundry flow test` shows it: the node, the message, the user's frames."""
    node = exc.node if isinstance(exc, NodeError) else None
    inner = exc.error if isinstance(exc, NodeError) else exc
    frames = traceback.extract_tb(inner.__traceback__)
    mine = (str(Path(__file__).resolve()), str(HERE / "flow_tools.py"), "/agent_framework/")
    user_frames = [f for f in frames if not any(m in f.filename for m in mine)] or frames[-1:]
    for frame in user_frames:
        if Path(frame.filename).is_relative_to(HERE):
            frame.filename = str(Path(frame.filename).relative_to(HERE))
    message = f"{type(inner).__name__}: {inner}"
    return {
        "type": type(inner).__name__,
        "message": f"Node {node!r} failed: {message}" if node else message,
        "node": node,
        "traceback": "".join(traceback.format_list(user_frames)),
    }
