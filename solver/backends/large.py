"""`lp-fix`: a feasible assignment and a proven lower bound for very large instances.

A plain MILP of 1,000 nodes x 5,000 request groups has five million dispatch columns. This route
never builds them all:

1. Candidate pairs: each group's cheapest and nearest nodes, plus a costly `unserved` column per
   group so the restricted problem is always feasible.
2. A routing LP over the candidates (demand and cpu rows; in `thesis` also the per-request memory
   rows; `placement`'s once-per-instance memory is left to step 4), solved by HiGHS, then column
   generation: every pair left out is priced with the LP's duals in one vectorised pass, the most
   negative ones are added and the LP re-solved warm, until none is negative or time runs out.
3. The duals give a Lagrangian lower bound valid for the whole problem, pruned pairs included:
   sum_g count_g * min_j (cost[g,j] + cpu_m |mu_j| (+ mem_m |nu_j|)) - sum_j |mu_j| C_j (- |nu_j| M_j).
4. The LP's dispatch is rounded and repaired under the real capacities (memory per instance
   included), then improved by local search (solver/rounding.py).

The result is `feasible` with `bound` the Lagrangian bound; the message gives the gap.
"""
from __future__ import annotations

import time

import numpy as np

from solver import status as st
from solver.backends.base import Backend
from solver.data import Arrays
from solver.deadline import Deadline
from solver.native import new_highs
from solver.packing import candidate_nodes
from solver.problem import Problem, Solution
from solver.rounding import round_relaxed

DEFAULT_TIME_LIMIT = 10.0
CHEAPEST = 4           # candidate nodes per group by unit cost
NEAREST = 16           # and by round-trip time (capacity close to the clients)
ADD_PER_GROUP = 5      # columns added per group and pricing round
ROUND_CANDIDATES = 32  # nodes per group the repair step may use


class RoutingLP:
    """The restricted routing LP, kept in one HiGHS instance so added columns re-solve warm."""

    def __init__(self, arrays: Arrays, g: np.ndarray, j: np.ndarray) -> None:
        import highspy

        self.a = arrays
        self.hs = highspy
        self.h = new_highs()
        self.h.setOptionValue("output_flag", False)
        a = arrays
        n_groups, n_nodes = a.n_groups, a.n_nodes
        self.per_request_memory = not a.placement
        inf = highspy.kHighsInf
        count = a.count.astype(float)
        # rows: demand[g] (= count, or >= count in thesis), compute[j], memory[j] (thesis only)
        demand_hi = count if a.placement else np.full(n_groups, inf)
        lower = [count, np.full(n_nodes, -inf)]
        upper = [demand_hi, a.cpu_cap.astype(float)]
        if self.per_request_memory:
            lower.append(np.full(n_nodes, -inf))
            upper.append(a.mem_cap.astype(float))
        n_rows = len(np.concatenate(lower))
        self.h.addRows(n_rows, np.concatenate(lower), np.concatenate(upper), 0,
                       np.zeros(n_rows, dtype=np.int32), np.zeros(0, dtype=np.int32), np.zeros(0))
        self.compute_row = n_groups
        self.memory_row = n_groups + n_nodes
        # the `unserved` columns: one per group, costly enough never to be used if avoidable
        self.slack_cost = float(a.cost.max()) * 10 + 1.0
        starts = np.arange(n_groups, dtype=np.int32)
        self.h.addCols(n_groups, np.full(n_groups, self.slack_cost), np.zeros(n_groups), count, n_groups,
                       starts, np.arange(n_groups, dtype=np.int32), np.ones(n_groups))
        self.pair_g = np.zeros(0, dtype=np.int64)
        self.pair_j = np.zeros(0, dtype=np.int64)
        self.add(g, j)

    def add(self, g: np.ndarray, j: np.ndarray) -> None:
        """Add dispatch columns x[g,j]."""
        a = self.a
        m = a.group_model[g]
        n = len(g)
        rows = [g, self.compute_row + j]
        values = [np.ones(n), a.cpu[m]]
        if self.per_request_memory:
            rows.append(self.memory_row + j)
            values.append(a.mem[m])
        per = len(rows)
        index = np.stack(rows, axis=1).ravel().astype(np.int32)
        value = np.stack(values, axis=1).ravel()
        self.h.addCols(n, a.cost[g, j], np.zeros(n), a.count[g].astype(float), n * per,
                       (np.arange(n) * per).astype(np.int32), index, value)
        self.pair_g = np.concatenate([self.pair_g, g])
        self.pair_j = np.concatenate([self.pair_j, j])

    def solve(self, time_limit: float) -> bool:
        """Solve (warm after the first time); return True when optimal."""
        self.h.setOptionValue("time_limit", float(max(time_limit, 0.05)))
        self.h.run()
        return self.h.getModelStatus() == self.hs.HighsModelStatus.kOptimal

    def values(self) -> tuple[np.ndarray, float, float, np.ndarray, np.ndarray, np.ndarray]:
        """Return (x of the pairs, LP objective, unserved requests, demand, compute, memory duals)."""
        solution = self.h.getSolution()
        col = np.asarray(solution.col_value)
        dual = np.asarray(solution.row_dual)
        a = self.a
        n_groups, n_nodes = a.n_groups, a.n_nodes
        pi = dual[:n_groups]
        mu = np.minimum(dual[self.compute_row:self.compute_row + n_nodes], 0.0)
        nu = np.minimum(dual[self.memory_row:self.memory_row + n_nodes], 0.0) if self.per_request_memory \
            else np.zeros(n_nodes)
        objective = float(self.h.getInfo().objective_function_value)
        return col[n_groups:], objective, float(col[:n_groups].sum()), pi, mu, nu


