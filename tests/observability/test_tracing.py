"""OpenTelemetry traces: a request's spans under the caller's traceparent (in-process, the SDK's
in-memory exporter), what a flow process may send back, and a flow calling an lmfoundry
endpoint as one trace (a real `lmfoundry up` exporting to a tiny OTLP/HTTP receiver)."""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="needs the otel extra")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from lmfoundry.flows.archive import pack
from lmfoundry.observability import tracing
from tests.conftest import Api, start_server, stop_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
QUESTION = [{"role": "user", "content": "Say hi."}]
FLOWS = Path(__file__).parents[1] / "flows" / "data"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.enable(exporter, batch=False)
    yield exporter
    tracing.disable()


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        named.setdefault(span.name, []).append(span)
    return named


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def attribute_values(finished: tuple[ReadableSpan, ...]) -> str:
    return " ".join(
        f"{k}={v}" for s in finished for k, v in {**(s.attributes or {}), "name": s.name}.items()
    )


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_with_a_traceparent_shows_its_path(
    api: Api, spans: InMemorySpanExporter, stream: bool
) -> None:
    deployment = api.deploy("traced")
    spans.clear()  # the management calls' own traces
    answer = api.client.post(
        "/serverless/traced/chat/completions",
        json={"messages": QUESTION, "max_tokens": 8, "stream": stream},
        headers={"api-key": deployment["primary_key"], "traceparent": TRACEPARENT},
    )
    assert answer.status_code == 200, answer.text
    finished = spans.get_finished_spans()
    named = by_name(finished)
    [request] = named["POST /serverless/{name}/chat/completions"]
    assert request.kind == SpanKind.SERVER
    assert f"{request.context.trace_id:032x}" == TRACE_ID  # the caller's trace
    assert parent_of(request) == int(PARENT_ID, 16)
    assert request.attributes["lmfoundry.request_id"] == answer.headers["x-request-id"]
    assert request.attributes["lmfoundry.project"] == "default"
    assert request.attributes["lmfoundry.target.kind"] == "serverless"
    assert request.attributes["lmfoundry.target.name"] == "traced"
    assert request.attributes["lmfoundry.deployment"] == "traced"
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["http.route"] == "/serverless/{name}/chat/completions"

    [admission] = named["admission"]
    assert parent_of(admission) == request.context.span_id
    quotas = named["quota"]
    assert sorted(q.attributes["lmfoundry.quota.limit"] for q in quotas) == [
        "requests",
        "tokens",
    ]
    assert {parent_of(q) for q in quotas} == {admission.context.span_id}
    [instance] = named["instance"]
    assert parent_of(instance) == request.context.span_id
    assert [e.name for e in instance.events] == ["time_to_first_token"]
    assert instance.attributes["lmfoundry.time_to_first_token_ms"] > 0
    [settlement] = named["settlement"]
    assert parent_of(settlement) == request.context.span_id
    usage = answer.json()["usage"] if not stream else None
    if usage is not None:
        assert settlement.attributes["lmfoundry.prompt_tokens"] == usage["prompt_tokens"]
        assert settlement.attributes["lmfoundry.completion_tokens"] == usage["completion_tokens"]
    assert instance.end_time <= settlement.start_time
    assert {s.context.trace_id for s in finished} == {int(TRACE_ID, 16)}
    text = attribute_values(finished)
    for secret in (deployment["primary_key"], deployment["secondary_key"], api.token):
        assert secret not in text


