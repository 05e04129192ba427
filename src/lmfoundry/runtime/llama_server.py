"""GGUF models on llama.cpp's own server (`llama-server`): finding the binary, its command
line, and the client that runs a request on one.

An instance of a GGUF model (the `llamacpp` engine) is one llama-server process: continuous
batching, sampling, stop strings, grammars, prefix caching and LoRA adapters all run in its
C++ scheduler, none in Python. It listens on a unix socket in the server's private 0700
socket folder, never on a TCP port. The gateway keeps what is lmfoundry's own: it renders the
chat template and counts the prompt's tokens (`engines.gguf`, the same llama.cpp version the
binary is built from), reserves quota, then sends the prompt as token ids to the native
`/completion` route, so the tokens it reserved are the tokens llama-server evaluates, and
relays the stream chunk by chunk. Closing the stream closes the connection, which stops the
generation in llama-server.

`scripts/build-llama-server` (run by `scripts/install`) builds the binary from the llama.cpp
that llama-cpp-python's sdist vendors and links it as `<venv>/bin/llama-server`;
`LMFOUNDRY_LLAMA_SERVER` names another one (a CUDA or Metal build, a distribution package).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from lmfoundry.engines.base import Delta, EngineDown, EngineError, GenerationRequest
from lmfoundry.errors import EngineFailed, InvalidRequest, Unavailable
from lmfoundry.runtime.client import InstanceLost
from lmfoundry.runtime.environment import child_environment
from lmfoundry.runtime.event_stream import EventStream, StreamBroken
from lmfoundry.runtime.lifeline import parent_death_signal

ENGINE = "llamacpp"
ENV = "LMFOUNDRY_LLAMA_SERVER"
# The sampler chain of lmfoundry's wire, in order: penalties -> top_k -> top_p -> min_p ->
# temperature (greedy at 0). llama-server's default chain adds DRY, typical-p and XTC, and its
# defaults (top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1) differ from the OpenAI
# wire's, so every value is sent.
SAMPLERS = ["penalties", "top_k", "top_p", "min_p", "temperature"]
PENALTY_LAST_N = 64  # tokens the repeat/frequency/presence penalties look back on
PROMPT_CACHE_MIB = 256  # host RAM for prompts evicted from the slots (llama-server: 8 GiB)
FINISH = {"limit": "length", "eos": "stop", "word": "stop"}
EMBEDDING_UBATCH = 512  # tokens: the longest embeddings input (all-MiniLM-L6-v2's context)
EMBEDDING_BATCH = 2048  # tokens of several inputs evaluated together
_LOG_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ [EWIDT] ")
BUILD_HINT = (
    "run `scripts/install` (it builds llama-server once from the llama.cpp that "
    "llama-cpp-python vendors, 10 to 15 minutes on two cores, then reuses it), or set "
    f"{ENV}=/path/to/llama-server to use a build you have (CUDA, Metal, a package)"
)


class ServerMissing(Unavailable):
    """No usable llama-server binary: the message says how to build one or point to one."""


def find_binary() -> Path:
    """The llama-server to run: `LMFOUNDRY_LLAMA_SERVER`, else the one `scripts/install`
    linked beside this Python. `ServerMissing` if neither runs."""
    named = os.environ.get(ENV)
    if named:
        path = Path(named).expanduser()
        _check(path, f"{ENV}={named}")
        return path
    path = Path(sys.executable).parent / "llama-server"
    _check(path, str(path))
    return path


@functools.cache
def _version(path: Path) -> str:
    """`llama-server --version`'s line, or "" when the binary does not run."""
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        return ""
    match = re.search(r"version: .*", text)
    return match.group(0) if match else (text.splitlines() or ["llama-server"])[0]


def _check(path: Path, where: str) -> None:
    if not path.exists():
        raise ServerMissing(
            f"llama-server, the engine of GGUF models, is missing ({where}); {BUILD_HINT}."
        )
    if not _version(path):
        raise ServerMissing(
            f"llama-server at {where} does not run (`--version` failed); {BUILD_HINT}."
        )


