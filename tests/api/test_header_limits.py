"""Oversized headers get 431 naming the limit, on both planes, before any route runs."""

from __future__ import annotations

from tests.conftest import Api


def test_headers_over_the_limit_get_431(api: Api) -> None:
    dep = api.deploy("hdr")
    url = dep["target_url"].split("://", 1)[1].split("/", 1)[1]  # the path under the server
    for headers in (
        {"x-big": "a" * 40_000},  # one huge header
        {f"x-h{i}": "v" for i in range(150)},  # too many
    ):
        for method, path in (("GET", "/api/v1/projects"), ("POST", f"/{url}chat/completions")):
            response = api.client.request(
                method,
                path,
                headers={**api.auth, "api-key": dep["primary_key"], **headers},
                json={"messages": [{"role": "user", "content": "hi"}]},
            )
            assert response.status_code == 431, response.text
            error = response.json()["error"]
            assert error["code"] == "request_header_fields_too_large"
            assert "32,768 bytes" in error["message"] and "100 fields" in error["message"]
    ok = api.client.post(
        f"/{url}chat/completions",
        headers={"api-key": dep["primary_key"], "x-fine": "a" * 4000},
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
    )
    assert ok.status_code == 200, ok.text
