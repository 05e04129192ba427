"""Flow code runs sandboxed: against a real `lmfoundry up` on loopback, a second, non-admin
user's flows cannot read the server's key files, database or environment, nor another flow's
folder; nothing they start outlives the line; they reach only the hosts their connections
name (and lmfoundry itself), and the tutorial's flow (a custom connection to an online
endpoint's /score, called with `requests`) still works."""

from __future__ import annotations

import ctypes.util
import http.server
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from lmfoundry.config import Settings
from lmfoundry.flows.archive import pack
from tests.conftest import ADMIN_TOKEN, Api, LiveServer, start_server, stop_server
from tests.flows.helpers import DATA, write_flow
from tests.flows.helpers import upload as upload_flow

PROJECT = "tenant"
API = f"/api/v1/projects/{PROJECT}"

SNOOP = """
import glob
import os
from pathlib import Path
from promptflow import tool


def attempt(path):
    try:
        return "read: " + Path(path).read_text(errors="replace")
    except OSError as exc:
        return type(exc).__name__


@tool
def snoop(home: str, database: str, server_pid: int, neighbour: str, tmp: str) -> dict:
    environs = {}
    for path in glob.glob("/proc/[0-9]*/environ"):
        environs[path] = attempt(path)
    return {
        "master_key": attempt(os.path.join(home, "master.key")),
        "credentials": attempt(os.path.join(home, "credentials")),
        "database": attempt(database),
        "home_exists": os.path.exists(home),
        "server_environ": attempt(f"/proc/{server_pid}/environ"),
        "environs": environs,
        "neighbour": attempt(neighbour),
        "other_flows": glob.glob(os.path.join(tmp, "lmfoundry-flow-*")),
        "uid": os.getuid(),
        "status": dict(
            line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines()
        ),
    }
"""

NEIGHBOUR = """
import time
from pathlib import Path
from promptflow import tool


@tool
def wait(note: str) -> str:
    Path("note.txt").write_text(note)
    time.sleep(6)
    return "done"
"""

FORKER = """
import os
import sys
import time
from promptflow import tool


def running(marker):
    for entry in os.listdir("/proc"):
        try:
            if marker.encode() in open(f"/proc/{entry}/cmdline", "rb").read():
                return True
        except OSError:
            pass
    return False


@tool
def fork(marker: str) -> bool:
    if os.fork() == 0:  # child: a session of its own, then a grandchild the child abandons
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", marker])
        os._exit(0)
    os.wait()
    deadline = time.monotonic() + 10
    while not running(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
"""

EGRESS = """
import socket
import requests
from promptflow import tool
from promptflow.connections import CustomConnection


def get(url):
    try:
        response = requests.get(url, timeout=10)
        return f"{response.status_code} {response.text.strip()[:300]}"
    except requests.RequestException as exc:
        return type(exc).__name__


def direct(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__


@tool
def probe(unnamed: str, lmfoundry: str, server_port: int, metadata: CustomConnection) -> dict:
    return {
        "unnamed": get(unnamed),
        "metadata": get(metadata.endpoint),
        "lmfoundry": get(lmfoundry),
        "direct": direct(server_port),
    }
"""