def binary_version() -> str:
    """What `lmfoundry up` prints of the engine (raises `ServerMissing`)."""
    return _version(find_binary())


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def command(binary: Path, model_path: str, socket: str, options: dict[str, Any]) -> list[str]:
    """llama-server's command line for one instance.

    Options (from the instance settings): `n_threads` (default: the CPUs this process may run
    on), `max_sequences` (slots decoding together, default 16), `kv_tokens` (KV cells the
    slots share, default 16384), `loras` (GGUF LoRA files, chosen per request)."""
    threads = int(options.get("n_threads") or cpu_count())
    args = [
        str(binary),
        "--model", model_path,
        "--host", socket,  # a path ending in .sock: a unix socket, no TCP port
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--threads-http", str(max(2, min(8, int(options.get("max_sequences", 16))))),
        "--ctx-size", str(int(options.get("kv_tokens", 16384))),
        "--parallel", str(int(options.get("max_sequences", 16))),
        "--kv-unified",  # one KV pool: any slot may use what the others leave free
        "--cache-ram", str(PROMPT_CACHE_MIB),
        "--jinja",
        "--no-webui",
        "--metrics",
        "--offline",
        "--log-verbosity", "2",  # warnings and errors: no per-request lines in the log
    ]  # fmt: skip
    loras = [str(p) for p in options.get("loras") or ()]
    if loras:
        args += ["--lora", ",".join(loras), "--lora-init-without-apply"]
    if options.get("embeddings"):
        # An embeddings model: llama-server answers /v1/embeddings only, each input pooled
        # (`mean`: as sentence-transformers) and L2-normalised. A non-causal model evaluates
        # an input in one micro-batch, so that holds the longest input the gateway admits.
        args += ["--embeddings", "--pooling", str(options["embeddings"])]
        args += ["--ubatch-size", str(EMBEDDING_UBATCH), "--batch-size", str(EMBEDDING_BATCH)]
    return args


def error_line(log: str) -> str:
    """llama-server's own reason for exiting, from its log: the first error line."""
    # llama.cpp's log lines begin with a timestamp and a level ("0.00.025.935 E ").
    lines = [_LOG_PREFIX.sub("", line.strip()) for line in log.splitlines() if line.strip()]
    for pattern in (r"error loading model|failed to load", r"\berror\b|\bfailed\b|invalid"):
        for line in lines:
            if re.search(pattern, line, re.IGNORECASE):
                return line[:400]
    return " | ".join(lines[-3:])[:400] or "(no output)"


def completion_body(request: GenerationRequest, loras: Sequence[str] = ()) -> dict[str, Any]:
    """The native `/completion` request for an admitted generation: the prompt as token ids,
    and every sampling value explicitly (see `SAMPLERS`)."""
    p = request.params
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "n_predict": p.max_tokens,
        "stream": True,
        "cache_prompt": True,
        "samplers": SAMPLERS,
        "temperature": max(p.temperature, 0.0),
        # Greedy is the argmax; top_k 1 finds it in one pass and leaves the temperature and
        # dist samplers one candidate, where top_k 0 has them each sweep the whole vocabulary
        # (a softmax over SmolLM2's 49,152 tokens per token: about 0.3 ms of the server's
        # main thread, with every slot's sampling in series: 0.86x bare llama-server at 8
        # clients, whose default top_k is 40).
        "top_k": 1 if p.temperature <= 0 else p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "repeat_penalty": p.repeat_penalty,
        "repeat_last_n": PENALTY_LAST_N,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "seed": -1 if p.seed is None else p.seed & 0xFFFFFFFF,
        "stop": [s for s in p.stop if s],
    }
    if p.grammar:
        body["grammar"] = p.grammar
    if p.n > 1:
        body["n_cmpl"] = p.n  # the children copy the parent's evaluated prompt
    if p.logprobs is not None:
        # Probabilities before sampling, as OpenAI's logprobs are; at least the chosen one.
        body["n_probs"] = max(p.logprobs, 1)
        body["post_sampling_probs"] = False
    if loras:
        # Every loaded adapter is named, the request's at scale 1, the others at 0.
        if request.adapter is not None and request.adapter not in loras:
            raise InvalidRequest(
                "The adapter of this model is not loaded on its instance; redeploy it.",
                param="model",
            )
        body["lora"] = [
            {"id": i, "scale": 1.0 if path == request.adapter else 0.0}
            for i, path in enumerate(loras)
        ]
    elif request.adapter is not None:
        raise InvalidRequest(
            "This model's adapter is not loaded on its instance; redeploy it.", param="model"
        )
    return body


# llama-server's /metrics gauges the supervisor exports per instance (observability/metrics.py)
ENGINE_GAUGES = ("requests_processing", "requests_deferred")


class ServerLost(InstanceLost):
    """The connection to llama-server broke: the process died or is going away."""


