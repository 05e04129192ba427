"""Runs a validated flow inside a flow process: nodes in order, one line at a time.

Semantics follow Prompt flow: a node whose `activate` condition is not met is bypassed (its
output is None); a node without `activate` is bypassed when every node it refers to was; an
input that refers to a bypassed node is left out when the tool parameter has a default and is
None otherwise. Aggregation nodes run once after all lines, with one list per input. A python
node that yields (or an async generator) makes a generator output: a node that reads it gets
the generator itself, and as a flow output it is streamed when the caller asked for a stream
and joined into a string otherwise (what is left of it, if a node consumed it), as in Prompt
flow. Literal inputs take the tool parameter's type (`loading.py`).

This module runs user code: it is imported only in the flow process (`process.py`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import re
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from lmfoundry.flows import images
from lmfoundry.flows.loading import defaults, literal_inputs, load_tool
from lmfoundry.flows.models import Dag, Node, Reference, node_property, parse_dag_reference
from lmfoundry.flows.tools import CustomConnection, collecting_metrics
from lmfoundry.observability.tracing import LineTrace, outgoing_headers

# llm node inputs sent to chat/completions; the other inputs fill the template.
LLM_PARAMETERS = (
    "temperature",
    "top_p",
    "max_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "response_format",
)
# Prompt flow names the Azure OpenAI deployment in the node; a connection fixes it here.
LLM_IGNORED = ("deployment_name", "model", "logit_bias", "user", "n")
# Nodes of one line that run at once (Prompt flow's default worker count is 16 as well).
NODE_CONCURRENCY = 16
_LMFOUNDRY_PATH = re.compile(r"[^\s'\"(]*/lmfoundry/flows/compat/([^\s'\")]*)")
_ROLE_LINE = re.compile(r"^\s*#?\s*(system|user|assistant)\s*:\s*$", re.IGNORECASE | re.MULTILINE)


class NodeError(Exception):
    """A node failed; carries the node's name and the user-facing error."""

    def __init__(self, node: str, error: BaseException) -> None:
        super().__init__(f"node {node!r}: {type(error).__name__}: {error}")
        self.node = node
        self.error = error


def describe(exc: BaseException) -> dict[str, Any]:
    """An error as the API shows it: type, message, the node, and the user's frames."""
    node = exc.node if isinstance(exc, NodeError) else None
    inner = exc.error if isinstance(exc, NodeError) else exc
    frames = traceback.extract_tb(inner.__traceback__)
    user_frames = [f for f in frames if "/lmfoundry/flows/" not in f.filename] or frames[-1:]
    here = Path.cwd()  # the flow's folder (a private copy): name its files as the user does
    for frame in user_frames:
        if Path(frame.filename).is_relative_to(here):
            frame.filename = str(Path(frame.filename).relative_to(here))
    trace = "".join(traceback.format_list(user_frames))
    # an ImportError names the module's file: the compatibility package's, not lmfoundry's
    message = _LMFOUNDRY_PATH.sub(r"\1", f"{type(inner).__name__}: {inner}")
    return {
        "type": type(inner).__name__,
        "message": (f"Node {node!r} failed: {message}" if node else message),
        "node": node,
        "traceback": trace,
    }


@dataclass
class LineResult:
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    aggregation_inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    stream_output: str | None = None  # the output left as a generator, when streaming


