"""`highs`: the exact MILP of either formulation, solved by HiGHS through highspy."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solver import status as st
from solver.backends.base import Backend
from solver.backends.child import can_start_children, run_bounded
from solver.check import explain_infeasible
from solver.data import Arrays
from solver.deadline import Deadline
from solver.formulation import LinearModel, build_model
from solver.native import new_highs
from solver.packing import Packer
from solver.problem import Problem, Solution


SMALL_MODEL = 20_000     # columns; measured on the thesis-scale instances (bench/solver.py)
EXACT_GAP = 1e-6         # relative gap at which `highs` calls a solution optimal (HiGHS's default: 1e-4)


@dataclass
class HighsResult:
    """What one HiGHS run returned."""

    status: str                 # HiGHS model status name: "kOptimal", "kInfeasible", "kTimeLimit", ...
    has_solution: bool
    x: np.ndarray               # column values (empty without a solution)
    objective: float | None
    bound: float | None         # MIP dual bound (MILP) or the LP optimum (LP)
    gap: float | None
    row_dual: np.ndarray        # LP only: row duals (empty otherwise)


def run_highs(model: LinearModel, *, time_limit: float | None = None, integral: bool = True,
              mip_gap: float | None = None, threads: int | None = None) -> HighsResult:
    """Solve a LinearModel (as a MILP, or its LP relaxation) with HiGHS, silently."""
    import highspy

    h = new_highs()
    h.setOptionValue("output_flag", False)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(max(time_limit, 0.01)))
    if mip_gap is not None:
        h.setOptionValue("mip_rel_gap", float(mip_gap))
    if threads is not None:
        h.setOptionValue("threads", int(threads))
    if model.n_cols <= SMALL_MODEL:
        h.setOptionValue("presolve", "off")          # on thesis-scale models presolve costs more than it saves
    lp = highspy.HighsLp()
    lp.num_col_ = model.n_cols
    lp.num_row_ = model.A.shape[0]
    lp.col_cost_ = model.c
    lp.col_lower_ = model.lb
    lp.col_upper_ = model.ub
    inf = highspy.kHighsInf
    lp.row_lower_ = np.where(np.isinf(model.row_lb), -inf, model.row_lb)
    lp.row_upper_ = np.where(np.isinf(model.row_ub), inf, model.row_ub)
    csc = model.A.tocsc()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = csc.indptr
    lp.a_matrix_.index_ = csc.indices
    lp.a_matrix_.value_ = csc.data
    lp.a_matrix_.num_col_ = model.n_cols
    lp.a_matrix_.num_row_ = model.A.shape[0]
    if integral:
        lp.integrality_ = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous
                           for i in model.integer.tolist()]
    h.passModel(lp)
    h.run()
    native = h.getModelStatus()
    info = h.getInfo()
    has_solution = info.primal_solution_status == 2          # kSolutionStatusFeasible
    solution = h.getSolution()
    x = np.asarray(solution.col_value) if has_solution else np.zeros(0)
    objective = float(info.objective_function_value) if has_solution else None
    if integral:
        bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else None
        gap = float(info.mip_gap) if has_solution and np.isfinite(info.mip_gap) else None
        row_dual = np.zeros(0)
    else:
        bound = objective if native == highspy.HighsModelStatus.kOptimal else None
        gap = None
        row_dual = np.asarray(solution.row_dual) if solution.dual_valid else np.zeros(0)
    return HighsResult(status=native.name, has_solution=has_solution, x=x,
                       objective=objective, bound=bound, gap=gap, row_dual=row_dual)


def _run_highs_exact(model: LinearModel, time_limit: float) -> HighsResult:
    return run_highs(model, time_limit=time_limit, mip_gap=EXACT_GAP)


def run_highs_bounded(model: LinearModel, seconds: float) -> HighsResult | None:
    """The exact MILP in a fresh child process killed after `seconds` (HiGHS's presolve of a large
    model does not look at its time limit); None when it had not answered."""
    own = seconds - min(max(0.15 * seconds, 0.1), 1.5)     # HiGHS's own limit, after ~0.5 s of start-up
    done, result = run_bounded(_run_highs_exact, (model, max(0.01, own)), seconds, method="spawn")
    return result if done else None


def run_within(model: LinearModel, deadline: Deadline, time_limit: float | None) -> HighsResult | None:
    """Run the exact MILP within the deadline (None: a child killed at the deadline had no answer)."""
    if time_limit is None:
        return run_highs(model, mip_gap=EXACT_GAP)
    if model.n_cols <= SMALL_MODEL or not can_start_children():    # no presolve: HiGHS keeps the limit
        return run_highs(model, time_limit=deadline.remaining(), mip_gap=EXACT_GAP)
    left = deadline.remaining()
    return run_highs_bounded(model, left - min(max(0.1 * left, 0.1), 2.0))   # the rest: the assignment


def packer_from_columns(arrays: Arrays, model: LinearModel, x: np.ndarray) -> tuple[Packer, bool]:
    """Return the integral assignment of a MILP solution's x columns (values rounded to integers),
    and whether repairing it changed the MILP's answer (a row left over capacity, requests shed
    or filled in): then that answer's optimality no longer carries over."""
    packer = Packer(arrays)
    units = np.rint(x[: model.n_x]).astype(np.int64)
    changed = False
    for k in np.flatnonzero(units > 0).tolist():
        g = int(model.pair_g[k])
        take = int(min(units[k], packer.remaining[g]))
        changed |= take != units[k]
        packer.add(g, int(model.pair_j[k]), take)
    if not packer.feasible():
        packer.shed_overload()          # integrality tolerance left a row a hair over
        changed = True
    if not packer.complete:
        packer.fill_cheapest()
        changed = True
    return packer, changed


