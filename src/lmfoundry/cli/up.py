"""`lmfoundry up`: migrate, bootstrap, and serve both planes and the studio."""

from __future__ import annotations

import contextlib
import ctypes
import shlex
import signal
import socket
from typing import Annotated, Any

import typer
import uvicorn

from lmfoundry.access.models import Role
from lmfoundry.access.service import write_credentials
from lmfoundry.cli._output import console
from lmfoundry.client.base import load_credentials
from lmfoundry.config import Settings, forget_secret_variables, get_settings
from lmfoundry.errors import NotFound
from lmfoundry.observability import logs
from lmfoundry.platform import Platform
from lmfoundry.runtime import llama_server
from lmfoundry.runtime.llama_server import ServerMissing

PR_SET_DUMPABLE = 4


def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    supervisor: Annotated[
        bool,
        typer.Option(
            help="Own instances and jobs. Start extra gateways with --no-supervisor on the same "
            "database (and Redis): they route to the supervisor's instances."
        ),
    ] = True,
    reuse_port: Annotated[
        bool,
        typer.Option(
            help="Share the port with other lmfoundry processes (SO_REUSEPORT): the kernel "
            "spreads connections over them, so adding gateways adds capacity."
        ),
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="`json`: one JSON line per request (request id, project, target, deployment, "
            "status, tokens, latency, key id) and every log record as JSON; default `text` "
            "(LMFOUNDRY_LOG_FORMAT)."
        ),
    ] = None,
) -> None:
    """Start lmfoundry: API, inference gateway, instance supervisor and studio."""
    if log_format not in (None, "text", "json"):
        raise typer.BadParameter(f"--log-format must be text or json, not {log_format!r}.")
    options: dict[str, Any] = {"host": host, "port": port, "log_format": log_format}
    overrides = {k: v for k, v in options.items() if v is not None}
    if not supervisor:
        overrides["supervisor"] = False
    settings = Settings(**overrides) if overrides else get_settings()
    _harden()
    platform = Platform.create(settings)
    if settings.supervisor:
        _engine_check()
        _credentials(settings, platform)
        _default_deployment(settings, platform)
    else:
        console.print(
            f"Gateway (no supervisor) on {settings.base_url}; instances and jobs "
            "belong to the supervisor on the same database."
        )

    from lmfoundry.api.app import create_app

    app = create_app(settings, platform)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        **_log_config(settings),
        timeout_graceful_shutdown=10,
        # X-Forwarded-For counts only from LMFOUNDRY_TRUSTED_PROXIES (api/forwarded.py);
        # uvicorn's own handling would trust it from 127.0.0.1 by default
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    sockets = [_socket(settings.host, settings.port, reuse_port)] if reuse_port else None
    if settings.metrics_port:
        # One server, two sockets: the app answers only GET /metrics, without a token, on
        # this loopback one (api/health.py MetricsPort). Never shared (no SO_REUSEPORT):
        # each gateway of a host needs its own, so that every scrape reaches the same one.
        if settings.metrics_port == settings.port:
            raise typer.BadParameter(
                f"LMFOUNDRY_METRICS_PORT ({settings.metrics_port}) must differ from the "
                "main port; pick another, or leave it unset to serve /metrics (with a "
                "token) on the main port only."
            )
        main = sockets[0] if sockets else _socket(settings.host, settings.port, False)
        sockets = [main, _socket("127.0.0.1", settings.metrics_port, False)]
        console.print(
            f"Metrics (no token, this host only): http://127.0.0.1:{settings.metrics_port}/metrics"
        )
    # uvicorn re-raises the signal it shut down on once it is done, so a graceful stop would
    # end as "killed by SIGTERM". Handlers that do nothing, restored by uvicorn after its own,
    # make a clean shutdown exit 0, as supervisors and scripts expect.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=sockets)


def _log_config(settings: Settings) -> dict[str, Any]:
    """uvicorn's logging for LMFOUNDRY_LOG_FORMAT: its own (text), or JSON lines."""
    config = logs.logging_config(settings.log_format, settings.log_level)
    return {} if config is None else {"log_config": config, "access_log": False}


def _harden() -> None:
    """No process of the same user may read this one's memory, environ or fds (ptrace,
    /proc/PID/mem): it holds the master key. The key and the admin token, read into the
    settings, leave the environment."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    forget_secret_variables()


def _engine_check() -> None:
    """Say at once whether GGUF models can be served (llama-server found and runnable). The
    server starts either way: other engines do not need it, and a GGUF request answers 503
    with the same message."""
    try:
        version = llama_server.binary_version()
    except ServerMissing as exc:
        console.print(f"[bold red]Cannot serve GGUF models:[/] {exc.message}", soft_wrap=True)
        return
    console.print(f"GGUF engine: llama-server ({version})", highlight=False)


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _credentials(settings: Settings, platform: Platform) -> None:
    token = platform.bootstrap.token
    if token:
        path = write_credentials(settings.home, token, settings.base_url)
        console.print(f"[bold]Admin token[/] (shown once; saved for the CLI in {path}, mode 0600):")
        console.print(f"  {token}", highlight=False, soft_wrap=True)
    elif settings.admin_token and not load_credentials(settings.home):
        write_credentials(settings.home, settings.admin_token, settings.base_url)


def _default_deployment(settings: Settings, platform: Platform) -> None:
    """On a fresh home, deploy the bundled model; print how to call it."""
    admin = platform.access.admin_principal()
    access = platform.access.project_access(admin, settings.default_project, Role.developer)
    name = settings.default_deployment
    key = "$KEY"
    try:
        deployment = platform.serverless.get(access, name)
    except NotFound:
        if not platform.bootstrap.created:
            console.print(f"lmfoundry at {settings.base_url} (studio: {settings.base_url}/)")
            return
        deployment = platform.serverless.create(access, name, settings.default_model)
        if settings.log_format != "json":  # JSON output goes to log stores: no key there
            key = platform.serverless.read_keys(access, name).primary_key
        console.print(f"Created serverless deployment [bold]{name}[/] of {settings.default_model}.")
    target = deployment.target_url
    # Greedy, and asked for one sentence: the bundled 135M model then answers "The capital of
    # France is Paris."; at its default temperature the bare question drifts into French
    # word salad ("L'Étoile, la Marseillaise, ...").
    body = (
        '{"messages": [{"role": "user", "content": '
        '"What is the capital of France? Answer in one sentence."}], '
        '"max_tokens": 64, "temperature": 0}'
    )
    console.print(f"  target URL: {target}")
    if key == "$KEY":
        console.print(
            f"  key:        KEY=$(lmfoundry serverless keys {name} --json | "
            "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"primary_key\"])')",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(f"  key:        {key}", highlight=False, soft_wrap=True)
    console.print("Try it:", highlight=False)
    console.print(
        f"  curl -s {target}chat/completions -H {shlex.quote('Authorization: Bearer ' + key)} "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
