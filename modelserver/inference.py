"""Inference on threads of its own, which can be placed in a CPU-limited cgroup of their own.

Why: the local cluster emulates a slow node with a CFS quota (a Nano: a quarter of a reference
core, 1.1-2.5 ms of CPU per 10 ms period). When the whole server process is under that quota, an
inference call spends the period's quota in its first millisecond and every other thread of the
process, the one that accepts a connection or writes an answer included, then waits for the next
period: up to ~9 ms per step, several steps per request. Measured at 0.1 core and 70% load
(bench/node_overhead.py): 14.2 ms at the median and 62 ms at p95 of the server's own time beside the
inference; 0.7 and 2.9 ms with the quota on inference alone, 0.6 and 5.4 ms without a quota. A real slow device does not stall like that: its
network stack runs on another core, or at least between time slices of a few milliseconds. So the
local cluster limits the inference alone (`--inference_cgroup`): the calls run here, on threads that
join the node's CPU-limited group when they start, and the request threads stay outside it.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

__all__ = ["InferenceThreads", "join_cgroup", "cgroup_tasks_file"]


def cgroup_tasks_file(group: Path) -> Path:
    """The file a thread joins `group` through: v2 `cgroup.threads`, v1 `tasks`."""
    threads = group / "cgroup.threads"
    return threads if threads.exists() else group / "tasks"


def join_cgroup(group: Path) -> None:
    """Move the calling thread (only) into the cgroup `group`; raise OSError when refused or when
    `group` is not a cgroup (the file is never created: a plain folder would take the write)."""
    fd = os.open(cgroup_tasks_file(group), os.O_WRONLY)
    try:
        os.write(fd, str(threading.get_native_id()).encode())
    finally:
        os.close(fd)


class InferenceThreads:
    """`n` threads that run the calls handed to them, first come first served.

    With `group`, each thread joins that cgroup before it takes a call; the constructor waits for
    them and raises OSError naming the group when one could not (a server must not run unlimited
    on a node that is meant to be slow)."""

    def __init__(self, n: int, group: Path | None = None) -> None:
        if n < 1:
            raise ValueError(f"need at least one inference thread, got {n}")
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._started = threading.Barrier(n + 1)
        self._errors: list[OSError] = []
        self.native_ids: list[int] = []
        self._threads = [threading.Thread(target=self._serve, args=(group,), name=f"inference-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()
        self._started.wait()
        if self._errors:
            self.close()
            exc = self._errors[0]
            raise OSError(exc.errno, f"cannot join the inference cgroup {group}: {exc.strerror or exc}")

    def _serve(self, group: Path | None) -> None:
        try:
            if group is not None:
                join_cgroup(group)
            self.native_ids.append(threading.get_native_id())
        except OSError as exc:
            self._errors.append(exc)
        self._started.wait()
        while True:
            call = self._calls.get()
            if call is None:
                return
            fn, args, future = call
            try:
                future.set_result(fn(*args))
            except BaseException as exc:        # handed back to the request thread, raised there
                future.set_exception(exc)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on an inference thread and return its result (or raise its exception)."""
        future: Future = Future()
        self._calls.put((fn, args, future))
        return future.result()

    def close(self) -> None:
        """Let the threads finish the calls queued and stop."""
        for _ in self._threads:
            self._calls.put(None)
