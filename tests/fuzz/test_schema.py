"""Schemathesis against lmfoundry's own OpenAPI schema, on a real server on loopback.

Every operation of the management API and the data plane gets generated requests (valid and
invalid bodies, parameters and headers), authenticated as the admin; the data plane's path
names a real deployment and carries its key, so generated chat requests reach the model.
Checks: no 5xx, responses match their documented schemas, status codes and content types.

CI runs a bounded, derandomised number of cases per operation; for a longer local run:

    LMFOUNDRY_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/fuzz -p no:randomly
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_TOKEN, LiveServer, start_server, stop_server

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(1800)]  # SQLite pass only

EXAMPLES = int(os.environ.get("LMFOUNDRY_FUZZ_EXAMPLES", "25"))
DEPLOYMENT = "smollm2-135m-instruct"  # created by `lmfoundry up` on the embedded defaults
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home: Path = tmp_path_factory.mktemp("fuzz") / "home"
    # quotas high enough that the fuzzer is never throttled into sameness
    live = start_server(home, env={"LMFOUNDRY_AUTH_FAILURES_PER_MINUTE": "1000000"})
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def deployment_key(server: LiveServer) -> str:
    with server.client() as http:
        keys = http.get(f"/api/v1/projects/default/serverless-deployments/{DEPLOYMENT}/keys")
        assert keys.status_code == 200, keys.text
        return str(keys.json()["primary_key"])


def test_no_server_errors_and_responses_match_the_schema(
    server: LiveServer, deployment_key: str
) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures: list[str] = []
    operations = 0
    statuses: Counter[int] = Counter()  # of data-plane responses
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: schemathesis.Case) -> None:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            if "name" in (case.path_parameters or {}) and not case.path.startswith("/api/"):
                # the data plane: a real deployment, called with its key
                case.path_parameters["name"] = DEPLOYMENT
                headers = {"api-key": deployment_key}
            response = case.call_and_validate(
                base_url=server.url, headers=headers, checks=CHECKS, timeout=120
            )
            if "api-key" in headers:
                statuses[response.status_code] += 1

        try:
            run()
        except Exception as exc:  # noqa: BLE001  (one operation must not hide the others)
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations > 50
    assert statuses[200] > 0, statuses  # generated requests reached the model
    assert not failures, "\n\n".join(failures)
