"""`ampl`: the thesis's own toolchain. Renders the model, data and run files (5.3.1), runs the run
file in AMPL with Ipopt through amplpy, then rounds and repairs the relaxed answer like `ipopt`.

AMPL is commercial and not installable from the package registries this project uses, so the
backend is only `available()` where an AMPL installation is found (on PATH, or amplpy modules);
otherwise it answers with status `error` and says what to install (the CLI exits with status 3).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading

import numpy as np

from solver import status as st
from solver.backends.base import Backend
from solver.backends.files import rendered_files
from solver.backends.ipopt import Relaxation, reserve_for_repair, solution_from_relaxation
from solver.data import Arrays
from solver.deadline import Deadline
from solver.formulation import LinearModel, build_model
from solver.problem import Problem, Solution

INSTALL_HINT = ("AMPL is not installed: install AMPL with the Ipopt solver and put its directory on PATH "
                "(or `python -m amplpy.modules install ipopt` with an AMPL licence); "
                "--solver ipopt runs the same relaxation without AMPL")

_available: bool | None = None


def _installation_present() -> bool:
    """Whether an AMPL binary is on PATH or installed as amplpy modules (no process started)."""
    if shutil.which("ampl"):
        return True
    try:
        from amplpy import modules

        return bool(modules.installed())
    except Exception:  # amplpy missing or broken
        return False


def ampl_available() -> bool:
    """Return True when amplpy can start an AMPL process here (checked once per process).

    The start is tried in a child process with a deadline, and only when an installation exists:
    amplpy forks to start AMPL, and a fork of a process that has threads (the test runner, a
    gunicorn worker) can deadlock in the child; one such child kept the test run's output open.
    """
    global _available
    if _available is None:
        _available = _installation_present() and _starts()
    return _available


def _starts() -> bool:
    try:
        done = subprocess.run([sys.executable, "-c", "from amplpy import AMPL; AMPL().close()"],
                              capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class AmplBackend(Backend):
    """AMPL + Ipopt on the rendered files (through amplpy)."""

    name = "ampl"
    description = "AMPL + Ipopt on the rendered model/data/run files (needs an AMPL installation)"

    def available(self) -> bool:
        return ampl_available()

    def unavailable_reason(self) -> str:
        return INSTALL_HINT

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        from amplpy import AMPL

        deadline = Deadline(time_limit)
        model = build_model(arrays)
        log: list[str] = []
        budget = None if time_limit is None else max(0.01, deadline.remaining() - reserve_for_repair(time_limit))
        # the run file passes max_wall_time to Ipopt; AMPL's own translation is bounded by interrupting it
        with rendered_files(problem, keep_files=keep_files, time_limit=budget, prefix="solver-ampl-") as paths:
            ampl = AMPL()
            interrupted = threading.Event()

            def interrupt() -> None:
                interrupted.set()
                ampl.interrupt()

            timer = None if budget is None else threading.Timer(budget + 0.5, interrupt)
            try:
                ampl.set_output_handler(_Collector(log))
                ampl.cd(str(paths["run"].parent))
                if timer is not None:
                    timer.start()
                ampl.read(str(paths["run"]))
                result = str(ampl.get_value("solve_result"))
                objective = float(ampl.get_objective("latency").value())
                x = _columns(problem, arrays, model, ampl)
            except Exception:
                if interrupted.is_set():      # interrupted at the limit: repair from nothing
                    return solution_from_relaxation(problem, arrays, model, None, solver=self.name,
                                                    deadline=deadline)
                raise
            finally:
                if timer is not None:
                    timer.cancel()
                ampl.close()
        if result == "failure":
            return Solution(status=st.ERROR, objective=None, bound=None, solver=self.name, seconds=0.0,
                            message=f"AMPL solve failed: {' '.join(log)[-300:]}")
        relaxed = Relaxation(status="infeasible" if result == "infeasible" else result,
                             success=result == "solved", x=x, objective=objective)
        return solution_from_relaxation(problem, arrays, model, relaxed, solver=self.name, deadline=deadline)


class _Collector:
    """amplpy output handler that keeps AMPL's console output off our stdout."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    def output(self, kind: object, msg: str) -> None:
        self.log.append(msg.strip())


def _columns(problem: Problem, arrays: Arrays, model: LinearModel, ampl: object) -> np.ndarray:
    """Return AMPL's variable values as the LinearModel's column vector."""
    node_index = {n: j for j, n in enumerate(arrays.node_names)}
    column = {(int(g), int(j)): k for k, (g, j) in enumerate(zip(model.pair_g, model.pair_j))}
    x = np.zeros(model.n_cols)
    if problem.formulation == "thesis":
        group_of: list[int] = []
        for g, group in enumerate(problem.requests):
            group_of.extend([g] * group.count)
        for i, node, value in ampl.get_variable("I").get_values().to_list():  # type: ignore[attr-defined]
            x[column[(group_of[int(i) - 1], node_index[node])]] += float(value)
    else:
        for g, node, value in ampl.get_variable("x").get_values().to_list():  # type: ignore[attr-defined]
            key = (int(g) - 1, node_index[node])
            if key in column:
                x[column[key]] = float(value)
        y_column = {(int(m), int(j)): model.n_x + k for k, (m, j) in enumerate(zip(model.y_m, model.y_j))}
        model_index = {m: k for k, m in enumerate(arrays.model_names)}
        for m, node, value in ampl.get_variable("y").get_values().to_list():  # type: ignore[attr-defined]
            key = (model_index[m], node_index[node])
            if key in y_column:
                x[y_column[key]] = float(value)
    return x
