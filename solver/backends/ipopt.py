"""`ipopt`: the thesis's way. Ipopt (CasADi's bundled build) solves the continuous relaxation;
its fractional values are the thesis's per-model, per-node "probabilities" (`placement`), and
they are rounded and repaired into a feasible integral assignment, whose value is `objective`,
with the relaxed value in `bound`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solver import status as st
from solver.backends.base import Backend
from solver.check import explain_infeasible
from solver.data import Arrays
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


def solve_relaxation(model: LinearModel, *, time_limit: float | None = None) -> Relaxation:
    """Solve the continuous relaxation of a LinearModel with Ipopt through CasADi."""
    import casadi as ca

    csc = model.A.tocsc()
    A = ca.DM(ca.Sparsity(csc.shape[0], csc.shape[1], csc.indptr.tolist(), csc.indices.tolist()), csc.data)
    x = ca.MX.sym("x", model.n_cols)
    nlp = {"x": x, "f": ca.dot(ca.DM(model.c), x), "g": ca.densify(ca.mtimes(A, x))}
    options = dict(IPOPT_OPTIONS)
    if time_limit is not None:
        options["ipopt.max_wall_time"] = float(max(time_limit, 0.01))
    solver = ca.nlpsol("relaxation", "ipopt", nlp, options)
    result = solver(x0=np.clip(np.zeros(model.n_cols), model.lb, model.ub), lbx=model.lb, ubx=model.ub,
                    lbg=model.row_lb, ubg=model.row_ub)
    stats = solver.stats()
    values = np.clip(np.asarray(result["x"]).ravel(), model.lb, model.ub)
    return Relaxation(status=str(stats.get("return_status")), success=bool(stats.get("success")),
                      x=values, objective=float(result["f"]))


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


def solution_from_relaxation(problem: Problem, arrays: Arrays, model: LinearModel, relaxed: Relaxation,
                             *, solver: str) -> Solution:
    """Round and repair a relaxation into a Solution (shared by the ipopt and ampl backends)."""
    if relaxed.status in ("Infeasible_Problem_Detected", "infeasible"):
        return Solution(status=st.INFEASIBLE, objective=None, bound=None, solver=solver, seconds=0.0,
                        message=explain_infeasible(problem))
    placement = fractional_placement(arrays, model, relaxed.x)
    bound = relaxed.objective if relaxed.success else None
    packer = round_relaxed(arrays, model.pair_g, model.pair_j, relaxed.x[: model.n_x])
    if packer is None:
        return Solution(status=st.ERROR, objective=None, bound=bound, solver=solver, seconds=0.0,
                        placement=placement,
                        message=f"relaxation {relaxed.status}, but rounding could not place every request "
                                "within capacity (try --solver highs)")
    objective = packer.objective()
    gap = f"; {100 * (objective - bound) / abs(bound):.2f}% above the relaxation" if bound else ""
    note = "relaxed by Ipopt" if relaxed.success else f"Ipopt stopped: {relaxed.status}"
    return Solution(status=st.FEASIBLE, objective=objective, bound=bound, solver=solver, seconds=0.0,
                    assignment=packer.assignment(), placement=placement,
                    message=f"{note}, rounded and repaired{gap}")


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
        model = build_model(arrays)
        return solution_from_relaxation(problem, arrays, model, solve_relaxation(model, time_limit=time_limit),
                                        solver=self.name)
