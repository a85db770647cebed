"""The two formulations as one sparse linear model, shared by every matrix backend (HiGHS, Ipopt).

Written the PuLP way: data first (`Arrays`), then variables, the objective, and named constraint
families whose names are those of the AMPL model files in templates/ampl/.

Identical requests are aggregated exactly: for a group of `count` requests, x[g,j] in
0..count is the number of them served on node j. For `thesis` this is chapter 3 with I[i,j]
summed over the group (any integral x with sum_j x[g,j] >= count splits back into binary I with
every request placed at least once); for `placement` it is the variant of issue 2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from solver.data import Arrays

LINK_GROUP = "group"   # x[g,j] <= count[g] * y[m,j] per pair: the strong linking
LINK_MODEL = "model"   # sum_g x[g,j] <= demand[m,j] * y[m,j] per instance: fewer rows, weaker LP


@dataclass
class LinearModel:
    """min c.x subject to row_lb <= A x <= row_ub, lb <= x <= ub, x integer where `integer`."""

    c: np.ndarray
    lb: np.ndarray
    ub: np.ndarray
    integer: np.ndarray
    A: sp.csr_matrix
    row_lb: np.ndarray
    row_ub: np.ndarray
    pair_g: np.ndarray          # group of each x column (x columns come first)
    pair_j: np.ndarray          # node of each x column
    y_m: np.ndarray             # model of each y column (after the x columns; placement only)
    y_j: np.ndarray             # node of each y column
    n_slack: int                # unserved[g] columns (0 unless slack_cost was given)
    rows: dict[str, slice]      # constraint family -> its rows
    n_wait: int = 0             # latency: wait[m,j] columns at the end, one per y column (same order)

    @property
    def n_x(self) -> int:
        """Return the number of x (dispatch) columns."""
        return len(self.pair_g)

    @property
    def n_cols(self) -> int:
        """Return the number of columns."""
        return len(self.c)

    def row_name(self, row: int, arrays: Arrays) -> str:
        """Return the AMPL-style name of a row, e.g. `memory['n3']`."""
        for family, rows in self.rows.items():
            if rows.start <= row < rows.stop:
                k = row - rows.start
                if family in ("memory", "compute"):
                    return f"{family}['{arrays.node_names[k]}']"
                if family in ("select", "demand"):
                    return f"{family}[{k}]"
                if family == "wait":
                    return f"wait[{k}]"
                if family == "link" and len(self.pair_g) == rows.stop - rows.start:
                    return f"link[{self.pair_g[k]},'{arrays.node_names[self.pair_j[k]]}']"
                return f"{family}['{arrays.model_names[self.y_m[k]]}','{arrays.node_names[self.y_j[k]]}']"
        raise IndexError(row)


def all_pairs(arrays: Arrays) -> tuple[np.ndarray, np.ndarray]:
    """Return every (group, node) pair of the groups that have requests."""
    groups = np.flatnonzero(arrays.count > 0)
    g = np.repeat(groups, arrays.n_nodes)
    j = np.tile(np.arange(arrays.n_nodes), len(groups))
    return g, j


def build_model(arrays: Arrays, *, pairs: tuple[np.ndarray, np.ndarray] | None = None,
                linking: str = LINK_GROUP, slack_cost: float | None = None,
                tangents: np.ndarray | None = None,
                extra_cuts: dict[tuple[int, int], list[tuple[float, float]]] | None = None,
                perspective: bool = False) -> LinearModel:
    """Build the MILP of the problem's formulation over the given candidate pairs (default: all).

    `latency` (placement's rows, plus): `ceiling[m,j]`: sum_g x[g,j] <= cap[m,j] * y[m,j] (the
    utilisation ceiling), and a column wait[m,j] >= 0 (cost 1) above the tangent cuts of the
    instance's waiting at the utilisations `tangents`, plus the cuts `extra_cuts[(m, j)]` given as
    (slope per request, intercept) pairs: the piecewise-linear outer approximation of
    solver/queueing.py; y costs the instance's cost. With `perspective`, each cut's intercept
    (<= 0) multiplies y[m,j] instead of standing alone: the same integer points (y = 1 where the
    instance serves, t >= 0 where it does not), a tighter LP relaxation.

    With `slack_cost`, every group also gets a continuous column `unserved[g]` of that unit cost in
    its demand row (after the x and y columns), so a model restricted to candidate pairs always
    has a solution; a positive value says the candidates were not enough.
    """
    g, j = all_pairs(arrays) if pairs is None else pairs
    g = np.asarray(g, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    n_groups, n_nodes = arrays.n_groups, arrays.n_nodes
    m = arrays.group_model[g]
    count = arrays.count.astype(float)
    n_x = len(g)

    # Variables: x[g,j] integer in 0..count[g]; y[m,j] binary (placement), fixed to 1 when deployed.
    if arrays.placement:
        keys = m * n_nodes + j
        ykeys = np.union1d(keys, np.flatnonzero(arrays.deployed.ravel()))
        y_m, y_j = np.divmod(ykeys, n_nodes)
        x_to_y = np.searchsorted(ykeys, keys)
        y_deployed = arrays.deployed[y_m, y_j]
    else:
        y_m = y_j = x_to_y = np.zeros(0, dtype=np.int64)
        y_deployed = np.zeros(0, dtype=bool)
    n_y = len(y_m)
    n_s = n_groups if slack_cost is not None else 0
    n_t = n_y if arrays.latency else 0
    y_cost = arrays.cost_inst[y_j] if arrays.latency else np.zeros(n_y)
    c = np.concatenate([arrays.cost[g, j], y_cost, np.full(n_s, slack_cost or 0.0), np.ones(n_t)])
    lb = np.concatenate([np.zeros(n_x), y_deployed.astype(float), np.zeros(n_s), np.zeros(n_t)])
    ub = np.concatenate([count[g], np.ones(n_y), count[:n_s], np.full(n_t, np.inf)])
    integer = np.concatenate([np.ones(n_x + n_y, dtype=bool), np.zeros(n_s + n_t, dtype=bool)])
    x_cols = np.arange(n_x)
    y_cols = n_x + np.arange(n_y)
    s_cols = n_x + n_y + np.arange(n_s)
    t_cols = n_x + n_y + n_s + np.arange(n_t)
    s_rows = np.arange(n_s)

    rows_i: list[np.ndarray] = []
    cols_i: list[np.ndarray] = []
    vals_i: list[np.ndarray] = []
    row_lb: list[np.ndarray] = []
    row_ub: list[np.ndarray] = []
    families: dict[str, slice] = {}
    next_row = 0

    def family(name: str, size: int, r: np.ndarray, cols: np.ndarray, vals: np.ndarray,
               lo: np.ndarray, hi: np.ndarray) -> None:
        nonlocal next_row
        keep = vals != 0
        rows_i.append(r[keep] + next_row)
        cols_i.append(cols[keep])
        vals_i.append(vals[keep])
        row_lb.append(lo)
        row_ub.append(hi)
        families[name] = slice(next_row, next_row + size)
        next_row += size

    inf = np.full(n_groups, np.inf)
    if arrays.placement:
        # demand[g]: sum_j x[g,j] (+ unserved[g]) = count[g]
        family("demand", n_groups, np.concatenate([g, s_rows]), np.concatenate([x_cols, s_cols]),
               np.ones(n_x + n_s), count, count)
        if linking == LINK_GROUP:
            # link[g,j]: x[g,j] - count[g] * y[m,j] <= 0
            r = np.arange(n_x)
            family("link", n_x, np.concatenate([r, r]), np.concatenate([x_cols, y_cols[x_to_y]]),
                   np.concatenate([np.ones(n_x), -count[g]]), np.full(n_x, -np.inf), np.zeros(n_x))
        else:
            # link[m,j]: sum_{g of m} x[g,j] - demand[m,j] * y[m,j] <= 0
            demand = np.bincount(x_to_y, weights=count[g], minlength=n_y)
            family("link", n_y, np.concatenate([x_to_y, np.arange(n_y)]), np.concatenate([x_cols, y_cols]),
                   np.concatenate([np.ones(n_x), -demand]), np.full(n_y, -np.inf), np.zeros(n_y))
        # memory[j]: sum_m mem[m] * y[m,j] <= mem_cap[j]   (deployed instances charge nothing)
        family("memory", n_nodes, y_j, y_cols, np.where(y_deployed, 0.0, arrays.mem[y_m]),
               np.full(n_nodes, -np.inf), arrays.mem_cap.astype(float))
    else:
        # select[g]: sum_j x[g,j] (+ unserved[g]) >= count[g]   (every request placed at least once)
        family("select", n_groups, np.concatenate([g, s_rows]), np.concatenate([x_cols, s_cols]),
               np.ones(n_x + n_s), count, inf)
        # memory[j]: sum_g mem[m] * x[g,j] <= mem_cap[j]   (memory summed per request, chapter 3)
        family("memory", n_nodes, j, x_cols, arrays.mem[m], np.full(n_nodes, -np.inf),
               arrays.mem_cap.astype(float))
    # compute[j]: sum_g cpu[m] * x[g,j] <= cpu_cap[j]
    family("compute", n_nodes, j, x_cols, arrays.cpu[m], np.full(n_nodes, -np.inf), arrays.cpu_cap.astype(float))
    if arrays.latency:
        from solver.queueing import BIG, cut_rows, unit_caps

        caps = unit_caps(arrays)[y_m, y_j]
        # ceiling[m,j]: sum_{g of m} x[g,j] - cap[m,j] * y[m,j] <= 0   (rows of uncapped instances are empty)
        finite = caps < BIG
        family("ceiling", n_y, np.concatenate([x_to_y, np.arange(n_y)]), np.concatenate([x_cols, y_cols]),
               np.concatenate([np.where(finite[x_to_y], 1.0, 0.0), -np.where(finite, caps, 0.0)]),
               np.full(n_y, -np.inf), np.zeros(n_y))
        # wait[m,j,k]: slope_k * sum_{g of m} x[g,j] - wait[m,j] <= -intercept_k   (t >= each cut), or with
        # `perspective`: slope_k * sum_g x[g,j] + intercept_k * y[m,j] - wait[m,j] <= 0
        points = np.zeros(1) if tangents is None else np.asarray(tangents, dtype=float)
        slope, intercept = cut_rows(arrays, y_m, y_j, points)          # (n_y, K)
        cut_y = [np.repeat(np.arange(n_y), len(points))]
        cut_a, cut_b = [slope.ravel()], [intercept.ravel()]
        if extra_cuts:
            position = {(int(mm), int(jj)): yk for yk, (mm, jj) in enumerate(zip(y_m.tolist(), y_j.tolist()))}
            for key, cuts in extra_cuts.items():
                yk = position.get(key)
                if yk is not None and len(cuts):
                    ab = np.asarray(cuts, dtype=float).reshape(-1, 2)
                    cut_y.append(np.full(len(ab), yk))
                    cut_a.append(ab[:, 0])
                    cut_b.append(ab[:, 1])
        cut_y, cut_a, cut_b = np.concatenate(cut_y), np.concatenate(cut_a), np.concatenate(cut_b)
        n_rows = len(cut_y)
        members = np.argsort(x_to_y, kind="stable")                     # x columns grouped by instance
        bounds = np.searchsorted(x_to_y[members], np.arange(n_y + 1))
        per_cut = bounds[cut_y + 1] - bounds[cut_y]
        starts = np.repeat(bounds[cut_y] - np.cumsum(per_cut) + per_cut, per_cut)
        x_of_cut = members[np.arange(per_cut.sum()) + starts]
        rows_w = [np.repeat(np.arange(n_rows), per_cut), np.arange(n_rows)]
        cols_w = [x_cols[x_of_cut], t_cols[cut_y]]
        vals_w = [np.repeat(cut_a, per_cut), np.full(n_rows, -1.0)]
        if perspective:          # valid: every cut's intercept is <= 0 (h convex, h(0) = 0) and y = 0 means no load
            on_y = np.minimum(cut_b, 0.0)
            rows_w.append(np.arange(n_rows))
            cols_w.append(y_cols[cut_y])
            vals_w.append(on_y)
            hi_w = -(cut_b - on_y)
        else:
            hi_w = -cut_b
        family("wait", n_rows, np.concatenate(rows_w), np.concatenate(cols_w), np.concatenate(vals_w),
               np.full(n_rows, -np.inf), hi_w)

    A = sp.csr_matrix((np.concatenate(vals_i), (np.concatenate(rows_i), np.concatenate(cols_i))),
                      shape=(next_row, n_x + n_y + n_s + n_t))
    return LinearModel(c=c, lb=lb, ub=ub, integer=integer, A=A, row_lb=np.concatenate(row_lb),
                       row_ub=np.concatenate(row_ub), pair_g=g, pair_j=j, y_m=y_m, y_j=y_j, n_slack=n_s,
                       rows=families, n_wait=n_t)