def test_an_endpoint_s_spans_name_the_deployment_that_answered(
    api: Api, spans: InMemorySpanExporter
) -> None:
    endpoints = "/api/v1/projects/default/online-endpoints"
    assert api.post(endpoints, json={"name": "ep"}).status_code == 201
    assert api.put(f"{endpoints}/ep/deployments/blue", json={"model": "echo"}).status_code == 200
    deadline = time.monotonic() + 60
    while api.get(f"{endpoints}/ep/deployments/blue").json()["provisioning_state"] != "succeeded":
        assert time.monotonic() < deadline, "blue did not start"
        time.sleep(0.2)
    assert api.put(f"{endpoints}/ep/traffic", json={"blue": 100}).status_code == 200
    key = api.get(f"{endpoints}/ep/keys").json()["primary_key"]
    spans.clear()
    scored = api.client.post(
        "/endpoints/ep/score",
        json={"input_data": {"input_string": [{"role": "user", "content": "hi"}]}},
        headers={"Authorization": f"Bearer {key}", "traceparent": TRACEPARENT},
    )
    assert scored.status_code == 200, scored.text
    named = by_name(spans.get_finished_spans())
    [request] = named["POST /endpoints/{name}/score"]
    assert parent_of(request) == int(PARENT_ID, 16)
    assert request.attributes["lmfoundry.target.kind"] == "endpoint"
    assert request.attributes["lmfoundry.target.name"] == "ep"
    assert request.attributes["lmfoundry.deployment"] == "blue"
    assert request.attributes["lmfoundry.deployment"] == scored.headers["azureml-model-deployment"]
    assert {parent_of(named[n][0]) for n in ("admission", "instance", "settlement")} == {
        request.context.span_id
    }
    assert key not in attribute_values(spans.get_finished_spans())


def test_a_refused_request_marks_its_admission_failed(
    api: Api, spans: InMemorySpanExporter
) -> None:
    deployment = api.deploy("strict", requests_per_minute=1)
    key = {"api-key": deployment["primary_key"]}
    body = {"messages": QUESTION, "max_tokens": 4}
    assert api.client.post("/serverless/strict/chat/completions", json=body, headers=key)
    spans.clear()
    refused = api.client.post("/serverless/strict/chat/completions", json=body, headers=key)
    assert refused.status_code == 429
    named = by_name(spans.get_finished_spans())
    [request] = named["POST /serverless/{name}/chat/completions"]
    assert request.parent is None  # no traceparent: a trace of its own
    assert request.attributes["http.response.status_code"] == 429
    [admission] = named["admission"]
    assert admission.status.status_code == StatusCode.ERROR
    assert "quota" in (admission.status.description or "")
    assert "instance" not in named and "settlement" not in named


def test_off_hands_back_one_shared_span_and_sends_no_traceparent() -> None:
    assert not tracing.enabled()
    assert tracing.span("admission") is tracing.OFF
    assert tracing.request("GET", [(b"traceparent", TRACEPARENT.encode())]) is tracing.OFF
    with tracing.span("quota") as span:
        span.set(anything=1)
        assert span.traceparent() == ""
    assert tracing.outgoing_headers() == {}


def test_node_spans_from_a_flow_process_are_checked(spans: InMemorySpanExporter) -> None:
    """Flow code shares the flow process with the spans it sends back: whatever it writes
    there stays inside the line's trace and under the line."""
    line = tracing.start("flow.line")
    trace_id = line.traceparent().split("-")[1]
    recorder = tracing.LineTrace(line.traceparent())
    with recorder.node("first", "python"):
        assert tracing.outgoing_headers()["traceparent"].split("-")[1] == trace_id
    with pytest.raises(ValueError), recorder.node("second", "llm"):
        raise ValueError("broken")
    forged = [
        {**recorder.spans[0], "span_id": "ab" * 8, "parent_id": "cd" * 8},  # parent unknown
        {"name": "x", "span_id": "zz" * 8, "parent_id": recorder.parent_id},  # not hex
        "not a span",
    ]
    assert tracing.record_remote(line, [*recorder.spans, *forged]) == 2
    line.end()
    named = by_name(spans.get_finished_spans())
    [line_span] = named["flow.line"]
    nodes = named["flow.node"]
    assert [n.attributes["lmfoundry.flow.node"] for n in nodes] == ["first", "second"]
    assert {n.context.trace_id for n in nodes} == {line_span.context.trace_id}
    assert {parent_of(n) for n in nodes} == {line_span.context.span_id}
    assert nodes[1].status.status_code == StatusCode.ERROR
    assert tracing.outgoing_headers() == {}  # no node running, no current span
    unsampled = tracing.LineTrace(f"00-{TRACE_ID}-{PARENT_ID}-00")
    with unsampled.node("skipped", "python"):
        pass
    assert unsampled.spans == []


