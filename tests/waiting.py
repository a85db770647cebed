"""The tests' one `wait_for`: poll until something is true, or fail the test saying what was awaited.

Why polling and not sleeping: real servers and processes take as long as the shared machine lets
them; a test waits for the state it needs (never asserts how long that took).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest

__all__ = ["wait_for"]


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition", *,
             interval: float = 0.05, ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Call `check` every `interval` s until it returns something truthy and return that; fail the
    test after `timeout` s with the last value. Exceptions of the `ignore` types count as "not yet"
    (a thing that raises until it exists); the last one is named in the failure."""
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = check()
            if last:
                return last
        except ignore as exc:
            error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    detail = f"last error: {type(error).__name__}: {error}" if error is not None and not last else f"last: {last!r}"
    pytest.fail(f"timed out after {timeout:g} s waiting for {what} ({detail})")
