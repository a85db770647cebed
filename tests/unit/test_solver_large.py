"""lp-fix: its Lagrangian bound is a true lower bound (checked against the exact optimum) and its
assignment is feasible, on zoned instances small enough for the exact MILP."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from solver import solve
from solver.backends.large import initial_pairs, lagrangian_bound
from solver.check import check_assignment
from solver.data import to_arrays
from solver.instances import zoned_problem


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("formulation", ["placement", "thesis"])
def test_bound_below_optimum_below_assignment(seed, formulation):
    problem = zoned_problem(seed, n_nodes=12, n_models=3, n_zones=4, n_requests=200, load=0.7)
    if formulation == "thesis":   # memory charged per request: scale capacities so it binds
        problem = dataclasses.replace(problem, formulation="thesis",
                                      models=[dataclasses.replace(m, memory=m.memory // 40) for m in problem.models])
    # HiGHS brackets the optimum: exact.bound <= OPT <= exact.objective (it may not close the gap quickly)
    exact = solve(problem, solver="highs", time_limit=3)
    assert exact.ok and exact.bound is not None
    solution = solve(problem, solver="lp-fix")
    assert solution.status == "feasible", solution.message
    assert check_assignment(problem, solution.assignment).ok
    assert solution.bound <= exact.objective + 1e-6          # a true lower bound
    assert exact.bound <= solution.objective + 1e-6
    assert "above the lower bound" in solution.message


def test_lagrangian_bound_with_zero_prices_is_the_capacity_free_optimum():
    arrays = to_arrays(zoned_problem(3, n_nodes=20, n_models=3, n_zones=5, n_requests=300))
    bound, priced = lagrangian_bound(arrays, np.zeros(arrays.n_nodes), np.zeros(arrays.n_nodes))
    assert bound == pytest.approx(float(np.dot(arrays.count, arrays.cost.min(axis=1))))
    assert np.array_equal(priced, arrays.cost)


def test_initial_pairs_cover_cheapest_and_nearest():
    arrays = to_arrays(zoned_problem(4, n_nodes=40, n_models=2, n_zones=4, n_requests=100))
    g, j = initial_pairs(arrays, 3, 5)
    pairs = set(zip(g.tolist(), j.tolist()))
    for group in range(arrays.n_groups):
        assert (group, int(np.argmin(arrays.cost[group]))) in pairs
        assert (group, int(np.argmin(arrays.rtt[group]))) in pairs
    assert len(pairs) <= arrays.n_groups * 8