def lagrangian_bound(arrays: Arrays, mu: np.ndarray, nu: np.ndarray) -> tuple[float, np.ndarray]:
    """Return the Lagrangian lower bound for capacity prices mu, nu (<= 0) and the priced costs."""
    a = arrays
    m = a.group_model
    priced = a.cost - a.cpu[m][:, None] * mu[None, :]
    if not a.placement:
        priced -= a.mem[m][:, None] * nu[None, :]
    bound = float(np.dot(a.count, priced.min(axis=1)) + np.dot(mu, a.cpu_cap))
    if not a.placement:
        bound += float(np.dot(nu, a.mem_cap))
    return bound, priced


def priced_columns(reduced: np.ndarray, negative: np.ndarray, per_group: int) -> tuple[np.ndarray, np.ndarray]:
    """The (group, node) columns a pricing round adds: each group's `per_group` lowest reduced
    costs, kept where the reduced cost is negative (`negative`, same shape as `reduced`)."""
    n_groups, n_nodes = reduced.shape
    k = min(per_group, n_nodes)
    part = np.argpartition(reduced, k - 1, axis=1)[:, :k]
    add_g = np.repeat(np.arange(n_groups), k)
    add_j = part.ravel()
    chosen = negative[add_g, add_j]
    return add_g[chosen], add_j[chosen]


def initial_pairs(arrays: Arrays, cheapest: int, nearest: int) -> tuple[np.ndarray, np.ndarray]:
    """Return each group's cheapest and nearest nodes as (group, node) pairs."""
    a = arrays
    groups = np.flatnonzero(a.count > 0)
    by_cost = candidate_nodes(a, cheapest)[groups]
    k = max(1, min(nearest, a.n_nodes))
    by_rtt = np.argpartition(a.rtt[groups], k - 1, axis=1)[:, :k] if k < a.n_nodes else \
        np.tile(np.arange(a.n_nodes), (len(groups), 1))
    g = np.concatenate([np.repeat(groups, by_cost.shape[1]), np.repeat(groups, by_rtt.shape[1])])
    j = np.concatenate([by_cost.ravel(), by_rtt.ravel()])
    keys = np.unique(g * a.n_nodes + j)
    return np.divmod(keys, a.n_nodes)


