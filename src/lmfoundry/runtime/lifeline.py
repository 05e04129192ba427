"""Child processes that die with the server: the kernel's parent-death signal, plus a
watchdog thread for the moment between fork and prctl and for platforms without prctl."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1


def parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel for `sig` when this process's parent dies. Alone, as a `preexec_fn`,
    for children that are not Python (llama-server): it survives the exec."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Exit as soon as `parent` is gone. SIGKILL by default: a job process has nothing to
    save on the way out (its checkpoints are on disk), and must not outlive the server."""
    parent_death_signal(sig)

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()
