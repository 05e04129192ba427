"""The data plane of online endpoints: pick a deployment by the traffic split (or the
`azureml-model-deployment` header), mirror a share to the mirror deployment, enforce the
deployment's concurrency and timeout, and run the request through the gateway."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from lmfoundry.deployments.endpoints import DeploymentState, EndpointRoute, EndpointService
from lmfoundry.deployments.fleet import Fleet, Running
from lmfoundry.deployments.serverless import ServingTarget
from lmfoundry.errors import InvalidRequest, LmfError, NotFound, Timeout, Unavailable
from lmfoundry.serving.gateway import ChatResult, Gateway
from lmfoundry.serving.score import score_to_chat

log = logging.getLogger("lmfoundry.endpoints")


class EndpointRouter:
    def __init__(
        self,
        gateway: Gateway,
        endpoints: EndpointService,
        fleet: Fleet,
        rng: random.Random | None = None,
    ) -> None:
        self.gateway = gateway
        self.endpoints = endpoints
        self.fleet = fleet
        self.rng = rng or random.Random()
        self._mirrors: set[asyncio.Task[None]] = set()

    def authorize(self, name: str, key: str | None) -> tuple[EndpointRoute, str]:
        route = self.endpoints.route(name)
        return route, self.gateway.check_key(route.target, key)

    async def admit_key(
        self, name: str, key: str | None, request_id: str
    ) -> tuple[EndpointRoute, str]:
        """`authorize` for a request that would generate or embed: a wrong key is counted
        as a refusal of the endpoint (Gateway.authorize)."""
        route = self.endpoints.route(name)
        return route, await self.gateway.authorize(route.target, key, request_id)

    def pick(
        self, route: EndpointRoute, header: str | None
    ) -> tuple[DeploymentState, DeploymentState | None]:
        """The deployment that answers, and the one that gets a mirrored copy (if any)."""
        if header:
            chosen = route.deployments.get(header)
            if chosen is None:
                known = ", ".join(sorted(route.deployments)) or "none"
                raise NotFound(
                    f"Endpoint {route.target.name!r} has no deployment {header!r} "
                    f"(azureml-model-deployment header); deployments: {known}."
                )
            return chosen, None  # a targeted request bypasses the split and the mirror
        live = {n: v for n, v in route.traffic.items() if v and n in route.deployments}
        if not live:
            raise Unavailable(
                f"Endpoint {route.target.name!r} sends 0% of traffic to every deployment; set "
                "traffic (e.g. `lmfoundry endpoints traffic NAME blue=100`) or target one "
                "with the azureml-model-deployment header.",
                headers={"Retry-After": "10"},
            )
        names = sorted(live)
        chosen = route.deployments[self.rng.choices(names, [live[n] for n in names])[0]]
        mirror = None
        for name, share in route.mirror.items():
            if name in route.deployments and self.rng.uniform(0, 100) < share:
                mirror = route.deployments[name]
        return chosen, mirror

    async def chat(
        self,
        route: EndpointRoute,
        slot: str,
        body: bytes,
        extra: str | None,
        request_id: str,
        header: str | None,
        api: str = "chat",
    ) -> ChatResult:
        """Run a request of a generating API (chat by default) on the deployment the split
        (or the header) picks."""
        state, mirror = self.pick(route, header)
        running = self.fleet.serving(state)
        running.claim()
        target = _target(route.target, running)
        timeout = state.request_settings["request_timeout_ms"] / 1000
        try:
            async with asyncio.timeout(timeout):
                result = await self.gateway.chat(
                    target,
                    slot,
                    body,
                    extra,
                    request_id,
                    deployment=state.name,
                    group=running.group,
                    model=running.model,
                    api=api,
                )
        except TimeoutError as exc:
            running.release()
            raise _timed_out(state) from exc
        except BaseException:
            running.release()
            raise
        if mirror is not None:
            self._mirror(route, mirror, slot, body, extra, request_id, api)
        if result.stream is None:
            running.release()
            return result
        result.stream = _bounded(result.stream, running, time.monotonic() + timeout, state)
        return result

    async def score(
        self, route: EndpointRoute, slot: str, body: bytes, request_id: str, header: str | None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        chat_body = score_to_chat(body)
        if json.loads(chat_body).get("stream"):
            raise InvalidRequest(
                "/score answers in one piece; use chat/completions to stream.", param="stream"
            )
        result = await self.chat(route, slot, chat_body, "pass-through", request_id, header)
        answer = result.body or {}
        return {"output": answer["choices"][0]["message"]["content"]}, result.headers

    def _mirror(
        self,
        route: EndpointRoute,
        state: DeploymentState,
        slot: str,
        body: bytes,
        extra: str | None,
        request_id: str,
        api: str,
    ) -> None:
        """Send a copy to the mirror deployment; its answer is dropped, its usage recorded
        (as mirrored, so it is not billed to the caller)."""

        async def run() -> None:
            try:
                running = self.fleet.serving(state)
                target = _target(route.target, running)
                mirrored = json.loads(body)
                mirrored["stream"] = False
                await self.gateway.mirror(
                    target,
                    slot,
                    json.dumps(mirrored).encode(),
                    extra,
                    f"{request_id}-mirror",
                    state.name,
                    running.group,
                    running.model,
                    api,
                )
            except LmfError as exc:
                log.info("mirrored request to %s failed: %s", state.name, exc.message)

        task = asyncio.create_task(run())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)


def _target(target: ServingTarget, running: Running) -> ServingTarget:
    card = running.model.card
    return replace(
        target,
        model=running.state.model,
        price_input_per_1k=card.price_input_per_1k,
        price_output_per_1k=card.price_output_per_1k,
    )


def _timed_out(state: DeploymentState) -> Timeout:
    limit = state.request_settings["request_timeout_ms"]
    return Timeout(
        f"Deployment {state.name!r} did not answer within request_timeout_ms "
        f"({limit} ms); ask for fewer tokens or raise the deployment's "
        "request_settings.request_timeout_ms."
    )


async def _bounded(
    stream: AsyncIterator[bytes], running: Running, deadline: float, state: DeploymentState
) -> AsyncIterator[bytes]:
    """A stream that ends with an error event at the request timeout, and that gives the
    deployment's concurrency slot back when it ends however it ends."""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                async with asyncio.timeout(remaining):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            yield chunk
    except TimeoutError:
        yield b"data: " + json.dumps(_timed_out(state).to_body()).encode() + b"\n\n"
    finally:
        running.release()
        await stream.aclose()  # type: ignore[attr-defined]