class Executor:
    trace = LineTrace(None)  # the running line's node spans (process.py sets one per line)

    def __init__(self, dag: Dag, connections: dict[str, dict[str, Any]]) -> None:
        self.dag = dag
        self.connections = {
            name: CustomConnection(
                configs=c.get("configs"), secrets=c.get("secrets"), name=c.get("name", name)
            )
            for name, c in connections.items()
        }
        self._functions: dict[str, Callable[..., Any]] = {}
        self._literals: dict[str, dict[str, Any]] = {}  # python nodes' converted literals
        self._defaults: dict[str, set[str]] = {}  # python nodes' parameters with a default
        self._templates: dict[str, jinja2.Template] = {}
        self._jinja = jinja2.Environment(trim_blocks=True, keep_trailing_newline=True)

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        """Import every python node's file and compile every template, so a broken import
        fails before the first line, naming the node."""
        for node in self.dag.nodes:
            try:
                if node.type == "python":
                    function = load_tool(self.dag.folder, node, self._node_connections(node))
                    self._functions[node.name] = function
                    self._literals[node.name] = literal_inputs(node, function)
                    self._defaults[node.name] = defaults(function)
                else:
                    text = (self.dag.folder / node.source).read_text(encoding="utf-8")
                    self._templates[node.name] = self._jinja.from_string(text)
            except Exception as exc:  # user code: report any import failure
                raise NodeError(node.name, exc) from exc

    def _node_connections(self, node: Node) -> dict[str, Any]:
        return {c: self.connections[c] for c in node.connection_inputs.values()}

    # -- one line ----------------------------------------------------------------------------

    def run_line(self, inputs: dict[str, Any], stream: bool = False) -> LineResult:
        outputs: dict[str, Any] = {}
        bypassed: set[str] = set()
        try:
            inputs = self._load_images(inputs)
        except images.InvalidImage as exc:
            return LineResult("failed", error=describe(exc))
        try:
            self._run_line_nodes(inputs, outputs, bypassed)
            aggregation = self._aggregation_inputs(inputs, outputs, bypassed)
            flow_outputs: dict[str, Any] = {}
            stream_output = None
            for output in self.dag.outputs.values():
                if output.reference.node in bypassed and len(output.reference.path) == 1:
                    flow_outputs[output.name] = None
                    continue
                if output.reference.node in bypassed:  # a field of None: Prompt flow fails
                    raise NodeError(
                        output.reference.root,
                        KeyError(
                            f"output {output.name!r} reads {output.reference.text}, but node "
                            f"{output.reference.root!r} was bypassed, so its output is None"
                        ),
                    )
                value = self._value(output.reference, inputs, outputs)
                if isinstance(value, Iterator) and not isinstance(value, str):
                    wanted = stream and stream_output is None
                    preferred = self.dag.chat_output in (None, output.name)
                    if wanted and preferred:
                        stream_output = output.name
                    else:
                        value = self._join(output.reference, value, outputs)
                flow_outputs[output.name] = images.serialise(value, self.dag.message_format)
        except NodeError as exc:
            return LineResult("failed", error=describe(exc))
        aggregation = images.serialise(aggregation, self.dag.message_format)
        return LineResult("completed", flow_outputs, None, aggregation, stream_output)

    def _run_line_nodes(
        self, inputs: dict[str, Any], outputs: dict[str, Any], bypassed: set[str]
    ) -> None:
        """Run the line's nodes as Prompt flow's schedulers do: every node whose references are
        done starts at once, so two 10-second tools that depend on the same node take 10 s,
        not 20. A node starts in this thread when it is the only one that can run (a chain
        runs as plain calls); with others running or ready it runs in a worker thread (an
        async tool in an event loop of its own there). When a node fails, no further node
        starts; the running ones are waited for and the first failure in flow order is the
        line's error."""
        nodes = self.dag.line_nodes
        names = {n.name for n in nodes}
        order = {n.name: i for i, n in enumerate(nodes)}
        remaining = list(nodes)  # in flow order
        done: set[str] = set()
        running: dict[concurrent.futures.Future[Any], Node] = {}
        pool: concurrent.futures.ThreadPoolExecutor | None = None
        failure: NodeError | None = None
        failed_at = len(nodes)  # the flow-order index of the node that failed first
        try:
            while remaining or running:
                ready = []
                for node in list(remaining):
                    if failure is None and node.dependencies & names <= done:
                        remaining.remove(node)
                        if self._bypass(node, inputs, outputs, bypassed):
                            bypassed.add(node.name)
                            done.add(node.name)
                        else:
                            ready.append(node)
                if not ready and not running:
                    # all done, or a failure stopped the line: the nodes are in topological
                    # order (dag.py), so one pass above settles every bypass that cascades
                    break
                if len(ready) == 1 and not running:
                    self._run_traced(ready[0], inputs, outputs, bypassed)
                    done.add(ready[0].name)
                    continue
                if pool is None:
                    pool = concurrent.futures.ThreadPoolExecutor(
                        NODE_CONCURRENCY, thread_name_prefix="flow-node"
                    )
                for node in ready:
                    future = pool.submit(self._run_traced, node, inputs, outputs, bypassed)
                    running[future] = node
                finished, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in sorted(finished, key=lambda f: order[running[f].name]):
                    node = running.pop(future)
                    error = future.exception()
                    if error is None:
                        done.add(node.name)
                    elif order[node.name] < failed_at:
                        failed_at = order[node.name]
                        failure = (
                            error if isinstance(error, NodeError) else NodeError(node.name, error)
                        )
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        if failure is not None:
            raise failure

    def _run_traced(
        self, node: Node, inputs: dict[str, Any], outputs: dict[str, Any], bypassed: set[str]
    ) -> None:
        with self.trace.node(node.name, node.type):
            outputs[node.name] = self._run_node(node, inputs, outputs, bypassed)

    def _load_images(self, inputs: dict[str, Any]) -> dict[str, Any]:
        types = {i.name: i.type for i in self.dag.inputs.values()}
        if not any(t in ("image", "list", "object") for t in types.values()):
            return inputs
        return images.load_inputs(types, inputs, self.dag.folder, self.dag.message_format)

    def _bypass(
        self, node: Node, inputs: dict[str, Any], outputs: dict[str, Any], bypassed: set[str]
    ) -> bool:
        if node.activate is not None:
            when = node.activate.when
            if when is None:  # a literal `when`, compared as it stands
                return bool(node.activate.literal != node.activate.value)
            if when.node in bypassed:
                return True
            value = self._value(when, inputs, outputs)  # a generator is compared as one
            return bool(value != node.activate.value)
        depends = [r.node for r in node.references() if r.node is not None]
        return bool(depends) and all(d in bypassed for d in depends)

    def _run_node(
        self,
        node: Node,
        inputs: dict[str, Any],
        outputs: dict[str, Any],
        bypassed: set[str],
        given: dict[str, Any] | None = None,  # aggregation: the lists gathered from lines
    ) -> Any:
        kwargs: dict[str, Any] = {}
        with_default = self._defaults.get(node.name, set())
        literals = self._literals.get(node.name)
        init = {p.name for p in node.init_params}
        try:
            for key, raw in node.inputs.items():
                if key in init:
                    continue  # given to the class tool's __init__ at load
                if key in node.connection_inputs:
                    kwargs[key] = self.connections[node.connection_inputs[key]]
                    continue
                if given is not None and key in given:
                    kwargs[key] = given[key]
                    continue
                ref = parse_dag_reference(raw)
                if ref is None:
                    if literals is None:
                        kwargs[key] = raw
                    elif key in literals:
                        kwargs[key] = literals[key]
                elif ref.node in bypassed:
                    # Prompt flow: the parameter's default, else None
                    if key not in with_default:
                        kwargs[key] = None
                else:
                    # a generator output is passed on as the generator, as in Prompt flow
                    kwargs[key] = self._value(ref, inputs, outputs)
        except NodeError:
            raise
        except Exception as exc:  # a reference into user data failed
            raise NodeError(node.name, exc) from exc
        try:
            if node.type == "python":
                return self._call(self._functions[node.name], kwargs)
            if node.type == "prompt":
                return self._templates[node.name].render(**kwargs)
            return self._llm(node, kwargs)
        except Exception as exc:  # user code: any failure fails the line
            raise NodeError(node.name, exc) from exc

    @staticmethod
    def _call(function: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        result = function(**kwargs)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
        if isinstance(result, AsyncIterator):
            result = _drain(result)
        return result

    def _value(self, ref: Reference, inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
        if ref.root == "inputs":
            return inputs[ref.path[0]]
        value = outputs[ref.root]
        if len(ref.path) > 1 and isinstance(value, Iterator):
            value = self._join(ref, value, outputs)
        try:
            return node_property(value, ref.path[1:])
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            raise NodeError(
                ref.root,
                KeyError(f"{ref.text}: the output {_shape(value)} has no {'.'.join(ref.path[1:])}"),
            ) from exc

    def _materialized(self, ref: Reference, inputs: dict[str, Any], outputs: dict[str, Any]) -> Any:
        value = self._value(ref, inputs, outputs)
        if isinstance(value, Iterator) and not isinstance(value, str):
            value = self._join(ref, value, outputs)
        return value

    @staticmethod
    def _join(ref: Reference, value: Iterator[Any], outputs: dict[str, Any]) -> str:
        """Consume a generator output once; later readers see the joined string."""
        try:
            text = "".join(str(chunk) for chunk in value)
        except Exception as exc:  # the generator is user code
            raise NodeError(ref.root, exc) from exc
        if ref.node is not None and outputs.get(ref.node) is value:
            outputs[ref.node] = text
        return text

    def _aggregation_inputs(
        self, inputs: dict[str, Any], outputs: dict[str, Any], bypassed: set[str]
    ) -> dict[str, dict[str, Any]]:
        """This line's values of what aggregation nodes read from lines."""
        result: dict[str, dict[str, Any]] = {}
        line_nodes = {n.name for n in self.dag.line_nodes}
        for node in self.dag.aggregation_nodes:
            for key, raw in node.inputs.items():
                ref = parse_dag_reference(raw)
                if ref is None or (ref.node is not None and ref.node not in line_nodes):
                    continue
                value = None if ref.node in bypassed else self._materialized(ref, inputs, outputs)
                result.setdefault(node.name, {})[key] = value
        return result

    # -- aggregation -------------------------------------------------------------------------

    def aggregate(self, lists: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
        """Run the aggregation nodes once with the per-line values gathered by the caller.
        Among themselves they follow the line rules: activate, bypass, defaults."""
        outputs: dict[str, Any] = {}
        bypassed: set[str] = set()
        aggregation = {n.name for n in self.dag.aggregation_nodes}
        with collecting_metrics() as metrics:
            try:
                for node in self.dag.aggregation_nodes:
                    if self._bypass(node, {}, outputs, bypassed):
                        bypassed.add(node.name)
                        continue
                    per_line = lists.get(node.name, {})
                    line_inputs = {
                        k: images.load_nested(
                            per_line.get(k, []), self.dag.folder, self.dag.message_format
                        )
                        for k, raw in node.inputs.items()
                        if (ref := parse_dag_reference(raw)) is not None
                        and ref.root not in aggregation
                    }
                    outputs[node.name] = self._run_node(node, {}, outputs, bypassed, line_inputs)
            except NodeError as exc:
                # the metrics logged before the failure stay, as in Prompt flow
                failed = {"status": "failed", "error": describe(exc), "outputs": {}}
                return {**failed, "metrics": dict(metrics)}
            return {"status": "completed", "metrics": dict(metrics), "outputs": outputs}

    # -- llm nodes ---------------------------------------------------------------------------

    def _llm(self, node: Node, kwargs: dict[str, Any]) -> Any:
        params = {
            k: kwargs.pop(k)
            for k in (*LLM_PARAMETERS, "stream")
            if k in kwargs and kwargs[k] not in (None, "", [])
        }
        for key in LLM_IGNORED:
            kwargs.pop(key, None)
        messages = parse_chat(self._templates[node.name].render(**kwargs))
        connection = self.connections[node.connection or ""]
        return chat_completion(connection, messages, params)


def _drain(chunks: AsyncIterator[Any]) -> Iterator[Any]:
    """An async generator's items as a plain generator (an event loop of its own), so it
    streams and joins like a generator output, as in Prompt flow."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(chunks.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _shape(value: Any) -> str:
    if isinstance(value, dict):
        return f"(a dict with keys {', '.join(map(repr, list(value)[:8])) or 'none'})"
    return f"(a {type(value).__name__})"


def parse_chat(text: str) -> list[dict[str, str]]:
    """A rendered chat template in Prompt flow's format (`# system:`, `# user:` and
    `# assistant:` lines, the `#` optional) as chat messages."""
    parts = _ROLE_LINE.split(text)
    if parts[0].strip():
        raise ValueError(
            "The chat template must start with a role line such as '# system:' or '# user:' "
            f"(it starts with {parts[0].strip()[:40]!r})."
        )
    messages = []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": role.lower(), "content": content.strip()})
    if not messages:
        raise ValueError("The chat template has no '# user:' line, so there is nothing to send.")
    return messages


def chat_url(connection: CustomConnection) -> str:
    """Where an llm node posts: an lmfoundry connection's target URL, or a custom connection's
    `endpoint` (a target URL, a chat/completions URL, or an lmfoundry endpoint's /score URL)."""
    target = connection.get("target_url")
    if target:
        return str(target).rstrip("/") + "/chat/completions"
    endpoint = connection.get("endpoint") or connection.get("api_base")
    if not endpoint:
        raise ValueError(
            f"Connection {connection.name!r} has no endpoint; an llm node needs an lmfoundry "
            "connection or a custom one with configs.endpoint and secrets.key."
        )
    url = str(endpoint).rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/score"):
        url = url[: -len("/score")]
    return url + "/chat/completions"


def chat_completion(
    connection: CustomConnection, messages: list[dict[str, str]], params: dict[str, Any]
) -> Any:
    import httpx  # imported here: most flows never call it, and it is slow to import

    url = chat_url(connection)
    key = connection.get("key") or connection.get("api_key") or ""
    headers = {"api-key": key, "Authorization": f"Bearer {key}", **outgoing_headers()}
    body = {"messages": messages, **params}
    if not params.get("stream"):
        response = httpx.post(url, json=body, headers=headers, timeout=600)
        if response.status_code >= 400:
            raise RuntimeError(f"{url} answered {response.status_code}: {_message(response)}")
        return response.json()["choices"][0]["message"]["content"]

    def deltas() -> Iterator[str]:
        with httpx.stream("POST", url, json=body, headers=headers, timeout=600) as response:
            if response.status_code >= 400:
                response.read()
                raise RuntimeError(f"{url} answered {response.status_code}: {_message(response)}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text

    return deltas()


def _message(response: Any) -> str:
    try:
        body = response.json()
        return str(body.get("error", body).get("message") or body)[:500]
    except (ValueError, AttributeError):
        return str(response.text[:500])
