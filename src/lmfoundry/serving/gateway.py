"""The data plane's hot path: key -> request -> tokens -> quota -> instance -> metering.

Every request is admitted with exact numbers (the prompt is tokenized here, so a bad request
never wakes an instance), reserves `prompt_tokens + max_tokens` of its target's quota, and
settles the reservation to what it really used, whether it completed, failed or was
cancelled mid-stream. One usage record is written per request that reached the engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lmfoundry.access.keys import KeyStore
from lmfoundry.catalog.service import ResolvedModel
from lmfoundry.config import Settings
from lmfoundry.deployments.resolve import ModelResolver
from lmfoundry.deployments.serverless import ServingTarget
from lmfoundry.engines.base import GenerationRequest, Tokenizer
from lmfoundry.engines.capabilities import create_tokenizer, instance_options, supports
from lmfoundry.engines.chat_template import Interruptible, render_limits
from lmfoundry.errors import (
    EngineFailed,
    Forbidden,
    InvalidRequest,
    LmfError,
    RateLimited,
    Unauthorized,
)
from lmfoundry.metering.service import MeteringService, Usage
from lmfoundry.observability import logs, tracing
from lmfoundry.observability.metrics import Metrics, Scope
from lmfoundry.quotas.service import QuotaService, rate_limit_headers
from lmfoundry.quotas.window import Decision
from lmfoundry.runtime.backend import Backend, Group
from lmfoundry.runtime.spec import InstanceSpec
from lmfoundry.serving import wire
from lmfoundry.serving.answers import DONE, Answer, Choice, event, usage
from lmfoundry.serving.checks import (
    APIS,
    ChatResult,
    InferenceRequest,
    check_characters,
    context_chars,
    extra_mode,
    requests_only,
    status_of,
    tokens_only,
)
from lmfoundry.storage.db import Database


@dataclass
class Admitted:
    """A request that passed admission: what to run and what it reserved."""

    target: ServingTarget
    deployment: str
    key_slot: str
    model: ResolvedModel
    group: Group
    generation: GenerationRequest
    answer: Answer
    reservation: str
    headers: dict[str, str]
    request_id: str
    admitted_at: datetime
    mirrored: bool = False
    started: float = field(default_factory=time.perf_counter)
    instance: tracing.Span = tracing.OFF  # the instance call's span, ended at settlement

    @property
    def prompt_tokens(self) -> int:
        return len(self.generation.prompt)

    @property
    def adapter(self) -> str:
        """The served adapter's model name, or "" (a base model): a metrics label."""
        return self.model.card.id if self.model.adapter is not None else ""

    def usage(self) -> Usage:
        return Usage(
            request_id=self.request_id,
            at=self.admitted_at,
            project_id=self.target.project_id,
            target_kind=self.target.kind,
            target=self.target.name,
            deployment=self.deployment,
            key_slot=self.key_slot,
            model=self.model.card.id,
            price_input_per_1k=self.target.price_input_per_1k,
            price_output_per_1k=self.target.price_output_per_1k,
            mirrored=self.mirrored,
        )


