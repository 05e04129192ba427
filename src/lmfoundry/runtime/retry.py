"""When a request that failed on an instance runs again: the one rule every instance group
(local, remote, Ray) and the gateway follow.

A request moves only while nothing of its answer has reached the caller, only to an instance
that is ready now (waiting for a restart would hold it for as long as a model load takes),
and a bounded number of times.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int  # tries in all, the first included

    def again(self, attempt: int, started: bool = False, ready: bool = True) -> bool:
        """Whether to try once more after the `attempt`-th try (counted from 1) failed;
        `started`: part of the answer reached the caller; `ready`: an instance can take the
        request now."""
        return not started and ready and attempt < self.attempts


# An instance group moving a request between its instances.
INSTANCES = RetryPolicy(attempts=3)
# The gateway running a whole (non-streaming) answer once more when the group gave up on it
# mid-answer: nothing has reached the caller until the answer is complete.
ONCE_IF_READY = RetryPolicy(attempts=2)
