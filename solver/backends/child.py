"""Run one native solve in a child process that is killed when its time is up.

Native solvers check their time limits only at certain points: CasADi's set-up and Ipopt's first
factorisation, or HiGHS's MIP presolve on a large model, can run far past them (16 s of presolve
on a 10 s limit, measured). A child process can be stopped at any point, and its memory goes with
it. `fork` is cheap and shares the model; `spawn` starts a clean interpreter (~0.4 s), needed for
HiGHS, whose global thread pool does not survive a fork.
"""
from __future__ import annotations

import multiprocessing
import time
from typing import Any, Callable

__all__ = ["run_bounded", "can_start_children"]


def can_start_children() -> bool:
    """Return False in a daemonic process (multiprocessing forbids it children)."""
    return not multiprocessing.current_process().daemon


def _child(target: Callable[..., Any], args: tuple, conn: Any) -> None:
    try:
        conn.send(("ok", target(*args)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_bounded(target: Callable[..., Any], args: tuple, seconds: float, *, method: str = "fork") -> tuple[bool, Any]:
    """Run target(*args) in a child; return (True, its result), or (False, None) when it had not
    answered after `seconds` (it is killed). Raise RuntimeError when the child failed or died.
    `target` must be a module-level function (and its arguments picklable for `spawn`)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context(method if method in methods else "spawn")
    receive, send = context.Pipe(duplex=False)
    started = time.monotonic()
    child = context.Process(target=_child, args=(target, args, send), daemon=True)
    child.start()
    send.close()
    try:
        if not receive.poll(max(0.0, seconds - (time.monotonic() - started))):
            return False, None
        try:
            kind, value = receive.recv()
        except EOFError:
            child.join(1)
            raise RuntimeError(f"the solver process died (exit status {child.exitcode})") from None
    finally:
        receive.close()
        if child.is_alive():
            child.kill()
        child.join(5)
    if kind != "ok":
        raise RuntimeError(value)
    return True, value
