"""Runs the Ray tests (tests/cluster/test_ray.py) inside a fresh loopback-only network namespace,
so that a plain `pytest` (and CI) runs them without Ray ever listening on the host network."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.namespace import loopback_only

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.side]

ROOT = Path(__file__).parents[2]


# About 10 minutes alone; on 2 cores beside the PostgreSQL pass it has run past 600 s, so the
# subprocess below has its own bound and pytest's timeout sits above it.
@pytest.mark.timeout(1500)
def test_the_ray_tests_pass_in_a_loopback_only_namespace() -> None:
    if loopback_only():
        pytest.skip("already in a loopback-only namespace: test_ray.py runs here directly")
    pytest.importorskip("ray.serve", reason="Ray is not installed: pip install 'lmfoundry[ray]'")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("creating a network namespace needs root and iproute2 (`ip netns`)")
    result = subprocess.run(
        [
            str(ROOT / "scripts" / "in-netns"),
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "tests/cluster/test_ray.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1400,
    )
    output = result.stdout + result.stderr
    print(output[-5000:])
    assert result.returncode == 0, output[-5000:]
    assert re.search(r"\b3 passed", output), output[-2000:]  # ran, not skipped
