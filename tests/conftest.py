"""Shared fixtures: a fresh home per test, the app in-process, and a real server process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from lmfoundry.config import Settings, reset_settings

ADMIN_TOKEN = "lmf_pat_" + "t" * 43
# Folders tests register models from by path (LMFOUNDRY_IMPORT_ROOTS): the session's
# temporary folders and the bundled SmolLM2's package; set by `_import_roots`.
IMPORT_ROOTS: list[Path] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url_for(home: Path) -> str:
    """The database of one LMFOUNDRY_HOME: SQLite inside it, or, when the suite runs against
    PostgreSQL (LMFOUNDRY_TEST_DATABASE_URL, set by scripts/test), a database of its own on
    that server, so every home starts empty and a restarted server finds its data."""
    server = os.environ.get("LMFOUNDRY_TEST_DATABASE_URL")
    if not server:
        return f"sqlite:///{home / 'lmfoundry.db'}"
    import hashlib

    import sqlalchemy

    name = "lmf_" + hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:20]
    engine = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        exists = connection.execute(
            sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first()
        if not exists:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session", autouse=True)
def _import_roots(tmp_path_factory: pytest.TempPathFactory) -> None:
    from lmfoundry.catalog.bundled import smollm2_path

    smollm2 = smollm2_path()
    IMPORT_ROOTS[:] = [tmp_path_factory.getbasetemp(), *([smollm2.parent] if smollm2 else [])]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty LMFOUNDRY_HOME (and database); settings read from the environment see it."""
    path = tmp_path / "home"
    monkeypatch.setenv("LMFOUNDRY_HOME", str(path))
    for name in (
        "LMFOUNDRY_ADMIN_TOKEN",
        "LMFOUNDRY_URL",
        "LMFOUNDRY_TOKEN",
        "LMFOUNDRY_REDIS_URL",
        "LMFOUNDRY_MASTER_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LMFOUNDRY_DATABASE_URL", database_url_for(path))
    reset_settings()
    yield path
    reset_settings()


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A fresh database for tests that use storage directly."""
    return database_url_for(tmp_path / "db")


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(
        home=home, admin_token=ADMIN_TOKEN, instance_idle_seconds=600, import_roots=IMPORT_ROOTS
    )


@dataclass
class Api:
    """The app in-process, with the admin's token."""

    client: TestClient
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.client.get(path, headers=self.auth, **kw)  # type: ignore[arg-type]

    def post(self, path: str, **kw: object) -> httpx.Response:
        return self.client.post(path, headers=self.auth, **kw)  # type: ignore[arg-type]

    def put(self, path: str, **kw: object) -> httpx.Response:
        return self.client.put(path, headers=self.auth, **kw)  # type: ignore[arg-type]

    def patch(self, path: str, **kw: object) -> httpx.Response:
        return self.client.patch(path, headers=self.auth, **kw)  # type: ignore[arg-type]

    def delete(self, path: str, **kw: object) -> httpx.Response:
        return self.client.delete(path, headers=self.auth, **kw)  # type: ignore[arg-type]

    def deploy(
        self, name: str, model: str = "echo", project: str = "default", **quota: object
    ) -> dict[str, str]:
        """Create a serverless deployment; returns its view plus its keys."""
        created = self.post(
            f"/api/v1/projects/{project}/serverless-deployments",
            json={"name": name, "model": model, **quota},
        )
        assert created.status_code == 201, created.text
        keys = self.get(f"/api/v1/projects/{project}/serverless-deployments/{name}/keys")
        return {**created.json(), **keys.json()}


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    from lmfoundry.api.app import create_app

    with TestClient(create_app(settings)) as client:
        yield Api(client, ADMIN_TOKEN)


@dataclass
class LiveServer:
    url: str
    home: Path
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def deploy(
        self, project: str, name: str, model: str = "SmolLM2-135M-Instruct"
    ) -> tuple[str, str]:
        """(target URL, key) of a new serverless deployment of `model` in a new project."""
        with self.client() as c:
            c.post("/api/v1/projects", json={"name": project})
            created = c.post(
                f"/api/v1/projects/{project}/serverless-deployments",
                json={"name": name, "model": model},
            )
            assert created.status_code == 201, created.text
            keys = c.get(f"/api/v1/projects/{project}/serverless-deployments/{name}/keys")
        return created.json()["target_url"], keys.json()["primary_key"]


def start_server(
    home: Path,
    token: str | None = ADMIN_TOKEN,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    args: list[str] | None = None,
) -> LiveServer:
    """`lmfoundry up` as a real process on loopback; waits until /healthz answers."""
    port = port or free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LMFOUNDRY_")}
    environ.update(
        {
            "LMFOUNDRY_HOME": str(home),
            "LMFOUNDRY_PORT": str(port),
            "LMFOUNDRY_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    environ["LMFOUNDRY_DATABASE_URL"] = database_url_for(home)
    environ["LMFOUNDRY_IMPORT_ROOTS"] = json.dumps([str(root) for root in IMPORT_ROOTS])
    if token:
        environ["LMFOUNDRY_ADMIN_TOKEN"] = token
    environ.update(env or {})
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"server-{port}-{time.monotonic_ns()}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lmfoundry", "up", *(args or [])],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            health = httpx.get(url + "/healthz", timeout=1)
            # On a shared port (--reuse-port) another process may answer: wait for this one.
            if health.status_code == 200 and health.json().get("pid") == process.pid:
                return LiveServer(url, home, token or "", process, log)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start: {log.read_text()}")


def stop_server(server: LiveServer, sig: int = signal.SIGTERM) -> int:
    if server.process.poll() is None:
        server.process.send_signal(sig)
        try:
            server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:`port`, nothing persisted, once it accepts connections."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen(
        [*argv, "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on loopback for the session (scripts/system-deps installs it)."""
    port = free_port()
    process = start_redis(port, tmp_path_factory.mktemp("redis"))
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def tiny_lora_adapter(folder: Path) -> Path:
    """A (tiny) PEFT LoRA adapter folder on SmolLM2."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 8,
                "lora_alpha": 16,
                "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
                "target_modules": ["q_proj", "v_proj"],
            }
        )
    )
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return folder
