"""The `onnx` engine: models in ONNX Runtime GenAI's format (a folder with genai_config.json,
model.onnx and the Hugging Face tokenizer files, as its model builder writes them; see
`lmfoundry catalog build-onnx`), run by onnxruntime-genai.

Batching. onnxruntime-genai's `Engine` batches requests, but on the CPU only *statically*:
its continuous (dynamic) batching needs a model built with paged attention, which the
builder emits for CUDA only. The static scheduler starts a batch with up to
`max_sequences` waiting requests and decodes them together, one token each per step;
requests that arrive meanwhile wait (inside the og Engine) until every sequence of that batch
has finished, then form the next batch. So concurrent requests that arrive together are
batched (more tokens/s than one at a time), while a request that arrives during a long
batch waits for it (its time to first token grows); the llamacpp engine, which batches
continuously, has no such wait.

Seeded sampling. The static Engine refuses a per-request seed, so a request that samples
(temperature > 0) with a `seed` runs on its own `og.Generator` (whose `random_seed` makes it
reproducible), stepped one token per loop iteration beside the batch: served concurrently,
not batched.

Sampling parameters onnxruntime-genai has: temperature, top_p, top_k, its repetition penalty
(over the whole sequence, not llama.cpp's last 64 tokens), seed. min_p, presence_penalty and
frequency_penalty are refused with a 400, as is a JSON response format.

Thread model. One decode thread owns the og Engine, its requests and the seeded Generators
(the og Engine must be used from the thread that owns it). `generate()` (on the event loop)
validates the request and hands it over under a condition variable; deltas come back through
`loop.call_soon_threadsafe` into a per-request `asyncio.Queue` (`engines.base.relay`).
Closing the generator marks the sequence cancelled; the thread closes its og request at the
next iteration. Text comes from the folder's tokenizer.json (the `tokenizers` library),
decoded incrementally as the transformers engine does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lmfoundry.engines.base import (
    DecodeThread,
    Delta,
    EngineError,
    GenerationRequest,
    SamplingParams,
    checked_prompt,
)
from lmfoundry.engines.chat_template import render_chat, template_mentions_tools
from lmfoundry.engines.gguf import PLAIN_TEMPLATE
from lmfoundry.engines.hf import END_OF_TURN_TOKENS, IncrementalDetokenizer
from lmfoundry.engines.stops import StopScanner
from lmfoundry.errors import Unavailable

log = logging.getLogger(__name__)

GENAI_CONFIG = "genai_config.json"
DEFAULT_CONTEXT = 2048

# og EngineEventFlags bits
_TOKEN = 1
_TURN_FINISHED = 2
_FAILED = 8


# ---------------------------------------------------------------- the model folder


def is_onnx_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / GENAI_CONFIG).is_file()


def read_genai_config(path: Path) -> dict[str, Any]:
    """genai_config.json of an ONNX model folder (a clear error when it is not one)."""
    config_path = Path(path) / GENAI_CONFIG
    try:
        config: dict[str, Any] = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise Unavailable(
            f"{path} is not an ONNX Runtime GenAI model folder ({GENAI_CONFIG}: {exc}); "
            "build one with `lmfoundry catalog build-onnx`."
        ) from exc
    return config


def context_length_of(config: dict[str, Any]) -> int:
    model = config.get("model") or {}
    return int(model.get("context_length") or config.get("search", {}).get("max_length") or 0) or (
        DEFAULT_CONTEXT
    )


def chat_template_in(path: Path) -> str | None:
    """The folder's chat template: chat_template.jinja, else tokenizer_config.json's
    (of several named templates, the default one)."""
    jinja = Path(path) / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    template = _tokenizer_config(path).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _tokenizer_config(path: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((Path(path) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config


def _token_text(value: Any) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def load_tokenizer_json(path: Path) -> Any:
    """The folder's tokenizer.json as a `tokenizers.Tokenizer` (no transformers needed)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise Unavailable(
            "Serving ONNX models needs the tokenizers package; install it with "
            "`pip install 'lmfoundry[onnx]'`."
        ) from exc
    file = Path(path) / "tokenizer.json"
    if not file.is_file():
        raise Unavailable(
            f"{path} has no tokenizer.json; rebuild it with `lmfoundry catalog build-onnx` "
            "from a Hugging Face folder whose tokenizer is a fast one."
        )
    return Tokenizer.from_file(str(file))


