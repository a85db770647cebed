"""`highs` on the `latency` formulation: an exact MILP over a piecewise-linear outer approximation
of each instance's convex waiting time, refined by outer approximation (Kelley's cuts).

Each instance's waiting W h(rho) is replaced by the largest of its cuts, which lie below it at
every integer load (loads are integers): the MILP's optimum, and its dual bound, are lower bounds
of the true optimum, so `bound` (the best dual bound over the rounds) is a true lower bound.
The cuts are chords of the waiting between consecutive integers, which lie below a convex
function at every integer and are exact at their ends: an instance that can reach at most K
requests gets all K from the start (exact at every load, no refinement; `initial_cuts`), while
the chords total at most CHORD_ROWS rows. Instances beyond that get the tangents of
solver/queueing.py `tangent_points` (under-estimating h by at most TANGENT_TOL: W * TANGENT_TOL s
per instance); after each solve the returned assignment is evaluated exactly, and where an
instance's waiting exceeds its approximation, the chords around its load n (n-1..n, n..n+1) are
added and the MILP re-solved, until the assignment's exact value meets the bound (proven
optimal), the rounds or the time run out (feasible, gap in the message). The cuts are written
in the perspective form (build_model's `perspective`), which tightens the relaxation only.
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
from solver.queueing import cut_rows, tangent_points, unit_caps, wait

from solver.render import TANGENT_TOL   # h's under-estimate by the initial tangents (x W seconds per instance)
MAX_ROUNDS = 12        # outer-approximation rounds
CUT_TOL = 1e-6         # relative: an instance whose waiting is under-estimated by more gets a cut
CHORD_ROWS = 40_000    # rows of exact chords (integer loads) at most; the instances beyond get tangents
PERSPECTIVE = True     # cuts' intercepts on y[m,j] (build_model): the same MILP, a tighter relaxation
_NO_TANGENTS = np.zeros(1)    # build_model's shared tangents: only t >= 0 (each instance's cuts come in extra_cuts)


def _chords(arrays: Arrays, m: int, j: int, lo: int, hi: int) -> list[tuple[float, float]]:
    """The chords (slope, intercept) of wait on instance (m, j) between consecutive integers lo..hi."""
    n = np.arange(lo, hi + 1)
    f = np.asarray(wait(arrays, m, j, n), dtype=float)
    slope = np.diff(f)
    return list(zip(slope.tolist(), (f[:-1] - slope * n[:-1]).tolist()))


def initial_cuts(arrays: Arrays, points: np.ndarray) -> tuple[dict[tuple[int, int], list[tuple[float, float]]], int]:
    """Return each instance's initial cuts and how many instances they make exact.

    An instance whose load can reach at most K requests (its ceiling, or all of its model's
    requests) is exact with the K chords between consecutive integers 0..K: their maximum is its
    waiting at every integer load, so it needs no refinement. Instances get them by ascending K
    while the chords total at most CHORD_ROWS rows; the others get the tangents at `points` (an
    outer approximation, refined by chords round by round)."""
    caps = unit_caps(arrays)
    demand = np.bincount(arrays.group_model, weights=arrays.count, minlength=arrays.n_models)
    reach = np.where(arrays.exec_time > 0, np.minimum(caps, demand[:, None]), 0.0)
    inst_m, inst_j = np.nonzero(reach > 0)
    k = reach[inst_m, inst_j]
    order = np.argsort(k, kind="stable")
    chorded = np.zeros(len(k), dtype=bool)
    chorded[order[np.cumsum(k[order]) <= CHORD_ROWS]] = True
    cuts: dict[tuple[int, int], list[tuple[float, float]]] = {}
    if (~chorded).any():
        slope, intercept = cut_rows(arrays, inst_m[~chorded], inst_j[~chorded], points)
        for i, (m, j) in enumerate(zip(inst_m[~chorded].tolist(), inst_j[~chorded].tolist())):
            cuts[(m, j)] = list(zip(slope[i].tolist(), intercept[i].tolist()))
    for m, j, top in zip(inst_m[chorded].tolist(), inst_j[chorded].tolist(), k[chorded].tolist()):
        cuts[(m, j)] = _chords(arrays, m, j, 0, int(top))
    return cuts, int(chorded.sum())


def solve_latency(problem: Problem, arrays: Arrays, *, deadline: Deadline, time_limit: float | None) -> Solution:
    """Solve the `latency` problem with HiGHS; see the module's docstring."""
    points, h_error = tangent_points(arrays.max_util, TANGENT_TOL)
    extra, exact = initial_cuts(arrays, points)
    caps = unit_caps(arrays)
    added_cuts = 0
    best = None
    best_value = np.inf
    bound = -np.inf
    proven = False
    changed = False
    rounds = 0
    last_status = ""
    pwl_error = 0.0
    while rounds < MAX_ROUNDS:
        model = build_model(arrays, tangents=_NO_TANGENTS, extra_cuts=extra, perspective=PERSPECTIVE)
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
                cuts = _chords(arrays, m, j, max(0, n - 1), min(n + 1, int(caps[m, j])))
                extra.setdefault((m, j), []).extend(cuts)
                added_cuts += len(cuts)
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
    tangents = len(extra) - exact
    note = (f"piecewise-linear outer approximation: {exact} of {len(extra)} loaded instance(s) exact at integer "
            f"loads (chords)" + (f", {tangents} on {len(points)} tangents (a-priori error <= "
                                 f"{h_error * arrays.window:.4g} s per instance)" if tangents else "")
            + f"; {added_cuts} cut(s) added in {rounds} round(s); error at the answer {pwl_error:.4g} s; "
              f"gap {gap:.4f}% to the MILP bound")
    if proven and not changed:
        status, message = st.OPTIMAL, f"optimal; {note}"
    elif proven:
        status, message = st.REPAIRED, f"the MILP's optimum needed repair into an assignment; {note}"
    else:
        stop = f"{st.TIME_LIMIT_NOTE}: " if deadline.hit or last_status == "kTimeLimit" else ""
        status, message = st.FEASIBLE, f"{stop}{note}"
    return Solution(status=status, objective=best_value, bound=bound_value, solver="highs", seconds=0.0,
                    assignment=best.assignment(), placement=best.placement(), message=message)
