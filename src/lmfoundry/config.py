"""Settings, read once from `LMFOUNDRY_*` environment variables.

Nothing else in the package reads `os.environ` for configuration; it asks `get_settings()`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LMFOUNDRY_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".lmfoundry",
        description="Folder for the database, master key, credentials, artifacts and sockets.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///$LMFOUNDRY_HOME/lmfoundry.db.",
    )
    host: str = Field(default="127.0.0.1", description="Address `lmfoundry up` listens on.")
    port: int = Field(default=8000, description="Port `lmfoundry up` listens on.")
    metrics_port: int | None = Field(
        default=None,
        description="Also serve GET /metrics, without a token, on 127.0.0.1 at this port "
        "(for a scraper on the same host); unset: only on the main port, with a token.",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL callers use (target URLs are built from it); default http://host:port.",
    )
    admin_token: str | None = Field(
        default=None, description="Token for the bootstrap admin, used instead of a random one."
    )
    master_key: str | None = Field(
        default=None,
        description="Fernet key for secrets at rest; default $LMFOUNDRY_HOME/master.key (0600).",
    )
    redis_url: str | None = Field(default=None, description="Share quotas through this Redis.")
    quotas_enabled: bool = Field(
        default=True, description="Enforce deployment quotas (off: count nothing, refuse nothing)."
    )
    metering_enabled: bool = Field(
        default=True, description="Write a usage record per inference request."
    )
    ray_address: str | None = Field(
        default=None,
        description="Run instances as Ray Serve replicas and fine-tuning jobs as Ray Jobs on "
        "the Ray cluster at this address (its GCS, e.g. 10.0.0.5:6379).",
    )
    ray_dashboard_url: str | None = Field(
        default=None,
        description="The Ray dashboard (Serve config and Job submission); default: the one "
        "the cluster reports.",
    )
    supervisor: bool = Field(
        default=True,
        description="Own instances and jobs. Gateway processes (`up --no-supervisor`) route "
        "to the instances a supervisor on the same database publishes.",
    )
    instance_idle_seconds: float = Field(
        default=600.0, description="Stop a serverless instance after this long without requests."
    )
    instance_start_timeout: float = Field(
        default=120.0, description="Seconds an instance may take to load its model."
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, description="Largest inference request body accepted (413 above)."
    )
    auth_failures_per_minute: int = Field(
        default=30,
        description="Failed authentications a client address may make per minute before "
        "its credentialed requests get 429.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Reverse proxies (addresses or CIDRs, separated by ',' or a JSON list) "
        "whose X-Forwarded-For names the client address; from any other peer the header is "
        "ignored. Empty: the peer is the client.",
    )
    token_ttl_days: int = Field(
        default=90,
        ge=1,
        le=3650,
        description="Days a new personal access token stays valid unless it is created with "
        "its own expires_in_days.",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        description="Largest dataset or run data upload accepted, from a signed-in caller.",
    )
    max_api_body_bytes: int = Field(
        default=1024 * 1024,
        description="Largest management API body accepted other than uploads (413 above).",
    )
    max_prompt_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Seconds the gateway may spend rendering a request's chat template and "
        "counting its tokens (400 above).",
    )
    engine_threads: int | None = Field(
        default=None, description="CPU threads per llama.cpp instance; default: all cores."
    )
    engine_max_sequences: int = Field(
        default=16,
        description="Sequences one instance decodes together (its batch: llama.cpp, "
        "transformers and onnx engines).",
    )
    engine_kv_tokens: int = Field(
        default=16384, description="KV cache cells shared by the sequences of one instance."
    )
    stream_interval_ms: float = Field(
        default=0.0,
        ge=0.0,
        le=1000.0,
        description="Tokens of a streamed answer that come sooner than this after the "
        "previous write are read and sent together, each still its own chunk (the first at "
        "once): one wake-up of the gateway for several tokens, a third less of its CPU per "
        "token, for hosts where it competes with the engine. 0: each token as it comes.",
    )
    flow_line_timeout: float = Field(
        default=600.0,
        description="Seconds one line of a flow (a test, a score, one line of a run) may take.",
    )
    flow_workers: int = Field(
        default=2, description="Flow processes that share the lines of one batch run."
    )
    flow_max_bytes: int = Field(
        default=50 * 1024 * 1024, description="Largest flow folder accepted (packed)."
    )
    flow_sandbox: Literal["bwrap", "off"] = Field(
        default="bwrap",
        description="Run flow code in a bubblewrap sandbox (own uid, mounts, pids, network "
        "through an allow-list proxy). `off` is an explicit opt-out: flow code then runs as "
        "the server's own user and can read its files.",
    )
    flow_cpu_seconds: int = Field(
        default=3600, ge=1, description="CPU seconds one flow process may use (RLIMIT_CPU)."
    )
    flow_memory_bytes: int = Field(
        default=8 * 1024**3, ge=2**26, description="Address space of a flow process (RLIMIT_AS)."
    )
    flow_processes: int = Field(
        default=256, ge=8, description="Processes a sandboxed flow may run at once (RLIMIT_NPROC)."
    )
    flow_file_bytes: int = Field(
        default=1024**3,
        ge=2**20,
        description="Largest file a flow process may write (RLIMIT_FSIZE).",
    )
    flow_uid_base: int = Field(
        default=1_500_000_000,
        ge=1000,
        description="Server run as root: the first uid (and gid) of the pool sandboxed flow "
        "processes run as, one per live process; no other account may use the range.",
    )
    flow_uid_count: int = Field(
        default=4096, ge=1, description="Size of the flow uid pool (concurrent flow processes)."
    )
    allow_self_service_projects: bool = Field(
        default=False,
        description="Let users who are not admins create projects (they become the owner); "
        "off: only an admin creates projects and adds their members.",
    )
    flows_enabled_by_default: bool = Field(
        default=False,
        description="Turn flows on in new projects (the owner can switch them on or off "
        "later with `lmfoundry projects flows enable|disable`). The default project made "
        "on the first start always has them on.",
    )
    import_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders on the server whose models may be registered by path "
        "(separated by ':' or a JSON list); empty: registering by path is off. Never "
        "$LMFOUNDRY_HOME, never through a symlink.",
    )
    import_max_bytes: int = Field(
        default=64 * 1024**3, ge=1, description="Largest model folder registered by path."
    )
    import_max_files: int = Field(
        default=10_000, ge=1, description="Most files in a model folder registered by path."
    )
    database_busy_seconds: float = Field(
        default=30.0,
        gt=0,
        description="SQLite: how long a write waits on another writer before the request "
        "gets a 503 saying the database is busy.",
    )
    max_concurrent_jobs: int = Field(
        default=1, ge=1, description="Fine-tuning jobs that run at once; the others wait queued."
    )
    job_checkpoint_steps: int = Field(
        default=50,
        ge=1,
        description="Steps between a job's checkpoints unless its checkpoint_steps says otherwise.",
    )
    job_threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads per job process; default: the cores shared among "
        "LMFOUNDRY_MAX_CONCURRENT_JOBS jobs.",
    )
    job_max_restarts: int = Field(
        default=3,
        ge=0,
        description="Times a job whose process dies is resumed from its last checkpoint before "
        "it is marked failed.",
    )
    # Per-project quotas (quotas/projects.py): the defaults a project without its own limit
    # takes; admins set a project's own with `lmfoundry projects quota --set NAME=VALUE`.
    project_instances: int = Field(
        default=16, ge=0, description="Default quota: instances one project's deployments hold."
    )
    project_instance_threads: int = Field(
        default=256,
        ge=0,
        description="Default quota: CPU threads of one project's instances "
        "(LMFOUNDRY_ENGINE_THREADS, default all cores, per instance).",
    )
    project_finetune_jobs: int = Field(
        default=4, ge=0, description="Default quota: one project's jobs queued or running at once."
    )
    project_flow_runs_per_minute: int = Field(
        default=30, ge=0, description="Default quota: flow batch runs one project starts a minute."
    )
    project_flow_calls_per_minute: int = Field(
        default=600,
        ge=0,
        description="Default quota: flow score and test calls to one project a minute.",
    )
    project_storage_bytes: int = Field(
        default=50 * 1024**3,
        ge=0,
        description="Default quota: bytes one project's datasets, flows, runs, models and job "
        "outputs take under the artifacts folder.",
    )
    url: str | None = Field(
        default=None,
        description="Server the CLI and SDK talk to; default: the one in the credentials file.",
    )
    token: str | None = Field(
        default=None,
        description="Token the CLI and SDK send; default: the one in the credentials file.",
    )
    default_project: str = "default"
    default_deployment: str = "smollm2-135m-instruct"
    default_model: str = "SmolLM2-135M-Instruct"
    log_level: str = "info"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="`json`: one JSON line per request (request id, target, deployment, "
        "status, tokens, latency, key id) and every other log record as JSON too.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description="Export OpenTelemetry traces over OTLP/HTTP to this collector (the "
        "standard OpenTelemetry variables; needs the `otel` extra).",
    )
    otel_service_name: str = Field(
        default="lmfoundry",
        validation_alias=AliasChoices("OTEL_SERVICE_NAME"),
        description="The service name traces carry.",
    )

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        """`/srv/models:/data/hf` (as PATH is written) or a JSON list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        """`10.0.0.0/8, 192.0.2.7` or a JSON list; each entry must parse as a network."""
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list):
            entries = [str(part).strip() for part in value if str(part).strip()]
            for entry in entries:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"LMFOUNDRY_TRUSTED_PROXIES: {entry!r} is not an address or CIDR; "
                        "write e.g. 10.0.0.0/8,192.0.2.7"
                    ) from None
            return entries
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'lmfoundry.db'}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    @property
    def jobs_dir(self) -> Path:
        """Fine-tuning jobs' checkpoints and process logs."""
        return self.home / "jobs"

    @property
    def run_dir(self) -> Path:
        """Sockets and pid files of running instances."""
        return self.home / "run"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget cached settings (tests and `lmfoundry` subcommands that change the env)."""
    get_settings.cache_clear()


SECRET_VARIABLES = ("LMFOUNDRY_MASTER_KEY", "LMFOUNDRY_ADMIN_TOKEN")


def forget_secret_variables() -> None:
    """Drop the master key and the admin token from this process's environment once the
    settings hold them (`lmfoundry up`): no child process inherits them, and the original
    strings, which /proc/PID/environ shows, are overwritten with zeros."""
    import ctypes

    prefixes = tuple(f"{name}=".encode() for name in SECRET_VARIABLES)
    strings: list[tuple[int, int]] = []  # (address, length) of each NAME=value string
    with contextlib.suppress(OSError, ValueError):
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
        index = 0
        while address := environ[index]:
            text = ctypes.string_at(address)
            if text.startswith(prefixes):
                strings.append((address, len(text)))
            index += 1
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    for address, length in strings:
        ctypes.memset(address, 0, length)
