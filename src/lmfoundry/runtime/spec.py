"""What an instance runs, and where instance sockets live."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InstanceSpec:
    """One kind of instance: an engine over a model file, with its options.

    Deployments whose specs are equal share instances (one SmolLM2 process serves every
    serverless deployment of SmolLM2 on this machine).
    """

    engine: str
    model_path: str
    options: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        raw = json.dumps([self.engine, self.model_path, self.options], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def to_json(self) -> str:
        return json.dumps(
            {"engine": self.engine, "model_path": self.model_path, "options": self.options_dict}
        )

    @classmethod
    def from_json(cls, raw: str) -> InstanceSpec:
        data = json.loads(raw)
        return cls.make(data["engine"], data["model_path"], data.get("options") or {})

    @classmethod
    def make(
        cls, engine: str, model_path: str, options: dict[str, Any] | None = None
    ) -> InstanceSpec:
        items = ((k, tuple(v) if isinstance(v, list) else v) for k, v in (options or {}).items())
        return cls(engine=engine, model_path=model_path, options=tuple(sorted(items)))


def socket_dir(home: Path) -> Path:
    """A short folder for unix sockets (their paths are limited to 107 bytes)."""
    digest = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"lmf-{os.getuid()}-{digest}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Instances (llama-server included) answer anyone who can reach their socket: the folder
    # must be this user's alone, not one another local user made first in /tmp.
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(
            f"{path} is not a folder of this user's; remove it (another user may have made "
            "it to reach this server's instances) and start again."
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)
    return path