class Gateway:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        resolver: ModelResolver,
        keys: KeyStore,
        backend: Backend,
        quotas: QuotaService,
        metering: MeteringService,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.resolver = resolver
        self.keys = keys
        self.backend = backend
        self.quotas = quotas
        self.metering = metering
        self.metrics = metrics or Metrics(db)
        self._tokenizers: dict[str, Tokenizer] = {}
        self._tokenizer_locks: dict[str, asyncio.Lock] = {}
        self._resolved: dict[tuple[int, str], ResolvedModel] = {}

    # -- admission ---------------------------------------------------------------------------

    def check_key(self, target: ServingTarget, presented: str | None) -> str:
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

    async def authorize(self, target: ServingTarget, presented: str | None, request_id: str) -> str:
        """`check_key` for a request that would generate or embed: a 401 or a 403 is
        counted and recorded as a refusal of `target`, as its caller saw it."""
        started = time.perf_counter()
        try:
            return self.check_key(target, presented)
        except (Unauthorized, Forbidden) as exc:
            await self.refused(target, target.name, None, "", request_id, exc, started)
            raise

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

    async def admit(
        self,
        target: ServingTarget,
        key_slot: str,
        deployment: str,
        request: InferenceRequest,
        extra: wire.ExtraMode,
        request_id: str,
        group: Group | None = None,
        claim: str = "",
        model: ResolvedModel | None = None,
        mirrored: bool = False,
    ) -> Admitted:
        """Check the request, count its prompt, and reserve its quota. `claim` names the
        caller's retry (same key, same body) so a refused caller keeps its place in line."""
        model = model or await self.resolve_async(target.project_id, target.model)
        model.card.require_type("chat-completions")  # an embeddings model: 400 saying so
        tokenizer = await self.tokenizer(model)
        request.check_supported(model.engine)
        limits = target.limits
        # Cheap checks first: a request is counted against requests/min and measured in
        # characters before its template is rendered or a token counted.
        counted = None
        if not mirrored:
            with tracing.span("quota", **{"lmfoundry.quota.limit": "requests"}):
                counted = await self.quotas.reserve(
                    self._requests_key(target), 0, requests_only(limits), claim=claim
                )
            if not counted.allowed:  # chat() adds the x-ratelimit-* headers
                raise await self.over_quota(target, counted, {}, "requests")
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
        if counted is None:  # a copy for the mirror deployment: not the caller's quota
            decision = Decision(True, "", limits.tokens_per_minute, limits.requests_per_minute, 0)
            remaining_requests = limits.requests_per_minute
        else:
            with tracing.span("quota", **{"lmfoundry.quota.limit": "tokens"}):
                decision = await self.quotas.reserve(
                    self._quota_key(target), reserve, tokens_only(limits), claim=claim
                )
            remaining_requests = min(counted.remaining_requests, decision.remaining_requests)
        headers = rate_limit_headers(limits, decision.remaining_tokens, remaining_requests)
        if not decision.allowed:
            raise await self.over_quota(target, decision, headers, "tokens")
        if counted is not None:
            await self.metrics.quota_left(
                self.scope(target, deployment, model),
                decision.remaining_tokens,
                remaining_requests,
            )
        if group is None:
            group = self.backend.group(self.instance_spec(model), name=model.card.id)
        return Admitted(
            target=target,
            deployment=deployment,
            key_slot=key_slot,
            model=model,
            group=group,
            generation=GenerationRequest(
                prompt=prompt,
                params=params,
                request_id=request_id,
                adapter=str(model.adapter) if model.adapter else None,
                delivery_interval=self.settings.stream_interval_ms / 1000,
            ),
            answer=request.answer(model.card.id),
            reservation=decision.reservation or "",
            headers=headers,
            request_id=request_id,
            admitted_at=admitted_at,
            mirrored=mirrored,
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

    @staticmethod
    def _quota_key(target: ServingTarget) -> str:
        """The target's tokens/min window (embeddings count their requests there too)."""
        return f"{target.kind}:{target.id}"

    @staticmethod
    def _requests_key(target: ServingTarget) -> str:
        """The requests/min window of generating requests, counted before any rendering."""
        return f"{target.kind}:{target.id}:requests"

    def scope(
        self, target: ServingTarget, deployment: str, model: ResolvedModel | None = None
    ) -> Scope:
        """A request's metrics labels; the adapter label from `model` or, for a request
        refused before it was resolved, the target's cached resolution."""
        model = model or self._cached(target.project_id, target.model)
        adapter = model.card.id if model is not None and model.adapter is not None else ""
        return Scope(target.project_id, target.kind, target.name, deployment, adapter)

    async def over_quota(
        self, target: ServingTarget, decision: Decision, headers: dict[str, str], limit: str
    ) -> RateLimited:
        """The 429 for a refused reservation, counted once per refusal; `limit`: `tokens`
        or `requests`, the window that refused it."""
        await self.metrics.over_quota(self.scope(target, target.name), limit)
        seconds = decision.retry_after_seconds
        return RateLimited(
            f"{target.name!r} is over its quota of {decision.reason}; retry after {seconds} s "
            "or raise the deployment's quota.",
            headers={
                **headers,
                "Retry-After": str(seconds),
                "retry-after-ms": str(int(decision.retry_after * 1000) + 1),
            },
        )

    async def refused(
        self,
        target: ServingTarget,
        deployment: str,
        model: ResolvedModel | None,
        key_slot: str,
        request_id: str,
        exc: LmfError,
        started: float,
    ) -> None:
        """A request refused at admission (a 400, a 429): counted once in /metrics and
        written to the ledger as a refusal (no tokens, not billed), so the monitoring page
        shows what the caller saw."""
        scope = self.scope(target, deployment, model)
        await self.metrics.refused(scope, exc.status_code, started)
        await self.metering.record(
            Usage(
                request_id=request_id,
                project_id=target.project_id,
                target_kind=target.kind,
                target=target.name,
                deployment=deployment,
                key_slot=key_slot,
                model=model.card.id if model is not None else target.model,
                price_input_per_1k=target.price_input_per_1k,
                price_output_per_1k=target.price_output_per_1k,
                latency_ms=(time.perf_counter() - started) * 1000,
                status_code=exc.status_code,
                refused=True,
            )
        )

    async def remaining_headers(self, target: ServingTarget) -> dict[str, str]:
        tokens, requests = await self.quotas.remaining(self._quota_key(target), target.limits)
        _, counted = await self.quotas.remaining(self._requests_key(target), target.limits)
        return rate_limit_headers(target.limits, tokens, min(requests, counted))

    async def chat(
        self,
        target: ServingTarget,
        key_slot: str,
        body: bytes,
        extra_header: str | None,
        request_id: str,
        deployment: str | None = None,
        group: Group | None = None,
        model: ResolvedModel | None = None,
        api: str = "chat",
    ) -> ChatResult:
        """Parse, admit and run one request of a generating API (`APIS`: chat completions
        by default) for an authenticated caller."""
        started = time.perf_counter()
        logs.note_target(target, deployment or target.name, key_slot)
        try:
            extra = extra_mode(extra_header)
            request = APIS[api].parse(body, extra)
            claim = f"{key_slot}:{hashlib.sha256(body).hexdigest()[:24]}"
            with tracing.span("admission"):
                admitted = await self.admit(
                    target,
                    key_slot,
                    deployment or target.name,
                    request,
                    extra,
                    request_id,
                    group,
                    claim,
                    model,
                )
        except LmfError as exc:
            exc.headers = {**await self.remaining_headers(target), **exc.headers}
            await self.refused(
                target, deployment or target.name, model, key_slot, request_id, exc, started
            )
            raise
        headers = {**admitted.headers, "azureml-model-deployment": admitted.deployment}
        ignored = request.ignored_parameters(extra)
        if ignored:
            headers[wire.IGNORED_HEADER] = ",".join(ignored)
        if request.stream:
            return ChatResult(headers=headers, stream=self.stream(admitted))
        try:
            return ChatResult(headers=headers, body=await self.complete(admitted))
        except LmfError as exc:
            exc.headers = {**headers, **exc.headers}
            raise

    async def mirror(
        self,
        target: ServingTarget,
        key_slot: str,
        body: bytes,
        extra_header: str | None,
        request_id: str,
        deployment: str,
        group: Group,
        model: ResolvedModel,
        api: str = "chat",
    ) -> None:
        """Run a mirrored copy of a request to the end; only its usage record remains."""
        extra = extra_mode(extra_header)
        request = APIS[api].parse(body, extra)
        admitted = await self.admit(
            target,
            key_slot,
            deployment,
            request,
            extra,
            request_id,
            group,
            model=model,
            mirrored=True,
        )
        await self.complete(admitted)

    # -- running -----------------------------------------------------------------------------

    async def complete(self, admitted: Admitted) -> dict[str, Any]:
        """Run a non-streaming request to the end and return the response body. Nothing has
        reached the caller yet, so if its instance dies mid-answer the request starts over
        on another instance (once)."""
        record = admitted.usage()
        n = admitted.generation.params.n
        admitted.instance = tracing.start("instance", **{"lmfoundry.model": record.model})
        for attempt in range(2):
            choices = [Choice() for _ in range(n)]
            try:
                async for delta in admitted.group.generate(admitted.generation):
                    if record.ttft_ms is None:
                        record.ttft_ms = (time.perf_counter() - admitted.started) * 1000
                        admitted.instance.first_token(record.ttft_ms)
                    choices[delta.index].add(delta)
                break
            except EngineFailed:
                if attempt == 0 and admitted.group.ready():
                    record.ttft_ms = None
                    continue
                await self._finish(
                    admitted, record, 0, _tokens(choices), EngineFailed.status_code, False
                )
                raise
            except BaseException as exc:
                await self._finish(admitted, record, 0, _tokens(choices), status_of(exc), False)
                raise
        completion = _tokens(choices)
        await self._finish(admitted, record, admitted.prompt_tokens, completion, 200, False)
        return admitted.answer.body(choices, usage(admitted.prompt_tokens, completion))

    async def stream(self, admitted: Admitted) -> AsyncIterator[bytes]:
        """Data-only server-sent events: chunks, a final chunk with usage, then [DONE]."""
        record = admitted.usage()
        record.streamed = True
        events = admitted.answer.stream()
        counts = [0] * admitted.generation.params.n  # tokens so far, per choice
        status = 200
        delivered = False
        admitted.instance = tracing.start("instance", **{"lmfoundry.model": record.model})
        deltas = admitted.group.generate(admitted.generation)
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
            await self._finish(admitted, record, prompt, sum(counts), status, True)

    async def _finish(
        self,
        admitted: Admitted,
        usage: Usage,
        prompt: int,
        completion: int,
        status: int,
        streamed: bool,
    ) -> None:
        """`_settle`, carried to its end even when the request's task is cancelled (a
        client that closes the connection once it has read [DONE] cancels the stream's
        task; with Redis the record's push is awaited, and a cancel there would leave the
        request out of /metrics and its reservation unsettled)."""
        await asyncio.shield(self._settle(admitted, usage, prompt, completion, status, streamed))

    async def _settle(
        self,
        admitted: Admitted,
        usage: Usage,
        prompt: int,
        completion: int,
        status: int,
        streamed: bool,
    ) -> None:
        """Settle the reservation to what was used and write the usage record."""
        usage.prompt_tokens = prompt
        usage.completion_tokens = completion
        usage.status_code = status
        usage.streamed = streamed
        usage.latency_ms = (time.perf_counter() - admitted.started) * 1000
        admitted.instance.end(status)
        logs.note_usage(usage)
        with tracing.span("settlement", **tracing.tokens(prompt, completion, status)):
            await self.metering.record(usage)
            await self.metrics.settled(usage, admitted.adapter)
            if admitted.reservation:
                await self.quotas.settle(
                    self._quota_key(admitted.target), admitted.reservation, prompt + completion
                )


def _tokens(choices: list[Choice]) -> int:
    return sum(c.tokens for c in choices)
