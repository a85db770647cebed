"""Seconds of work each node has been sent and not yet drained: `expected-delay`'s backlog.

A node drains `drain` seconds of work per second (service times are measured on the node they are
for, so they are in its own time; `drain` < 1 counts what a busy, shared node loses beside its
profiled pace, see the front-end's `backlog_drain`); `charge` adds a request's service time (the
node's measured pace where it reported one, frontend/pace.py). There is no feedback on the count
itself: in lookup mode the front-end never sees the calls it looked up, so the backlog is what was
sent minus what the node should have done since.

`Backlog` keeps the count in one process. `SharedBacklog` keeps it in a small memory-mapped file
beside the front-end's database, so every gunicorn worker (and every front-end on the host using
that database) counts every dispatch. With one count per worker, each of W workers sees about 1/W
of a node's work and sends the node up to W times what it can take before it notices: on the
testbed's loaded edge, with two workers, a Nano was sent 14.2 requests/s against the 12.5/s it
serves. One host only: the file is shared through mmap and the times are CLOCK_MONOTONIC.

File layout (native byte order): a 16-byte header (magic, slot count), then `SLOTS` slots of 32
bytes: a 16-byte key (BLAKE2b of the node name; all zero: never used), the seconds of work left
and the monotonic time they were counted at. A slot whose work has drained is reused for another
node, so node names that come and go do not fill the table; should it still be full, the nodes
that found no slot are counted in this process only (logged once). Readers and writers hold an
exclusive flock on the file (between processes) and a lock (between the threads or greenlets of one
process); a dispatch holds them for a few microseconds.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
import threading
from pathlib import Path
from typing import Sequence

__all__ = ["Backlog", "SharedBacklog", "SLOTS", "backlog_path"]

log = logging.getLogger("frontend.backlog")

MAGIC = b"EDGEBKL1"
_HEADER = struct.Struct("=8sI4x")
_SLOT = struct.Struct("=16sdd")
SLOTS = 4096
_SIZE = _HEADER.size + SLOTS * _SLOT.size
_FREE = bytes(16)
# A count more than this far in the future comes from before a reboot (the monotonic clock
# restarted): it is stale, not work ahead.
_CLOCK_SKEW = 1.0


def _left(left: float, since: float, now: float, drain: float) -> float:
    if since > now + _CLOCK_SKEW:
        return 0.0
    return max(0.0, left - drain * max(0.0, now - since))


def _charged(left: float, since: float, now: float, drain: float, seconds: float) -> tuple[float, float]:
    """(left, as of) after adding `seconds` at `now`. A count a moment ahead (another process's
    clock read, taken before ours) stays as of its own time."""
    as_of = since if now < since <= now + _CLOCK_SKEW else now
    return _left(left, since, now, drain) + seconds, as_of


def _check_drain(drain: float) -> None:
    if not 0 < drain <= 1:
        raise ValueError(f"drain must be in (0, 1], got {drain!r}")


def backlog_path(database: Path) -> Path:
    """The shared backlog's file for the front-end database `database` (beside it, as SQLite's -wal)."""
    return database.with_name(database.name + "-backlog")


class Backlog:
    """The backlog of the dispatches made by this process. Thread-safe."""

    def __init__(self, drain: float = 1.0) -> None:
        _check_drain(drain)
        self.drain = drain
        self._work: dict[str, tuple[float, float]] = {}      # node -> (seconds left, as of time)
        self._lock = threading.Lock()

    def _left(self, node: str, now: float) -> float:
        left, since = self._work.get(node, (0.0, now))
        return _left(left, since, now, self.drain)

    def seconds(self, nodes: Sequence[str], now: float) -> dict[str, float]:
        """Return each node's work left at `now`."""
        return {node: self._left(node, now) for node in nodes}

    def charge(self, node: str, seconds: float, now: float) -> None:
        """Add `seconds` of work to `node` at `now`."""
        with self._lock:
            left, since = self._work.get(node, (0.0, now))
            self._work[node] = _charged(left, since, now, self.drain, seconds)

    def close(self) -> None:
        """Nothing to release."""


