"""One line of a flow in its own flow process, for a test or a deployed flow's score:
its result, or its events as they stream, and a score's outputs or its failure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from lmfoundry.errors import FlowFailed, Timeout
from lmfoundry.flows import bindings
from lmfoundry.flows.launcher import FlowProcess
from lmfoundry.flows.views import FlowResult


class FlowCall:
    """One line of a flow in its own flow process: a test or a score, streamed or not."""

    def __init__(
        self,
        process: FlowProcess,
        inputs: dict[str, Any],
        aggregate: bool,
        hidden_outputs: frozenset[str] = frozenset(),
        cleanup: Callable[[], None] | None = None,
        resolution: bindings.Resolution | None = None,
    ) -> None:
        self.process = process
        self.resolution = resolution or bindings.Resolution({}, {})
        self.inputs = inputs
        self.aggregate = aggregate
        self.hidden = hidden_outputs
        self._cleanup = cleanup
        self.started = time.monotonic()

    async def close(self) -> None:
        await self.process.close()
        if self._cleanup is not None:
            await asyncio.to_thread(self._cleanup)
            self._cleanup = None

    def _visible(self, outputs: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (outputs or {}).items() if k not in self.hidden}

    async def _finish(self, line: dict[str, Any]) -> FlowResult:
        result = {
            "status": line["status"],
            "outputs": self._visible(line.get("outputs")),
            "error": line.get("error"),
            "metrics": {},
            **self.resolution.view(),
        }
        if self.aggregate and line["status"] == "completed" and self.process.alive:
            values = line.get("aggregation_inputs") or {}
            lists = {n: {k: [v] for k, v in ins.items()} for n, ins in values.items()}
            aggregated = await self.process.aggregate(lists)
            result["metrics"] = aggregated.get("metrics") or {}
            if aggregated.get("status") != "completed":
                result["status"], result["error"] = "failed", aggregated.get("error")
        result["duration_s"] = round(time.monotonic() - self.started, 3)
        return FlowResult.model_validate(result)

    async def result(self) -> FlowResult:
        """Run the line to the end: status, outputs, error, metrics, duration_s and the
        bindings."""
        try:
            return await self._finish(await self.process.run_line(0, self.inputs))
        finally:
            await self.close()

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Stream the line: `outputs` (the non-streamed outputs), `chunk` events of the streamed
        output, then `result` (as `result()` returns it)."""
        try:
            async for event in self.process.line(0, self.inputs, stream=True):
                if event["event"] == "outputs":
                    yield {**event, "outputs": self._visible(event["outputs"])}
                elif event["event"] == "chunk":
                    yield event
                else:
                    yield {"event": "result", **(await self._finish(event)).model_dump()}
        finally:
            await self.close()


def raise_if_failed(result: FlowResult) -> dict[str, Any]:
    """A score's outputs (the flow's own JSON), or FlowFailed naming the node (Prompt flow
    answers 400)."""
    if result.status == "completed":
        return dict(result.outputs)
    error = result.error or {}
    if error.get("type") == "Timeout":
        raise Timeout(error.get("message") or "The flow took too long.")
    raise FlowFailed(
        error.get("message") or "The flow failed.",
        detail={"node": error.get("node"), "type": error.get("type")},
    )
