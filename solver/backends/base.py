"""The shared base of every solver backend (PuLP's pattern: one adapter per solver).

A backend says whether it can run here (`available()`, with `unavailable_reason()` saying what
to install) and turns a Problem into a Solution in the shared status vocabulary. The base does
what every backend needs the same way: timing, catching failures into `error` solutions, and
re-checking each returned assignment with the independent checker, whose exact value becomes
the reported objective.
"""
from __future__ import annotations

import time

import numpy as np
from abc import ABC, abstractmethod

from solver import status as st
from solver.check import check_assignment
from solver.data import Arrays, to_arrays
from solver.packing import integral_placement
from solver.problem import Problem, Solution


class Backend(ABC):
    """A way to solve a Problem."""

    name: str = ""
    description: str = ""

    def available(self) -> bool:
        """Return True when this backend can run on this machine."""
        return True

    def unavailable_reason(self) -> str:
        """Return what to install for this backend to become available."""
        return ""

    def solve(self, problem: Problem, *, time_limit: float | None = None, keep_files: str | None = None) -> Solution:
        """Solve a validated problem; never raise for infeasible or failed solves.

        `time_limit` (seconds) bounds the whole solve: a backend stopped by it returns the best
        feasible assignment it has (`feasible`, message starting `time limit reached`), or status
        `time_limit` without an assignment.
        """
        started = time.perf_counter()
        asked = time_limit
        if not self.available():
            return Solution(status=st.ERROR, objective=None, bound=None, solver=self.name,
                            seconds=time.perf_counter() - started, message=self.unavailable_reason())
        if problem.total_requests == 0:
            return Solution(status=st.OPTIMAL, objective=0.0, bound=0.0, solver=self.name,
                            seconds=time.perf_counter() - started,
                            placement=integral_placement(to_arrays(problem), np.zeros(0, dtype=bool)),
                            message="no requests to place")
        try:
            arrays = to_arrays(problem)
            if time_limit is not None:     # the limit covers the whole solve, conversion included
                time_limit = max(0.0, time_limit - (time.perf_counter() - started))
            solution = self._solve(problem, arrays, time_limit=time_limit, keep_files=keep_files)
        except Exception as exc:  # a backend failure is an `error` solution, never a traceback
            solution = Solution(status=st.ERROR, objective=None, bound=None, solver=self.name, seconds=0.0,
                                message=f"{self.name} failed: {type(exc).__name__}: {exc}")
        solution.solver = self.name
        solution.seconds = time.perf_counter() - started
        note = st.TIME_LIMIT_NOTE + ":"
        if asked is not None and solution.message.startswith(note):   # name the limit the caller gave
            solution.message = f"{st.TIME_LIMIT_NOTE} ({asked:g} s):{solution.message[len(note):]}"
        return _verified(problem, solution)

    @abstractmethod
    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        """Solve; the base fills in `solver` and `seconds` and verifies the assignment."""


def _verified(problem: Problem, solution: Solution) -> Solution:
    if not solution.assignment:
        if solution.ok and problem.total_requests == 0:
            solution.objective = 0.0
        elif solution.ok:
            solution.status = st.ERROR
            solution.message = (solution.message + "; " if solution.message else "") + "no assignment returned"
        return solution
    result = check_assignment(problem, solution.assignment)
    solution.objective = result.objective
    if solution.ok and not result.ok:
        solution.status = st.ERROR
        solution.message = f"the assignment fails the feasibility check: {result.summary()}"
    return solution