class SharedBacklog:
    """The backlog of every process that opens the same file (see the module's docstring)."""

    def __init__(self, path: str | Path, drain: float = 1.0) -> None:
        _check_drain(drain)
        self.drain = drain
        self.path = Path(path)
        self._lock = threading.Lock()
        self._keys: dict[str, bytes] = {}
        self._slots: dict[str, int] = {}      # node -> slot last seen holding it (checked on use)
        self._overflow = Backlog(drain)       # nodes that found no free slot
        self._warned = False
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size != _SIZE or os.pread(fd, _HEADER.size, 0) != _HEADER.pack(MAGIC, SLOTS):
                    # new, or written by another layout: start empty (a backlog drains in seconds anyway)
                    os.ftruncate(fd, 0)
                    os.ftruncate(fd, _SIZE)
                    os.pwrite(fd, _HEADER.pack(MAGIC, SLOTS), 0)
                self._map = mmap.mmap(fd, _SIZE)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    # -- slots -----------------------------------------------------------------------------------
    def _key(self, node: str) -> bytes:
        key = self._keys.get(node)
        if key is None:
            key = hashlib.blake2b(node.encode(), digest_size=16).digest()
            if key == _FREE:                     # cannot happen in practice; keep "free" unambiguous
                key = b"\x01" + key[1:]
            self._keys[node] = key
        return key

    def _read(self, slot: int) -> tuple[bytes, float, float]:
        return _SLOT.unpack_from(self._map, _HEADER.size + slot * _SLOT.size)

    def _find(self, node: str, now: float, *, claim: bool) -> int | None:
        """The slot holding `node`; with `claim`, else a free or drained one on its probe path."""
        key = self._key(node)
        slot = self._slots.get(node)
        if slot is not None and self._read(slot)[0] == key:
            return slot
        start = int.from_bytes(key[:8], "little") % SLOTS
        reusable = None
        for i in range(SLOTS):
            slot = (start + i) % SLOTS
            held, left, since = self._read(slot)
            if held == key:
                self._slots[node] = slot
                return slot
            if held == _FREE:                    # the end of the probe path: the node has no slot
                if reusable is None:
                    reusable = slot
                break
            if reusable is None and _left(left, since, now, self.drain) <= 0:
                reusable = slot
        if not claim or reusable is None:
            return None
        _SLOT.pack_into(self._map, _HEADER.size + reusable * _SLOT.size, key, 0.0, now)
        self._slots[node] = reusable
        return reusable

    def _locked(self):
        return _FileLock(self._lock, self._fd)

    # -- the Backlog interface -------------------------------------------------------------------
    def seconds(self, nodes: Sequence[str], now: float) -> dict[str, float]:
        """Return each node's work left at `now`, whichever process sent it."""
        out = {}
        with self._locked():
            for node in nodes:
                slot = self._find(node, now, claim=False)
                if slot is None:
                    out[node] = self._overflow.seconds([node], now)[node]
                else:
                    _, left, since = self._read(slot)
                    out[node] = _left(left, since, now, self.drain)
        return out

    def charge(self, node: str, seconds: float, now: float) -> None:
        """Add `seconds` of work to `node` at `now`, for every process to see."""
        with self._locked():
            slot = self._find(node, now, claim=True)
            if slot is not None:
                key, left, since = self._read(slot)
                _SLOT.pack_into(self._map, _HEADER.size + slot * _SLOT.size, key,
                                *_charged(left, since, now, self.drain, seconds))
                return
        if not self._warned:
            self._warned = True
            log.warning("the shared backlog %s has no free slot: node %s is counted by this worker only",
                        self.path, node)
        self._overflow.charge(node, seconds, now)

    def close(self) -> None:
        """Unmap and close the file (the file stays: other workers use it)."""
        with self._lock:
            if self._fd >= 0:
                self._map.close()
                os.close(self._fd)
                self._fd = -1


class _FileLock:
    """The process lock, then flock on the file; released in the reverse order."""

    __slots__ = ("_lock", "_fd")

    def __init__(self, lock: threading.Lock, fd: int) -> None:
        self._lock, self._fd = lock, fd

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()
