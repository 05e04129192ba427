"""One background loop that calls a coroutine every few seconds, for the server's six
periodic tasks (instance supervision locally and on Ray, fine-tuning job supervision,
endpoint reconciliation, usage-ledger flushing, instance sampling for the monitoring page).

Each had its own copy of start / stop / catch-log-and-go-on; asyncio has no such helper and
the libraries that do (APScheduler and the like) bring a scheduler's worth of machinery for a
`while True` loop, so this is written here once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable


class Periodic:
    """`tick` now, then every `seconds` (sooner after `wake()`), until `stop()`. A tick
    that raises is logged as `what` failed, and the next tick comes as usual: a database
    that is briefly unavailable must not end supervision."""

    def __init__(
        self,
        what: str,
        seconds: float,
        tick: Callable[[], Awaitable[object]],
        log: logging.Logger,
    ) -> None:
        self.what = what
        self.seconds = seconds
        self.tick = tick
        self.log = log
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()

    def start(self) -> None:
        """Start the loop on the running event loop; a second call does nothing."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name=self.what)

    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Tick now rather than at the end of the current wait; from any thread (services
        call it from the threads synchronous routes run in)."""
        loop = self._loop
        if loop is None:
            return  # not started: the first tick comes at the start anyway
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                self.log.exception("%s failed; trying again in %s s", self.what, self.seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.seconds)
            self._wake.clear()
