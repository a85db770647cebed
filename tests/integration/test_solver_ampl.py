"""The `ampl` backend against a real AMPL installation (runs wherever AMPL with Ipopt is installed)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from solver import Problem, solve
from solver.backends.ampl import ampl_available
from solver.check import check_assignment

pytestmark = [pytest.mark.ampl,
              pytest.mark.skipif(not ampl_available(), reason="AMPL is not installed (needs AMPL + Ipopt)")]

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "ampl" / "problem.json"


@pytest.mark.parametrize("formulation", ["thesis", "placement"])
def test_ampl_relaxation_is_bounded_by_the_optimum(formulation, tmp_path):
    problem = dataclasses.replace(Problem.from_dict(json.loads(GOLDEN.read_text())), formulation=formulation)
    optimum = solve(problem, solver="highs").objective
    solution = solve(problem, solver="ampl", keep_files=str(tmp_path))
    assert solution.status == "feasible", solution.message
    assert solution.bound <= optimum + 1e-6 <= solution.objective + 2e-6
    assert check_assignment(problem, solution.assignment).ok
    assert (tmp_path / f"{formulation}.run").exists()
