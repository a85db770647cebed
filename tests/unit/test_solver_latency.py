"""The load-aware `latency` formulation: M/M/1 waiting per instance, a utilisation ceiling, costs.

- every backend against brute force on tiny instances, the objective recomputed exactly by the checker;
- the piecewise-linear (tangent) MILP's value is below the true optimum and within its stated error;
- rates at or above capacity: status `infeasible` with an `overload:` message (CLI: exit 1, one line);
- `highs` reports `repaired`, never `optimal`, when its repair step changed the MILP's answer.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from solver import Assignment, NodeCap, Problem, ProblemError, solve
from solver.api import get_backend
from solver.backends.highs import packer_from_columns, run_highs
from solver.check import check_assignment
from solver.data import to_arrays
from solver.formulation import build_model
from solver.instances import random_problem
from solver.queueing import h, tangent_points

TOL = 1e-6


def tiny_latency(seed: int, *, window: float = 4.0, cloud: bool = False) -> Problem:
    """A tiny `latency` instance (<= 3 groups of <= 3 requests on 3 nodes); optionally the last node is a
    cloud site: far, fast, roomy, with costs."""
    base = random_problem(seed, formulation="placement", n_groups=3, n_nodes=3, max_count=3, tightness=0.9)
    nodes = list(base.nodes)
    if cloud:
        last = nodes[-1]
        nodes[-1] = NodeCap(last.name, memory=10**7, cpu=100.0, tier="cloud", cost_per_request=0.05,
                            cost_per_instance_hour=180.0)
    return dataclasses.replace(base, formulation="latency", nodes=nodes, window=window, max_utilisation=0.85)


def brute_force(problem: Problem) -> float | None:
    """The optimum over every split of every group's requests over the nodes, valued by the checker."""
    names = [n.name for n in problem.nodes]
    per_group = []
    for k, group in enumerate(problem.requests):
        splits = [c for c in itertools.product(range(group.count + 1), repeat=len(names)) if sum(c) == group.count]
        per_group.append([(k, split) for split in splits])
    best = None
    for combo in itertools.product(*per_group):
        assignment = [Assignment(k, names[j], c) for k, split in combo for j, c in enumerate(split) if c]
        result = check_assignment(problem, assignment)
        if result.ok and (best is None or result.objective < best):
            best = result.objective
    return best


CASES = [(seed, cloud) for seed in range(8) for cloud in (False, True)]


@pytest.fixture(scope="module")
def tiny() -> dict:
    return {case: (p := tiny_latency(case[0], cloud=case[1]), brute_force(p)) for case in CASES}


def test_the_tiny_cases_have_waiting_that_matters(tiny):
    """Not a fixed-time problem in disguise: the optimum differs from the fixed-time one somewhere."""
    differs = 0
    for problem, optimum in tiny.values():
        assert optimum is not None
        fixed = dataclasses.replace(problem, formulation="placement", window=None)
        plan = solve(fixed, solver="highs")
        if abs(check_assignment(problem, plan.assignment).objective - optimum) > TOL:
            differs += 1
    assert differs >= 4


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["highs", "ipopt", "lp-fix", "greedy", "nearest"])
def test_backend_against_brute_force(tiny, backend, case):
    if not get_backend(backend).available():
        pytest.skip(f"{backend} is not installed here")
    problem, optimum = tiny[case]
    solution = solve(problem, solver=backend)
    assert solution.ok, solution.message
    verdict = check_assignment(problem, solution.assignment)
    assert verdict.ok, verdict.violations
    assert solution.objective == pytest.approx(verdict.objective, abs=1e-12)
    assert solution.objective >= optimum - TOL
    if backend == "highs":
        assert solution.status == "optimal"
        assert solution.objective == pytest.approx(optimum, abs=TOL)
    if solution.bound is not None:
        assert solution.bound <= optimum + TOL


