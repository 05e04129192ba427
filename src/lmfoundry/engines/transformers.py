"""The `transformers` engine: Hugging Face causal LMs and their PEFT LoRA adapters, batched.

Batching: continuous batching, one batched KV cache per adapter group. A group is the set of
sequences decoding with the same adapter (or none): PEFT applies one active adapter to a whole
forward pass, so sequences of different adapters never share one. Each loop iteration of the
decode thread
  1. drops cancelled sequences,
  2. admits at most one waiting request (while fewer than `max_sequences` run): prefills its
     prompt alone, in a fresh `DynamicCache`, samples its first token and merges its cache
     into its group's (both left-padded to the longer length, the 2-D attention mask marks
     the padding),
  3. runs one decode step for one group, round-robin between groups: a [B, 1] forward with
     each sequence's own `position_ids`, so padding never shifts a sequence's positions,
     then samples one token per sequence.
Finished sequences leave the batch at once (their rows are dropped, and the padding columns
no remaining sequence needs are trimmed), so new requests join and old ones leave at step
boundaries without waiting for the rest of a batch.

Adapters: one `PeftModel` wraps the base model, loaded lazily (the first adapter path seen
creates it, later ones are `load_adapter`ed into it), keyed by the adapter's resolved path.
LoRA layers are injected into the base model's modules in place, so all adapters share one
copy of the base weights; each adds only its own low-rank matrices. Base requests run with
the adapter layers disabled.

Thread model: only the decode thread touches the model, the caches and the sequences' state;
`generate()` (on the event loop) validates the request and hands it over under a condition
variable; deltas come back through `loop.call_soon_threadsafe` into a per-request
`asyncio.Queue`. Closing the generator marks the sequence cancelled; the decode thread drops
it at the next iteration.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import threading
from collections import deque
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lmfoundry.engines.base import (
    DecodeThread,
    Delta,
    EngineError,
    GenerationRequest,
    SamplingParams,
    checked_prompt,
)
from lmfoundry.engines.hf import (
    IncrementalDetokenizer,
    context_length_of,
    end_token_ids,
    load_tokenizer,
)
from lmfoundry.engines.sampling import PENALTY_LAST_N, sample, wants_penalties
from lmfoundry.engines.stops import StopScanner

log = logging.getLogger(__name__)

# Errors PEFT and safetensors raise for a folder that is not a usable adapter for this model.
_ADAPTER_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError)

_BASE = object()  # `_state` when the adapter layers are disabled
_UNKNOWN = object()  # `_state` after loading an adapter: the next use sets it explicitly


class _Seq:
    """One request, from submission to its final delta."""

    __slots__ = (
        "adapter",
        "budget",
        "cancelled",
        "detok",
        "done",
        "generator",
        "history",
        "loop",
        "n_generated",
        "n_past",
        "next_token",
        "params",
        "prompt",
        "queue",
        "stops",
    )

    def __init__(
        self,
        prompt: list[int],
        params: SamplingParams,
        budget: int,
        adapter: str | None,
        detok: IncrementalDetokenizer,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Any],
    ) -> None:
        self.prompt = prompt
        self.params = params
        self.budget = budget  # tokens this sequence may generate (max_tokens, context-capped)
        self.adapter = adapter
        self.detok = detok
        self.stops = StopScanner(params.stop)
        self.loop = loop
        self.queue = queue
        self.generator: torch.Generator | None = None
        if params.temperature > 0:
            seed = random.getrandbits(64) if params.seed is None else params.seed
            self.generator = torch.Generator().manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        self.history: deque[int] | None = None  # recent tokens, for the penalties
        if wants_penalties(params):
            self.history = deque(prompt[-PENALTY_LAST_N:], maxlen=PENALTY_LAST_N)
        self.n_past = 0  # tokens of this sequence in the KV cache
        self.next_token = -1  # the last sampled token, fed at the next step
        self.n_generated = 0  # sampled tokens, end-of-sequence tokens excluded
        self.cancelled = False
        self.done = False


class _Group:
    """Sequences decoding with one adapter, and their left-padded batched KV cache."""

    __slots__ = ("adapter", "cache", "mask", "seqs")

    def __init__(self, adapter: str | None) -> None:
        self.adapter = adapter
        self.seqs: list[_Seq] = []
        self.cache: Any = None  # transformers DynamicCache, [B, heads, L, head_dim] per layer
        self.mask: Any = None  # torch.Tensor [B, L]: 1 for real tokens, 0 for padding


def _pad_left(x: torch.Tensor, n: int) -> torch.Tensor:
    """Pad the sequence dimension (the second to last) with n zeros in front."""
    return F.pad(x, (0, 0, n, 0)) if n else x


class TransformersEngine(DecodeThread):
    """Continuous-batching engine for Hugging Face folders (see the module docstring).

    Keyword options (from the instance settings):
      n_threads      CPU threads for torch (default: torch's own choice)
      max_sequences  sequences generating at once, all adapters together (default 8)
      device         "cpu", "cuda", "cuda:1", ... (default: CUDA when available). float32 on
                     CPU; bfloat16 on CUDA (float16 where bfloat16 is not supported)
    """

    engine_name = "transformers"

    def __init__(
        self,
        path: Path,
        n_threads: int | None = None,
        max_sequences: int = 8,
        device: str | None = None,
        **ignored: Any,
    ) -> None:
        from transformers import AutoModelForCausalLM

        if ignored:
            log.warning("transformers engine: ignoring options %s", sorted(ignored))
        if max_sequences < 1:
            raise ValueError("transformers engine: max_sequences must be at least 1")
        if n_threads:
            torch.set_num_threads(n_threads)  # per process: an instance hosts one engine
        self.model_path = Path(path)
        self.max_sequences = max_sequences
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
        self.tokenizer = load_tokenizer(self.model_path)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(self.model_path), dtype=dtype, local_files_only=True
        )
        self._model: Any = model.to(self.device).eval()
        config = model.config.to_dict()
        self.context_length = context_length_of(config)
        self.n_vocab = int(model.get_input_embeddings().weight.shape[0])
        self._end_ids = end_token_ids(self.tokenizer, config, model.generation_config.to_dict())
        self._cache_arg = cache_argument(model)

        self._peft: Any = None  # the PeftModel wrapping _model, once an adapter is loaded
        self._adapters: dict[str, str] = {}  # resolved adapter path -> PEFT adapter name
        self._state: object = _BASE  # which adapter the LoRA layers apply (name, or _BASE)
        self._weights_bytes = self._count_weights_bytes()

        # Shared with the event loop, under _cond.
        self._cond = threading.Condition()
        self._incoming: list[_Seq] = []
        self._live: set[_Seq] = set()  # see DecodeThread
        self._stopping = False
        # Decode thread only (read racily by stats()).
        self._waiting: deque[_Seq] = deque()
        self._groups: dict[str | None, _Group] = {}
        self._order: deque[str | None] = deque()  # round-robin order of the groups
        self._n_active = 0
        self._counters = {
            "requests": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "decode_steps": 0,
            "batch_tokens": 0,  # sequences summed over decode steps: mean batch = this / steps
        }
        self._failure: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="transformers-decode", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- event loop side

    def _submit(self, request: GenerationRequest) -> _Seq:
        self._check_open()
        params = request.params
        if params.grammar:
            raise EngineError(
                "The transformers engine cannot constrain output to a JSON format; use "
                "response_format text, or deploy the model on the llamacpp engine.",
                param="response_format",
            )
        prompt = checked_prompt(
            request, self.context_length, self.n_vocab, "the model's context holds {limit} tokens"
        )
        adapter = _adapter_key(request.adapter) if request.adapter is not None else None
        seq = _Seq(
            prompt,
            params,
            min(params.max_tokens, self.context_length - len(prompt)),
            adapter,
            IncrementalDetokenizer(self.tokenizer),
            asyncio.get_running_loop(),
            asyncio.Queue(),
        )
        self._enqueue(seq)
        return seq

    def stats(self) -> dict[str, Any]:
        return {
            "active": self._n_active,
            "queued": len(self._waiting) + len(self._incoming),
            "max_sequences": self.max_sequences,
            "adapters": len(self._adapters),
            "adapter_groups": len(self._order),
            "weights_bytes": self._weights_bytes,
            "device": str(self.device),
            "context_length": self.context_length,
            **self._counters,
        }

    # ---------------------------------------------------------------- decode thread

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cond:
                        while not (
                            self._stopping or self._incoming or self._waiting or self._order
                        ):
                            self._cond.wait()
                        if self._stopping:
                            break
                        self._waiting.extend(self._incoming)
                        self._incoming.clear()
                    self._step()
            self._shut_down()
        except BaseException as exc:  # noqa: BLE001 - `_died` logs it and ends every request
            self._died(exc)

    def _step(self) -> None:
        out: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}
        self._drop_cancelled()
        if self._waiting and self._n_active < self.max_sequences:
            self._prefill(self._waiting.popleft(), out)
        if self._order:
            key = self._order[0]
            self._order.rotate(-1)
            self._decode(self._groups[key], out)
        self._deliver(out)

    def _drop_cancelled(self) -> None:
        if any(s.cancelled for s in self._waiting):
            self._waiting = deque(s for s in self._waiting if not s.cancelled)
        for group in list(self._groups.values()):
            keep = [i for i, s in enumerate(group.seqs) if not s.cancelled]
            if len(keep) < len(group.seqs):
                self._select(group, keep)

    def _prefill(self, seq: _Seq, out: dict[Any, list[Any]]) -> None:
        from transformers import DynamicCache

        try:
            self._use(seq.adapter)
        except EngineError as exc:
            self._finish_error(seq, exc, out)
            return
        cache = DynamicCache()
        ids = torch.tensor([seq.prompt], device=self.device)
        logits = self._model(
            input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache}
        ).logits[:, -1, :]
        seq.n_past = len(seq.prompt)
        self._counters["requests"] += 1
        self._counters["prompt_tokens"] += len(seq.prompt)
        if self._on_token(seq, sample(logits[0], seq.params, seq.generator, seq.history), out):
            self._join(seq, cache)

    def _decode(self, group: _Group, out: dict[Any, list[Any]]) -> None:
        seqs = group.seqs
        ids = torch.tensor([[s.next_token] for s in seqs], device=self.device)
        positions = torch.tensor([[s.n_past] for s in seqs], device=self.device)
        mask = torch.cat([group.mask, group.mask.new_ones(len(seqs), 1)], dim=1)
        self._use(group.adapter)
        logits = self._model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_arg: group.cache},
        ).logits[:, -1, :]
        group.mask = mask
        self._counters["decode_steps"] += 1
        self._counters["batch_tokens"] += len(seqs)
        keep = []
        for i, seq in enumerate(seqs):
            seq.n_past += 1
            if self._on_token(seq, sample(logits[i], seq.params, seq.generator, seq.history), out):
                keep.append(i)
        if len(keep) < len(seqs):
            self._select(group, keep)

    # ---------------------------------------------------------------- batch bookkeeping

    def _join(self, seq: _Seq, cache: Any) -> None:
        """Add a prefilled sequence (its cache alone) to its adapter's group."""
        group = self._groups.get(seq.adapter)
        n = seq.n_past
        ones = torch.ones(1, n, dtype=torch.long, device=self.device)
        if group is None:
            group = self._groups[seq.adapter] = _Group(seq.adapter)
            self._order.append(seq.adapter)
            group.cache, group.mask = cache, ones
        else:
            length = group.mask.shape[1]
            total = max(length, n)
            for mine, theirs in zip(group.cache.layers, cache.layers, strict=True):
                if theirs.keys is None:  # a layer that reuses another's cache
                    continue
                mine.keys = torch.cat(
                    [_pad_left(mine.keys, total - length), _pad_left(theirs.keys, total - n)]
                )
                mine.values = torch.cat(
                    [_pad_left(mine.values, total - length), _pad_left(theirs.values, total - n)]
                )
            group.mask = torch.cat(
                [F.pad(group.mask, (total - length, 0)), F.pad(ones, (total - n, 0))]
            )
        group.seqs.append(seq)
        self._n_active += 1

    def _select(self, group: _Group, keep: list[int]) -> None:
        """Keep only the rows `keep` of a group; trim padding columns nobody needs now."""
        self._n_active -= len(group.seqs) - len(keep)
        if not keep:
            del self._groups[group.adapter]
            self._order.remove(group.adapter)
            group.seqs, group.cache, group.mask = [], None, None
            return
        rows = torch.tensor(keep, device=self.device)
        mask = group.mask[rows]
        start = int(torch.argmax(mask.any(dim=0).to(torch.int8)))  # first column in use
        for layer in group.cache.layers:
            if layer.keys is None:
                continue
            layer.keys = layer.keys[rows, :, start:, :]
            layer.values = layer.values[rows, :, start:, :]
        group.mask = mask[:, start:]
        group.seqs = [group.seqs[i] for i in keep]

    # ---------------------------------------------------------------- adapters

    def _use(self, adapter: str | None) -> None:
        """Make the LoRA layers apply `adapter` (None: the base model), loading it first if
        needed."""
        if adapter is None:
            if self._peft is not None and self._state is not _BASE:
                self._peft.base_model.disable_adapter_layers()
            self._state = _BASE
            return
        name = self._adapters.get(adapter) or self._load_adapter(adapter)
        if self._state != name:
            self._peft.base_model.enable_adapter_layers()
            self._peft.set_adapter(name, inference_mode=True)
            self._state = name

    def _load_adapter(self, path: str) -> str:
        from peft import PeftConfig, PeftModel

        name = f"adapter{len(self._adapters) + 1}"
        try:
            config = PeftConfig.from_pretrained(path)
            if config.peft_type != "LORA":  # PeftType is a str enum
                raise EngineError(
                    f"The adapter at {path} is a {config.peft_type.value} adapter; this engine "
                    "serves LoRA adapters.",
                    param="adapter",
                )
            config.inference_mode = True
            if self._peft is None:
                # What PeftModel.from_pretrained does, in two steps, so that a failure to load
                # the weights can take the injected layers out of the base model again.
                peft = PeftModel(self._model, config, adapter_name=name)
                try:
                    peft.load_adapter(path, adapter_name=name)
                except _ADAPTER_ERRORS:
                    peft.unload()
                    raise
                self._peft = peft
            else:
                try:
                    self._peft.load_adapter(path, adapter_name=name)
                except _ADAPTER_ERRORS:
                    if name in self._peft.peft_config:
                        self._peft.delete_adapter(name)
                    raise
        except _ADAPTER_ERRORS as exc:
            # PyTorch lists every mismatched tensor; the first one says enough.
            reason = " ".join(str(exc).split("\n")[:2]).replace("\t", "")[:400].rstrip(". ")
            raise EngineError(
                f"Could not load the adapter at {path}: {reason}. Check that it is a LoRA "
                f"adapter trained on this base model ({self.model_path.name}).",
                param="adapter",
            ) from exc
        finally:
            self._state = _UNKNOWN  # new layers may be enabled or not: set it explicitly
        self._adapters[path] = name
        self._weights_bytes = self._count_weights_bytes()
        log.info("loaded adapter %s as %s", path, name)
        return name

    def _count_weights_bytes(self) -> int:
        """Bytes of parameter storage, each storage counted once (shared weights are)."""
        storages = {}
        for param in self._model.parameters():
            storage = param.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    # ---------------------------------------------------------------- sampling and output

    def _on_token(self, seq: _Seq, token: int, out: dict[Any, list[Any]]) -> bool:
        """Account for a sampled token and queue its text; False when the sequence ended.

        completion_tokens counts every sampled token except end-of-sequence tokens: the token
        that completed a stop string counts, an end-of-sequence token does not."""
        if token in self._end_ids:
            text, _ = seq.stops.scan(seq.detok.flush(), final=True)
            self._emit(seq, Delta(text, seq.n_generated, "stop"), out)
            return False
        seq.n_generated += 1
        self._counters["completion_tokens"] += 1
        if seq.history is not None:
            seq.history.append(token)
        last = seq.n_generated >= seq.budget
        text = seq.detok.add(token)
        if last:
            text += seq.detok.flush()
        text, hit = seq.stops.scan(text, final=last)
        if hit or last:
            self._emit(seq, Delta(text, seq.n_generated, "stop" if hit else "length"), out)
            return False
        seq.next_token = token
        if text:
            out.setdefault(seq.loop, []).append((seq.queue, Delta(text, seq.n_generated)))
        return True

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
                for group in self._groups.values():
                    for seq in group.seqs:
                        if seq.loop is loop:
                            seq.cancelled = True


def cache_argument(model: Any) -> str:
    """The name `model.forward` takes its KV cache by: `cache` from transformers 5.24 on
    (which deprecates `past_key_values`, to be removed in 5.40), `past_key_values` before.
    Read from the signature (the deprecation wrapper keeps the real one), not guessed from
    the version, so that a model with its own forward is asked what it takes."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _adapter_key(adapter: str) -> str:
    """The adapter folder's resolved path, after checking that it looks like one."""
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise EngineError(
            f"No PEFT adapter at {adapter}: the folder must hold adapter_config.json and "
            "adapter_model.safetensors (as `PeftModel.save_pretrained` writes them).",
            param="adapter",
        )
    return str(path.resolve())


def _put_all(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


__all__ = ["TransformersEngine"]
