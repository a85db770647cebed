"""Measured pace per (model, node): the seconds of a node's work one request of a model costs lately.

The plan's service times are profiled on a quiet machine; a node's real pace moves with the load of
whatever shares its CPU (on the testbed, a cloud site profiled at 18 ms per request ran at 28-90
ms). A model server reports its pace with every answer (`Server-Timing: pace;dur=<ms>`, busy time
per answer); the front-end reads it from the answers it proxies, and from the clients' reports in
lookup mode (`X-Client-Pace`, frontend/hints.py). `expected-delay` then counts a node's work, and
charges a dispatch, at the measured pace instead of the profiled one, for the instances the plan
times. A figure older than `ttl` seconds is not used (the node went quiet or away: the plan's
figure is back); the figures of instances the cluster no longer reports are dropped.

One table per worker process: each worker hears about 1/W of the reports, but each report is
already a smoothed figure from the node, so a worker's latest few are as good as all of them.
"""
from __future__ import annotations

import threading
from typing import Iterable

__all__ = ["PaceTable", "TTL", "WEIGHT"]

TTL = 10.0        # seconds a report stays good
WEIGHT = 0.5      # a report's share of the smoothed figure (reports are already smoothed by the node)


class PaceTable:
    """(model, node) -> smoothed seconds per request, with the time of the last report. Thread-safe."""

    def __init__(self, ttl: float = TTL, weight: float = WEIGHT) -> None:
        if not ttl > 0 or not 0 < weight <= 1:
            raise ValueError("ttl must be > 0 and weight in (0, 1]")
        self.ttl = ttl
        self.weight = weight
        self._lock = threading.Lock()
        self._paces: dict[tuple[str, str], tuple[float, float]] = {}

    def report(self, model: str, node: str, seconds: float, now: float) -> None:
        """Note that `node` answered requests of `model` at `seconds` each lately (reported at `now`)."""
        if not seconds > 0:
            return
        key = (model, node)
        with self._lock:
            old = self._paces.get(key)
            if old is not None and now - old[1] <= self.ttl:
                seconds = old[0] + self.weight * (seconds - old[0])
            self._paces[key] = (seconds, now)

    def paces(self, model: str, nodes: Iterable[str], now: float) -> dict[str, float]:
        """Return node -> seconds per request of `model`, for the nodes with a report within ttl."""
        out = {}
        with self._lock:
            for node in nodes:
                got = self._paces.get((model, node))
                if got is not None and now - got[1] <= self.ttl:
                    out[node] = got[0]
        return out

    def forget(self, keep: set[tuple[str, str]]) -> None:
        """Drop every (model, node) not in `keep` (instances the cluster no longer reports)."""
        with self._lock:
            for key in [k for k in self._paces if k not in keep]:
                del self._paces[key]
