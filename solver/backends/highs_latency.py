"""`highs` on the `latency` formulation: an exact MILP over a piecewise-linear outer approximation
of each instance's convex waiting time, refined by outer approximation (Kelley's cuts).

Each instance's waiting W h(rho) is replaced by the largest of its tangents, which lies below it
everywhere: the MILP's optimum, and its dual bound, are lower bounds of the true optimum, so
`bound` (the best dual bound over the rounds) is a true lower bound. The initial tangents
(solver/queueing.py `tangent_points`) under-estimate h by at most TANGENT_TOL, so the a-priori
error is at most W * TANGENT_TOL per instance. After each solve the returned assignment is
evaluated exactly; where an instance's waiting exceeds its approximation, the chords of its waiting
between the integers around its load n (n-1..n and n..n+1) are added and the MILP re-solved. A chord
between consecutive integers lies below a convex function at every integer, and the load is an
integer, so these cuts are valid and exact at n; until the assignment's exact value
meets the bound (proven optimal), the rounds or the time run out (feasible, gap in the message).
"""
from __future__ import annotations

import numpy as np

from solver import status as st
from solver.backends.highs import EXACT_GAP, packer_from_columns, run_within
from solver.check import explain_infeasible
from solver.data import Arrays
from solver.deadline import Deadline
from solver.formulation import build_model
from solver.problem import Problem, Solution
from solver.queueing import tangent_points, unit_caps, wait

from solver.render import TANGENT_TOL   # h's under-estimate by the initial tangents (x W seconds per instance)
MAX_ROUNDS = 12        # outer-approximation rounds
CUT_TOL = 1e-6         # relative: an instance whose waiting is under-estimated by more gets a cut


def _chords(arrays: Arrays, m: int, j: int, n: int) -> list[tuple[float, float]]:
    """The chords (slope, intercept) of wait on instance (m, j) over [n-1, n] and [n, n+1] (within its cap)."""
    cap = float(unit_caps(arrays)[m, j])
    out = []
    for lo in (n - 1, n):
        if lo < 0 or lo + 1 > cap:
            continue
        f0, f1 = float(wait(arrays, m, j, lo)), float(wait(arrays, m, j, lo + 1))
        out.append((f1 - f0, f0 - (f1 - f0) * lo))
    return out


def solve_latency(problem: Problem, arrays: Arrays, *, deadline: Deadline, time_limit: float | None) -> Solution:
    """Solve the `latency` problem with HiGHS; see the module's docstring."""
    points, h_error = tangent_points(arrays.max_util, TANGENT_TOL)
    extra: dict[tuple[int, int], list[tuple[float, float]]] = {}
    best = None
    best_value = np.inf
    bound = -np.inf
    proven = False
    changed = False
    rounds = 0
    last_status = ""
    pwl_error = 0.0
    while rounds < MAX_ROUNDS:
        model = build_model(arrays, tangents=points, extra_cuts=extra)
        result = run_within(model, deadline, None if time_limit is None else deadline.remaining())
        rounds += 1
        if result is None or not result.has_solution:
            if result is not None and result.status == "kInfeasible":
                return Solution(status=st.INFEASIBLE, objective=None, bound=None, solver="highs", seconds=0.0,
                                message=explain_infeasible(problem))
            break
        last_status = result.status
        if result.bound is not None:
            bound = max(bound, result.bound)
        packer, repaired = packer_from_columns(arrays, model, result.x)
        value = packer.objective()
        if value < best_value:
            best, best_value, changed = packer, value, repaired
            pwl_error = max(0.0, value - (result.objective or value))
        tol = CUT_TOL * max(1.0, abs(value))
        if result.status == "kOptimal" and value - bound <= max(tol, EXACT_GAP * abs(value)):
            proven = True
            break
        # cuts where the approximation under-estimates this answer's waiting
        t = result.x[model.n_cols - model.n_wait:]
        added = 0
        for k in range(model.n_wait):
            m, j = int(model.y_m[k]), int(model.y_j[k])
            n = int(packer.units[m, j])
            if n and wait(arrays, m, j, n) - t[k] > tol / max(1, model.n_wait):
                extra.setdefault((m, j), []).extend(_chords(arrays, m, j, n))
                added += 1
        if not added or result.status != "kOptimal" or deadline.expired():
            break
    if best is None:
        if last_status in ("", "kTimeLimit") or deadline.expired():
            return Solution(status=st.TIME_LIMIT, objective=None, bound=None if bound == -np.inf else bound,
                            solver="highs", seconds=0.0, message=f"{st.TIME_LIMIT_NOTE}: HiGHS had no answer yet")
        return Solution(status=st.ERROR, objective=None, bound=None, solver="highs", seconds=0.0,
                        message=f"HiGHS stopped ({last_status}) without a feasible assignment")
    bound_value = float(bound) if np.isfinite(bound) else None
    gap = 100 * (best_value - bound) / abs(best_value) if bound_value is not None and best_value else 0.0
    note = (f"piecewise-linear outer approximation: {len(points)} tangents per instance (a-priori error <= "
            f"{h_error * arrays.window:.4g} s per instance), {sum(map(len, extra.values()))} cut(s) added in "
            f"{rounds} round(s); error at the answer {pwl_error:.4g} s; gap {gap:.4f}% to the MILP bound")
    if proven and not changed:
        status, message = st.OPTIMAL, f"optimal; {note}"
    elif proven:
        status, message = st.REPAIRED, f"the MILP's optimum needed repair into an assignment; {note}"
    else:
        stop = f"{st.TIME_LIMIT_NOTE}: " if deadline.hit or last_status == "kTimeLimit" else ""
        status, message = st.FEASIBLE, f"{stop}{note}"
    return Solution(status=status, objective=best_value, bound=bound_value, solver="highs", seconds=0.0,
                    assignment=best.assignment(), placement=best.placement(), message=message)