@pytest.mark.parametrize("case", CASES[::2])
@pytest.mark.parametrize("perspective", [False, True])
def test_highs_tangent_route_against_brute_force(tiny, case, perspective, monkeypatch):
    """The tiny instances' loads are small enough for exact chords from the start; forced onto
    tangents (with or without the perspective form), `highs` must refine them by chords to the optimum."""
    import solver.backends.highs_latency as highs_latency

    monkeypatch.setattr(highs_latency, "CHORD_ROWS", 0)
    monkeypatch.setattr(highs_latency, "PERSPECTIVE", perspective)
    problem, optimum = tiny[case]
    solution = solve(problem, solver="highs")
    assert solution.status == "optimal", solution.message
    assert "0 of " in solution.message and "round(s)" in solution.message
    assert solution.objective == pytest.approx(check_assignment(problem, solution.assignment).objective, abs=1e-12)
    assert solution.objective == pytest.approx(optimum, abs=TOL)
    assert solution.bound <= optimum + TOL


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("perspective", [False, True])
def test_exact_chords_make_the_milp_the_true_optimum(tiny, seed, perspective):
    """With every instance's chords between consecutive integer loads, the MILP's value is the true
    optimum in one solve (its bound too: the perspective form only tightens the relaxation)."""
    from solver.backends.highs_latency import initial_cuts

    problem, optimum = tiny[(seed, True)]
    arrays = to_arrays(problem)
    cuts, exact = initial_cuts(arrays, np.zeros(1))
    assert exact == len(cuts) > 0
    model = build_model(arrays, extra_cuts=cuts, perspective=perspective)
    result = run_highs(model, mip_gap=1e-9)
    assert result.status == "kOptimal"
    assert result.objective == pytest.approx(optimum, abs=TOL)
    assert result.bound <= optimum + TOL


@pytest.mark.parametrize("seed", range(8))
def test_lp_fix_lagrangian_bound_is_valid_for_any_prices(tiny, seed):
    """Any demand prices and compute prices <= 0 give a bound below the optimum (integer loads and
    instance costs included: the cloud node's cost must not be charged where nothing is served)."""
    from solver.backends.large_latency import lagrangian_bound

    problem, optimum = tiny[(seed, True)]
    arrays = to_arrays(problem)
    rng = np.random.default_rng(seed)
    scale = float(arrays.cost.max())
    bounds = [lagrangian_bound(arrays, rng.uniform(0, 1.5 * scale, arrays.n_groups),
                               -rng.exponential(scale, arrays.n_nodes) * rng.integers(0, 2, arrays.n_nodes))
              for _ in range(300)]
    assert max(bounds) <= optimum + TOL            # charging every instance's cost breaks this in 4 of the 8 seeds
    assert max(bounds) >= 0.75 * optimum           # and not trivially low: some prices come close


def test_checker_recomputes_the_mm1_objective_exactly():
    problem = Problem.from_dict({
        "formulation": "latency", "window": 10, "max_utilisation": 0.9,
        "nodes": [{"name": "a", "memory": 100, "cpu": 4, "cost_per_request": 0.25, "cost_per_instance_hour": 36}],
        "models": [{"name": "m", "memory": 10, "cpu": 0.1}],
        "requests": [{"model": "m", "count": 40, "rtt": {"a": 0.5}}],
        "exec_time": {"m": {"a": 0.125}}})
    result = check_assignment(problem, [Assignment(0, "a", 40)])
    rho = Fraction(1, 8) * 40 / 10                           # 0.5
    expected = 40 * (Fraction(1, 2) + Fraction(1, 8) + Fraction(1, 4)) + 10 * rho * rho / (1 - rho) + Fraction(36 * 10, 3600)
    assert result.ok and result.objective == float(expected)
    # each request's latency is rtt + cost + s / (1 - rho): the M/M/1 sojourn time
    assert result.objective == pytest.approx(40 * (0.5 + 0.25 + 0.125 / (1 - 0.5)) + 0.1)
    assert not check_assignment(problem, []).ok                      # nothing dispatched
    busy = dataclasses.replace(problem, requests=[dataclasses.replace(problem.requests[0], count=75)])
    verdict = check_assignment(busy, [Assignment(0, "a", 75)])
    assert not verdict.ok and any(v.startswith("utilisation['m','a']: 0.9375 > max_utilisation 0.9")
                                  for v in verdict.violations)


@pytest.mark.parametrize("seed", range(6))
def test_tangent_milp_is_a_lower_bound_within_its_stated_error(tiny, seed):
    problem, optimum = tiny[(seed, False)]
    arrays = to_arrays(problem)
    points, h_error = tangent_points(arrays.max_util, 0.05)
    model = build_model(arrays, tangents=points)
    result = run_highs(model, mip_gap=1e-9)
    assert result.status == "kOptimal"
    packer, _ = packer_from_columns(arrays, model, result.x)
    exact = check_assignment(problem, packer.assignment()).objective
    instances = int((packer.units > 0).sum())
    assert result.objective <= optimum + TOL                       # an outer approximation: below the optimum
    assert optimum <= exact + TOL
    assert exact - result.objective <= instances * arrays.window * h_error + TOL   # and within its stated error


def test_tangent_points_error_is_what_they_claim():
    points, error = tangent_points(0.85, 0.01)
    assert points[0] == 0 and points[-1] == pytest.approx(0.85) and error <= 0.01 + 1e-12
    grid = np.linspace(0, 0.85, 20001)
    under = np.asarray(h(grid)) - np.max([h(p) + (p * (2 - p) / (1 - p) ** 2) * (grid - p) for p in points], axis=0)
    assert under.min() >= -1e-12 and under.max() <= error + 1e-9


