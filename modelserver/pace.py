"""The server's measured pace: busy seconds per inference answer, smoothed.

A profile gives a model's service time on a quiet machine; under load, or on a host whose CPU other
work shares, the real pace differs (on the testbed a cloud site profiled at 18 ms per request ran
at 28-90 ms). Dispatch that counts a node's work at its profile then sends it more than it can do.
The server measures what it actually does back to back: an answer whose request was already in
when the previous answer went out is charged the time between the two answers (the node's
throughput, however many request threads overlap). An answer that began a busy stretch (its request
found the server idle) is not counted: a CPU-limited node serves it faster, on quota saved while
idle (the profile's `exec_time_idle`), and mixing the two would understate what a queue costs (on
the testbed's bursty phase, 59-61 ms against 64-65 ms back to back). The smoothed figure goes out
with every answer in `Server-Timing: pace;dur=<ms>` once there is one (never, on a server that has
never queued), for the client to report to the front-end with its next lookup.

Those idle-start answers are smoothed apart, as `idle` (`Server-Timing: pace-idle;dur=<ms>`): the
back-end's queueing model charges a request that finds its node idle this time, and the profile's
figure is not it (51 ms in the profile where the testbed's nodes served such requests in 46-48 ms,
which made predictions at low load 8-18% high).
"""
from __future__ import annotations

import threading

__all__ = ["PaceMeter", "WEIGHT"]

WEIGHT = 0.2      # each answer's share of the smoothed pace: ~5 answers' memory, so a burst shows at once


class PaceMeter:
    """Busy seconds per answer back to back (`value`) and per answer that found the server idle
    (`idle`), each exponentially smoothed. Thread-safe; times are perf_counter()."""

    def __init__(self, weight: float = WEIGHT) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight!r}")
        self.weight = weight
        self._lock = threading.Lock()
        self._in_flight = 0
        self._mark = 0.0           # start of the busy time not yet charged to an answer
        self._queued = False       # ... set by an answer with the next request already in
        self._last_done = 0.0
        self.value: float | None = None
        self.idle: float | None = None   # service time of answers that began a busy stretch

    def start(self, at: float) -> None:
        """A request became ready to serve at `at` (the wait for a request thread is busy time)."""
        with self._lock:
            if self._in_flight == 0:        # ready before the last answer went out: it queued for a thread
                self._queued = at < self._last_done
                self._mark = max(at, self._last_done)
            self._in_flight += 1

    def finish(self, at: float) -> float | None:
        """The request started with `start` is answered at `at`: return the smoothed pace (s), None
        while no answer has come back to back. An answer whose request found the server idle goes
        to `idle` instead (its gap is its own service time)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            gap = max(0.0, at - self._mark)
            if self._queued:
                self.value = gap if self.value is None else self.value + self.weight * (gap - self.value)
            else:
                self.idle = gap if self.idle is None else self.idle + self.weight * (gap - self.idle)
            self._mark = max(self._mark, at)
            self._queued = self._in_flight > 0
            self._last_done = max(self._last_done, at)
            return self.value
