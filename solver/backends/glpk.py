"""`glpk`: glpsol solves the very model and data files rendered for AMPL, as an exact MILP.

This proves the AMPL templates: if the rendered files were wrong, glpsol would reject them or
reach a different optimum than `highs`.
"""
from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass

from solver import status as st
from solver.backends.base import Backend
from solver.backends.files import rendered_files
from solver.check import explain_infeasible
from solver.data import Arrays
from solver.deadline import Deadline
from solver.packing import Packer
from solver.problem import Problem, Solution

_COLUMN = re.compile(r"^(?P<var>[A-Za-z_]\w*)\[(?P<index>\d+),(?P<node>.+)\]$")


@dataclass
class GlpkOutput:
    """The parts of glpsol's printable solution report we use."""

    status: str                          # e.g. "INTEGER OPTIMAL"
    objective: float | None
    columns: dict[str, float]            # column name -> activity


def parse_output(text: str) -> GlpkOutput:
    """Parse glpsol's `-o` report: status, objective and every column's activity."""
    status = ""
    objective = None
    columns: dict[str, float] = {}
    lines = text.splitlines()
    for line in lines:
        if line.startswith("Status:"):
            status = line.split(":", 1)[1].strip()
        elif line.startswith("Objective:"):
            match = re.search(r"=\s*(\S+)", line)
            if match:
                try:
                    objective = float(match.group(1))
                except ValueError:
                    objective = None
    try:
        start = next(k for k, line in enumerate(lines) if line.split()[:3] == ["No.", "Column", "name"]) + 2
    except StopIteration:
        return GlpkOutput(status=status, objective=objective, columns=columns)
    pending = None
    for line in lines[start:]:
        tokens = line.split()
        if not tokens:
            break
        if pending is None:
            if len(tokens) == 2:                # a long name: its values are on the next line
                pending = tokens[1]
                continue
            name, values = tokens[1], tokens[2:]
        else:
            name, values = pending, tokens
            pending = None
        if values and values[0] == "*":
            values = values[1:]
        columns[name] = float(values[0])
    return GlpkOutput(status=status, objective=objective, columns=columns)


GRACE = 1.0      # seconds past the limit before glpsol is killed


def output_has_no_solution(text: str) -> bool:
    """Return True when glpsol's report has no integer solution (or there is no report)."""
    return not text or parse_output(text).status not in ("INTEGER OPTIMAL", "INTEGER NON-OPTIMAL")


def _node_name(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1].replace("''", "'")
    return raw


class GlpkBackend(Backend):
    """GNU MathProg (glpsol) on the rendered AMPL files."""

    name = "glpk"
    description = "glpsol (GNU MathProg) on the very model and data files rendered for AMPL: exact MILP"

    def available(self) -> bool:
        return shutil.which("glpsol") is not None

    def unavailable_reason(self) -> str:
        return "glpsol not found: install GLPK (Debian: apt-get install glpk-utils; `make test` installs it)"

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        deadline = Deadline(time_limit)
        with rendered_files(problem, keep_files=keep_files, time_limit=time_limit, prefix="solver-glpk-") as paths:
            report = paths["model"].with_name(f"{problem.formulation}.glpk.out")
            command = ["glpsol", "--model", str(paths["model"]), "--data", str(paths["data"]), "--output", str(report)]
            timeout = None
            if time_limit is not None:
                # --tmlim (whole seconds) bounds the search only; translating the MathProg model is
                # not bounded, so glpsol is killed a grace second after the limit
                left = deadline.remaining()
                command += ["--tmlim", str(max(1, math.floor(0.8 * left)))]
                timeout = left + GRACE
            try:
                run = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return Solution(status=st.TIME_LIMIT, objective=None, bound=None, solver=self.name, seconds=0.0,
                                message=f"{st.TIME_LIMIT_NOTE}: glpsol had no answer yet (stopped)")
            text = report.read_text() if report.exists() else ""
        log = run.stdout + run.stderr
        timed_out = "TIME LIMIT EXCEEDED" in log
        if timed_out and output_has_no_solution(text):
            return Solution(status=st.TIME_LIMIT, objective=None, bound=None, solver=self.name, seconds=0.0,
                            message=f"{st.TIME_LIMIT_NOTE}: glpsol found no integer solution yet")
        if run.returncode != 0 or not text:
            tail = " | ".join(line for line in log.strip().splitlines()[-3:])
            return _fail(f"glpsol exited with status {run.returncode}: {tail}")
        output = parse_output(text)
        if "NO PRIMAL FEASIBLE SOLUTION" in log or output.status in ("INTEGER EMPTY", "INFEASIBLE (FINAL)"):
            return Solution(status=st.INFEASIBLE, objective=None, bound=None, solver=self.name, seconds=0.0,
                            message=explain_infeasible(problem))
        if output.status not in ("INTEGER OPTIMAL", "INTEGER NON-OPTIMAL"):
            return _fail(f"glpsol found no integer solution (status {output.status or 'unknown'})")
        packer = _packer(problem, arrays, output.columns)
        optimal = output.status == "INTEGER OPTIMAL"
        if arrays.latency:
            # the files hold the piecewise-linear outer approximation: its optimum is a lower bound of
            # the true one, and the assignment (valued exactly by the checker) is only feasible
            return Solution(status=st.FEASIBLE, objective=packer.objective(),
                            bound=output.objective if optimal else None, solver=self.name, seconds=0.0,
                            assignment=packer.assignment(), placement=packer.placement(),
                            message=(f"{st.TIME_LIMIT_NOTE}: " if timed_out and not optimal else "")
                            + f"glpsol: {output.status.lower()} on the piecewise-linear (tangent) approximation; "
                              "bound = its optimum")
        return Solution(status=st.OPTIMAL if optimal else st.FEASIBLE, objective=packer.objective(), bound=None,
                        solver=self.name, seconds=0.0, assignment=packer.assignment(),
                        placement=packer.placement(),
                        message=(f"{st.TIME_LIMIT_NOTE}: " if timed_out and not optimal else "")
                        + f"glpsol: {output.status.lower()}")


def _packer(problem: Problem, arrays: Arrays, columns: dict[str, float]) -> Packer:
    """Return the assignment in glpsol's columns (I[i,node] for thesis, x[g,node] for placement)."""
    group_of: list[int] = []
    if problem.formulation == "thesis":
        for g, group in enumerate(problem.requests):
            group_of.extend([g] * group.count)
        variable = "I"
    else:
        group_of = list(range(len(problem.requests)))
        variable = "x"
    node_index = {n: j for j, n in enumerate(arrays.node_names)}
    packer = Packer(arrays)
    for name, value in columns.items():
        match = _COLUMN.match(name)
        units = int(round(value))
        if not match or match.group("var") != variable or units <= 0:
            continue
        g = group_of[int(match.group("index")) - 1]
        packer.add(g, node_index[_node_name(match.group("node"))], units)
    return packer


def _fail(message: str) -> Solution:
    return Solution(status=st.ERROR, objective=None, bound=None, solver="glpk", seconds=0.0, message=message)