def flow_dag(node: str, inputs: dict[str, str], connection: str | None = None) -> str:
    declared = "\n".join(f"  {name}: {{type: {kind}}}" for name, kind in inputs.items())
    wired = ", ".join(f'{name}: "${{inputs.{name}}}"' for name in inputs)
    if connection:
        wired += f", {connection}: {connection}"
    return f"""
inputs:
{declared}
outputs:
  result: {{type: object, reference: "${{{node}.output}}"}}
nodes:
- name: {node}
  type: python
  source: {{type: code, path: {node}.py}}
  inputs: {{{wired}}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("sandbox") / "home")
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def tenant(server: LiveServer) -> httpx.Client:
    """A client of a second, non-admin user, developer of project `tenant`."""
    with server.client() as admin:
        assert admin.post("/api/v1/projects", json={"name": PROJECT}).status_code == 201
        admin.patch(API, json={"flows_enabled": True})  # where projects start without flows
        created = admin.post("/api/v1/users", json={"name": "mallory"})
        assert created.status_code == 201, created.text
        member = admin.put(f"{API}/members/mallory", json={"role": "developer"})
        assert member.status_code == 200, member.text
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {created.json()['token']}"},
        timeout=120,
    )


def upload(client: httpx.Client, folder: Path, name: str) -> None:
    files = {"file": ("flow.tar.gz", pack(folder))}
    response = client.post(f"{API}/flows", data={"name": name}, files=files)
    assert response.status_code in (200, 201), response.text


def run_line(client: httpx.Client, name: str, **inputs: object) -> dict[str, object]:
    response = client.post(f"{API}/flows/{name}/test", json={"inputs": inputs})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "completed", result
    output = result["outputs"]["result"]
    return dict(output) if isinstance(output, dict) else {"result": output}


def test_a_flow_reads_no_key_database_environ_or_other_flow(
    server: LiveServer, tenant: httpx.Client, tmp_path: Path
) -> None:
    write_flow(tmp_path / "snoop", flow_dag("snoop", _snoop_inputs()), {"snoop.py": SNOOP})
    upload(tenant, tmp_path / "snoop", "snoop")
    write_flow(tmp_path / "wait", flow_dag("wait", {"note": "string"}), {"wait.py": NEIGHBOUR})
    upload(tenant, tmp_path / "wait", "wait")
    note = f"neighbour-note-{uuid.uuid4()}"
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(run_line, tenant, "wait", note=note)
        neighbour = _find_note(note)
        seen = run_line(
            tenant,
            "snoop",
            home=str(server.home),
            database=str(server.home / "lmfoundry.db"),
            server_pid=server.process.pid,
            neighbour=str(neighbour),
            tmp=tempfile.gettempdir(),
        )
        assert waiting.result()["result"] == "done"
    assert seen["master_key"] == "FileNotFoundError"
    assert seen["credentials"] == "FileNotFoundError"
    assert seen["database"] == "FileNotFoundError"
    assert seen["home_exists"] is False
    assert seen["server_environ"] == "FileNotFoundError"  # not in the flow's pid namespace
    assert seen["neighbour"] == "FileNotFoundError"
    assert seen["other_flows"] == []
    everything = repr(seen)
    assert ADMIN_TOKEN not in everything
    assert (server.home / "master.key").read_text().strip() not in everything
    assert note not in everything
    # /proc shows the sandbox's own processes only, and no secret in their environments
    assert 1 <= len(seen["environs"]) <= 3, seen["environs"]
    assert int(seen["status"]["CapEff"], 16) == 0  # no capabilities
    if ctypes.util.find_library("seccomp"):
        assert seen["status"]["Seccomp"] == "2"  # a filter is on
    if os.geteuid() == 0:
        assert seen["uid"] != 0  # as root, flows run as a pool uid of their own


def _snoop_inputs() -> dict[str, str]:
    names = ("home", "database", "neighbour", "tmp")
    return {**dict.fromkeys(names, "string"), "server_pid": "int"}


def _find_note(note: str) -> Path:
    """The running neighbour flow's note, as the host sees it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for path in Path(tempfile.gettempdir()).glob("lmfoundry-flow-*/flow/note.txt"):
            try:
                if path.read_text() == note:
                    return path
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("the neighbour flow never wrote its note")


def _running(marker: str) -> bool:
    for entry in Path("/proc").iterdir():
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_a_double_forked_grandchild_ends_with_the_line(
    tenant: httpx.Client, tmp_path: Path
) -> None:
    write_flow(tmp_path / "fork", flow_dag("fork", {"marker": "string"}), {"fork.py": FORKER})
    upload(tenant, tmp_path / "fork", "forker")
    marker = f"lmfoundry-stray-{uuid.uuid4()}"
    assert run_line(tenant, "forker", marker=marker)["result"] is True  # it did run
    deadline = time.monotonic() + 2
    while _running(marker):
        assert time.monotonic() < deadline, "the grandchild outlived the line"
        time.sleep(0.05)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"unnamed host reached")

    def log_message(self, *args: object) -> None:
        pass