_STOPS = {"kTimeLimit": "time limit", "kIterationLimit": "iteration limit", "kSolutionLimit": "solution limit",
          "kInterrupt": "interrupted", "kMemoryLimit": "memory limit"}


class HighsBackend(Backend):
    """Exact MILP with HiGHS."""

    name = "highs"
    description = "exact MILP (HiGHS); honours --time-limit and reports the gap when stopped early"

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        deadline = Deadline(time_limit)
        if arrays.latency:
            from solver.backends.highs_latency import solve_latency

            return solve_latency(problem, arrays, deadline=deadline, time_limit=time_limit)
        model = build_model(arrays)          # the model's construction counts against the limit
        result = run_within(model, deadline, time_limit)
        if result is None:
            return Solution(status=st.TIME_LIMIT, objective=None, bound=None, solver=self.name, seconds=0.0,
                            message=f"{st.TIME_LIMIT_NOTE}: HiGHS had no answer yet (stopped)")
        if result.status == "kInfeasible":
            return Solution(status=st.INFEASIBLE, objective=None, bound=None, solver=self.name, seconds=0.0,
                            message=explain_infeasible(problem))
        timed_out = result.status == "kTimeLimit"
        if not result.has_solution:
            if timed_out:
                return Solution(status=st.TIME_LIMIT, objective=None, bound=result.bound, solver=self.name,
                                seconds=0.0, message=f"{st.TIME_LIMIT_NOTE}: HiGHS had no feasible assignment yet")
            return Solution(status=st.ERROR, objective=None, bound=result.bound, solver=self.name, seconds=0.0,
                            message=f"HiGHS stopped ({result.status}) without a feasible assignment")
        packer, changed = packer_from_columns(arrays, model, result.x)
        optimal = result.status == "kOptimal"
        stop = st.TIME_LIMIT_NOTE if timed_out else f"stopped ({_STOPS.get(result.status, result.status)})"
        message = "optimal" if optimal else (
            f"{stop}: gap {100 * (result.gap or 0):.2f}% to the bound {result.bound:.6g}"
            if result.bound is not None else stop)
        status = st.OPTIMAL if optimal else st.FEASIBLE
        if optimal and changed:
            status = st.REPAIRED
            message = ("the MILP's optimum was proven, but its columns needed repair into an integral "
                       f"assignment (not proven optimal; bound {result.bound:.6g})")
        return Solution(status=status, objective=packer.objective(),
                        bound=result.bound, solver=self.name, seconds=0.0,
                        assignment=packer.assignment(), placement=packer.placement(),
                        message=message)
