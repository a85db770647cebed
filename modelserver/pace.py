"""The server's measured pace: busy seconds per inference answer, smoothed.

A profile gives a model's service time on a quiet machine; under load, or on a host whose CPU other
work shares, the real pace differs (on the testbed a cloud site profiled at 18 ms per request ran
at 28-90 ms). Dispatch that counts a node's work at its profile then sends it more than it can do.
The server measures what it actually does: each answer is charged the busy time since the previous
answer (or since the busy stretch began), so back to back this is the time between answers (the
node's throughput, however many request threads overlap) and on an idle server the request's own
time. Idle time between requests is not counted. The smoothed figure goes out with every answer in
`Server-Timing: pace;dur=<ms>`, for the client to report to the front-end with its next lookup.
"""
from __future__ import annotations

import threading

__all__ = ["PaceMeter", "WEIGHT"]

WEIGHT = 0.2      # each answer's share of the smoothed pace: ~5 answers' memory, so a burst shows at once


class PaceMeter:
    """Busy seconds per answer (exponentially smoothed). Thread-safe; times are perf_counter()."""

    def __init__(self, weight: float = WEIGHT) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight!r}")
        self.weight = weight
        self._lock = threading.Lock()
        self._in_flight = 0
        self._mark = 0.0           # start of the busy time not yet charged to an answer
        self._last_done = 0.0
        self.value: float | None = None

    def start(self, at: float) -> None:
        """A request became ready to serve at `at` (the wait for a request thread is busy time)."""
        with self._lock:
            if self._in_flight == 0:
                self._mark = max(at, self._last_done)
            self._in_flight += 1

    def finish(self, at: float) -> float:
        """The request started with `start` is answered at `at`: return the smoothed pace (s)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            gap = max(0.0, at - self._mark)
            self._mark = max(self._mark, at)
            self._last_done = max(self._last_done, at)
            self.value = gap if self.value is None else self.value + self.weight * (gap - self.value)
            return self.value
