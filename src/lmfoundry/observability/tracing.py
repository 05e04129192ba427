"""OpenTelemetry traces of a request's path and of a flow line's nodes, exported over OTLP/HTTP.

On when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set and the
`otel` extra is installed (`setup`, called once by the app; the exporter reads the other
OTEL_* variables itself). Off, `span()`, `start()` and `request()` hand back one shared
do-nothing object, so every hook costs a function call and no OpenTelemetry module is loaded.

The spans of one request: `POST /serverless/{name}/chat/completions` (the server span, named
by its route, a child of an incoming W3C `traceparent`) > `admission` > `quota`; `instance`
(with a `time_to_first_token` event); `settlement`. A flow line: `flow.line` > `flow.node`.
Attributes name the project, target, deployment, status and request id, never a key.

Flow processes run tenant code in a sandbox with no network but their egress proxy, so they
export nothing: the launcher sends each line's trace context with the line; the flow process
(`LineTrace`, plain dicts, no OpenTelemetry) records one span per node with ids of its own,
puts the node's `traceparent` in TRACEPARENT and on the calls lmfoundry makes for the flow
(llm nodes), and sends the spans back with the line's result; the launcher checks them and
hands them to the exporter (`record_remote`). So a flow calling an lmfoundry endpoint is one
trace: request > flow.line > flow.node > the endpoint's request > ...
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer

    from lmfoundry.config import Settings

log = logging.getLogger("lmfoundry.tracing")

SCOPE = "lmfoundry"
MAX_REMOTE_SPANS = 1000  # node spans accepted from one flow line
MAX_TEXT = 256  # characters of a remote span's name or attribute value
Attribute = str | bool | int | float


class _Tracing:
    """The provider, tracer and processors of this process, once tracing is on."""

    def __init__(self, provider: TracerProvider, processors: SynchronousMultiSpanProcessor):
        from opentelemetry import context, propagate, trace

        self.provider = provider
        self.processors = processors
        self.tracer: Tracer = provider.get_tracer(SCOPE)
        self.trace = trace
        self.context = context
        self.propagate = propagate


_on: _Tracing | None = None


def setup(settings: Settings) -> bool:
    """Turn tracing on when an OTLP endpoint is configured; whether it is on."""
    if _on is not None or not settings.otlp_endpoint:
        return _on is not None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed, so no "
            "traces are exported; install it with: pip install 'lmfoundry[otel]'"
        )
        return False
    enable(OTLPSpanExporter(), service_name=settings.otel_service_name)
    return True


def enable(exporter: SpanExporter, service_name: str = "lmfoundry", batch: bool = True) -> None:
    """Export spans to `exporter` (batched in the background; `batch=False`: as each span
    ends, for tests with the SDK's InMemorySpanExporter)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    global _on
    disable()
    processors = SynchronousMultiSpanProcessor()
    processors.add_span_processor(
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    # Not the global provider: libraries that set their own (Ray's) keep theirs.
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        active_span_processor=processors,
        shutdown_on_exit=False,
    )
    _on = _Tracing(provider, processors)


def disable() -> None:
    """Flush what is pending and turn tracing off."""
    global _on
    on, _on = _on, None
    if on is not None:
        on.provider.shutdown()


def enabled() -> bool:
    return _on is not None


def flush() -> None:
    if _on is not None:
        _on.provider.force_flush()


class Span:
    """One span: `with` makes it current (children nest under it) and ends it; `start()`
    leaves it for `end()`, for async generators, which must not change the context."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: OtelSpan | None) -> None:
        self._span = span
        self._token: object | None = None

    def __enter__(self) -> Span:
        if _on is not None and self._span is not None:
            self._token = _on.context.attach(_on.trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if error is not None:
            self.fail(error)
        if _on is not None and self._token is not None:
            _on.context.detach(self._token)  # type: ignore[arg-type]
            self._token = None
        self.end()

    def set(self, **attributes: Attribute | None) -> None:
        if self._span is not None:
            self._span.set_attributes(_clean(attributes))

    def rename(self, name: str) -> None:
        if self._span is not None:
            self._span.update_name(name)

    def event(self, name: str, **attributes: Attribute | None) -> None:
        if self._span is not None:
            self._span.add_event(name, _clean(attributes))

    def first_token(self, ms: float) -> None:
        """The instance's first token arrived `ms` after admission."""
        if self._span is not None:
            self._span.set_attribute("lmfoundry.time_to_first_token_ms", round(ms, 3))
            self._span.add_event("time_to_first_token", {"ms": round(ms, 3)})

    def fail(self, error: BaseException | str, status: int | None = None) -> None:
        """Mark the span failed, with the error's type and message (never its arguments)."""
        if _on is None or self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self._span.set_status(Status(StatusCode.ERROR, text[:MAX_TEXT]))
        if status is not None:
            self._span.set_attribute("http.response.status_code", status)

    def end(self, status: int | None = None) -> None:
        """End the span (once; later calls do nothing), with the HTTP status it came to."""
        if self._span is None:
            return
        if status is not None:
            self._span.set_attribute("lmfoundry.status", status)
            if status >= 500:
                self.fail(f"HTTP {status}")
        self._span.end()
        self._span = None

    def traceparent(self) -> str:
        """This span's W3C traceparent, for a child elsewhere (a flow process); "" off."""
        if self._span is None:
            return ""
        context = self._span.get_span_context()
        if not context.is_valid:
            return ""
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    @property
    def trace_id(self) -> str:
        if self._span is None:
            return ""
        context = self._span.get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else ""


class _Off(Span):
    """The span handed out while tracing is off: every method does nothing, at once."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def set(self, **attributes: Attribute | None) -> None:
        return None

    def event(self, name: str, **attributes: Attribute | None) -> None:
        return None

    def first_token(self, ms: float) -> None:
        return None

    def end(self, status: int | None = None) -> None:
        return None


OFF: Span = _Off(None)


def span(name: str, **attributes: Attribute | None) -> Span:
    """A child of the current span, current in its `with` block."""
    if _on is None:
        return OFF
    return Span(_on.tracer.start_span(name, attributes=_clean(attributes)))


def start(name: str, **attributes: Attribute | None) -> Span:
    """A child of the current span that does not become current; end it with `end()`."""
    return span(name, **attributes)


def request(method: str, headers: Iterable[tuple[bytes, bytes]]) -> Span:
    """The server span of an HTTP request: a child of its `traceparent` header, if any; named
    by its route once routed (`rename`)."""
    if _on is None:
        return OFF
    from opentelemetry.trace import SpanKind

    carrier = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in headers
        if k in (b"traceparent", b"tracestate")
    }
    parent = _on.propagate.extract(carrier) if carrier else None
    return Span(
        _on.tracer.start_span(
            method,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
        )
    )


def outgoing_headers() -> dict[str, str]:
    """The trace context to send on an HTTP call made now: in a flow process, the running
    node's; in the server, the current span's; {} when there is none."""
    node = _node_traceparent.get()
    if node:
        return {"traceparent": node}
    if _on is None:
        return {}
    carrier: dict[str, str] = {}
    _on.propagate.inject(carrier)
    return carrier


def tokens(prompt: int, completion: int, status: int) -> dict[str, Attribute]:
    """A settled request's attributes."""
    return {
        "lmfoundry.prompt_tokens": prompt,
        "lmfoundry.completion_tokens": completion,
        "lmfoundry.status": status,
    }


def _clean(attributes: Mapping[str, Attribute | None]) -> dict[str, Attribute]:
    return {k: v for k, v in attributes.items() if v is not None and v != ""}


# -- flow lines: the server side ----------------------------------------------------------------


def record_remote(line: Span, spans: Any) -> int:
    """Export the node spans a flow process sent back for `line`: each must be of the line's
    trace, under the line or another of them, and is cut to size (flow code could have
    written them). Returns how many were taken."""
    if _on is None or line._span is None or not isinstance(spans, list):
        return 0
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

    parent = line._span.get_span_context()
    if not parent.is_valid or not parent.trace_flags.sampled:
        return 0
    start = getattr(line._span, "start_time", None) or 0
    now = time.time_ns()
    taken = [s for s in spans[:MAX_REMOTE_SPANS] if _well_formed(s)]
    known = {parent.span_id} | {int(s["span_id"], 16) for s in taken}
    scope = InstrumentationScope(f"{SCOPE}.flows")
    flags = TraceFlags(TraceFlags.SAMPLED)
    count = 0
    for item in taken:
        parent_id = int(item["parent_id"], 16)
        if parent_id not in known:
            continue
        begin = min(max(int(item["start_ns"]), start), now)
        finish = min(max(int(item["end_ns"]), begin), now)
        failed = item.get("error")
        attributes = {
            str(k)[:MAX_TEXT]: (v[:MAX_TEXT] if isinstance(v, str) else v)
            for k, v in (item.get("attributes") or {}).items()
            if isinstance(v, str | bool | int | float)
        }
        _on.processors.on_end(
            ReadableSpan(
                name=str(item["name"])[:MAX_TEXT],
                context=SpanContext(parent.trace_id, int(item["span_id"], 16), False, flags),
                parent=SpanContext(parent.trace_id, parent_id, False, flags),
                resource=_on.provider.resource,
                attributes=dict(list(attributes.items())[:32]),
                status=Status(StatusCode.ERROR, str(failed)[:MAX_TEXT])
                if failed
                else Status(StatusCode.UNSET),
                start_time=begin,
                end_time=finish,
                instrumentation_scope=scope,
            )
        )
        count += 1
    return count


def _well_formed(item: Any) -> bool:
    if not isinstance(item, dict):
        return False
    try:
        return (
            isinstance(item.get("name"), str)
            and _hex(item.get("span_id"), 16)
            and _hex(item.get("parent_id"), 16)
            and isinstance(item.get("start_ns"), int)
            and isinstance(item.get("end_ns"), int)
            and (item.get("attributes") is None or isinstance(item["attributes"], dict))
        )
    except (TypeError, ValueError):
        return False


def _hex(value: Any, digits: int) -> bool:
    return isinstance(value, str) and len(value) == digits and int(value, 16) != 0


# -- flow lines: inside the flow process (no OpenTelemetry) -------------------------------------

_node_traceparent: ContextVar[str] = ContextVar("lmfoundry_node_traceparent", default="")
_NO_NODE = nullcontext()


class LineTrace:
    """The node spans of one flow line, recorded in the flow process as plain dicts. Made
    from the line's `traceparent` (none, or not sampled: records nothing)."""

    def __init__(self, traceparent: str | None) -> None:
        self.trace_id = self.parent_id = ""
        self.spans: list[dict[str, Any]] = []
        parts = (traceparent or "").split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
            sampled = int(parts[3], 16) & 1 if _is_hex(parts[3]) else 0
            if sampled and _is_hex(parts[1]) and _is_hex(parts[2]):
                self.trace_id, self.parent_id = parts[1], parts[2]

    def node(self, name: str, kind: str) -> AbstractContextManager[object]:
        """The span of one node run, current while its `with` block runs (nothing when this
        line is not traced)."""
        if not self.trace_id:
            return _NO_NODE
        return _NodeSpan(self, name, kind)


class _NodeSpan:
    def __init__(self, line: LineTrace, name: str, kind: str) -> None:
        self.line = line
        self.record: dict[str, Any] = {
            "name": "flow.node",
            "span_id": secrets.token_hex(8),
            "parent_id": line.parent_id,
            "attributes": {"lmfoundry.flow.node": name, "lmfoundry.flow.node_type": kind},
        }
        self._token: Any = None
        self._previous: str | None = None

    def __enter__(self) -> _NodeSpan:
        traceparent = f"00-{self.line.trace_id}-{self.record['span_id']}-01"
        self._token = _node_traceparent.set(traceparent)
        # for flow code that calls an endpoint itself: headers={"traceparent": os.environ[...]}
        self._previous = os.environ.get("TRACEPARENT")
        os.environ["TRACEPARENT"] = traceparent
        self.record["start_ns"] = time.time_ns()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.record["end_ns"] = time.time_ns()
        if error is not None:
            self.record["error"] = f"{type(error).__name__}: {error}"[:MAX_TEXT]
        _node_traceparent.reset(self._token)
        if self._previous is None:
            os.environ.pop("TRACEPARENT", None)
        else:
            os.environ["TRACEPARENT"] = self._previous
        self.line.spans.append(self.record)


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True
