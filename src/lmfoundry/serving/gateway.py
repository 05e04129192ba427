"""One generating request (chat completions, or the legacy completions API) on the deployment
the data plane picked: admission -> the instance -> settlement.

Every request is admitted with exact numbers (the prompt is tokenized here, so a bad request
never wakes an instance), reserves `prompt_tokens + max_tokens` of its target's quota, and
settles the reservation to what it really used, whether it completed, failed or was
cancelled mid-stream. One usage record is written per request: a billed one for a request
that reached the engine, a refusal for one refused at admission.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lmfoundry.catalog.service import ResolvedModel
from lmfoundry.config import Settings
from lmfoundry.deployments.fleet import Running
from lmfoundry.deployments.resolve import ModelResolver
from lmfoundry.deployments.targets import Target
from lmfoundry.engines.base import GenerationRequest, Tokenizer
from lmfoundry.engines.capabilities import create_tokenizer, instance_options, supports
from lmfoundry.engines.chat_template import Interruptible, render_limits
from lmfoundry.errors import EngineFailed, InvalidRequest, LmfError
from lmfoundry.metering.service import MeteringService, Usage
from lmfoundry.observability import logs, tracing
from lmfoundry.observability.metrics import Metrics, Scope
from lmfoundry.quotas.service import Grant, OverQuota, QuotaService
from lmfoundry.runtime.backend import Backend, Group
from lmfoundry.runtime.retry import ONCE_IF_READY
from lmfoundry.runtime.spec import InstanceSpec
from lmfoundry.serving import wire
from lmfoundry.serving.answers import DONE, Answer, Choice, event, usage
from lmfoundry.serving.checks import (
    APIS,
    InferenceRequest,
    Reply,
    check_characters,
    context_chars,
    extra_mode,
    status_of,
)
from lmfoundry.storage.db import Database


@dataclass
class Served:
    """The deployment that answers a request, ready to run it: a serverless deployment
    (itself), or the endpoint deployment the traffic split picked."""

    deployment: str
    model: ResolvedModel
    group: Group
    price_input_per_1k: float
    price_output_per_1k: float
    running: Running | None = None  # an endpoint deployment: its concurrency and timeout

    @property
    def timeout(self) -> float | None:
        """Seconds the request may take (an endpoint deployment's request_timeout_ms)."""
        if self.running is None:
            return None
        return self.running.state.request_settings["request_timeout_ms"] / 1000

    @property
    def adapter(self) -> str:
        """The served adapter's model name, or "" (a base model): a metrics label."""
        return self.model.card.id if self.model.adapter is not None else ""


@dataclass(frozen=True)
class Admission:
    """One request as admission takes it: where it was sent and with which key, the
    deployment that answers, and the body as it came."""

    target: Target
    served: Served
    key_slot: str  # `primary` or `secondary`: the key that opened the target
    request_id: str
    body: bytes
    extra_parameters: str | None = None  # the `extra-parameters` header
    api: str = "chat"  # one of `APIS`
    mirrored: bool = False  # a copy for the mirror deployment: not the caller's quota
    headers: dict[str, str] = field(default_factory=dict)  # the call's: sent with an error

    @property
    def claim(self) -> str:
        """Names the caller's retry (same key, same body), so a refused caller keeps its
        place in line."""
        return f"{self.key_slot}:{hashlib.sha256(self.body).hexdigest()[:24]}"

    def usage(self, **values: Any) -> Usage:
        """The usage record of this request, before its numbers are known."""
        return Usage(
            request_id=self.request_id,
            project_id=self.target.project_id,
            target_kind=self.target.kind,
            target=self.target.name,
            deployment=self.served.deployment,
            key_slot=self.key_slot,
            model=self.served.model.card.id,
            price_input_per_1k=self.served.price_input_per_1k,
            price_output_per_1k=self.served.price_output_per_1k,
            mirrored=self.mirrored,
            **values,
        )


@dataclass
class Admitted:
    """A request that passed admission: what to run and what it reserved."""

    admission: Admission
    generation: GenerationRequest
    answer: Answer
    grant: Grant
    admitted_at: datetime
    started: float = field(default_factory=time.perf_counter)
    instance: tracing.Span = tracing.OFF  # the instance call's span, ended at settlement

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt)


