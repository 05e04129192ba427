"""ONNX models end to end: `lmfoundry catalog build-onnx` builds a folder and adds it to the
catalog, a serverless deployment serves it on the `onnx` engine through a real
`lmfoundry up`, and the official openai client gets the answer.

The fast test uses a tiny random Phi-3 (its answer is compared with onnxruntime-genai's own
greedy loop); the heavy one builds the bundled SmolLM2 (GGUF dequantised, then converted:
about a minute and a half on two cores) and asks it a question."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.conftest import ADMIN_TOKEN, LiveServer, start_server, stop_server

pytestmark = pytest.mark.slow

BUILD_DEPS = ("onnxruntime_genai", "onnx", "onnx_ir", "tokenizers", "torch", "transformers")
_missing = [m for m in BUILD_DEPS if importlib.util.find_spec(m) is None]
if _missing:
    pytest.skip(
        f"building ONNX models needs {', '.join(_missing)} "
        "(pip install 'lmfoundry[onnx-build,train]')",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("onnx") / "home")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.engines.tiny_models import build_tiny_phi3

    return build_tiny_phi3(tmp_path_factory.mktemp("hf") / "tiny-phi3")


def cli(server: LiveServer, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
    env.update(
        LMFOUNDRY_HOME=str(server.home), LMFOUNDRY_URL=server.url, LMFOUNDRY_TOKEN=ADMIN_TOKEN
    )
    done = subprocess.run(
        [sys.executable, "-m", "lmfoundry", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def deploy(server: LiveServer, name: str, model: str) -> openai.OpenAI:
    with server.client() as c:
        created = c.post(
            "/api/v1/projects/default/serverless-deployments", json={"name": name, "model": model}
        )
        assert created.status_code == 201, created.text
        target = created.json()["target_url"]
        key = c.get(f"/api/v1/projects/default/serverless-deployments/{name}/keys").json()
    return openai.OpenAI(base_url=target + "v1", api_key=key["primary_key"], max_retries=0)


def test_a_built_onnx_model_is_served_by_a_serverless_deployment(
    server: LiveServer, tiny_phi3: Path
) -> None:
    import onnxruntime_genai as og

    from lmfoundry.engines.onnx import OnnxTokenizer

    cli(server, "catalog", "build-onnx", str(tiny_phi3), "--id", "tiny-onnx")
    folder = server.home / "models" / "onnx" / "tiny-onnx"
    assert (folder / "genai_config.json").is_file()
    with server.client() as c:
        card = c.get("/api/v1/catalog/tiny-onnx").json()
    assert (card["engine"], card["format"], card["weights_present"]) == ("onnx", "onnx", True)

    client = deploy(server, "tiny-onnx", "tiny-onnx")
    messages = [{"role": "user", "content": "The model reads a long story"}]
    reply = client.chat.completions.create(
        model="tiny-onnx",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
    )

    # onnxruntime-genai's own greedy loop on the tokens of the same chat
    tokenizer = OnnxTokenizer(folder)
    prompt = tokenizer.encode(tokenizer.render(messages))
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + 12, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array(prompt, dtype=np.int32))
    ids = []
    while not generator.is_done():
        generator.generate_next_token()
        ids.append(int(generator.get_next_tokens()[0]))
    expected = tokenizer._tokenizer.decode([i for i in ids if i not in (2, 6)])
    assert reply.choices[0].message.content == expected.rstrip("\ufffd")
    assert reply.usage is not None and reply.usage.prompt_tokens == len(prompt)


@pytest.mark.heavy
@pytest.mark.timeout(900)
def test_smollm2_built_to_onnx_answers(server: LiveServer) -> None:
    done = cli(server, "catalog", "build-onnx", "SmolLM2-135M-Instruct", "--json")
    assert '"id": "SmolLM2-135M-Instruct-onnx"' in done.stdout
    client = deploy(server, "smol-onnx", "SmolLM2-135M-Instruct-onnx")
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct-onnx",
        messages=[
            {"role": "user", "content": "What is the capital of France? Answer in one word."}
        ],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in (reply.choices[0].message.content or "")
