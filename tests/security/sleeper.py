"""A stand-in for `lmfoundry.finetune.run` in the job-environment test: it takes the same
arguments, says it started (next to its --env-file), and waits to be read and stopped."""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __name__ == "__main__":
    env_file = Path(sys.argv[sys.argv.index("--env-file") + 1])
    (env_file.parent / "started").write_text("ok")
    time.sleep(60)
