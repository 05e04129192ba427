"""The `llamacpp` engine: continuous batching over llama.cpp's low-level API.

One model, one context and one decode thread per instance process. The context holds a single
KV pool shared by all sequences (`kv_unified`); every loop iteration builds one `llama_batch`
with the next token of each sequence that is generating plus chunks of prompts still being
prefilled, calls `llama_decode` once, then samples one token for each sequence whose logits
were requested. Requests that do not fit (no free sequence slot, or not enough unreserved KV
cells for prompt + max_tokens) wait in a FIFO queue.

KV accounting. Every sequence reserves the cells it can ever need when it is admitted
(prompt + max_tokens - 1, minus a shared prefix), so `llama_decode` never runs out of cells
mid-generation. The reservations and the cells in use are tracked here, in Python, because
llama.cpp has no public "cells in use" query any more.

Prefix reuse. Finished sequences are kept as idle cache entries (their KV stays in the pool
under spare sequence ids: the context has `max_sequences + prefix_cache` ids). A new request
whose prompt shares at least `min_prefix` tokens with an entry gets those cells with
`llama_memory_seq_cp`, which in a unified cache only tags the existing cells with the new
sequence id (no copy, no extra cells), and prefills only the remainder. A live sequence
*pins* the entry it shares from; when it finishes it becomes an entry itself whose `parent`
is that entry, so each physical cell is counted exactly once (by the entry or sequence that
first wrote it). Unpinned leaf entries are evicted, least recently used first, whenever a
live request needs cells or the cache needs room.

Thread model. Only the decode thread touches the llama context, the batch and the samplers
of admitted sequences. `generate()` (on the event loop) validates the request, builds its
sampler chain and hands it over under a condition variable; results come back through
`loop.call_soon_threadsafe` into a per-request `asyncio.Queue`, one call per loop per
iteration. Closing the generator marks the sequence cancelled; the thread drops it at the
next iteration and frees its cells and slot.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import os
import random
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from lmfoundry.engines.base import (
    DecodeThread,
    Delta,
    EngineDown,
    EngineError,
    GenerationRequest,
    SamplingParams,
    checked_prompt,
)
from lmfoundry.engines.stops import StopScanner

log = logging.getLogger(__name__)

# Tokens of the sequence (prompt included) that the repeat/frequency/presence penalties see,
# as in llama.cpp's server and llama-cpp-python (`last_n_tokens_size`).
PENALTY_LAST_N = 64

_load_lock = threading.Lock()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _CacheEntry:
    """An idle sequence whose KV cells are kept for prefix reuse."""

    __slots__ = ("children", "last_used", "live", "parent", "parent_len", "sid", "tokens")

    def __init__(
        self, sid: int, tokens: list[int], parent: _CacheEntry | None, parent_len: int, stamp: int
    ) -> None:
        self.sid = sid
        self.tokens = tokens  # the tokens whose KV is in the pool at positions 0..len-1
        self.parent = parent  # cells at positions < parent_len belong to the parent
        self.parent_len = parent_len
        self.children = 0  # cache entries whose parent this is
        self.live = 0  # running sequences sharing this entry's cells
        self.last_used = stamp

    @property
    def own(self) -> int:
        """Cells this entry wrote itself (freed when it is evicted)."""
        return len(self.tokens) - self.parent_len


class _Seq:
    """One request, from submission to its final delta."""

    __slots__ = (
        "adapter",
        "budget",
        "cancelled",
        "cursor",
        "decoder",
        "done",
        "generated",
        "loop",
        "n_generated",
        "n_past",
        "next_token",
        "out_idx",
        "parent",
        "prompt",
        "queue",
        "reserved",
        "sampler",
        "scanner",
        "shared",
        "sid",
    )

    def __init__(
        self,
        prompt: list[int],
        sampler: int,
        stops: list[str],
        budget: int,
        adapter: str | None,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Any],
    ) -> None:
        self.prompt = prompt
        self.sampler = sampler  # llama_sampler chain pointer (int), owned by the engine
        self.scanner = StopScanner(stops)  # holds back text that may begin a stop string
        self.budget = budget  # tokens this sequence may generate (max_tokens, context-capped)
        self.adapter = adapter
        self.loop = loop
        self.queue = queue
        self.sid = -1
        self.n_past = 0  # tokens of this sequence in the KV pool
        self.cursor = 0  # prompt tokens prefilled (or shared)
        self.next_token = -1  # the last sampled token, fed at the next iteration
        self.out_idx = -1  # batch index of this sequence's logits in the current iteration
        self.generated: list[int] = []  # sampled tokens, EOG excluded
        self.n_generated = 0
        self.reserved = 0  # KV cells reserved for this sequence's own use
        self.parent: _CacheEntry | None = None
        self.shared = 0  # prompt tokens whose cells come from `parent`
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.cancelled = False
        self.done = False


class LlamaCppEngine(DecodeThread):
    """Continuous-batching engine for GGUF models (see the module docstring).

    The context has `max_sequences + prefix_cache` sequence ids (`n_seq_max`): live
    sequences use at most `max_sequences` of them, idle cached prefixes the rest.

    Keyword options (from the instance settings):
      n_threads      CPU threads for decoding and prefill (default: the CPUs this process
                     may run on)
      max_sequences  sequences generating at once (default 16)
      kv_tokens      KV cells shared by all sequences, prefix cache included (default 16384)
      n_batch        most tokens per llama_decode call (default 512)
      prefill_chunk  most prompt tokens per iteration while other sequences are generating,
                     so a long prompt does not stall them (default 256)
      prefix_cache   idle finished sequences kept for prefix reuse (default 4; 0: off)
      min_prefix     shortest shared prefix worth reusing, in tokens (default 32)
    """

    engine_name = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        *,
        n_threads: int | None = None,
        max_sequences: int = 16,
        kv_tokens: int = 16384,
        n_batch: int = 512,
        prefill_chunk: int = 256,
        prefix_cache: int = 4,
        min_prefix: int = 32,
        **unknown: Any,
    ) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaContext, LlamaModel
        from llama_cpp._utils import suppress_stdout_stderr

        from lmfoundry.engines.gguf import quiet_llama

        if unknown:
            log.warning("llamacpp engine: ignoring unknown options %s", sorted(unknown))
        if max_sequences < 1 or kv_tokens < 16 or n_batch < 1 or prefix_cache < 0:
            raise ValueError(
                "llamacpp engine: max_sequences, kv_tokens and n_batch must be "
                "positive and prefix_cache not negative"
            )
        n_seq = max_sequences + prefix_cache
        if n_seq > llama_cpp.llama_max_parallel_sequences():
            raise ValueError(
                f"llamacpp engine: max_sequences + prefix_cache = {n_seq} exceeds "
                f"llama.cpp's {llama_cpp.llama_max_parallel_sequences()}"
            )
        self._L = llama_cpp
        self.model_path = Path(model_path)
        self.max_sequences = max_sequences
        self.n_batch = n_batch
        self.prefill_chunk = max(1, min(prefill_chunk, n_batch))
        self.prefix_cache = prefix_cache
        self.min_prefix = max(1, min_prefix)
        threads = n_threads or _cpu_count()

        with _load_lock:
            quiet_llama()
            mparams = llama_cpp.llama_model_default_params()
            self._model = LlamaModel(path_model=str(self.model_path), params=mparams, verbose=False)
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = kv_tokens
            cparams.n_batch = n_batch
            cparams.n_ubatch = n_batch
            cparams.n_seq_max = n_seq
            cparams.kv_unified = True
            cparams.n_threads = threads
            cparams.n_threads_batch = threads
            cparams.no_perf = True
            try:
                # llama.cpp warns on stderr when the pool exceeds the training context.
                with suppress_stdout_stderr(disable=False):
                    self._context = LlamaContext(model=self._model, params=cparams, verbose=False)
            except Exception:
                self._model.close()
                raise
        if llama_cpp.llama_model_is_recurrent(self._model.model) or (
            llama_cpp.llama_model_is_hybrid(self._model.model)
        ):
            # A recurrent state is one per sequence, not one cell per position: a prefix of
            # it cannot be shared or trimmed.
            self.prefix_cache = 0
        self._ctx = self._context.ctx
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = self._model.vocab
        self.n_vocab = self._model.n_vocab()
        self.n_ctx_train = self._model.n_ctx_train()
        self.kv_total = min(kv_tokens, llama_cpp.llama_n_ctx(self._ctx))
        self.n_threads = threads

        # The batch: numpy arrays owned here, wrapped in a llama_batch struct (passed by
        # value to llama_decode). Every token belongs to exactly one sequence.
        self._tok = np.zeros(n_batch, dtype=np.int32)
        self._pos = np.zeros(n_batch, dtype=np.int32)
        self._n_seq_id = np.ones(n_batch, dtype=np.int32)
        self._seq_of = np.zeros(n_batch, dtype=np.int32)
        self._logits = np.zeros(n_batch, dtype=np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self._seq_of.ctypes.data
        self._seq_ptrs = (i32p * n_batch)(
            *(ctypes.cast(base + 4 * i, i32p) for i in range(n_batch))
        )
        batch: Any = llama_cpp.llama_batch()  # (llama_cpp types its fields as arrays)
        batch.n_tokens = 0
        batch.token = self._tok.ctypes.data_as(i32p)
        batch.embd = None
        batch.pos = self._pos.ctypes.data_as(i32p)
        batch.n_seq_id = self._n_seq_id.ctypes.data_as(i32p)
        batch.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32p))
        batch.logits = self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = batch

        # Warm up (pages the weights in, sets up the compute graph) so that the first request
        # does not pay for it; then forget that token.
        self._tok[0], self._pos[0], self._seq_of[0], self._logits[0] = 0, 0, 0, 1
        batch.n_tokens = 1
        if llama_cpp.llama_decode(self._ctx, batch) != 0:
            log.warning("llamacpp engine: warm-up decode failed")
        llama_cpp.llama_memory_clear(self._mem, True)

        self._piece_buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}

        # Shared with the event loop, under _cond.
        self._cond = threading.Condition()
        self._incoming: list[_Seq] = []
        self._live: set[_Seq] = set()  # see DecodeThread
        self._stopping = False
        # Decode thread only (read racily by stats()).
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._cache: list[_CacheEntry] = []
        self._free_sids = list(range(n_seq - 1, -1, -1))
        self._reserved = 0  # cells reserved: live reservations + cache entries' own cells
        self._kv_used = 0  # cells written: live sequences' own cells + cache entries'
        self._stamp = 0
        self._counters = {
            "prompt_tokens": 0,
            "prompt_tokens_cached": 0,
            "completion_tokens": 0,
            "decode_calls": 0,
            "batch_tokens": 0,
            "requests": 0,
            "evictions": 0,
        }
        self._failure: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="llamacpp-decode", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- event loop side

    def _submit(self, request: GenerationRequest) -> _Seq:
        self._check_open()
        if request.adapter is not None:
            raise EngineError("adapters are not loaded on this instance", param="adapter")
        params = request.params
        limit = min(self.kv_total, self.n_ctx_train)
        prompt = checked_prompt(
            request,
            limit,
            self.n_vocab,
            "this instance can hold at most {limit} tokens per sequence",
        )
        sampler = self._make_sampler(params, prompt)
        loop = asyncio.get_running_loop()
        seq = _Seq(
            prompt,
            sampler,
            [s for s in params.stop if s],
            min(params.max_tokens, limit - len(prompt)),
            request.adapter,
            loop,
            asyncio.Queue(),
        )
        try:
            self._enqueue(seq)
        except EngineDown:
            self._L.llama_sampler_free(sampler)
            raise
        return seq

    def _make_sampler(self, params: SamplingParams, prompt: list[int]) -> int:
        """penalties -> top_k -> top_p -> min_p -> temp -> dist, or greedy at temperature 0;
        with the grammar first when there is one. Built on the caller's thread: a sampler
        not yet handed to the decode thread is touched by nobody else."""
        L = self._L
        cparams = L.llama_sampler_chain_default_params()
        cparams.no_perf = True
        chain = L.llama_sampler_chain_init(cparams)
        add = L.llama_sampler_chain_add
        try:
            if params.grammar:
                grammar = L.llama_sampler_init_grammar(
                    self._vocab, params.grammar.encode(), b"root"
                )
                if not grammar:
                    raise EngineError(
                        "The grammar for the response format is invalid.", param="response_format"
                    )
                add(chain, grammar)
            if (
                params.repeat_penalty != 1.0
                or params.frequency_penalty != 0.0
                or params.presence_penalty != 0.0
            ):
                penalties = L.llama_sampler_init_penalties(
                    self.n_vocab,
                    PENALTY_LAST_N,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                )
                add(chain, penalties)
                # The penalties look at the sequence's tokens, the prompt's included; feed
                # them to that sampler alone (accepting them on the chain would also advance
                # the grammar).
                for token in prompt[-PENALTY_LAST_N:]:
                    L.llama_sampler_accept(penalties, token)
            if params.temperature <= 0.0:
                add(chain, L.llama_sampler_init_greedy())
            else:
                if params.top_k > 0:
                    add(chain, L.llama_sampler_init_top_k(params.top_k))
                if params.top_p < 1.0:
                    add(chain, L.llama_sampler_init_top_p(params.top_p, 1))
                if params.min_p > 0.0:
                    add(chain, L.llama_sampler_init_min_p(params.min_p, 1))
                add(chain, L.llama_sampler_init_temp(params.temperature))
                seed = random.getrandbits(32) if params.seed is None else params.seed
                add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        except BaseException:
            L.llama_sampler_free(chain)
            raise
        return chain

    def stats(self) -> dict[str, Any]:
        return {
            "active": len(self._running),
            "queued": len(self._waiting) + len(self._incoming),
            "kv_used": self._kv_used,
            "kv_reserved": self._reserved,
            "kv_total": self.kv_total,
            "max_sequences": self.max_sequences,
            "cached_sequences": len(self._cache),
            "n_threads": self.n_threads,
            **self._counters,
        }

    def _after_stop(self) -> None:
        for seq in [*self._running, *self._waiting, *self._incoming]:
            self._free_sampler(seq)
        self._running.clear()
        self._waiting.clear()
        self._incoming.clear()
        self._cache.clear()
        self._context.close()
        self._model.close()

    # ---------------------------------------------------------------- decode thread

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not (self._stopping or self._incoming or self._running or self._waiting):
                        self._cond.wait()
                    if self._stopping:
                        break
                    if self._incoming:
                        self._waiting.extend(self._incoming)
                        self._incoming.clear()
                self._step()
            self._shut_down()
        except BaseException as exc:  # noqa: BLE001 - `_died` logs it and ends every request
            self._died(exc)

    def _step(self) -> None:
        L = self._L
        out: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], Any]]] = {}

        if any(s.cancelled for s in self._waiting):
            for seq in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(seq)
                self._free_sampler(seq)
        for seq in [s for s in self._running if s.cancelled]:
            self._release(seq, keep=False)

        while self._waiting and len(self._running) < self.max_sequences:
            if not self._admit(self._waiting[0]):
                break
            self._waiting.popleft()
        if not self._running:
            if self._waiting:  # cannot happen: an idle pool fits any request that passed
                seq = self._waiting.popleft()  # validation; never spin on it
                self._finish_error(seq, RuntimeError("no KV cells for the request"), out)
                self._deliver(out)
            return

        # One batch: the next token of every generating sequence (one logit each), then
        # prompt tokens, oldest sequence first, within what is left of n_batch (at most
        # prefill_chunk while others are generating, so a long prompt does not stall them).
        # At most ONE sequence contributes more than one token: when two sequences' prompt
        # chunks share a ubatch, llama.cpp's CPU flash attention tiles their queries
        # together and a sequence's logits change (by up to ~1 on SmolLM2), so greedy output
        # would depend on which requests happened to arrive together. With this rule a
        # sequence's logits match running it alone (llama.cpp's split-KV path for batches of
        # a single token over >= 512 cells still rounds differently with the cell layout).
        # Per-sequence adapters would go here too: llama.cpp applies LoRA adapters per
        # context (llama_set_adapters_lora), so each iteration would decode one adapter
        # group, round-robin between groups.
        tok, pos, seq_of, logits = self._tok, self._pos, self._seq_of, self._logits
        n = 0
        decoding: list[_Seq] = []
        prefill: list[tuple[_Seq, int]] = []
        for seq in self._running:
            if seq.cursor == len(seq.prompt):
                tok[n] = seq.next_token
                pos[n] = seq.n_past
                seq_of[n] = seq.sid
                logits[n] = 1
                seq.out_idx = n
                decoding.append(seq)
                n += 1
        sampling = decoding.copy()
        room = self.n_batch - n
        if decoding:
            room = min(room, self.prefill_chunk)
        chunked = False
        for seq in self._running:
            if room <= 0:
                break
            left = len(seq.prompt) - seq.cursor
            if left == 0:
                continue
            k = min(left, room)
            if k > 1:
                if chunked:
                    continue
                chunked = True
            end = n + k
            tok[n:end] = seq.prompt[seq.cursor : seq.cursor + k]
            pos[n:end] = np.arange(seq.n_past, seq.n_past + k, dtype=np.int32)
            seq_of[n:end] = seq.sid
            logits[n:end] = 0
            if k == left:
                logits[end - 1] = 1
                seq.out_idx = end - 1
                sampling.append(seq)
            prefill.append((seq, k))
            n = end
            room -= k
        self._batch.n_tokens = n

        rc = L.llama_decode(self._ctx, self._batch)
        self._counters["decode_calls"] += 1
        if rc != 0:
            # Reservations make "no KV slot" (1) impossible; anything else is fatal for the
            # sequences in this batch. Their cells are dropped with them.
            err = RuntimeError(f"llama_decode failed with status {rc}")
            for seq in {id(s): s for s in [*sampling, *(s for s, _ in prefill)]}.values():
                self._finish_error(seq, err, out)
            self._deliver(out)
            return
        self._counters["batch_tokens"] += n
        self._kv_used += n
        for seq in decoding:
            seq.n_past += 1
        for seq, k in prefill:
            seq.cursor += k
            seq.n_past += k

        sample = L.llama_sampler_sample
        ctx = self._ctx
        for seq in sampling:
            # llama_sampler_sample also accepts the token into the chain (grammar state,
            # penalty history), so there is no separate llama_sampler_accept.
            token = sample(seq.sampler, ctx, seq.out_idx)
            self._on_token(seq, token, out)
        self._deliver(out)

    def _on_token(self, seq: _Seq, token: int, out: dict[Any, list[Any]]) -> None:
        # completion_tokens counts every sampled token except end-of-generation tokens: the
        # token that completed a stop string counts, an EOG token does not.
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(self._L.llama_vocab_is_eog(self._vocab, token))
        if eog:
            self._finish(seq, "stop", out)
            return
        seq.n_generated += 1
        seq.generated.append(token)
        self._counters["completion_tokens"] += 1
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._piece(token)
        text = seq.decoder.decode(piece)
        if seq.scanner.stops:
            text, hit = seq.scanner.scan(text)
            if hit:
                self._emit(seq, Delta(text, seq.n_generated, "stop"), out)
                self._release(seq, keep=True)
                return
        if seq.n_generated >= seq.budget:
            self._finish(seq, "length", out, text)
            return
        seq.next_token = token
        if text:
            out.setdefault(seq.loop, []).append((seq.queue, Delta(text, seq.n_generated)))

    def _finish(self, seq: _Seq, reason: str, out: dict[Any, list[Any]], text: str = "") -> None:
        # The decoder only ever holds the first bytes of an incomplete UTF-8 character (the
        # generation ended in the middle of one): that is not text, so it is dropped rather
        # than flushed as U+FFFD. Invalid bytes earlier on were already replaced.
        # `text` was scanned already; what the scanner holds back (the start of a stop
        # string that never completed) comes after it, and is released now.
        text, seq.scanner.held = text + seq.scanner.held, ""
        self._emit(seq, Delta(text, seq.n_generated, reason), out)  # type: ignore[arg-type]
        self._release(seq, keep=True)

    def _emit(self, seq: _Seq, delta: Delta, out: dict[Any, list[Any]]) -> None:
        seq.done = True
        out.setdefault(seq.loop, []).append((seq.queue, delta))

    def _finish_error(self, seq: _Seq, exc: BaseException, out: dict[Any, list[Any]]) -> None:
        seq.done = True
        out.setdefault(seq.loop, []).append((seq.queue, exc))
        if seq in self._running:
            self._release(seq, keep=False)
        else:
            self._free_sampler(seq)

    def _deliver(self, out: dict[asyncio.AbstractEventLoop, list[Any]]) -> None:
        for loop, items in out.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for queue, _ in items:
                    for seq in self._running:
                        if seq.queue is queue:
                            seq.cancelled = True

    def _piece(self, token: int) -> bytes:
        buf = self._piece_buf
        n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        piece = self._pieces[token] = buf.raw[:n]
        return piece

    def _free_sampler(self, seq: _Seq) -> None:
        if seq.sampler:
            self._L.llama_sampler_free(seq.sampler)
            seq.sampler = 0

    # ---------------------------------------------------------------- KV and slots

    def _admit(self, seq: _Seq) -> bool:
        """Give `seq` a sequence id and reserve its cells, reusing a cached prefix if one is
        long enough; False when it has to wait."""
        need = len(seq.prompt) + seq.budget - 1  # the last sampled token is never decoded
        entry, match = self._best_prefix(seq.prompt)
        if entry is not None:
            entry.live += 1  # pin it while making room
            if self._make_room(need - match):
                self._start(seq, entry, match, need - match)
                return True
            entry.live -= 1
        if self._make_room(need):
            self._start(seq, None, 0, need)
            return True
        return False

    def _start(self, seq: _Seq, entry: _CacheEntry | None, shared: int, reserve: int) -> None:
        sid = self._free_sids.pop()
        if entry is not None:
            self._L.llama_memory_seq_cp(self._mem, entry.sid, sid, 0, shared)
            self._stamp += 1
            entry.last_used = self._stamp
            self._counters["prompt_tokens_cached"] += shared
        seq.sid = sid
        seq.parent = entry
        seq.shared = seq.n_past = seq.cursor = shared
        seq.reserved = reserve
        self._reserved += reserve
        self._running.append(seq)
        self._counters["prompt_tokens"] += len(seq.prompt)
        self._counters["requests"] += 1

    def _best_prefix(self, prompt: list[int]) -> tuple[_CacheEntry | None, int]:
        best: _CacheEntry | None = None
        best_len = 0
        cap = len(prompt) - 1  # the last prompt token is decoded again to get its logits
        for entry in self._cache:
            tokens = entry.tokens
            n = min(len(tokens), cap)
            if n <= best_len or tokens[0] != prompt[0]:
                continue
            if tokens[:n] == prompt[:n]:
                m = n
            else:
                m = 0
                while tokens[m] == prompt[m]:
                    m += 1
            if m > best_len:
                best, best_len = entry, m
        if best is None or best_len < self.min_prefix:
            return None, 0
        # Share from the entry that wrote those cells, so that its descendants stay evictable.
        while best.parent is not None and best_len <= best.parent_len:
            best = best.parent
        return best, best_len

    def _protected(self) -> set[int]:
        """Entries whose cells running sequences use (directly or through ancestors)."""
        keep: set[int] = set()
        for entry in self._cache:
            if entry.live:
                e: _CacheEntry | None = entry
                while e is not None and id(e) not in keep:
                    keep.add(id(e))
                    e = e.parent
        return keep

    def _make_room(self, need: int) -> bool:
        free = self.kv_total - self._reserved
        if free >= need:
            return True
        keep = self._protected()
        if free + sum(e.own for e in self._cache if id(e) not in keep) < need:
            return False
        while self.kv_total - self._reserved < need:
            if not self._evict_one(keep):  # cannot happen: a non-protected entry's
                return False  # descendants are not protected either, so one is a leaf
        return True

    def _evict_one(self, keep: set[int]) -> bool:
        leaves = [e for e in self._cache if e.children == 0 and id(e) not in keep]
        if not leaves:
            return False
        entry = min(leaves, key=lambda e: e.last_used)
        self._L.llama_memory_seq_rm(self._mem, entry.sid, -1, -1)
        self._cache.remove(entry)
        self._free_sids.append(entry.sid)
        self._reserved -= entry.own
        self._kv_used -= entry.own
        if entry.parent is not None:
            entry.parent.children -= 1
        self._counters["evictions"] += 1
        return True

    def _release(self, seq: _Seq, keep: bool) -> None:
        """Take `seq` out of the running set; keep its cells as a cache entry if asked and
        worthwhile, else free them (cells shared from its parent stay with the parent)."""
        self._running.remove(seq)
        self._free_sampler(seq)
        self._reserved -= seq.reserved
        own = seq.n_past - seq.shared
        parent = seq.parent
        if (
            keep
            and self.prefix_cache
            and own > 0
            and seq.n_past >= self.min_prefix
            and seq.adapter is None
            and (len(self._cache) < self.prefix_cache or self._evict_one(self._protected()))
        ):
            self._stamp += 1
            tokens = (seq.prompt + seq.generated)[: seq.n_past]
            entry = _CacheEntry(seq.sid, tokens, parent, seq.shared, self._stamp)
            if parent is not None:
                parent.live -= 1
                parent.children += 1
            self._cache.append(entry)
            self._reserved += own
            return
        self._L.llama_memory_seq_rm(self._mem, seq.sid, -1, -1)
        self._free_sids.append(seq.sid)
        self._kv_used -= own
        if parent is not None:
            parent.live -= 1


def _put_all(items: list[tuple[asyncio.Queue[Any], Any]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


__all__ = ["LlamaCppEngine"]