# -- a real server exporting over OTLP/HTTP ----------------------------------------------------


class Collector:
    """A tiny OTLP/HTTP receiver on 127.0.0.1: POST /v1/traces, protobuf bodies."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                collector.spans.append(
                                    {
                                        "name": span.name,
                                        "trace_id": span.trace_id.hex(),
                                        "span_id": span.span_id.hex(),
                                        "parent_id": span.parent_span_id.hex(),
                                        "attributes": {
                                            a.key: a.value.string_value or a.value.int_value
                                            for a in span.attributes
                                        },
                                    }
                                )
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, names: set[str], trace_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """The spans of `trace_id` once every one of `names` has arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                mine = [s for s in self.spans if s["trace_id"] == trace_id]
            if names <= {s["name"] for s in mine}:
                return mine
            time.sleep(0.1)
        raise AssertionError(f"not all of {names} arrived in trace {trace_id}: {mine}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_flow_calling_an_endpoint_is_one_trace(tmp_path: Path) -> None:
    collector = Collector()
    server = start_server(
        tmp_path / "home",
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    try:
        with server.client() as api:
            created = api.post(
                "/api/v1/projects/default/serverless-deployments",
                json={"name": "echo-dep", "model": "echo"},
            )
            assert created.status_code == 201, created.text
            made = api.put(
                "/api/v1/projects/default/connections/model",
                json={
                    "type": "lmfoundry",
                    "configs": {"target_kind": "serverless", "target": "echo-dep"},
                    "secrets": {},
                },
            )
            assert made.status_code in (200, 201), made.text
            uploaded = api.post(
                "/api/v1/projects/default/flows",
                data={"name": "asker"},
                files={"file": ("flow.tar.gz", pack(FLOWS / "llm_echo"))},
            )
            assert uploaded.status_code in (200, 201), uploaded.text
            tested = api.post(
                "/api/v1/projects/default/flows/asker/test",
                json={"inputs": {"question": "What is up?"}},
                headers={"traceparent": TRACEPARENT},
            )
            assert tested.status_code == 200, tested.text
            assert tested.json()["status"] == "completed", tested.json()
        trace = collector.wait_for(
            {
                "POST /api/v1/projects/{project}/flows/{name}/test",
                "flow.line",
                "flow.node",
                "POST /serverless/{name}/chat/completions",
                "instance",
            },
            TRACE_ID,
        )
    finally:
        stop_server(server)
        collector.close()
    named: dict[str, list[dict[str, Any]]] = {}
    for span in trace:
        named.setdefault(span["name"], []).append(span)
    [test] = named["POST /api/v1/projects/{project}/flows/{name}/test"]
    assert test["parent_id"] == PARENT_ID
    [line] = named["flow.line"]
    assert line["parent_id"] == test["span_id"]
    nodes = {n["attributes"]["lmfoundry.flow.node"]: n for n in named["flow.node"]}
    assert set(nodes) == {"framing", "ask"}
    assert {n["parent_id"] for n in nodes.values()} == {line["span_id"]}
    [endpoint] = named["POST /serverless/{name}/chat/completions"]
    assert endpoint["parent_id"] == nodes["ask"]["span_id"]  # the llm node's call
    assert endpoint["attributes"]["lmfoundry.target.name"] == "echo-dep"
    [instance] = named["instance"]
    assert instance["parent_id"] == endpoint["span_id"]
