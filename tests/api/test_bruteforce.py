"""Guessing keys or tokens: after too many failures a client gets 429, even with a good one."""

from __future__ import annotations

from tests.conftest import Api

URL = "/serverless/guarded/chat/completions"
BODY = {"messages": [{"role": "user", "content": "hi"}]}


def test_repeated_failures_lock_the_client_out(api: Api) -> None:
    key = api.deploy("guarded")["primary_key"]
    for n in range(30):
        wrong = api.client.post(URL, headers={"api-key": f"{n:064d}"}, json=BODY)
        assert wrong.status_code == 401
    locked = api.client.post(URL, headers={"api-key": key}, json=BODY)
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) >= 1
    assert "failed authentication" in locked.json()["error"]["message"]
    token = api.client.get("/api/v1/me", headers={"Authorization": "Bearer lmf_pat_wrong"})
    assert token.status_code == 429  # the same counter guards tokens
    assert api.client.get("/healthz").status_code == 200  # no credentials: not throttled


def test_a_few_mistakes_do_not_lock_anyone_out(api: Api) -> None:
    key = api.deploy("guarded")["primary_key"]
    for _ in range(5):
        assert api.client.post(URL, headers={"api-key": "0" * 64}, json=BODY).status_code == 401
    assert api.client.post(URL, headers={"api-key": key}, json=BODY).status_code == 200
