"""Rate limits for log lines that clients can cause, so no client can fill the disk with them."""

from __future__ import annotations


class LogLimit:
    """At most ``burst`` lines per ``interval`` seconds; ``allow`` says whether to log this one
    and how many were suppressed since the last that was logged (to say so in that line)."""

    def __init__(self, burst: int = 10, interval: float = 60.0) -> None:
        self.burst = burst
        self.interval = interval
        self._window_start = float("-inf")
        self._logged = 0
        self._suppressed = 0

    def allow(self, now: float) -> tuple[bool, int]:
        if now - self._window_start >= self.interval:
            self._window_start = now
            self._logged = 0
        if self._logged < self.burst:
            self._logged += 1
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed
        self._suppressed += 1
        return False, 0
