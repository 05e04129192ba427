"""Fixtures for fine-tuning tests: the tiny Phi-3, built once per session, and settings that
give each job process one thread (a tiny model gains nothing from more, and a busy CI
machine's spinning OpenMP threads would slow every step)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmfoundry.config import Settings
from tests.conftest import ADMIN_TOKEN
from tests.finetune.tiny import build_tiny_phi3


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_phi3(tmp_path_factory.mktemp("models") / "tiny-phi3")


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, admin_token=ADMIN_TOKEN, job_threads=1)
