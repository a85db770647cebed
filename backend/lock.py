"""One back-end run at a time: an advisory file lock (fcntl.flock) in the state directory.

Why flock: the kernel drops it when the holder dies, so a crashed or killed run never leaves a
stale lock behind, and cron may start the next run on schedule. The holder's pid and start time
are written into the file for the message the second run prints.
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

__all__ = ["RunLock", "LockError"]


class LockError(Exception):
    """The lock file cannot be created or opened."""


class RunLock:
    """A non-blocking exclusive lock on `path`; use `acquire()` or a `with` block."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; return False (without waiting) when another process holds it."""
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LockError(f"cannot open lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise LockError(f"cannot lock {self.path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.time():.3f}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """Return what the lock file says about its holder ("pid N since T"), or ''."""
        try:
            parts = self.path.read_text().split()
            pid, since = int(parts[0]), float(parts[1])
        except (OSError, ValueError, IndexError):
            return ""
        return f"pid {pid} since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"

    def release(self) -> None:
        """Drop the lock (the file stays, empty of meaning)."""
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        if not self.acquire():
            raise LockError(f"{self.path} is held by another run")
        return self

    def __exit__(self, *exc) -> None:
        self.release()
