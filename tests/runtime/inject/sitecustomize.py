"""Put on PYTHONPATH by tests/runtime/test_engine_failure.py: in an instance process (and
nowhere else), the llamacpp engine's decode step raises once the file named by
LMF_TEST_FAIL_FLAG exists (the test creates it; the first step to see it removes it, so a
restarted instance serves normally). The failure is a real exception inside the real
decode loop of the real engine; nothing else is changed."""

from __future__ import annotations

import os
import sys

FLAG = os.environ.get("LMF_TEST_FAIL_FLAG")

if FLAG and "lmfoundry.runtime.worker" in sys.orig_argv:
    from lmfoundry.engines.llamacpp import LlamaCppEngine

    _step = LlamaCppEngine._step

    def _failing_step(self: LlamaCppEngine) -> None:
        try:
            os.unlink(FLAG)
        except FileNotFoundError:
            return _step(self)
        raise RuntimeError("injected decode failure")

    LlamaCppEngine._step = _failing_step  # type: ignore[method-assign]
