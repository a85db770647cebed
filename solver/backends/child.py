"""Run one native solve in a child process that is killed when its time is up.

Native solvers check their time limits only at certain points: CasADi's set-up and Ipopt's first
factorisation, or HiGHS's MIP presolve on a large model, can run far past them (16 s of presolve
on a 10 s limit, measured). A child process can be stopped at any point, and its memory goes with
it. `fork` is cheap and shares the model; `spawn` starts a clean interpreter (~0.4 s), needed for
HiGHS, whose global thread pool does not survive a fork. `spawn` here is a plain subprocess fed
the pickled call on stdin, not multiprocessing's spawn: that one re-imports the caller's main
module, which re-runs any script without a `__main__` guard (a process started per solve).
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
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


def serve() -> None:
    """The `spawn` child: read a pickled (target, args) on stdin, write the pickled outcome on stdout."""
    target, args = pickle.load(sys.stdin.buffer)
    out = os.fdopen(os.dup(1), "wb")      # the answer's own descriptor...
    os.dup2(2, 1)                         # ...and native output goes to stderr, never into the answer
    try:
        outcome = ("ok", target(*args))
    except BaseException as exc:  # noqa: BLE001
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    out.write(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
    out.flush()


def _run_subprocess(target: Callable[..., Any], args: tuple, seconds: float) -> tuple[bool, Any]:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", "from solver.backends.child import serve; serve()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        out, _ = child.communicate(pickle.dumps((target, args), protocol=pickle.HIGHEST_PROTOCOL),
                                   timeout=max(0.01, seconds))
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return False, None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    try:
        kind, value = pickle.loads(out)
    except Exception:
        raise RuntimeError(f"the solver process died (exit status {child.returncode})") from None
    if kind != "ok":
        raise RuntimeError(value)
    return True, value


def run_bounded(target: Callable[..., Any], args: tuple, seconds: float, *, method: str = "fork") -> tuple[bool, Any]:
    """Run target(*args) in a child; return (True, its result), or (False, None) when it had not
    answered after `seconds` (it is killed). Raise RuntimeError when the child failed or died.
    `target` must be a module-level function (and its arguments picklable for `spawn`)."""
    if method == "spawn" or "fork" not in multiprocessing.get_all_start_methods():
        return _run_subprocess(target, args, seconds)
    context = multiprocessing.get_context("fork")
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
