"""`ipopt`: the thesis's way. Ipopt (CasADi's bundled build) solves the continuous relaxation;
its fractional values are the thesis's per-model, per-node "probabilities" (`placement`), and
they are rounded and repaired into a feasible integral assignment, whose value is `objective`,
with the relaxed value in `bound`.

With a time limit, Ipopt gets `max_wall_time`/`max_cpu_time`, but those are only checked between
iterations: CasADi's set-up and Ipopt's first factorisation of a large model run unchecked (a
300-node x 3,000-group model: ~50 s and ~2 GB before the first iteration). So a limited solve
runs the relaxation in a child process that is killed when its share of the limit is spent
(its memory goes with it); the rest of the limit is kept for rounding and repair, whose loops
check the deadline too. Without a relaxation the repair starts from nothing (the greedy fill).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solver import status as st
from solver.backends.base import Backend
from solver.backends.child import can_start_children, run_bounded
from solver.check import explain_infeasible
from solver.data import Arrays
from solver.deadline import NEVER, Deadline
from solver.formulation import LinearModel, build_model
from solver.problem import Problem, Solution
from solver.rounding import round_relaxed

IPOPT_OPTIONS = {
    "print_time": False,
    "ipopt.print_level": 0,
    "ipopt.sb": "yes",                       # no banner: stdout stays the Solution JSON
    "ipopt.tol": 1e-9,
    "ipopt.max_iter": 3000,
    "ipopt.hessian_constant": "yes",         # the relaxation is an LP
    "ipopt.jac_c_constant": "yes",
    "ipopt.jac_d_constant": "yes",
}


@dataclass
class Relaxation:
    """The relaxed solution of a LinearModel."""

    status: str                 # Ipopt return status, e.g. "Solve_Succeeded"
    success: bool
    x: np.ndarray
    objective: float | None


@dataclass
class Waiting:
    """`latency`: each instance's load n_k = (loads @ x)_k, its service time and the window; the
    relaxation adds sum_k W h(s_k n_k / W) (solver/queueing.py) to the linear objective."""

    loads: "object"             # scipy.sparse csr (instances x columns)
    service: np.ndarray
    window: float


def waiting_terms(arrays: Arrays, model: LinearModel) -> Waiting:
    """Return the instances' loads over the model's x columns (the y columns' order)."""
    import scipy.sparse as sp

    keys = arrays.group_model[model.pair_g] * arrays.n_nodes + model.pair_j
    ykeys = model.y_m * arrays.n_nodes + model.y_j
    rows = np.searchsorted(ykeys, keys)          # y columns are sorted by key (formulation.py)
    loads = sp.csr_matrix((np.ones(model.n_x), (rows, np.arange(model.n_x))), shape=(len(ykeys), model.n_cols))
    return Waiting(loads=loads, service=arrays.exec_time[model.y_m, model.y_j], window=arrays.window)


def solve_relaxation(model: LinearModel, *, time_limit: float | None = None,
                     waiting: Waiting | None = None) -> Relaxation:
    """Solve the continuous relaxation of a LinearModel with Ipopt through CasADi (with `waiting`,
    the `latency` model's convex waiting replaces its piecewise-linear wait columns)."""
    import casadi as ca

    csc = model.A.tocsc()
    A = ca.DM(ca.Sparsity(csc.shape[0], csc.shape[1], csc.indptr.tolist(), csc.indices.tolist()), csc.data)
    x = ca.MX.sym("x", model.n_cols)
    c, ub = model.c, model.ub
    options = dict(IPOPT_OPTIONS)
    f = ca.dot(ca.DM(c), x)
    if waiting is not None and model.n_wait:
        c, ub = c.copy(), ub.copy()
        c[model.n_cols - model.n_wait:] = 0.0            # the wait columns are fixed at 0 ...
        ub[model.n_cols - model.n_wait:] = 0.0
        L = waiting.loads.tocsc()
        B = ca.DM(ca.Sparsity(L.shape[0], L.shape[1], L.indptr.tolist(), L.indices.tolist()), L.data)
        rho = ca.DM(waiting.service / waiting.window) * ca.mtimes(B, x)
        f = ca.dot(ca.DM(c), x) + waiting.window * ca.sum1(rho * rho / (1 - rho))   # ... and W h(rho) counted
        options["ipopt.hessian_constant"] = "no"
    nlp = {"x": x, "f": f, "g": ca.densify(ca.mtimes(A, x))}
    if time_limit is not None:
        options["ipopt.max_wall_time"] = float(max(time_limit, 0.01))
        options["ipopt.max_cpu_time"] = float(max(time_limit, 0.01))
    solver = ca.nlpsol("relaxation", "ipopt", nlp, options)
    result = solver(x0=np.clip(np.zeros(model.n_cols), model.lb, ub), lbx=model.lb, ubx=ub,
                    lbg=model.row_lb, ubg=model.row_ub)
    stats = solver.stats()
    values = np.clip(np.asarray(result["x"]).ravel(), model.lb, ub)
    return Relaxation(status=str(stats.get("return_status")), success=bool(stats.get("success")),
                      x=values, objective=float(result["f"]))


_STOPPED = ("Maximum_WallTime_Exceeded", "Maximum_CpuTime_Exceeded", "limit")   # Ipopt's and AMPL's


def reserve_for_repair(budget: float) -> float:
    """Return the part of a time limit kept for rounding, repair and local search."""
    return min(max(0.25 * budget, 0.1), 5.0)


def solve_relaxation_bounded(model: LinearModel, seconds: float, waiting: Waiting | None = None) -> Relaxation | None:
    """Solve the relaxation in a child process given `seconds` of wall time in all; None when it
    did not answer in time (the child is killed). Raise RuntimeError if the child failed."""
    # Ipopt's own limits stop it between iterations, leaving time to send its iterate back
    done, relaxed = run_bounded(_relax, (model, max(0.01, 0.8 * seconds - 0.05), waiting), seconds, method="fork")
    return relaxed if done else None


def _relax(model: LinearModel, seconds: float, waiting: Waiting | None = None) -> Relaxation:
    return solve_relaxation(model, time_limit=seconds, waiting=waiting)


def fractional_placement(arrays: Arrays, model: LinearModel, x: np.ndarray) -> dict[str, dict[str, float]]:
    """Return the relaxation's model x node values: y for `placement`, the largest I[i,j] for `thesis`."""
    out: dict[str, dict[str, float]] = {m: {} for m in arrays.model_names}
    if arrays.placement:
        values = x[model.n_x:]
        ms, js = model.y_m, model.y_j
    else:
        share = x[: model.n_x] / np.maximum(arrays.count[model.pair_g], 1)
        grid = np.zeros((arrays.n_models, arrays.n_nodes))
        np.maximum.at(grid, (arrays.group_model[model.pair_g], model.pair_j), share)
        ms, js = np.nonzero(grid)
        values = grid[ms, js]
    for m, j, v in zip(ms.tolist(), js.tolist(), values.tolist()):
        v = round(min(max(v, 0.0), 1.0), 6)
        if v > 0:
            out[arrays.model_names[m]][arrays.node_names[j]] = v
    return out


def solution_from_relaxation(problem: Problem, arrays: Arrays, model: LinearModel, relaxed: Relaxation | None,
                             *, solver: str, deadline: Deadline = NEVER) -> Solution:
    """Round and repair a relaxation into a Solution (shared by the ipopt and ampl backends).

    `relaxed` None means the relaxation did not finish within the time limit: the repair then
    starts from nothing. Rounding and repair stop at the deadline.
    """
    if relaxed is not None and relaxed.status in ("Infeasible_Problem_Detected", "infeasible"):
        return Solution(status=st.INFEASIBLE, objective=None, bound=None, solver=solver, seconds=0.0,
                        message=explain_infeasible(problem))
    limited = relaxed is None or relaxed.status in _STOPPED
    x = np.zeros(model.n_cols) if relaxed is None else relaxed.x
    placement = {} if relaxed is None else fractional_placement(arrays, model, x)
    bound = relaxed.objective if relaxed is not None and relaxed.success else None
    note = ("Ipopt had no answer in time, so no relaxation"
            if relaxed is None else "relaxed by Ipopt" if relaxed.success else f"Ipopt stopped: {relaxed.status}")
    packer = round_relaxed(arrays, model.pair_g, model.pair_j, x[: model.n_x], deadline=deadline)
    limited = limited or deadline.hit
    prefix = f"{st.TIME_LIMIT_NOTE}: " if limited else ""
    if packer is None:
        if deadline.hit or relaxed is None:
            return Solution(status=st.TIME_LIMIT, objective=None, bound=bound, solver=solver, seconds=0.0,
                            placement=placement,
                            message=f"{prefix}{note}; rounding and repair placed only part of the requests "
                                    "before the limit (raise --time-limit, or try --solver greedy)")
        return Solution(status=st.ERROR, objective=None, bound=bound, solver=solver, seconds=0.0,
                        placement=placement,
                        message=f"relaxation {relaxed.status}, but rounding could not place every request "
                                "within capacity (try --solver highs)")
    objective = packer.objective()
    gap = f"; {100 * (objective - bound) / abs(bound):.2f}% above the relaxation" if bound else ""
    repaired = "greedy fill and repair" if relaxed is None else "rounded and repaired"
    return Solution(status=st.FEASIBLE, objective=objective, bound=bound, solver=solver, seconds=0.0,
                    assignment=packer.assignment(), placement=placement,
                    message=f"{prefix}{note}, {repaired}{gap}")


class IpoptBackend(Backend):
    """Continuous relaxation by Ipopt, rounded and repaired."""

    name = "ipopt"
    description = "the thesis's solver: Ipopt (CasADi) on the relaxation, then rounding and repair"

    def available(self) -> bool:
        try:
            import casadi

            return casadi.has_nlpsol("ipopt")
        except ImportError:
            return False

    def unavailable_reason(self) -> str:
        return "Ipopt is not available: pip install casadi (it bundles Ipopt)"

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        if time_limit is None:
            model = build_model(arrays)
            waiting = waiting_terms(arrays, model) if arrays.latency else None
            return solution_from_relaxation(problem, arrays, model, solve_relaxation(model, waiting=waiting),
                                            solver=self.name)
        deadline = Deadline(time_limit)
        model = build_model(arrays)
        waiting = waiting_terms(arrays, model) if arrays.latency else None
        if not can_start_children():      # a daemonic process: Ipopt's own limits only
            budget = max(0.01, deadline.remaining() - reserve_for_repair(time_limit))
            return solution_from_relaxation(problem, arrays, model,
                                            solve_relaxation(model, time_limit=budget, waiting=waiting),
                                            solver=self.name, deadline=deadline)
        relaxed = solve_relaxation_bounded(model, max(0.0, deadline.remaining() - reserve_for_repair(time_limit)),
                                           waiting)
        return solution_from_relaxation(problem, arrays, model, relaxed, solver=self.name, deadline=deadline)
