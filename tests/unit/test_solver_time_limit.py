"""`--time-limit` is honoured by every backend (issue 11, point 7.1).

Each backend gets a problem it cannot finish within the limit, and must stop within the limit plus
a generous margin (a loaded 2-core machine must not make this flaky), answering either `time_limit`
(no assignment yet) or `feasible` with a message starting `time limit reached` (the best
assignment found, checked like any other).

Without a limit, on BIG (100 nodes x 3,000 request groups): ipopt, highs and glpk each ran more
than 400 s (measured; ipopt alone spends ~12 s in CasADi's set-up and ~6 s in Ipopt's first
factorisation before its own max_wall_time is ever checked), so a 2 s limit is far below. The
heuristics are fast, so they get a larger problem and a 0.2 s limit, and the test measures
that their unlimited run takes more than three times that.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from solver import solve
from solver.api import get_backend
from solver.check import check_assignment
from solver.instances import zoned_problem

REPO = Path(__file__).resolve().parents[2]
MARGIN = 10.0          # seconds past the limit still accepted


@pytest.fixture(scope="module")
def big():
    return zoned_problem(0, n_nodes=100, n_models=30, n_zones=100, n_requests=15_000)


@pytest.fixture(scope="module")
def huge():
    return zoned_problem(0, n_nodes=1000, n_models=50, n_zones=100, n_requests=100_000)


def assert_stopped_by_limit(problem, solution, limit: float, elapsed: float) -> None:
    assert elapsed < limit + MARGIN, f"{solution.solver} took {elapsed:.1f} s with a {limit} s limit"
    if solution.status == "time_limit":
        assert not solution.assignment and solution.objective is None
        assert solution.message.startswith(f"time limit reached ({limit:g} s)"), solution.message
    else:
        assert solution.status == "feasible", solution.message
        assert solution.message.startswith(f"time limit reached ({limit:g} s)"), solution.message
        assert check_assignment(problem, solution.assignment).ok


@pytest.mark.parametrize("solver", ["ipopt", "highs", "glpk", "ampl"])
def test_exact_and_relaxation_backends_stop_at_the_limit(big, solver):
    if not get_backend(solver).available():
        pytest.skip(f"{solver} is not installed here")
    limit = 2.0
    started = time.monotonic()
    solution = solve(big, solver=solver, time_limit=limit)
    assert_stopped_by_limit(big, solution, limit, time.monotonic() - started)


@pytest.fixture(scope="module")
def many():
    return zoned_problem(0, n_nodes=20, n_models=50, n_zones=2000, n_requests=200_000)   # 100,000 groups


@pytest.mark.parametrize("solver, instance, limit", [
    ("greedy", "huge", 0.2), ("least-loaded", "huge", 0.2), ("lp-fix", "huge", 0.2),
    ("nearest", "many", 0.1), ("search", "many", 0.1),
])
def test_heuristics_stop_at_the_limit(request, solver, instance, limit):
    problem = request.getfixturevalue(instance)
    started = time.monotonic()
    solve(problem, solver=solver)
    unlimited = time.monotonic() - started
    assert unlimited > 3 * limit, f"{solver} is too fast on this problem to test its limit ({unlimited:.2f} s)"
    started = time.monotonic()
    solution = solve(problem, solver=solver, time_limit=limit)
    assert_stopped_by_limit(problem, solution, limit, time.monotonic() - started)


def test_a_limit_that_is_not_reached_changes_nothing():
    problem = zoned_problem(1, n_nodes=8, n_models=2, n_zones=3, n_requests=60)
    for solver in ("ipopt", "highs", "greedy"):
        solution = solve(problem, solver=solver, time_limit=60)
        assert solution.ok and "time limit" not in solution.message, solution.message


def test_cli_default_backend_honours_the_limit(big, tmp_path):
    """The operator's case: `python -m solver solve` with the default ipopt and --time-limit."""
    path = tmp_path / "big.json"
    path.write_text(json.dumps(big.to_dict()))
    limit = 2.0
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "solver", "solve", str(path), "--time-limit", str(limit)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - started
    assert "Traceback" not in done.stderr
    solution = json.loads(done.stdout)
    assert solution["solver"] == "ipopt" and solution["message"].startswith("time limit reached (2 s)")
    assert done.returncode == (0 if solution["status"] == "feasible" else 1)
    assert solution["status"] in ("feasible", "time_limit")
    assert elapsed < limit + MARGIN + 5          # + interpreter start and reading a 6 MB file
