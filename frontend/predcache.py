"""A bounded per-worker cache of model answers for identical requests (off by default).

Seed 001 found caching is where the edge wins: a repeated request served from memory skips the
model server altogether. Entries are keyed by (model, version or label, verb, content type, body
digest), bounded by count and bytes (least recently used goes first), and dropped when their TTL
expires or the model's set of instances changes (a new instance may serve a new version).
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["PredictionCache", "CachedAnswer"]


@dataclass(frozen=True)
class CachedAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    node: str
    stored: float
    generation: tuple


class PredictionCache:
    """LRU of successful model answers, bounded by entries and total body bytes."""

    def __init__(self, *, entries: int, max_bytes: int, ttl: float = 0.0):
        self.entries = entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._data: OrderedDict[tuple, CachedAnswer] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.entries > 0 and self.max_bytes > 0

    @staticmethod
    def key(path_key: str, content_type: str | None, body: bytes) -> tuple:
        """Return the cache key of one request."""
        return (path_key, (content_type or "").split(";")[0].strip().lower(), hashlib.sha256(body).digest())

    def get(self, key: tuple, *, generation: tuple, now: float | None = None) -> CachedAnswer | None:
        """Return the stored answer when still valid for `generation`, else None."""
        now = time.monotonic() if now is None else now
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            if hit.generation != generation or (self.ttl > 0 and now - hit.stored > self.ttl):
                self._drop(key)
                return None
            self._data.move_to_end(key)
            return hit

    def put(self, key: tuple, answer: CachedAnswer) -> None:
        """Store `answer`, evicting the least recently used entries to stay within bounds."""
        size = len(answer.body)
        if not self.enabled or size > self.max_bytes:
            return
        with self._lock:
            if key in self._data:
                self._drop(key)
            self._data[key] = answer
            self._bytes += size
            while len(self._data) > self.entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._data)))

    def _drop(self, key: tuple) -> None:
        old = self._data.pop(key)
        self._bytes -= len(old.body)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size_bytes(self) -> int:
        return self._bytes
