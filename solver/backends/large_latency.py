"""`lp-fix` on the `latency` formulation: a routing LP with the piecewise-linear waiting over pruned
candidate pairs, a Lagrangian lower bound valid for the whole problem, then rounding and repair.

1. Candidates: each group's cheapest and nearest nodes (as for the fixed-time formulations).
2. An LP relaxation of the `latency` MILP over them (no memory, no instance costs, tangent cuts
   for the waiting, a costly `unserved` column per group), solved by HiGHS; pairs left out are
   priced at the LP's loads (unit cost + cpu price + the instance's marginal waiting s h'(rho) -
   the group's demand dual) and the cheapest ones added, a few rounds while time allows. After PLAIN_ROUNDS rounds
   (or once no pair prices out), each instance whose waiting the LP under-estimates at its load
   also gets the tangent there (Kelley's cutting planes): the LP's waiting, hence its prices and
   the bound, approach the exact ones round by round.
3. Lower bound: relax the demand rows (prices pi, the LP's duals) and the compute rows (prices
   mu <= 0), drop memory and x <= count; what is left splits per instance (m, j) into
   min over integers 0 <= n <= min(cap, N_m) of a n + W h(s n / W) (+ its cost where it serves),
   with a = min_g (cost[g,j] - cpu_m mu_j - pi_g), solved in closed form: rho* = 1 - 1 / sqrt(1 - a / s)
   for a < 0, then the integers either side. Any prices give a valid bound, pruned pairs included.
4. The dispatch of the last LP before the Kelley cuts is rounded and repaired by marginal cost
   (solver/latency_search.py): an LP that prices the waiting exactly spreads the load over more
   instances than memory holds, and rounds worse (measured at 1,000 nodes: 10,530 against 10,390).
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from solver import status as st
from solver.backends.highs import run_highs
from solver.backends.large import (CHEAPEST, DEFAULT_TIME_LIMIT, NEAREST, ROUND_CANDIDATES, initial_pairs,
                                   priced_columns)
from solver.data import Arrays
from solver.deadline import Deadline
from solver.formulation import LinearModel
from solver.packing import candidate_nodes
from solver.problem import Problem, Solution
from solver.queueing import BIG, cut_rows, h, h_slope, tangent_points, unit_caps
from solver.rounding import round_relaxed

LP_TANGENT_TOL = 0.003     # the bound does not rely on them, the rounding starts from their LP
PLAIN_ROUNDS = 2           # LP rounds on these tangents alone; the rounding starts from the last of them
KELLEY_TOL = 1e-3          # s: later, an instance whose LP waiting is under-estimated by more gets a tangent at its load
ADD_PER_GROUP = 6
MAX_ROUNDS = 20


def lagrangian_bound(arrays: Arrays, pi: np.ndarray, mu: np.ndarray) -> float:
    """Return the Lagrangian lower bound of the `latency` problem for prices pi (demand) and mu <= 0 (compute).

    Per instance (m, j), with reduced costs r_g = cost[g,j] - cpu_m mu_j - pi_g of the model's
    groups sorted ascending and filled in that order (0 <= x_g <= count_g, the cheapest first is
    optimal for a fixed total n), the summed cost is convex piecewise-linear in n plus W h(s n / W):
    on segment k its stationary point is rho = 1 - 1 / sqrt(1 - r_k / s) (r_k < 0), clipped to the
    segment and to the ceiling, then to the integers either side (loads are integers); the smallest
    of these candidates (and n = 0) is the minimum. An instance's cost is added where it is paid:
    always for a deployed one, for another only where serving is worth it (else n = 0)."""
    a = arrays
    w = a.window
    caps = unit_caps(a)
    total = float(np.dot(pi, a.count)) + float(np.dot(mu, a.cpu_cap))
    cost_inst = a.cost_inst if a.cost_inst is not None else np.zeros(a.n_nodes)
    active = a.count > 0
    for m in range(a.n_models):
        groups = np.flatnonzero((a.group_model == m) & active)
        if not len(groups):
            continue
        reduced = a.cost[groups] - a.cpu[m] * mu[None, :] - pi[groups][:, None]      # (Gm, S)
        order = np.argsort(reduced, axis=0, kind="stable")
        r = np.take_along_axis(reduced, order, axis=0)
        cnt = a.count[groups].astype(float)[order]
        hi = np.minimum(np.cumsum(cnt, axis=0), caps[m][None, :])                   # segment ends
        lo = np.vstack([np.zeros((1, a.n_nodes)), hi[:-1]])
        value_lo = np.vstack([np.zeros((1, a.n_nodes)), np.cumsum(r * (hi - lo), axis=0)[:-1]])
        s = a.exec_time[m][None, :]
        safe = np.where(s > 0, s, 1.0)

        def segment_value(k: np.ndarray) -> np.ndarray:
            k = np.clip(k, lo, np.maximum(lo, hi))
            rho_k = np.minimum(np.where(s > 0, s * k / w, 0.0), 1 - 1e-12)
            return value_lo + r * (k - lo) + w * rho_k * rho_k / (1 - rho_k)

        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(r < 0, 1 - 1 / np.sqrt(1 - r / safe), 0.0)
            n = np.where(s > 0, rho * w / safe, np.where(r < 0, hi, lo))
        n = np.clip(n, lo, np.maximum(lo, hi))
        value = np.minimum(segment_value(np.floor(n)), segment_value(np.ceil(n)))     # loads are integers
        best = np.minimum(value.min(axis=0), 0.0)                  # (S,) n = 0 is always a candidate
        # the instance's cost: paid by a deployed one anyway, by another only if it serves (then worth it or n = 0)
        total += float(np.where(a.deployed[m], best + cost_inst, np.minimum(best + cost_inst, 0.0)).sum())
    return total


def routing_model(arrays: Arrays, g: np.ndarray, j: np.ndarray, slack_cost: float, points: np.ndarray,
                  extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> LinearModel:
    """The routing LP over pairs (g, j): x, then unserved[g], then wait[k] per instance touched;
    rows demand[g] (= count), compute[j], ceiling[k] (sum x <= cap), wait cuts: the tangents at
    `points` on every instance, plus `extra` = (instance key m * S + j, slope per request, intercept)
    (cuts of instances no pair touches are left out). No y, no memory."""
    a = arrays
    m = a.group_model[g]
    keys = m * a.n_nodes + j
    ukeys, inst = np.unique(keys, return_inverse=True)
    y_m, y_j = np.divmod(ukeys, a.n_nodes)
    n_x, n_g, n_i, n_k = len(g), a.n_groups, len(ukeys), len(points)
    count = a.count.astype(float)
    caps = unit_caps(a)[y_m, y_j]
    slope, intercept = cut_rows(a, y_m, y_j, points)
    x_cols, s_cols, t_cols = np.arange(n_x), n_x + np.arange(n_g), n_x + n_g + np.arange(n_i)
    rows, cols, vals = [], [], []
    rows += [g, np.arange(n_g)]                                  # demand
    cols += [x_cols, s_cols]
    vals += [np.ones(n_x), np.ones(n_g)]
    rows.append(n_g + j)                                         # compute
    cols.append(x_cols)
    vals.append(a.cpu[m])
    base = n_g + a.n_nodes
    rows.append(base + inst)                                     # ceiling
    cols.append(x_cols)
    vals.append(np.ones(n_x))
    base += n_i
    kk = np.arange(n_k)
    rows += [(base + inst[:, None] * n_k + kk[None, :]).ravel(), (base + np.arange(n_i)[:, None] * n_k + kk[None, :]).ravel()]
    cols += [np.repeat(x_cols, n_k), np.repeat(t_cols, n_k)]
    vals += [slope[inst].ravel(), np.full(n_i * n_k, -1.0)]
    n_rows = base + n_i * n_k
    hi_extra = np.zeros(0)
    if extra is not None and len(extra[0]):
        pos = np.minimum(np.searchsorted(ukeys, extra[0]), n_i - 1)
        mine = ukeys[pos] == extra[0]
        pos, e_slope, hi_extra = pos[mine], extra[1][mine], -extra[2][mine]
        order = np.argsort(inst, kind="stable")                      # x columns grouped by instance
        bounds = np.searchsorted(inst[order], np.arange(n_i + 1))
        per = bounds[pos + 1] - bounds[pos]
        x_of = order[np.arange(per.sum()) + np.repeat(bounds[pos] - np.cumsum(per) + per, per)]
        n_e = len(pos)
        rows += [n_rows + np.repeat(np.arange(n_e), per), n_rows + np.arange(n_e)]
        cols += [x_cols[x_of], t_cols[pos]]
        vals += [np.repeat(e_slope, per), np.full(n_e, -1.0)]
        n_rows += n_e
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, n_x + n_g + n_i))
    row_lb = np.concatenate([count, np.full(n_rows - n_g, -np.inf)])
    row_ub = np.concatenate([count, a.cpu_cap.astype(float), np.where(caps < BIG, caps, np.inf), -intercept.ravel(),
                             hi_extra])
    c = np.concatenate([a.cost[g, j], np.full(n_g, slack_cost), np.ones(n_i)])
    lb = np.zeros(n_x + n_g + n_i)
    ub = np.concatenate([count[g], count, np.full(n_i, np.inf)])
    return LinearModel(c=c, lb=lb, ub=ub, integer=np.zeros(len(c), dtype=bool), A=A, row_lb=row_lb, row_ub=row_ub,
                       pair_g=g, pair_j=j, y_m=np.zeros(0, dtype=np.int64), y_j=np.zeros(0, dtype=np.int64),
                       n_slack=n_g, rows={"demand": slice(0, n_g), "compute": slice(n_g, n_g + a.n_nodes)})


def solve_lp_fix_latency(problem: Problem, arrays: Arrays, *, time_limit: float | None) -> Solution:
    """See the module's docstring."""
    started = time.monotonic()
    budget = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    deadline = started + budget - min(0.03 * budget, 1.0)      # the rest: checking the answer (base.Backend)
    reserve = min(0.4 * budget, 5.0)
    a = arrays
    points, _ = tangent_points(a.max_util, LP_TANGENT_TOL)
    g, j = initial_pairs(a, CHEAPEST, NEAREST)
    slack_cost = float(a.cost.max()) * 10 + a.window + 1.0
    caps = unit_caps(a)
    best_bound = -np.inf
    x = None
    x_pairs = pairs = (g, j)
    rounds = 0
    timed_out = False
    unserved = 0.0
    cuts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []     # tangents at the LP's loads (Kelley)
    n_cuts = 0
    while rounds < MAX_ROUNDS:
        extra = tuple(np.concatenate(c) for c in zip(*cuts)) if cuts else None
        model = routing_model(a, pairs[0], pairs[1], slack_cost, points, extra)
        left = deadline - time.monotonic() - reserve
        if left <= 0.05 and rounds:
            timed_out = True
            break
        result = run_highs(model, time_limit=max(0.05, left), integral=False)
        if not result.has_solution or not len(result.row_dual):
            timed_out = result.status == "kTimeLimit"
            break
        rounds += 1
        if not n_cuts:                  # the rounding starts from the last LP on the shared tangents alone
            x = result.x[: model.n_x]
            x_pairs = (model.pair_g, model.pair_j)
        pairs = (model.pair_g, model.pair_j)
        n_g = a.n_groups
        demand = model.rows["demand"]
        compute = model.rows["compute"]
        pi = result.row_dual[demand.start:demand.stop][:n_g]
        mu = np.minimum(result.row_dual[compute.start:compute.stop], 0.0)
        best_bound = max(best_bound, lagrangian_bound(a, pi, mu))
        unserved = float(result.x[model.n_x: model.n_x + model.n_slack].sum())
        # price the pairs left out at the LP's loads
        loads = np.zeros((a.n_models, a.n_nodes))
        np.add.at(loads, (a.group_model[model.pair_g], model.pair_j), result.x[: model.n_x])
        rho = np.minimum(a.exec_time * loads / a.window, a.max_util)
        marginal = a.exec_time * np.asarray(h_slope(rho))
        marginal = np.where(loads >= caps - 0.5, np.inf, marginal)
        reduced = a.cost - a.cpu[a.group_model][:, None] * mu[None, :] + marginal[a.group_model] - pi[:, None]
        reduced[model.pair_g, model.pair_j] = 0.0
        reduced[a.count == 0] = 0.0
        negative = reduced < -1e-9
        # the tangent at each instance's load where the cuts under-estimate its waiting there
        ukeys = np.unique(a.group_model[model.pair_g] * a.n_nodes + model.pair_j)
        im, ij = np.divmod(ukeys, a.n_nodes)
        n = loads[im, ij]
        t = result.x[model.n_x + model.n_slack:]
        exact = a.window * np.asarray(h(rho[im, ij]))
        kelley = rounds >= PLAIN_ROUNDS or not negative.any()
        under = (n > 1e-9) & (exact - t > KELLEY_TOL) & (a.exec_time[im, ij] > 0) & kelley
        if under.any():
            r = rho[im, ij][under]
            slope = a.exec_time[im, ij][under] * np.asarray(h_slope(r))
            cuts.append((ukeys[under], slope, exact[under] - slope * n[under]))
            n_cuts += int(under.sum())
        if not (negative.any() or under.any()) or time.monotonic() > deadline - reserve:
            break
        if negative.any():
            add_g, add_j = priced_columns(reduced, negative, ADD_PER_GROUP)
            pairs = (np.concatenate([model.pair_g, add_g]), np.concatenate([model.pair_j, add_j]))
    if x is None:
        return Solution(status=st.TIME_LIMIT, objective=None, bound=None, solver="lp-fix", seconds=0.0,
                        message=f"{st.TIME_LIMIT_NOTE}: the routing LP did not solve within the time limit")
    repair = Deadline(max(0.0, deadline - time.monotonic()))
    packer = round_relaxed(a, x_pairs[0], x_pairs[1], x, candidates=candidate_nodes(a, ROUND_CANDIDATES), deadline=repair)
    bound = float(best_bound) if np.isfinite(best_bound) else None
    if packer is None:
        status = st.TIME_LIMIT if repair.hit else st.ERROR
        why = ("rounding and repair placed only part of the requests before the limit" if repair.hit else
               "rounding could not place every request within capacity"
               + (" (the LP left requests unserved: the problem may be overloaded)" if unserved > 0.5 else ""))
        return Solution(status=status, objective=None, bound=bound, solver="lp-fix", seconds=0.0, message=why)
    objective = packer.objective()
    if bound is not None and objective < bound <= objective + 1e-12 * max(1.0, abs(objective)):
        bound = objective           # the same value in floating point: no negative gap
    gap = 100 * (objective - bound) / abs(bound) if bound else float("nan")
    return Solution(status=st.FEASIBLE, objective=objective, bound=bound, solver="lp-fix", seconds=0.0,
                    assignment=packer.assignment(), placement=packer.placement(),
                    message=(f"{st.TIME_LIMIT_NOTE}: " if timed_out or repair.hit else "")
                    + f"{gap:.2f}% above the Lagrangian lower bound; {rounds} LP round(s), {n_cuts} tangent(s) added at "
                      f"the LP's loads, {len(x_pairs[0])} "
                      f"candidate pairs of {int((a.count > 0).sum()) * a.n_nodes}")