def overloaded() -> Problem:
    return Problem.from_dict({
        "formulation": "latency", "window": 10,
        "nodes": [{"name": "a", "memory": 100, "cpu": 8}, {"name": "b", "memory": 100, "cpu": 8}],
        "models": [{"name": "m", "memory": 10, "cpu": 0.01}],
        "requests": [{"model": "m", "count": 400, "rtt": {"a": 0.01, "b": 0.02}}],
        "exec_time": {"m": {"a": 0.05, "b": 0.05}}})          # 40 req/s; at most 2 x 0.85 / 0.05 = 34/s


@pytest.mark.parametrize("backend", ["highs", "ipopt", "lp-fix", "greedy"])
def test_overload_is_a_clear_answer(backend):
    solution = solve(overloaded(), solver=backend)
    assert not solution.ok and solution.status in ("infeasible", "error")
    if backend in ("highs", "ipopt"):
        assert solution.status == "infeasible"
        assert solution.message.startswith("overload: model m receives 40 requests/s")
        assert "at most 34/s" in solution.message


def test_overload_on_the_command_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(overloaded().to_dict()))
    done = subprocess.run([sys.executable, "-m", "solver", "solve", str(path), "--solver", "highs"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert json.loads(done.stdout)["status"] == "infeasible"
    assert done.stderr.strip().startswith("infeasible: overload: model m") and "Traceback" not in done.stderr


def test_cloud_takes_the_traffic_the_edge_cannot():
    """One edge node close by, a cloud far away: below the edge's ceiling nothing goes to the cloud;
    above it, exactly the excess does."""
    def problem(count: int) -> Problem:
        return Problem.from_dict({
            "formulation": "latency", "window": 10,
            "nodes": [{"name": "edge", "memory": 100, "cpu": 8},
                      {"name": "cloud", "memory": 10**6, "cpu": 1000, "tier": "cloud", "cost_per_request": 0.01}],
            "models": [{"name": "m", "memory": 10, "cpu": 0.01}],
            "requests": [{"model": "m", "count": count, "rtt": {"edge": 0.005, "cloud": 0.3}}],
            "exec_time": {"m": {"edge": 0.05, "cloud": 0.05}}})
    light = solve(problem(50), solver="highs")                       # 5 req/s, rho 0.25
    assert light.status == "optimal" and {a.node for a in light.assignment} == {"edge"}
    heavy = solve(problem(300), solver="highs")                      # 30 req/s > 17/s at the ceiling
    assert heavy.status == "optimal"
    on = {a.node: a.count for a in heavy.assignment}
    assert on["edge"] <= 170 and on["cloud"] == 300 - on["edge"] and on["cloud"] >= 130


def test_problem_fields_are_validated():
    good = overloaded().to_dict()
    assert Problem.from_dict(good).to_dict() == good
    for change, message in [
        ({"window": None}, "window: missing"),
        ({"max_utilisation": 1.0}, "max_utilisation: must be a number strictly between 0 and 1"),
        ({"window": -1}, "window: must be positive, got -1"),
        ({"window": 0}, "window: must be positive"),
    ]:
        bad = {k: v for k, v in {**good, **change}.items() if v is not None}
        with pytest.raises(ProblemError, match=message):
            Problem.from_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["nodes"][0]["tier"] = "fog"
    with pytest.raises(ProblemError, match=r"nodes\[0\].tier: must be one of edge, cloud"):
        Problem.from_dict(bad)
    bad["nodes"][0] = {"name": "a", "memory": 1, "cpu": 1, "cost_per_request": float("nan")}
    with pytest.raises(ProblemError, match=r"nodes\[0\].cost_per_request: must be a finite number"):
        Problem.from_dict(bad)


def test_highs_reports_repaired_when_the_repair_changed_its_answer():
    """The MILP's own columns need no repair; columns over a capacity (as an integrality tolerance can
    leave them) do, and then the answer is not the MILP's proven optimum any more."""
    problem = dataclasses.replace(random_problem(3, formulation="placement", n_groups=3, n_nodes=3, max_count=2))
    arrays = to_arrays(problem)
    model = build_model(arrays)
    result = run_highs(model, mip_gap=1e-9)
    _, changed = packer_from_columns(arrays, model, result.x)
    assert not changed
    bent = result.x.copy()
    k = int(np.flatnonzero(bent[: model.n_x] > 0.5)[0])
    bent[k] += 50                                       # more requests than the group has, over capacity
    packer, changed = packer_from_columns(arrays, model, bent)
    assert changed and packer.complete and packer.feasible()
    assert solve(problem, solver="highs").status == "optimal"