def end_token_ids(tokenizer: Any, config: dict[str, Any]) -> set[int]:
    """genai_config.json's eos ids, and the known end-of-turn tokens the vocabulary has."""
    value = (config.get("model") or {}).get("eos_token_id")
    ids = {int(v) for v in (value if isinstance(value, list) else [value]) if v is not None}
    for token in END_OF_TURN_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            ids.add(int(token_id))
    return ids


class OnnxTokenizer:
    """The gateway-side tokenizer of an ONNX folder: the folder's tokenizer.json, without
    special tokens added (the chat template writes any BOS itself), exactly as Hugging Face's
    `apply_chat_template(tokenize=True)` tokenizes; light (no onnxruntime, no transformers)."""

    def __init__(
        self, path: Path, chat_template: str | None = None, context_length: int | None = None
    ) -> None:
        self._tokenizer = load_tokenizer_json(path)
        config = _tokenizer_config(path)
        self.template = chat_template or chat_template_in(path) or PLAIN_TEMPLATE
        self.context_length = context_length or context_length_of(read_genai_config(path))
        self.supports_tools = template_mentions_tools(self.template)
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self._lock = threading.Lock()

    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        return render_chat(
            self.template, messages, bos_token=self.bos_token, eos_token=self.eos_token, tools=tools
        )

    def encode(self, text: str) -> list[int]:
        with self._lock:
            ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids


# ---------------------------------------------------------------- the engine


class _Seq:
    """One request, from submission to its final delta."""

    __slots__ = (
        "budget",
        "cancelled",
        "detok",
        "done",
        "generator",
        "loop",
        "n_generated",
        "params",
        "prompt",
        "queue",
        "request",
        "stops",
    )

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        budget: int,
        detok: IncrementalDetokenizer,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Any],
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.budget = budget  # tokens this sequence may generate (max_tokens, context-capped)
        self.detok = detok
        self.stops = StopScanner(params.stop)
        self.loop = loop
        self.queue = queue
        self.request: Any = None  # og.Request, when batched by the og Engine
        self.generator: Any = None  # og.Generator, for seeded sampling
        self.n_generated = 0  # generated tokens, end-of-sequence tokens excluded
        self.cancelled = False
        self.done = False

    @property
    def seeded(self) -> bool:
        return self.params.temperature > 0 and self.params.seed is not None


