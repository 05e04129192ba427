"""Stop sequences over streamed text: never emit a stop string, hold back what may begin one.

Shared by the engines that stream text deltas (llamacpp, transformers).
"""

from __future__ import annotations


class StopScanner:
    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""  # text withheld because it may begin a stop string

    def scan(self, text: str, final: bool = False) -> tuple[str, bool]:
        """Text that can be emitted now, and whether a stop string was found.

        Never emits a stop string or anything after it; holds back the longest tail that is
        the beginning of a stop string until later text decides it (or `final` releases
        it). Matches can only start inside `held + text`: anything emitted earlier was,
        when emitted, not the beginning of any stop string."""
        buf = self.held + text
        if not self.stops:
            self.held = ""
            return buf, False
        cut = -1
        for stop in self.stops:
            i = buf.find(stop)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self.held = ""
            return buf[:cut], True
        if final:
            self.held = ""
            return buf, False
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:n]):
                    keep = n
                    break
        if keep:
            self.held = buf[-keep:]
            return buf[:-keep], False
        self.held = ""
        return buf, False
