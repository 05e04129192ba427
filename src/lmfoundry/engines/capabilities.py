"""Which engine and tokenizer serve a model, and what each engine can do. Engines are imported
lazily: the gateway never loads weights, and the `transformers` and `onnx` engines need
optional extras. The gateway and the wire models ask `supports` and `instance_options`, never
an engine's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmfoundry.engines.base import Engine, Tokenizer
from lmfoundry.errors import Unavailable

ENGINES = ("llamacpp", "transformers", "onnx", "vllm", "echo")

# What each engine does beyond plain chat: `grammar` (response_format json_object /
# json_schema), `tools` (tool calls, decoded under a grammar: serving.tools), `choices`
# (`n` answers from one prompt), `logprobs` (each token's log probability and the most
# likely alternatives), `adapters` (several fine-tuned adapters of one base on its
# instances), `adapter_files` (its adapters are files its instances load at start: `loras`),
# `embeddings` (embeddings models: pooled vectors, serving.embeddings).
FEATURES: dict[str, frozenset[str]] = {
    "llamacpp": frozenset(  # llama.cpp's server
        {"grammar", "tools", "choices", "logprobs", "adapters", "adapter_files", "embeddings"}
    ),
    "transformers": frozenset({"adapters"}),
    "onnx": frozenset(),
    "echo": frozenset(),
}


def supports(engine: str, feature: str) -> bool:
    return feature in FEATURES.get(engine, frozenset())


# What a card lists (catalog, `info`): the APIs a model answers and the request features its
# engine honours, in the wire's words.
_LISTED = {"tools": "tools", "grammar": "json_schema", "choices": "n", "logprobs": "logprobs"}


def capabilities(engine: str, model_type: str) -> list[str]:
    if model_type == "embeddings":
        return ["embeddings"]
    listed = ["chat_completions", "completions", "responses", "streaming"]
    return listed + [name for feature, name in _LISTED.items() if supports(engine, feature)]


def instance_options(
    engine: str, threads: int | None, max_sequences: int, kv_tokens: int
) -> dict[str, Any]:
    """The instance settings an engine takes (they are part of its instances' key)."""
    if engine == "llamacpp":
        return {"n_threads": threads, "max_sequences": max_sequences, "kv_tokens": kv_tokens}
    if engine in ("transformers", "onnx"):
        return {"n_threads": threads, "max_sequences": max_sequences}
    return {}


def create_engine(kind: str, model_path: str, options: dict[str, Any]) -> Engine:
    """Load an engine in an instance process."""
    if kind == "echo":
        from lmfoundry.engines.echo import EchoEngine

        return EchoEngine(delay=float(options.get("delay", 0.0)))
    if kind == "llamacpp":
        # llama.cpp's server, as a child process (local instances run it directly instead).
        from lmfoundry.runtime.llama_server import LlamaServerEngine

        return LlamaServerEngine(Path(model_path), **options)
    if kind == "transformers":
        _require_train_extra()
        from lmfoundry.engines.transformers import TransformersEngine

        return TransformersEngine(Path(model_path), **options)
    if kind == "onnx":
        _require_onnx_extra()
        from lmfoundry.engines.onnx import OnnxEngine

        return OnnxEngine(Path(model_path), **options)
    raise Unavailable(
        f"Engine {kind!r} is not available in this installation; "
        "engines: llamacpp, transformers, onnx, echo."
    )


def create_tokenizer(
    kind: str, model_path: str, chat_template: str | None, context_length: int | None
) -> Tokenizer:
    """The gateway-side tokenizer for a model served by `kind`."""
    if kind == "echo":
        from lmfoundry.engines.echo import EchoTokenizer

        return EchoTokenizer(context_length)
    if kind == "llamacpp":
        from lmfoundry.engines.gguf import GGUFTokenizer

        return GGUFTokenizer(Path(model_path), chat_template, context_length)
    if kind == "transformers":
        from lmfoundry.engines.hf import HFTokenizer

        return HFTokenizer(Path(model_path), chat_template, context_length)
    if kind == "onnx":
        from lmfoundry.engines.onnx import OnnxTokenizer

        return OnnxTokenizer(Path(model_path), chat_template, context_length)
    raise Unavailable(
        f"Engine {kind!r} is not available in this installation; "
        "engines: llamacpp, transformers, onnx, echo."
    )


def _require_train_extra() -> None:
    """The `transformers` engine needs torch, transformers and peft (the `train` extra)."""
    import importlib.util

    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        raise Unavailable(
            f"The transformers engine needs {', '.join(missing)}; "
            "install them with `pip install 'lmfoundry[train]'`."
        )


def _require_onnx_extra() -> None:
    """The `onnx` engine needs onnxruntime-genai and tokenizers (the `onnx` extra)."""
    import importlib.util

    needed = ("onnxruntime_genai", "tokenizers")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise Unavailable(
            f"The onnx engine needs {', '.join(missing)}; "
            "install them with `pip install 'lmfoundry[onnx]'`."
        )