class LlamaServerClient:
    """Runs requests on one llama-server over its unix socket."""

    def __init__(self, socket: str, loras: Sequence[str] = ()) -> None:
        self.socket = socket
        self.loras = [str(p) for p in loras]
        # httpx for the occasional request; answers stream through `EventStream`. No
        # keep-alive: a new unix-socket connection costs microseconds.
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket),
            base_url="http://llama-server",
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def engine_metrics(self, timeout: float = 1.0) -> dict[str, float]:
        """llama-server's own gauges (it runs with `--metrics`): `requests_processing` (busy
        slots) and `requests_deferred` (requests queued for a slot); `ServerLost` when it
        does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            answer = await self._http.get("/metrics", timeout=timeout)
            answer.raise_for_status()
        except httpx.HTTPError as exc:
            raise ServerLost(f"llama-server does not answer /metrics: {exc}") from exc
        wanted = {f"llamacpp:{name}": name for name in ENGINE_GAUGES}
        return {
            wanted[s.name]: float(s.value)
            for family in text_string_to_metric_families(answer.text)
            for s in family.samples
            if s.name in wanted
        }

    async def health(self, timeout: float = 5.0) -> dict[str, Any]:
        """`{"status": "ok", ...}` once the model is loaded; `ServerLost` before (llama-server
        answers 503 while loading) or when it does not answer."""
        try:
            answer = await self._http.get("/health", timeout=timeout)
            if answer.status_code != 200:
                raise ServerLost(f"llama-server is not ready ({answer.status_code})")
            slots = await self._http.get("/slots", timeout=timeout)
        except httpx.HTTPError as exc:
            raise ServerLost(f"llama-server does not answer: {exc}") from exc
        result: dict[str, Any] = {"status": "ok", "engine": ENGINE}
        if slots.status_code == 200:
            listed = slots.json()
            result["active"] = sum(1 for s in listed if s.get("is_processing"))
            result["max_sequences"] = len(listed)
        return result

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """The answer's deltas, as llama-server streams them. `InvalidRequest` for a request
        it refuses (400), `EngineFailed` for one it cannot run now, `ServerLost` when the
        connection breaks."""
        body = json.dumps(completion_body(request, self.loras)).encode()
        top = request.params.logprobs
        counts = [0] * request.params.n  # tokens so far, per choice
        running = request.params.n
        try:
            async with EventStream(self.socket, "/completion", body) as stream:
                if stream.status != 200:
                    raise _refusal(stream.status, stream.body)
                async for batch in stream.batches(request.delivery_interval):
                    choices: dict[int, _Choice] = {}
                    for data in batch:
                        event = json.loads(data)
                        if "error" in event:
                            raise EngineFailed(
                                f"The instance failed the request: {_message(event)}",
                                headers={"Retry-After": "1"},
                            )
                        index = int(event.get("index", 0))
                        choice = choices.setdefault(index, _Choice(top))
                        counts[index] += len(event.get("tokens") or ())
                        choice.add(event)
                        if event.get("stop"):
                            counts[index] = int(event.get("tokens_predicted", counts[index]))
                            choice.finish = FINISH.get(event.get("stop_type", ""), "stop")
                    for index, choice in choices.items():
                        yield choice.delta(index, counts[index])
                        running -= choice.finish is not None
                    if running == 0:
                        return
            raise ServerLost("llama-server ended the stream before its last event")
        except StreamBroken as exc:
            raise ServerLost(str(exc)) from exc
        except (ValueError, IndexError) as exc:  # a broken event
            raise ServerLost(f"a broken event from llama-server: {exc}") from exc

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        """One pooled, normalised vector per input (token ids, special tokens included),
        in order. `InvalidRequest` for inputs llama-server refuses, `EngineFailed` for a
        request it cannot run now, `ServerLost` when the connection breaks."""
        body = {"input": [list(tokens) for tokens in inputs], "encoding_format": "float"}
        try:
            answer = await self._http.post("/v1/embeddings", json=body)
        except httpx.HTTPError as exc:
            raise ServerLost(f"llama-server does not answer: {exc}") from exc
        if answer.status_code != 200:
            raise _refusal(answer.status_code, answer.content, param="input")
        try:
            data = sorted(answer.json()["data"], key=lambda item: int(item["index"]))
            vectors = [[float(x) for x in item["embedding"]] for item in data]
        except (ValueError, KeyError, TypeError) as exc:
            raise ServerLost(f"a broken embeddings answer from llama-server: {exc}") from exc
        if len(vectors) != len(inputs):
            raise ServerLost(f"llama-server embedded {len(vectors)} of {len(inputs)} inputs")
        return vectors

    async def aclose(self) -> None:
        await self._http.aclose()


class _Choice:
    """The events of one choice within one batch, gathered into one delta."""

    def __init__(self, top_logprobs: int | None) -> None:
        self.pieces: list[str] = []
        self.top = top_logprobs
        self.logprobs: list[dict[str, Any]] | None = None if top_logprobs is None else []
        self.finish: Any = None

    def add(self, event: dict[str, Any]) -> None:
        if event.get("content"):
            self.pieces.append(event["content"])
        if self.logprobs is not None:
            self.logprobs += [
                _logprob(p, self.top or 0) for p in event.get("completion_probabilities") or ()
            ]

    def delta(self, index: int, n: int) -> Delta:
        pieces = self.pieces
        text = pieces[0] if len(pieces) == 1 else "".join(pieces)
        many = tuple(pieces) if len(pieces) > 1 else ()
        return Delta(text, n, self.finish, many, index, self.logprobs)


def _logprob(entry: dict[str, Any], top: int) -> dict[str, Any]:
    """llama-server's probability of one token in OpenAI's shape."""
    return {
        "token": entry.get("token", ""),
        "logprob": float(entry.get("logprob", 0.0)),
        "bytes": entry.get("bytes"),
        "top_logprobs": [
            {
                "token": t.get("token", ""),
                "logprob": float(t.get("logprob", 0.0)),
                "bytes": t.get("bytes"),
            }
            for t in (entry.get("top_logprobs") or ())[:top]
        ],
    }


def _message(payload: Any) -> str:
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    return str(error or payload)[:300]


def _refusal(status: int, body: bytes, param: str | None = None) -> Exception:
    try:
        message = _message(json.loads(body))
    except ValueError:
        message = body[:300].decode(errors="replace")
    if status == 400:
        # The grammar comes from response_format (or a pass-through `grammar`); else the
        # prompt is what llama-server checks (its length against the context).
        if param is None:
            param = "response_format" if "grammar" in message.lower() else "messages"
        return InvalidRequest(f"The model refused the request: {message}", param=param)
    return EngineFailed(
        f"The instance refused the request ({status}): {message}",
        headers={"Retry-After": "1"},
    )


class LlamaServerEngine:
    """The `Engine` protocol over a llama-server child process, for holders of an engine
    object rather than of instance processes: Ray Serve replicas, tests and benchmarks.
    Starts the process and waits until it is ready; `aclose` stops it."""

    engine_name = ENGINE

    def __init__(self, model_path: Path | str, *, start_timeout: float = 120.0, **options: Any):
        self.model_path = str(model_path)
        self.options = options
        self._dir = tempfile.mkdtemp(prefix="lmf-llama-")  # 0700: only this user connects
        self.socket = os.path.join(self._dir, "server.sock")
        self._log = open(os.path.join(self._dir, "server.log"), "w+b")  # noqa: SIM115
        self.process = subprocess.Popen(
            command(find_binary(), self.model_path, self.socket, options),
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env=child_environment(Path(self._dir)),  # none of this process's secrets
            preexec_fn=parent_death_signal,  # SIGTERM when this process dies
        )
        self.client = LlamaServerClient(self.socket, options.get("loras") or ())
        self._closed = False
        self._active = 0
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(transport=httpx.HTTPTransport(uds=self.socket)) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise Unavailable(
                        f"llama-server could not load {Path(self.model_path).name}: "
                        f"{error_line(self.log_text())}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if http.get("http://llama-server/health", timeout=2).status_code == 200:
                        return
                time.sleep(0.05)
        raise Unavailable(f"llama-server did not load {self.model_path} within {timeout:.0f} s")

    def log_text(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._closed or self.failure is not None:
            raise EngineDown(self.failure or "the llamacpp engine is closed")
        self._active += 1
        try:
            async for delta in self.client.generate(request):
                yield delta
        except InvalidRequest as exc:
            raise EngineError(exc.message, param=exc.param) from exc
        except ServerLost as exc:
            await exit_settled(self.process)
            raise EngineDown(self.failure or f"llama-server: {exc}") from exc
        finally:
            self._active -= 1

    def stats(self) -> dict[str, Any]:
        return {
            "active": self._active,
            "max_sequences": int(self.options.get("max_sequences", 16)),
            "server_pid": self.process.pid,
        }

    @property
    def failure(self) -> str | None:
        code = self.process.poll()
        if code is None or self._closed:
            return None
        return f"llama-server exited (code {code}): {error_line(self.log_text())}"

    async def aclose(self) -> None:
        await self.client.aclose()
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stop_process(self.process)
        self._log.close()
        with contextlib.suppress(OSError):
            for name in os.listdir(self._dir):
                os.unlink(os.path.join(self._dir, name))
            os.rmdir(self._dir)


async def exit_settled(process: subprocess.Popen[bytes] | None, limit: float = 2.0) -> None:
    """After a broken connection, wait (up to `limit` s) for a dying process to exit: the
    kernel closes its sockets before the exit status is there, longer before for a process
    unmapping a model, so the failure can name the exit code."""
    deadline = time.monotonic() + limit
    while process is not None and process.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds (blocking)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
