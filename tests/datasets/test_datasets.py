"""Datasets through the management API: validation with line numbers, nothing stored on a
rejection, versions, statistics, and token counts with a model's own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmfoundry.datasets.validate import check_row
from tests.conftest import Api

DATASETS = "/api/v1/projects/default/datasets"
EXAMPLE = Path(__file__).parents[2] / "examples" / "finetune" / "data" / "chat.jsonl"


def row(*turns: tuple[str, str], **extra: object) -> str:
    return json.dumps({**extra, "messages": [{"role": r, "content": c} for r, c in turns]})


GOOD = row(("user", "What is the capital of Peru?"), ("assistant", "Lima."))


def upload(api: Api, content: str | bytes, name: str = "chat", **form: str):
    data = content.encode() if isinstance(content, str) else content
    return api.post(DATASETS, files={"file": ("chat.jsonl", data)}, data={"name": name, **form})


def stored_files(home: Path) -> list[Path]:
    root = home / "artifacts" / "datasets"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "hi"}', 'no "messages" field'),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"content": "hi"}]}', "messages[0] has no role"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "'bot' is not one of"),
        ('{"messages": [{"role": "user", "content": "  "}]}', "messages[0].content is empty"),
        ('{"messages": [{"role": "user", "content": 3}]}', "must be a string"),
        ('{"messages": [{"role": "user", "content": "hi", "weight": 0}]}', "unknown field"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
    ],
)
def test_each_kind_of_bad_row_is_named(line: str, problem: str) -> None:
    messages, error = check_row(line.encode())
    assert messages is None and error is not None and problem in error


def test_ultrachat_rows_are_accepted_with_their_extra_fields() -> None:
    line = row(("user", "Hi"), ("assistant", "Hello!"), prompt="Hi", prompt_id="abc123")
    messages, error = check_row(line.encode())
    assert error is None and messages is not None and len(messages) == 2


def test_malformed_file_is_rejected_with_line_numbers_and_nothing_is_stored(
    api: Api, home: Path
) -> None:
    lines = [GOOD, "{oops", GOOD, row(("user", "Hi")), "", row(("robot", "x"), ("assistant", "y"))]
    response = upload(api, "\n".join(lines) + "\n")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "file"
    assert [d["line"] for d in error["detail"]] == [2, 4, 6]
    assert "3 invalid line(s)" in error["message"]
    assert "line 2: not valid JSON" in error["message"]
    assert "line 4: no assistant message" in error["message"]
    assert "nothing was stored" in error["message"]
    assert api.get(DATASETS).json() == []
    assert stored_files(home) == []  # not even the temporary file


def test_versions_lookups_and_statistics(api: Api, home: Path) -> None:
    first = upload(api, EXAMPLE.read_bytes())
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["name"], body["version"], body["rows"]) == ("chat", 1, 80)
    assert body["id"].startswith("ds-")
    stats = body["stats"]
    assert stats["messages_per_row"]["min"] == 2 and stats["messages_per_row"]["max"] == 5
    assert stats["chars_per_row"]["min"] <= stats["chars_per_row"]["mean"]
    assert stats["tokens_per_row"] == {}  # no model given: no token counts claimed

    second = upload(api, GOOD + "\n")
    assert (second.json()["version"], second.json()["rows"]) == (2, 1)
    assert [d["version"] for d in api.get(DATASETS, params={"name": "chat"}).json()] == [1, 2]
    assert api.get(f"{DATASETS}/chat").json()["version"] == 2
    assert api.get(f"{DATASETS}/chat:1").json()["id"] == body["id"]
    assert api.get(f"{DATASETS}/{body['id']}").json()["version"] == 1
    assert api.get(f"{DATASETS}/chat:9").status_code == 404
    assert len(stored_files(home)) == 2
    stored = Path(stored_files(home)[0]).read_bytes()
    assert stored in (EXAMPLE.read_bytes(), (GOOD + "\n").encode())


def test_bad_names_and_unknown_models_are_refused(api: Api, home: Path) -> None:
    bad_name = upload(api, GOOD, name="Not A Name")
    assert bad_name.status_code == 400 and bad_name.json()["error"]["param"] == "name"
    unknown = upload(api, GOOD, model="no-such-model")
    assert unknown.status_code == 404 and "not in the catalog" in unknown.json()["error"]["message"]
    missing = api.post(DATASETS, data={"name": "chat"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    assert stored_files(home) == []


def test_tokens_are_counted_with_the_models_tokenizer_and_the_context_is_enforced(
    api: Api, home: Path
) -> None:
    counted = upload(api, EXAMPLE.read_bytes(), model="SmolLM2-135M-Instruct")
    assert counted.status_code == 201, counted.text
    tokens = counted.json()["stats"]["tokens_per_row"]["SmolLM2-135M-Instruct"]
    assert tokens["context_length"] == 8192
    # SmolLM2's template adds a default system prompt: every row is at least ~30 tokens.
    assert 30 < tokens["min"] <= tokens["mean"] <= tokens["max"] < 200

    long = row(("user", "word " * 9000), ("assistant", "ok"))
    too_long = upload(api, GOOD + "\n" + long + "\n", name="long", model="SmolLM2-135M-Instruct")
    assert too_long.status_code == 400
    message = too_long.json()["error"]["message"]
    assert (
        "line 2:" in message and "over the 8192-token context of SmolLM2-135M-Instruct" in message
    )
    assert api.get(DATASETS, params={"name": "long"}).json() == []
