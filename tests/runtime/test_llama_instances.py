"""Local instances of GGUF models are llama-server processes: a model llama-server cannot load
fails the start at once with llama-server's own reason (not a hang until the start
timeout)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lmfoundry.catalog.bundled import smollm2_path
from lmfoundry.errors import Unavailable
from lmfoundry.runtime.local import LocalBackend
from lmfoundry.runtime.spec import InstanceSpec

pytestmark = pytest.mark.slow


async def test_a_model_llama_server_cannot_load_fails_with_its_error_line(
    tmp_path: Path,
) -> None:
    model = smollm2_path()
    assert model is not None
    broken = tmp_path / "cut.gguf"
    with open(model, "rb") as whole:
        broken.write_bytes(whole.read(20_000_000))  # the header whole, the tensors cut off
    backend = LocalBackend(tmp_path / "home", start_timeout=60, idle_seconds=60)
    group = backend.group(InstanceSpec.make("llamacpp", str(broken), {"max_sequences": 2}), "cut")
    started = time.monotonic()
    try:
        with pytest.raises(Unavailable) as info:
            await group.start_all()
        (instance,) = backend.describe()
    finally:
        await backend.shutdown()
    assert time.monotonic() - started < 30
    message = info.value.message
    assert "cut.gguf" in message and "exited while loading" in message, message
    assert "error loading model: tensor 'token_embd.weight' data is not within" in message
    assert instance.state == "failed" and instance.last_error == message
