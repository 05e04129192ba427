"""The SDK's connections, flows and flow runs (`Client` inherits them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from lmfoundry import errors
from lmfoundry.access.models import Keys
from lmfoundry.client.base import BaseClient, raise_for
from lmfoundry.connections.models import ConnectionView
from lmfoundry.flows.archive import pack
from lmfoundry.flows.views import DeployedFlowView, FlowResult, FlowView, RunDetail, RunView


class FlowsClient(BaseClient):
    def put_connection(
        self,
        name: str,
        type: str = "custom",
        configs: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        project: str | None = None,
    ) -> ConnectionView:
        """Create or replace a connection; a secret given as "***" keeps its stored value."""
        body = {"type": type, "configs": configs or {}, "secrets": secrets or {}}
        return self._one(
            ConnectionView, "PUT", self._p(project) + f"/connections/{name}", json=body
        )

    def connections(self, project: str | None = None) -> list[ConnectionView]:
        return self._many(ConnectionView, "GET", self._p(project) + "/connections")

    def get_connection(self, name: str, project: str | None = None) -> ConnectionView:
        return self._one(ConnectionView, "GET", self._p(project) + f"/connections/{name}")

    def delete_connection(self, name: str, project: str | None = None) -> None:
        self._call("DELETE", self._p(project) + f"/connections/{name}")

    def upload_flow(self, path: str | Path, name: str, project: str | None = None) -> FlowView:
        """Upload a flow folder (a new version when the name exists)."""
        files = {"file": ("flow.tar.gz", pack(Path(path)), "application/gzip")}
        return self._one(
            FlowView, "POST", self._p(project) + "/flows", data={"name": name}, files=files
        )

    def flows(self, project: str | None = None) -> list[FlowView]:
        return self._many(FlowView, "GET", self._p(project) + "/flows")

    def get_flow(self, name: str, project: str | None = None) -> FlowView:
        return self._one(FlowView, "GET", self._p(project) + f"/flows/{name}")

    def delete_flow(self, name: str, project: str | None = None) -> None:
        self._call("DELETE", self._p(project) + f"/flows/{name}")

    def _test_request(
        self,
        flow: str | Path,
        inputs: dict[str, Any] | None,
        project: str | None,
        connections: dict[str, str] | None = None,
        init: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        if Path(flow).is_dir():
            return self._p(project) + "/flows/test", {
                "data": {
                    "inputs": json.dumps(inputs or {}),
                    "connections": json.dumps(connections or {}),
                    "init": json.dumps(init),
                },
                "files": {"file": ("flow.tar.gz", pack(Path(flow)), "application/gzip")},
            }
        body = {"inputs": inputs or {}, "connections": connections or {}, "init": init}
        return self._p(project) + f"/flows/{flow}/test", {"json": body}

    def test_flow(
        self,
        flow: str | Path,
        inputs: dict[str, Any] | None = None,
        project: str | None = None,
        connections: dict[str, str] | None = None,
        init: dict[str, Any] | None = None,
    ) -> FlowResult:
        """Run one line of a flow folder (a path) or of an uploaded flow (a name) on the
        server. `connections` binds node inputs to connections ({node.input: name}); `init`
        gives a flex flow's init arguments."""
        path, request = self._test_request(flow, inputs, project, connections, init)
        # a line may run up to the server's flow line timeout (600 s by default)
        timeout = httpx.Timeout(None, connect=10.0)
        return self._one(FlowResult, "POST", path, **request, timeout=timeout)

    def stream_test_flow(
        self,
        flow: str | Path,
        inputs: dict[str, Any] | None = None,
        project: str | None = None,
        connections: dict[str, str] | None = None,
        init: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """As test_flow, streamed: `outputs` and `chunk` events, then the `result` event
        (`event: "result"` and the fields of a `FlowResult`)."""
        path, request = self._test_request(flow, inputs, project, connections, init)
        with self._http.stream(
            "POST", path, **request, headers={"Accept": "text/event-stream"}, timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise_for(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])

    def deploy_flow(
        self,
        name: str,
        project: str | None = None,
        connections: dict[str, str] | None = None,
        init: dict[str, Any] | None = None,
    ) -> DeployedFlowView:
        body = {"connections": connections or {}, "init": init}
        return self._one(
            DeployedFlowView, "POST", self._p(project) + f"/flows/{name}/deploy", json=body
        )

    def bind_flow_connections(
        self, name: str, connections: dict[str, str], project: str | None = None
    ) -> FlowView:
        """Save the connections bound to an uploaded flow's node inputs ({node.input: name})."""
        body = {"connections": connections}
        return self._one(
            FlowView, "PUT", self._p(project) + f"/flows/{name}/connections", json=body
        )

    def undeploy_flow(self, name: str, project: str | None = None) -> FlowView:
        return self._one(FlowView, "DELETE", self._p(project) + f"/flows/{name}/deploy")

    def flow_keys(self, name: str, project: str | None = None) -> Keys:
        return self._one(Keys, "GET", self._p(project) + f"/flows/{name}/keys")

    def regenerate_flow_key(self, name: str, key_type: str, project: str | None = None) -> Keys:
        return self._one(
            Keys,
            "POST",
            self._p(project) + f"/flows/{name}/keys/regenerate",
            json={"key_type": key_type},
        )

    def create_run(
        self,
        flow: str,
        data: str | Path | None = None,
        column_mapping: dict[str, str] | None = None,
        run: str | None = None,
        project: str | None = None,
        connections: dict[str, str] | None = None,
        name: str | None = None,
        init: dict[str, Any] | None = None,
    ) -> RunView:
        """Start a batch run of an uploaded flow over a JSONL file and/or an earlier run;
        `name` names the run, `connections` binds node inputs ({node.input: name}), `init`
        gives a flex flow's init arguments."""
        form = {
            "column_mapping": json.dumps(column_mapping or {}),
            "connections": json.dumps(connections or {}),
            "init": json.dumps(init),
        }
        if run:
            form["run"] = run
        if name:
            form["name"] = name
        files = None
        if data is not None:
            path = Path(data).expanduser()
            files = {"data": (path.name, path.read_bytes(), "application/jsonl")}
        runs = self._p(project) + f"/flows/{flow}/runs"
        return self._one(RunView, "POST", runs, data=form, files=files)

    def runs(self, flow: str | None = None, project: str | None = None) -> list[RunView]:
        if flow:
            return self._many(RunView, "GET", self._p(project) + f"/flows/{flow}/runs")
        return self._many(RunView, "GET", self._p(project) + "/runs")

    def get_run(
        self, run_id: str, offset: int = 0, limit: int = 1000, project: str | None = None
    ) -> RunDetail:
        params = {"offset": offset, "limit": limit}
        return self._one(RunDetail, "GET", self._p(project) + f"/runs/{run_id}", params=params)

    def cancel_run(self, run_id: str, project: str | None = None) -> RunView:
        return self._one(RunView, "POST", self._p(project) + f"/runs/{run_id}/cancel")

    def wait_run(
        self,
        run_id: str,
        timeout: float | None = None,
        poll: float = 0.5,
        project: str | None = None,
    ) -> RunDetail:
        """Poll until the run has finished; returns it with its lines."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_run(run_id, project=project)
            if run.status not in ("queued", "running"):
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise errors.Timeout(
                    f"Run {run_id} is still {run.status} after {timeout:g} s "
                    f"({run.completed_lines + run.failed_lines}/{run.total_lines} lines)."
                )
            time.sleep(poll)