def test_egress_reaches_only_named_hosts(
    server: LiveServer, tenant: httpx.Client, tmp_path: Path
) -> None:
    unnamed = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=unnamed.serve_forever, daemon=True).start()
    try:
        body = {"configs": {"endpoint": "http://169.254.169.254/latest/meta-data/"}}
        assert tenant.put(f"{API}/connections/metadata", json=body).is_success
        inputs = {"unnamed": "string", "lmfoundry": "string", "server_port": "int"}
        dag = flow_dag("probe", inputs, connection="metadata")
        write_flow(tmp_path / "egress", dag, {"probe.py": EGRESS})
        upload(tenant, tmp_path / "egress", "egress")
        seen = run_line(
            tenant,
            "egress",
            unnamed=f"http://127.0.0.1:{unnamed.server_port}/",
            lmfoundry=f"{server.url}/healthz",
            server_port=int(server.url.rsplit(":", 1)[1]),
        )
    finally:
        unnamed.shutdown()
    assert seen["unnamed"].startswith("403 lmfoundry refused the connection"), seen
    assert "not named by any connection" in seen["unnamed"]
    assert seen["metadata"].startswith("403") and "link-local" in seen["metadata"], seen
    assert seen["lmfoundry"].startswith("200"), seen  # lmfoundry's own public URL
    assert seen["direct"] == "ConnectionRefusedError"  # loopback is the sandbox's own


def test_the_tutorial_flow_calls_an_online_endpoint_with_requests(
    tenant: httpx.Client,
) -> None:
    endpoints = f"{API}/online-endpoints"
    assert tenant.post(endpoints, json={"name": "sandboxed"}).status_code == 201
    put = tenant.put(
        f"{endpoints}/sandboxed/deployments/blue", json={"model": "echo", "instance_count": 1}
    )
    assert put.status_code in (200, 201), put.text
    deadline = time.monotonic() + 120
    while (
        tenant.get(f"{endpoints}/sandboxed/deployments/blue").json()["provisioning_state"]
        != "succeeded"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert tenant.put(f"{endpoints}/sandboxed/traffic", json={"blue": 100}).status_code == 200
    endpoint = tenant.get(f"{endpoints}/sandboxed").json()
    key = tenant.get(f"{endpoints}/sandboxed/keys").json()["primary_key"]
    body = {"configs": {"endpoint": endpoint["scoring_uri"]}, "secrets": {"key": key}}
    assert tenant.put(f"{API}/connections/connection", json=body).is_success
    upload(tenant, DATA / "score_client", "tutorial")
    response = tenant.post(
        f"{API}/flows/tutorial/test", json={"inputs": {"input_data": "sandboxed hello"}}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "completed", result
    assert result["outputs"]["answer"], result


def test_the_server_forgets_the_admin_token_it_was_started_with(server: LiveServer) -> None:
    # start_server passes LMFOUNDRY_ADMIN_TOKEN; once read, even /proc's copy is blank
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes()
    assert b"LMFOUNDRY_HOME=" in environ
    assert b"LMFOUNDRY_ADMIN_TOKEN" not in environ and ADMIN_TOKEN.encode() not in environ


STARTER = """
import os
import sys
import time
from promptflow import tool


@tool
def start(marker: str) -> str:
    if os.fork() == 0:  # a child left behind, in the flow process's own group
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", marker])
    time.sleep(0.5)
    return os.getcwd()
"""


def test_without_bubblewrap_flows_refuse_to_run_and_say_why(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    upload_flow(api, DATA / "numbers", "numbers")
    response = api.post(
        "/api/v1/projects/default/flows/numbers/test", json={"inputs": {"number": "4"}}
    )
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert "bubblewrap is not installed (`apt-get install bubblewrap`)" in message
    assert "set LMFOUNDRY_FLOW_SANDBOX=off" in message


def test_the_operators_opt_out_runs_flows_unsandboxed(settings: Settings, tmp_path: Path) -> None:
    from lmfoundry.api.app import create_app

    settings.flow_sandbox = "off"
    write_flow(tmp_path / "start", flow_dag("start", {"marker": "string"}), {"start.py": STARTER})
    marker = f"lmfoundry-stray-{uuid.uuid4()}"
    with TestClient(create_app(settings)) as client:
        api = Api(client, ADMIN_TOKEN)
        upload_flow(api, tmp_path / "start", "start")
        response = api.post(
            "/api/v1/projects/default/flows/start/test", json={"inputs": {"marker": marker}}
        )
    assert response.status_code == 200, response.text
    cwd = response.json()["outputs"]["result"]
    assert not cwd.startswith("/sandbox") and Path(cwd).name == "flow"  # the host's folder
    assert not _running(marker)  # even unsandboxed, its process group ends with the line
