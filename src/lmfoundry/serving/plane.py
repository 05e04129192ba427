"""The data plane's one entry: every request to a target goes through `DataPlane.serve`.

A target is a serverless deployment, an online endpoint or a deployed flow; the studio's
playground calls the first two the same way with the deployment's primary key. `serve`
reads top to bottom: resolve the target (cached, forgotten on change), check the key, pick
the deployment that answers (an endpoint's traffic split, or the
`azureml-model-deployment` header), run the request within that deployment's concurrency
and timeout (`Gateway.generate` for chat and completions, `EmbeddingsService.embed` for
embeddings: both admit an `Admission`, call the instance, settle and record), and send a
mirrored copy when the endpoint mirrors. The Responses API and Azure ML's `/score` are
chat requests in other clothes: they are translated here and run the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lmfoundry.access.keys import KeyStore
from lmfoundry.deployments.endpoints import EndpointService
from lmfoundry.deployments.fleet import Fleet
from lmfoundry.deployments.serverless import ServerlessService
from lmfoundry.deployments.targets import Deployment, Target
from lmfoundry.engines.capabilities import capabilities
from lmfoundry.errors import Forbidden, InvalidRequest, LmfError, Timeout, Unauthorized
from lmfoundry.flows.call import FlowCall, raise_if_failed
from lmfoundry.flows.service import FlowService
from lmfoundry.responses.service import ResponsesService
from lmfoundry.responses.store import Owner
from lmfoundry.serving.checks import Reply
from lmfoundry.serving.embeddings import EmbeddingsService
from lmfoundry.serving.gateway import Admission, Gateway, Served
from lmfoundry.serving.score import score_to_chat
from lmfoundry.serving.wire import ModelInfoResponse
from lmfoundry.storage.db import Database

log = logging.getLogger("lmfoundry.endpoints")

TargetKind = Literal["serverless", "endpoint", "flow"]
Api = Literal["chat", "completions", "embeddings", "responses", "score"]


@dataclass(frozen=True)
class Call:
    """One data-plane request as its route received it."""

    kind: TargetKind
    name: str  # the target's name, from the URL
    api: Api
    body: bytes
    key: str | None  # `Authorization: Bearer <key>` or `api-key: <key>`
    request_id: str
    extra_parameters: str | None = None  # the `extra-parameters` header
    deployment: str | None = None  # the `azureml-model-deployment` header (endpoints)
    events: bool = False  # `Accept: text/event-stream` (a flow's score)
    # The answer's headers decided while serving it (a refusal's rate limits among them):
    # the route sends them with an error as well as with a reply. A call translated into
    # another (`replace`) shares them.
    headers: dict[str, str] = field(default_factory=dict)


class DataPlane:
    def __init__(
        self,
        db: Database,
        keys: KeyStore,
        serverless: ServerlessService,
        endpoints: EndpointService,
        fleet: Fleet,
        gateway: Gateway,
        responses: ResponsesService,
        flows: FlowService,
        rng: random.Random | None = None,
    ) -> None:
        self.db = db
        self.keys = keys
        self.serverless = serverless
        self.endpoints = endpoints
        self.fleet = fleet
        self.gateway = gateway
        self.embeddings = EmbeddingsService(gateway)
        self.responses = responses
        self.flows = flows
        self.rng = rng or random.Random()
        self._mirrors: set[asyncio.Task[None]] = set()

    # -- the entry ---------------------------------------------------------------------------

    async def serve(self, call: Call) -> Reply:
        """Answer one request: the whole body, or a stream of server-sent events."""
        if call.kind == "flow":
            return await self._flow(call)
        target = self.target(call.kind, call.name)
        slot = await self.authorize(target, call.key, call.request_id)
        if call.api == "responses":
            return await self._responses(target, slot, call)
        if call.api == "score":
            return await self._score(target, slot, call)
        return await self._run(target, slot, call)

    def target(self, kind: TargetKind, name: str) -> Target:
        if kind == "serverless":
            return self.serverless.serving_target(name)
        return self.endpoints.serving_target(name)

    def check_key(self, target: Target, presented: str | None) -> str:
        """The key's slot (`primary` / `secondary`); 401 for a missing or unknown key, 403 for
        the key of another deployment."""
        if not presented:
            raise Unauthorized(
                "Missing key: send `Authorization: Bearer <key>` or `api-key: <key>` "
                "(`lmfoundry serverless keys NAME` or `lmfoundry endpoints keys NAME`)."
            )
        match = self.keys.match(self.db.session, presented)
        if match is None:
            raise Unauthorized(
                f"Invalid key for {target.name!r}; check it, or regenerate one with "
                f"`lmfoundry {'serverless' if target.kind == 'serverless' else 'endpoints'} "
                f"keys {target.name} --regenerate primary`."
            )
        if (match.target_kind, match.target_id) != (target.kind, target.id):
            raise Forbidden(
                f"This key belongs to another deployment, not {target.name!r}; "
                "each key opens only its own deployment."
            )
        return match.slot

    async def authorize(self, target: Target, presented: str | None, request_id: str) -> str:
        """`check_key` for a request that would generate or embed: a 401 or a 403 is
        counted and recorded as a refusal of `target`, as its caller saw it."""
        started = time.perf_counter()
        try:
            return self.check_key(target, presented)
        except (Unauthorized, Forbidden) as exc:
            model = _only_model(target)
            await self.gateway.refusal(target, target.name, "", model, "", request_id, exc, started)
            raise

    # -- running on a deployment -------------------------------------------------------------

    async def _run(self, target: Target, slot: str, call: Call) -> Reply:
        """Pick the deployment and run the request on it; copy it to the mirror."""
        started = time.perf_counter()
        try:
            chosen, mirror = target.pick(call.deployment, self.rng)
            served = await self._served(target, chosen)
        except LmfError as exc:  # a deployment still starting, an unknown one named
            deployment = call.deployment or target.name
            model = _only_model(target)
            await self.gateway.refusal(
                target, deployment, "", model, slot, call.request_id, exc, started
            )
            raise
        admission = Admission(
            target=target,
            served=served,
            key_slot=slot,
            request_id=call.request_id,
            body=call.body,
            extra_parameters=call.extra_parameters,
            api=call.api,
            headers=call.headers,
        )
        if call.api == "embeddings":
            return await self._within_limits(served, lambda: self.embeddings.embed(admission))
        reply = await self._within_limits(served, lambda: self.gateway.generate(admission))
        if mirror is not None:
            self._mirror(admission, mirror)
        return reply

    async def _served(self, target: Target, deployment: Deployment) -> Served:
        """The deployment ready to answer: a serverless deployment's model on its instances
        (started on demand), or an endpoint deployment as the fleet runs it."""
        if deployment.state is None:
            model = await self.gateway.resolve_async(target.project_id, deployment.model)
            group = self.gateway.group(model)
            running = None
        else:
            running = self.fleet.serving(deployment.state)
            model, group = running.model, running.group
        card = model.card
        return Served(
            deployment=deployment.name,
            model=model,
            group=group,
            price_input_per_1k=_price(deployment.price_input_per_1k, card.price_input_per_1k),
            price_output_per_1k=_price(deployment.price_output_per_1k, card.price_output_per_1k),
            running=running,
        )

    async def _within_limits(self, served: Served, run: Callable[[], Awaitable[Reply]]) -> Reply:
        """An endpoint deployment's request within its concurrency (429 when full) and its
        request_timeout_ms, a stream included; a serverless deployment has neither."""
        running, timeout = served.running, served.timeout
        if running is None or timeout is None:
            return await run()
        running.claim()
        try:
            async with asyncio.timeout(timeout):
                reply = await run()
        except TimeoutError as exc:
            running.release()
            raise _timed_out(served) from exc
        except BaseException:
            running.release()
            raise
        if reply.stream is None:
            running.release()
        else:
            reply.stream = _bounded(reply.stream, served, time.monotonic() + timeout)
        return reply

    def _mirror(self, admission: Admission, deployment: Deployment) -> None:
        """Send a copy to the mirror deployment; its answer is dropped, its usage recorded
        (as mirrored, so it is not billed to the caller)."""

        async def run() -> None:
            try:
                served = await self._served(admission.target, deployment)
                body = json.loads(admission.body)
                body["stream"] = False
                copy = replace(
                    admission,
                    served=served,
                    request_id=f"{admission.request_id}-mirror",
                    body=json.dumps(body).encode(),
                    mirrored=True,
                    headers={},  # the caller has its answer already
                )
                await self.gateway.generate(copy)
            except LmfError as exc:
                log.info("mirrored request to %s failed: %s", deployment.name, exc.message)

        task = asyncio.create_task(run())
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    # -- the same request in other clothes ---------------------------------------------------

    async def _responses(self, target: Target, slot: str, call: Call) -> Reply:
        """OpenAI's Responses API, run as chat completions on the same path."""
        owner = Owner(target.project_id, target.kind, target.id, target.name)

        def chat(body: bytes) -> Awaitable[Reply]:
            return self._run(target, slot, replace(call, api="chat", body=body))

        return await self.responses.create(owner, call.body, chat)

    async def _score(self, target: Target, slot: str, call: Call) -> Reply:
        """Azure ML's `/score`: `{"input_data": {"input_string": [...], "parameters": {...}}}`
        -> `{"output": "..."}`, run as one chat completion."""
        chat_body = score_to_chat(call.body)
        if json.loads(chat_body).get("stream"):
            raise InvalidRequest(
                "/score answers in one piece; use chat/completions to stream.", param="stream"
            )
        chat = replace(call, api="chat", body=chat_body, extra_parameters="pass-through")
        reply = await self._run(target, slot, chat)
        answer = reply.body or {}
        return Reply(reply.headers, body={"output": answer["choices"][0]["message"]["content"]})

    async def _flow(self, call: Call) -> Reply:
        """One line of a deployed flow (Prompt flow's contract: the body is the flow's
        inputs, the answer its outputs); with `events`, server-sent events."""
        line = await self.flows.score(call.name, call.key, call.body)
        if call.events:
            return Reply({"cache-control": "no-cache"}, stream=_prompt_flow_events(line))
        return Reply({}, body=raise_if_failed(await line.result()))

    # -- what a key may read -----------------------------------------------------------------

    async def info(self, call: Call) -> Reply:
        """`GET {target}info`: the model that would answer (an endpoint's by its split or
        the header), in Azure AI model inference's shape."""
        target = self.opened(call.kind, call.name, call.key)
        chosen, _ = target.pick(call.deployment, self.rng)
        card = self.gateway.resolver.card(target.project_id, chosen.model)
        body = ModelInfoResponse(
            model_name=card.id,
            model_type=card.model_type,
            model_provider_name=card.publisher,
            capabilities=capabilities(card.engine, card.model_type),
        )
        if target.kind == "serverless":
            headers = await self.gateway.quotas.headers(target.quota)
        else:
            headers = {"azureml-model-deployment": chosen.name}
        return Reply(headers, body=body.model_dump())

    async def models(self, call: Call) -> Reply:
        """`GET {target}v1/models`: OpenAI's model list, a model per deployment (owned by
        the model's publisher on a serverless deployment, by the deployment on an
        endpoint)."""
        target = self.opened(call.kind, call.name, call.key)
        now = int(time.time())
        data = []
        for deployment in target.deployments.values():
            card = self.gateway.resolver.card(target.project_id, deployment.model)
            owner = card.publisher if target.kind == "serverless" else deployment.name
            data.append({"id": card.id, "object": "model", "created": now, "owned_by": owner})
        headers = {}
        if target.kind == "serverless":
            headers = await self.gateway.quotas.headers(target.quota)
        return Reply(headers, body={"object": "list", "data": data})

    def stored(self, call: Call) -> Owner:
        """Whose stored responses a key may read and delete: its own target's only."""
        target = self.opened(call.kind, call.name, call.key)
        return Owner(target.project_id, target.kind, target.id, target.name)

    def opened(self, kind: TargetKind, name: str, presented: str | None) -> Target:
        """The target a read may see with this key (a refused read is not metered)."""
        target = self.target(kind, name)
        self.check_key(target, presented)
        return target


