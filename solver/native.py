"""Keep native libraries' console output (HiGHS's banner, AMPL's launch notice) off our streams."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def silenced(*fds: int) -> Iterator[None]:
    """Point the given file descriptors (default 1 and 2) at /dev/null for the duration."""
    targets = fds or (1, 2)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in targets]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in targets:
            os.dup2(null, fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip(targets, saved):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(null)


_highs_greeted = False


def new_highs() -> object:
    """Return a highspy.Highs, swallowing the banner HiGHS prints the first time in a process."""
    global _highs_greeted
    import highspy

    if _highs_greeted:
        return highspy.Highs()
    with silenced(1):
        h = highspy.Highs()
    _highs_greeted = True
    return h