class Gateway:
    """Admission, the run and settlement of generating requests, and the model side they
    share with embeddings: resolved models, tokenizers and instance specs."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        resolver: ModelResolver,
        backend: Backend,
        quotas: QuotaService,
        metering: MeteringService,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.resolver = resolver
        self.backend = backend
        self.quotas = quotas
        self.metering = metering
        self.metrics = metrics or Metrics(db)
        self._tokenizers: dict[str, Tokenizer] = {}
        self._tokenizer_locks: dict[str, asyncio.Lock] = {}
        self._resolved: dict[tuple[int, str], ResolvedModel] = {}

    # -- the model side ----------------------------------------------------------------------

    def _cached(self, project_id: int, ref: str) -> ResolvedModel | None:
        resolved = self._resolved.get((project_id, ref))
        return resolved if resolved is not None and resolved.path.exists() else None

    def resolve(self, project_id: int, ref: str) -> ResolvedModel:
        resolved = self._cached(project_id, ref)
        if resolved is None:
            resolved = self._resolved[(project_id, ref)] = self.resolver.resolve(project_id, ref)
        return resolved

    async def resolve_async(self, project_id: int, ref: str) -> ResolvedModel:
        """`resolve` off the event loop when it is not cached: the first resolution of an
        adapter converts it to GGUF (seconds, in a child process)."""
        cached = self._cached(project_id, ref)
        if cached is not None:
            return cached
        return await asyncio.to_thread(self.resolve, project_id, ref)

    async def tokenizer(self, model: ResolvedModel) -> Tokenizer:
        key = f"{model.instance_key}:{model.card.context_length}:{model.card.chat_template}"
        tokenizer = self._tokenizers.get(key)
        if tokenizer is not None:
            return tokenizer
        lock = self._tokenizer_locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key not in self._tokenizers:
                self._tokenizers[key] = await asyncio.to_thread(
                    create_tokenizer,
                    model.engine,
                    str(model.path),
                    model.card.chat_template,
                    model.card.context_length,
                )
        return self._tokenizers[key]

    def instance_spec(self, model: ResolvedModel) -> InstanceSpec:
        options = instance_options(
            model.engine,
            self.settings.engine_threads,
            self.settings.engine_max_sequences,
            self.settings.engine_kv_tokens,
        )
        if model.adapter is not None and supports(model.engine, "adapter_files"):
            # Loaded when the instance starts (llama-server), not on a request's first use;
            # the fleet merges the adapters of one base into one instance.
            options["loras"] = [str(model.adapter)]
        if model.card.model_type == "embeddings":
            options["embeddings"] = model.card.pooling or "mean"  # llama-server's pooling
        return InstanceSpec.make(model.engine, str(model.path), options)

    def group(self, model: ResolvedModel) -> Group:
        """The instances of a serverless deployment's model (started on demand)."""
        return self.backend.group(self.instance_spec(model), name=model.card.id)

    # -- one request -------------------------------------------------------------------------

    async def generate(self, admission: Admission) -> Reply:
        """Parse, admit and run one request of a generating API for an authenticated caller:
        the whole answer, or a stream of server-sent events."""
        started = time.perf_counter()
        target, served = admission.target, admission.served
        logs.note_target(target, served.deployment, admission.key_slot)
        try:
            extra = extra_mode(admission.extra_parameters)
            request = APIS[admission.api].parse(admission.body, extra)
            with tracing.span("admission"):
                admitted = await self.admit(admission, request, extra)
        except LmfError as exc:
            if not admission.mirrored:
                admission.headers.update(await self.quotas.headers(target.quota))
                await self.refused(admission, exc, started)
            raise
        headers = {**admitted.grant.headers, "azureml-model-deployment": served.deployment}
        ignored = request.ignored_parameters(extra)
        if ignored:
            headers[wire.IGNORED_HEADER] = ",".join(ignored)
        admission.headers.update(headers)  # an engine's error is sent with them too
        if request.stream:
            return Reply(headers=headers, stream=self._stream(admitted))
        return Reply(headers=headers, body=await self._complete(admitted))

    async def admit(
        self, admission: Admission, request: InferenceRequest, extra: wire.ExtraMode
    ) -> Admitted:
        """Check the request, count its prompt, and reserve its quota."""
        target, model = admission.target, admission.served.model
        model.card.require_type("chat-completions")  # an embeddings model: 400 saying so
        tokenizer = await self.tokenizer(model)
        request.check_supported(model.engine)
        quota = target.quota
        # Cheap checks first: a request is counted against requests/min and measured in
        # characters before its template is rendered or a token counted.
        counted = None
        if not admission.mirrored:
            with tracing.span("quota", **{"lmfoundry.quota.limit": "requests"}):
                counted = await self.quotas.count_request(quota, admission.claim)
        context = tokenizer.context_length
        check_characters(request, model, context)
        prompt = await self._prompt(request, tokenizer)
        if len(prompt) >= context:
            raise InvalidRequest(
                f"messages: the prompt is {len(prompt)} tokens but {model.card.id} has a "
                f"context of {context} tokens; shorten the messages.",
                param="messages",
            )
        requested = request.completion_cap()
        if requested is None:
            max_tokens = min(model.card.default_max_tokens, context - len(prompt))
        elif len(prompt) + requested > context:
            raise InvalidRequest(
                f"max_tokens: the prompt ({len(prompt)} tokens) plus max_tokens ({requested}) "
                f"exceeds the context of {context} tokens; set max_tokens to at most "
                f"{context - len(prompt)}.",
                param="max_tokens",
            )
        else:
            max_tokens = requested
        n = request.choices
        reserve = len(prompt) + n * max_tokens  # every choice may use all of max_tokens
        limits = target.limits
        if reserve > limits.tokens_per_minute:
            times = f"{n} x " if n > 1 else ""
            raise InvalidRequest(
                f"max_tokens: this request needs {reserve} tokens (prompt {len(prompt)} + "
                f"{times}max_tokens {max_tokens}) but {target.name!r} allows "
                f"{limits.tokens_per_minute} tokens per minute; lower max_tokens or raise "
                "the deployment's tokens_per_minute.",
                param="max_tokens",
            )
        params = request.to_sampling_params(max_tokens, extra)
        admitted_at = datetime.now(UTC)
        if counted is None:
            grant = self.quotas.unlimited(quota)
        else:
            with tracing.span("quota", **{"lmfoundry.quota.limit": "tokens"}):
                grant = await self.quotas.reserve_tokens(quota, reserve, admission.claim, counted)
            await self.metrics.quota_left(
                self.scope(admission), grant.remaining_tokens, grant.remaining_requests
            )
        return Admitted(
            admission=admission,
            generation=GenerationRequest(
                prompt=prompt,
                params=params,
                request_id=admission.request_id,
                adapter=str(model.adapter) if model.adapter else None,
                delivery_interval=self.settings.stream_interval_ms / 1000,
            ),
            answer=request.answer(model.card.id),
            grant=grant,
            admitted_at=admitted_at,
        )

    async def _prompt(self, request: InferenceRequest, tokenizer: Tokenizer) -> list[int]:
        """The prompt's tokens: its template rendered and its text tokenised in a worker
        thread, off the event loop, within LMFOUNDRY_MAX_PROMPT_SECONDS (the template
        checks the deadline as it renders; see engines/chat_template.py)."""
        seconds = self.settings.max_prompt_seconds

        def work() -> list[int]:
            with render_limits(seconds, context_chars(tokenizer.context_length)):
                return tokenizer.encode(request.prompt_text(tokenizer))

        job = Interruptible(work, "Rendering the prompt")
        try:
            return await asyncio.wait_for(asyncio.to_thread(job), seconds)
        except TimeoutError:
            job.interrupt()  # so a template that ignored the deadline frees its thread
            raise InvalidRequest(
                f"messages: rendering and counting the prompt took more than {seconds:g} s "
                "(LMFOUNDRY_MAX_PROMPT_SECONDS); send fewer or shorter messages.",
                param="messages",
            ) from None

    # -- refusals ----------------------------------------------------------------------------

    def scope(self, admission: Admission) -> Scope:
        """A request's metrics labels."""
        target = admission.target
        served = admission.served
        return Scope(target.project_id, target.kind, target.name, served.deployment, served.adapter)

    async def refused(self, admission: Admission, exc: LmfError, started: float) -> None:
        """A request refused at admission (a 400, a 429): counted once in /metrics and
        written to the ledger as a refusal (no tokens, not billed), so the monitoring page
        shows what the caller saw."""
        target = admission.target
        if isinstance(exc, OverQuota):
            scope = Scope(target.project_id, target.kind, target.name, target.name)
            await self.metrics.over_quota(scope, exc.limit)
        await self.refusal(
            target,
            admission.served.deployment,
            admission.served.adapter,
            admission.served.model.card.id,
            admission.key_slot,
            admission.request_id,
            exc,
            started,
        )

    async def refusal(
        self,
        target: Target,
        deployment: str,
        adapter: str,
        model: str,
        key_slot: str,
        request_id: str,
        exc: LmfError,
        started: float,
    ) -> None:
        """`refused` for a request refused before a deployment was there to answer it (a
        wrong key, a deployment still starting): `model` as far as it is known."""
        scope = Scope(target.project_id, target.kind, target.name, deployment, adapter)
        await self.metrics.refused(scope, exc.status_code, started)
        await self.metering.record(
            Usage(
                request_id=request_id,
                project_id=target.project_id,
                target_kind=target.kind,
                target=target.name,
                deployment=deployment,
                key_slot=key_slot,
                model=model,
                price_input_per_1k=0.0,
                price_output_per_1k=0.0,
                latency_ms=(time.perf_counter() - started) * 1000,
                status_code=exc.status_code,
                refused=True,
            )
        )

    # -- running -----------------------------------------------------------------------------

    async def _complete(self, admitted: Admitted) -> dict[str, Any]:
        """Run a non-streaming request to the end and return the response body. Nothing has
        reached the caller yet, so if its instance dies mid-answer the request starts over
        on another instance (`ONCE_IF_READY`)."""
        record = admitted.admission.usage()
        group = admitted.admission.served.group
        n = admitted.generation.params.n
        admitted.instance = tracing.start("instance", **{"lmfoundry.model": record.model})
        attempt = 0
        while True:
            choices = [Choice() for _ in range(n)]
            try:
                async for delta in group.generate(admitted.generation):
                    if record.ttft_ms is None:
                        record.ttft_ms = (time.perf_counter() - admitted.started) * 1000
                        admitted.instance.first_token(record.ttft_ms)
                    choices[delta.index].add(delta)
                break
            except EngineFailed as exc:
                attempt += 1  # the whole answer runs again: nothing reached the caller
                if ONCE_IF_READY.again(attempt, ready=group.ready()):
                    record.ttft_ms = None
                    continue
                await self._finish(admitted, record, 0, _tokens(choices), exc.status_code)
                raise
            except BaseException as exc:
                await self._finish(admitted, record, 0, _tokens(choices), status_of(exc))
                raise
        completion = _tokens(choices)
        await self._finish(admitted, record, admitted.prompt_tokens, completion, 200)
        return admitted.answer.body(choices, usage(admitted.prompt_tokens, completion))

    async def _stream(self, admitted: Admitted) -> AsyncIterator[bytes]:
        """Data-only server-sent events: chunks, a final chunk with usage, then [DONE]."""
        record = admitted.admission.usage(streamed=True)
        events = admitted.answer.stream()
        counts = [0] * admitted.generation.params.n  # tokens so far, per choice
        status = 200
        delivered = False
        admitted.instance = tracing.start("instance", **{"lmfoundry.model": record.model})
        deltas = admitted.admission.served.group.generate(admitted.generation)
        try:
            first = events.start()
            if first:
                yield first
            async for delta in deltas:
                counts[delta.index] = delta.completion_tokens
                delivered = True
                if delta.text and record.ttft_ms is None:
                    record.ttft_ms = (time.perf_counter() - admitted.started) * 1000
                    admitted.instance.first_token(record.ttft_ms)
                out = events.delta(delta)
                if out:
                    yield out
            yield events.end(usage(admitted.prompt_tokens, sum(counts))) + DONE
        except LmfError as exc:
            status = exc.status_code
            yield event(exc.to_body())
        except BaseException as exc:  # client gone (cancelled) or anything unexpected
            status = status_of(exc)
            raise
        finally:
            await deltas.aclose()
            prompt = admitted.prompt_tokens if delivered else 0
            await self._finish(admitted, record, prompt, sum(counts), status)

    async def _finish(
        self, admitted: Admitted, record: Usage, prompt: int, completion: int, status: int
    ) -> None:
        """`_settle`, carried to its end even when the request's task is cancelled (a
        client that closes the connection once it has read [DONE] cancels the stream's
        task; with Redis the record's push is awaited, and a cancel there would leave the
        request out of /metrics and its reservation unsettled)."""
        await asyncio.shield(self._settle(admitted, record, prompt, completion, status))

    async def _settle(
        self, admitted: Admitted, record: Usage, prompt: int, completion: int, status: int
    ) -> None:
        """Settle the reservation to what was used and write the usage record."""
        record.prompt_tokens = prompt
        record.completion_tokens = completion
        record.status_code = status
        record.latency_ms = (time.perf_counter() - admitted.started) * 1000
        admitted.instance.end(status)
        logs.note_usage(record)
        admission = admitted.admission
        with tracing.span("settlement", **tracing.tokens(prompt, completion, status)):
            await self.metering.record(record)
            await self.metrics.settled(record, admission.served.adapter)
            await self.quotas.settle_tokens(
                admission.target.quota, admitted.grant.reservation, prompt + completion
            )


def _tokens(choices: list[Choice]) -> int:
    return sum(c.tokens for c in choices)