def _only_model(target: Target) -> str:
    """A serverless deployment's model (an endpoint's depends on the split): a refusal's
    usage record names it."""
    if target.kind != "serverless":
        return ""
    return next(iter(target.deployments.values())).model


def _price(override: float | None, card: float) -> float:
    return override if override is not None else card


def _timed_out(served: Served) -> Timeout:
    limit = served.running.state.request_settings["request_timeout_ms"] if served.running else 0
    return Timeout(
        f"Deployment {served.deployment!r} did not answer within request_timeout_ms "
        f"({limit} ms); ask for fewer tokens or raise the deployment's "
        "request_settings.request_timeout_ms."
    )


async def _bounded(
    stream: AsyncIterator[bytes], served: Served, deadline: float
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
        yield b"data: " + json.dumps(_timed_out(served).to_body()).encode() + b"\n\n"
    finally:
        if served.running is not None:
            served.running.release()
        await stream.aclose()  # type: ignore[attr-defined]


def _data(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _prompt_flow_events(line: FlowCall) -> AsyncIterator[bytes]:
    """Prompt flow's streamed score: the outputs that do not stream first, then one
    `{"OUTPUT": "chunk"}` event per chunk of the one that does."""
    streamed: str | None = None
    async for event in line.events():
        if event["event"] == "outputs":
            streamed = event["stream"]
            if event["outputs"]:
                yield _data(event["outputs"])
        elif event["event"] == "chunk" and streamed is not None:
            yield _data({streamed: event["text"]})
        elif event["event"] == "result":
            if event["status"] != "completed":
                error = event.get("error") or {}
                yield _data({"error": {"code": "flow_failed", "message": error.get("message")}})
            elif streamed is None:  # nothing streamed: the outputs in one event
                yield _data(event["outputs"])
