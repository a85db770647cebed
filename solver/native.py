"""Keep native libraries' console output (HiGHS's banner, AMPL's launch notice) off our streams."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def redirected(to: int | str, *fds: int) -> Iterator[None]:
    """Point file descriptors `fds` at `to` (a descriptor, or a path such as os.devnull) for a while.

    The one stdout-redirection helper: native solvers write banners straight to descriptor 1,
    which carries a command's JSON answer (`redirected(2, 1)`: stdout to stderr), or which
    should stay quiet (`redirected(os.devnull, 1)`). A stream without a descriptor (a test's
    capture) is left alone.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    try:
        saved = [os.dup(fd) for fd in fds]
    except OSError:
        yield
        return
    target = os.open(to, os.O_WRONLY) if isinstance(to, str) else to
    try:
        for fd in fds:
            os.dup2(target, fd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)
        if isinstance(to, str):
            os.close(target)


_highs_greeted = False


def new_highs() -> object:
    """Return a highspy.Highs, swallowing the banner HiGHS prints the first time in a process."""
    global _highs_greeted
    import highspy

    if _highs_greeted:
        return highspy.Highs()
    with redirected(os.devnull, 1):
        h = highspy.Highs()
    _highs_greeted = True
    return h