class LpFixBackend(Backend):
    """Routing LP with column generation, a Lagrangian bound, then rounding and repair."""

    name = "lp-fix"
    description = ("for very large instances: routing LP over pruned candidates with column generation, "
                   "a Lagrangian lower bound, then rounding, repair and local search (default limit 10 s)")

    def _solve(self, problem: Problem, arrays: Arrays, *, time_limit: float | None,
               keep_files: str | None) -> Solution:
        if arrays.latency:
            from solver.backends.large_latency import solve_lp_fix_latency

            return solve_lp_fix_latency(problem, arrays, time_limit=time_limit)
        started = time.monotonic()
        budget = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
        deadline = started + budget
        a = arrays
        g, j = initial_pairs(a, CHEAPEST, NEAREST)
        lp = RoutingLP(a, g, j)
        best_bound = -np.inf
        rounds = 0
        priced_out = 0
        optimal = False
        timed_out = False
        reserve = min(0.35 * budget, 3.0)            # for rounding, repair and local search
        while True:
            optimal = lp.solve(max(0.05, deadline - time.monotonic() - reserve))
            if not optimal:            # HiGHS stopped by the time left (or failed)
                timed_out = True
                break
            x, lp_value, unserved, pi, mu, nu = lp.values()
            bound, priced = lagrangian_bound(a, mu, nu)
            best_bound = max(best_bound, bound)
            reduced = priced - pi[:, None]
            reduced[lp.pair_g, lp.pair_j] = 0.0
            reduced[a.count == 0] = 0.0
            negative = reduced < -1e-9
            priced_out = int(negative.sum())
            rounds += 1
            if not priced_out and unserved < 0.5:
                best_bound = max(best_bound, lp_value)       # the restricted LP is the full relaxation
            closed = lp_value - best_bound <= 1e-4 * max(1.0, abs(lp_value))
            if not priced_out or closed:
                break
            if time.monotonic() > deadline - reserve:
                timed_out = True
                break
            lp.add(*priced_columns(reduced, negative, ADD_PER_GROUP))
        if rounds == 0:
            return Solution(status=st.TIME_LIMIT, objective=None, bound=None, solver=self.name, seconds=0.0,
                            message=f"{st.TIME_LIMIT_NOTE}: the routing LP did not solve within the time limit")
        x, lp_value, unserved, _, _, _ = lp.values()
        repair = Deadline(max(0.0, deadline - time.monotonic()))
        packer = round_relaxed(a, lp.pair_g, lp.pair_j, x, candidates=candidate_nodes(a, ROUND_CANDIDATES),
                               deadline=repair)
        if packer is None and repair.hit:
            return Solution(status=st.TIME_LIMIT, objective=None, bound=float(best_bound), solver=self.name,
                            seconds=0.0, message=f"{st.TIME_LIMIT_NOTE}: rounding and repair placed only part "
                                                 "of the requests before the limit")
        if packer is None:
            return Solution(status=st.ERROR, objective=None, bound=float(best_bound), solver=self.name, seconds=0.0,
                            message="rounding could not place every request within capacity "
                                    f"({'the LP left requests unserved: the problem may be infeasible' if unserved > 0.5 else 'try --solver highs'})")
        objective = packer.objective()
        gap = 100 * (objective - best_bound) / abs(best_bound) if best_bound > 0 else float("nan")
        return Solution(status=st.FEASIBLE, objective=objective, bound=float(best_bound), solver=self.name,
                        seconds=0.0, assignment=packer.assignment(), placement=packer.placement(),
                        message=(f"{st.TIME_LIMIT_NOTE}: " if timed_out or repair.hit else "")
                        + f"{gap:.2f}% above the lower bound; {rounds} LP round(s), {len(lp.pair_g)} "
                                f"candidate pairs of {int((a.count > 0).sum()) * a.n_nodes}"
                                + (f", {priced_out} still priced out (bound is Lagrangian)" if priced_out else ""))
