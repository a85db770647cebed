"""A wall-clock deadline shared by a backend's phases (`--time-limit`), checked in their loops."""
from __future__ import annotations

import time


class Deadline:
    """A point in time.monotonic(), or none (`Deadline(None)` never expires)."""

    def __init__(self, seconds: float | None, *, start: float | None = None) -> None:
        self.limit = seconds
        self.at = None if seconds is None else (time.monotonic() if start is None else start) + seconds
        self.hit = False          # set when a loop stopped early because of it

    def remaining(self) -> float:
        """Return the seconds left (inf without a limit, never below 0)."""
        return float("inf") if self.at is None else max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        """Return True (and remember it) once the deadline has passed."""
        if self.at is not None and time.monotonic() >= self.at:
            self.hit = True
            return True
        return False


NEVER = Deadline(None)