class OnnxEngine(DecodeThread):
    """onnxruntime-genai engine for ONNX model folders (see the module docstring).

    Keyword options (from the instance settings):
      n_threads      intra-op threads of the ONNX Runtime session (default: its own choice,
                     one per core)
      max_sequences  most requests in one batch (default 16)
    """

    engine_name = "onnx"

    def __init__(
        self,
        model_path: Path,
        *,
        n_threads: int | None = None,
        max_sequences: int = 16,
        **unknown: Any,
    ) -> None:
        import onnxruntime_genai as og

        if unknown:
            log.warning("onnx engine: ignoring unknown options %s", sorted(unknown))
        if max_sequences < 1:
            raise ValueError("onnx engine: max_sequences must be at least 1")
        self._og = og
        self.model_path = Path(model_path)
        self.max_sequences = max_sequences
        self.n_threads = n_threads
        genai = read_genai_config(self.model_path)
        self.context_length = context_length_of(genai)
        self.n_vocab = int((genai.get("model") or {}).get("vocab_size") or 0)
        config = og.Config(str(self.model_path))
        overlay: dict[str, Any] = {
            "engine": {"static_batching": {"max_batch_size": max_sequences}},
            "search": {"num_beams": 1, "min_length": 0},
        }
        if n_threads:
            overlay["model"] = {
                "decoder": {"session_options": {"intra_op_num_threads": int(n_threads)}}
            }
        config.overlay(json.dumps(overlay))
        self._model = og.Model(config)
        self._tokenizer = load_tokenizer_json(self.model_path)
        self._end_ids = end_token_ids(self._tokenizer, genai)
        self.n_vocab = self.n_vocab or int(self._tokenizer.get_vocab_size())
        self._warm_up()

        # Shared with the event loop, under _cond.
        self._cond = threading.Condition()
        self._incoming: list[_Seq] = []
        self._live: set[_Seq] = set()  # see DecodeThread
        self._stopping = False
        # Decode thread only (read racily by stats()).
        self._batched: dict[int, _Seq] = {}  # id(og request) -> sequence
        self._seeded: list[_Seq] = []
        self._counters = {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "batch_steps": 0,  # og Engine.run calls that produced tokens
            "batch_tokens": 0,  # tokens they produced: mean batch = batch_tokens / batch_steps
            "generator_steps": 0,  # tokens of seeded requests
        }
        self._failure: BaseException | None = None
        self._closed = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onnx-decode", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError(f"onnx engine: could not start: {self._failure}")

    def _warm_up(self) -> None:
        """Run one token through the model, so that the first request does not pay for
        paging the weights in and setting up the session."""
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=2, do_sample=False)
        generator = self._og.Generator(self._model, params)
        generator.append_tokens(np.array([0], dtype=np.int32))
        del generator

    # ---------------------------------------------------------------- event loop side

    def _submit(self, request: GenerationRequest) -> _Seq:
        self._check_open()
        if request.adapter is not None:
            raise EngineError("adapters are not loaded on this instance", param="adapter")
        params = request.params
        _check_supported(params)
        prompt = checked_prompt(
            request, self.context_length, self.n_vocab, "the model's context holds {limit} tokens"
        )
        seq = _Seq(
            prompt,
            params,
            min(params.max_tokens, self.context_length - len(prompt)),
            IncrementalDetokenizer(self._tokenizer),
            asyncio.get_running_loop(),
            asyncio.Queue(),
        )
        self._enqueue(seq)
        return seq

    def stats(self) -> dict[str, Any]:
        return {
            "active": len(self._batched) + len(self._seeded),
            "queued": len(self._incoming),
            "max_sequences": self.max_sequences,
            "n_threads": self.n_threads,
            "context_length": self.context_length,
            **self._counters,
        }

    # ---------------------------------------------------------------- decode thread

    def _run(self) -> None:
        try:
            engine = self._og.Engine(self._model)
            buffer = engine.create_event_buffer(max(256, 8 * self.max_sequences))
        except Exception as exc:  # raised again by __init__
            log.exception("onnx engine: could not create the og Engine")
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self._incoming or self._batched or self._seeded):
                        self._cond.wait()
                    if self._stopping:
                        break
                    incoming, self._incoming = self._incoming, []
                self._step(engine, buffer, incoming)
            self._shut_down()
        except BaseException as exc:  # noqa: BLE001 - `_died` logs it and ends every request
            self._died(exc)
        finally:
            # og objects are released on the thread that owns the Engine.
            for seq in list(self._batched.values()):
                seq.request.close()
            self._batched.clear()
            self._seeded.clear()
            del buffer, engine

    def _step(self, engine: Any, buffer: Any, incoming: list[_Seq]) -> None:
        out: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
        for seq in incoming:
            if seq.cancelled:
                continue
            try:
                self._start(engine, seq)
            except RuntimeError as exc:  # og refused the request's options
                self._finish_error(seq, EngineError(f"onnxruntime-genai refused it: {exc}"), out)
        for seq in [s for s in self._batched.values() if s.cancelled]:
            self._release(seq)
        self._seeded = [s for s in self._seeded if not s.cancelled]

        if self._batched:
            engine.run(buffer)
            produced = 0
            finished: dict[int, _Seq] = {}
            for i in range(len(buffer)):
                event = buffer[i]
                batched = self._batched.get(id(event.request))
                if batched is None:
                    continue
                seq = batched
                flags = int(event.flags)
                if flags & _TOKEN and not seq.done:
                    produced += 1
                    self._on_token(seq, int(event.token), out)
                if flags & _FAILED and not seq.done:
                    self._finish_error(
                        seq, RuntimeError(f"onnxruntime-genai failed: {event.error_code.name}"), out
                    )
                elif flags & _TURN_FINISHED and not seq.done:
                    reason = event.finish_reason.name
                    if reason in ("MAX_GENERATED_TOKENS", "MAX_SESSION_TOKENS"):
                        self._finish(seq, "length", out)
                    else:  # EOS (the end token itself comes without a TOKEN event)
                        self._finish(seq, "stop", out)
                if seq.done:
                    finished[id(seq)] = seq
            for seq in finished.values():  # after the buffer is read (closing drops events)
                self._release(seq)
            if produced:
                self._counters["batch_steps"] += 1
                self._counters["batch_tokens"] += produced

        for seq in list(self._seeded):
            seq.generator.generate_next_token()
            self._counters["generator_steps"] += 1
            self._on_token(seq, int(seq.generator.get_next_tokens()[0]), out)
            if not seq.done and seq.generator.is_done():  # cannot happen: the budget is
                self._finish(seq, "length", out)  # max_length - prompt
            if seq.done:
                self._seeded.remove(seq)
                seq.generator = None
        self._deliver(out)

    def _start(self, engine: Any, seq: _Seq) -> None:
        og = self._og
        params = seq.params
        ids = np.array(seq.prompt, dtype=np.int32)
        sampling = params.temperature > 0
        if seq.seeded:
            search: dict[str, Any] = {
                "max_length": len(seq.prompt) + seq.budget,
                "do_sample": True,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": max(params.top_k, 0),
                "random_seed": params.seed & 0x7FFF_FFFF,  # type: ignore[operator]
                "repetition_penalty": params.repeat_penalty,
            }
            gen_params = og.GeneratorParams(self._model)
            gen_params.set_search_options(**search)
            seq.generator = og.Generator(self._model, gen_params)
            seq.generator.append_tokens(ids)  # the prefill
            self._seeded.append(seq)
        else:
            options = og.RequestOptions()
            # The static batch allocates each row's KV cache for the session's length: without
            # this it would be the model's whole context (8192 tokens: ~180 MB per row).
            options.set_max_session_tokens(len(seq.prompt) + seq.budget)
            request = engine.create_request(options=options)
            turn = og.TurnOptions(request)
            turn.set_max_generated_tokens(seq.budget)
            turn.set_do_sample(sampling)
            turn.set_temperature(params.temperature if sampling else 0.0)
            if sampling:
                turn.set_top_p(params.top_p)
                turn.set_top_k(max(params.top_k, 0))
            if params.repeat_penalty != 1.0:
                turn.set_repetition_penalty(params.repeat_penalty)
            request.begin_turn(ids, turn)
            seq.request = request
            self._batched[id(request)] = seq
        self._counters["requests"] += 1
        self._counters["prompt_tokens"] += len(seq.prompt)

    def _release(self, seq: _Seq) -> None:
        """Close a batched sequence's og request (finished, stopped or cancelled)."""
        self._batched.pop(id(seq.request), None)
        seq.request.close()
        seq.request = None

    # ---------------------------------------------------------------- tokens to deltas

    def _on_token(self, seq: _Seq, token: int, out: dict[Any, list[Any]]) -> None:
        """Account for a generated token and queue its text; marks the sequence done when it
        ends (end token, stop string, budget).

        completion_tokens counts every generated token except end tokens: the token that
        completed a stop string counts, an end-of-sequence token does not."""
        if token in self._end_ids:
            self._finish(seq, "stop", out)
            return
        seq.n_generated += 1
        self._counters["completion_tokens"] += 1
        last = seq.n_generated >= seq.budget
        text = seq.detok.add(token)
        if last:
            text += seq.detok.flush()
        text, hit = seq.stops.scan(text, final=last)
        if hit or last:
            self._emit(seq, Delta(text, seq.n_generated, "stop" if hit else "length"), out)
            return
        if text:
            out.setdefault(seq.loop, []).append((seq.queue, Delta(text, seq.n_generated)))

    def _finish(self, seq: _Seq, reason: str, out: dict[Any, list[Any]]) -> None:
        text, _ = seq.stops.scan(seq.detok.flush(), final=True)
        self._emit(seq, Delta(text, seq.n_generated, reason), out)  # type: ignore[arg-type]

    def _emit(self, seq: _Seq, delta: Delta, out: dict[Any, list[Any]]) -> None:
        seq.done = True
        out.setdefault(seq.loop, []).append((seq.queue, delta))

    def _finish_error(self, seq: _Seq, exc: BaseException, out: dict[Any, list[Any]]) -> None:
        seq.done = True
        out.setdefault(seq.loop, []).append((seq.queue, exc))

    def _deliver(self, out: dict[asyncio.AbstractEventLoop, list[Any]]) -> None:
        for loop, items in out.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for seq in [*self._batched.values(), *self._seeded]:
                    if seq.loop is loop:
                        seq.cancelled = True


def _check_supported(params: SamplingParams) -> None:
    if params.grammar:
        raise EngineError(
            "The onnx engine cannot constrain output to a JSON format; use response_format "
            "text, or deploy the model on the llamacpp engine.",
            param="response_format",
        )
    for name in ("min_p", "presence_penalty", "frequency_penalty"):
        if getattr(params, name) != 0.0:
            raise EngineError(
                f"The onnx engine has no {name} (onnxruntime-genai samples with temperature, "
                "top_p, top_k, repetition_penalty and seed); leave it out, or deploy the "
                "model on the llamacpp engine.",
                param=name,
            )


def _put_all(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


__all__ = ["OnnxEngine", "OnnxTokenizer", "is_onnx_folder"]
