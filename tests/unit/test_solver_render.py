"""The AMPL files (thesis 5.3.1): deterministic rendering pinned by golden files, strict templates.

Regenerate the golden files after a deliberate template change with
`SOLVER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_solver_render.py`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jinja2
import pytest

from solver import Problem
from solver.render import TEMPLATE_DIR, file_names, number, quote, render, write_files

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "ampl"


def golden_problem(formulation: str) -> Problem:
    problem = Problem.from_dict(json.loads((GOLDEN / "problem.json").read_text()))
    if formulation == "latency":          # with a window and a cloud site that has costs
        nodes = list(problem.nodes)
        nodes[-1] = dataclasses.replace(nodes[-1], tier="cloud", cost_per_request=0.02, cost_per_instance_hour=1.5)
        return dataclasses.replace(problem, formulation=formulation, nodes=nodes, window=2.0)
    return dataclasses.replace(problem, formulation=formulation)


@pytest.mark.parametrize("formulation", ["thesis", "placement", "latency"])
def test_rendering_matches_the_golden_files(formulation):
    texts = render(golden_problem(formulation))
    assert sorted(texts) == sorted(file_names(formulation).values())
    for name, text in texts.items():
        path = GOLDEN / name
        if os.environ.get("SOLVER_UPDATE_GOLDEN"):
            path.write_text(text)
        assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize("formulation", ["thesis", "placement", "latency"])
def test_rendering_is_deterministic(formulation, tmp_path):
    first = render(golden_problem(formulation))
    again = render(Problem.from_dict(golden_problem(formulation).to_dict()))
    assert first == again
    paths = write_files(golden_problem(formulation), tmp_path)
    assert {kind: p.read_text() for kind, p in paths.items()} == {
        kind: first[name] for kind, name in file_names(formulation).items()}


def test_thesis_data_writes_out_every_request():
    data = render(golden_problem("thesis"))["thesis.dat"]
    assert "param N := 6;" in data
    assert data.count("'resnet'  # request 2") == 3


def test_run_file_carries_the_time_limit_only_when_given():
    assert "max_wall_time" not in render(golden_problem("thesis"))["thesis.run"]
    assert "max_wall_time=2.5" in render(golden_problem("thesis"), time_limit=2.5)["thesis.run"]


def test_templates_are_strict():
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined)
    for name in ("thesis.dat.j2", "placement.dat.j2", "latency.dat.j2", "thesis.mod.j2", "thesis.run.j2"):
        with pytest.raises(jinja2.UndefinedError):
            env.get_template(name).render({})


def test_literals():
    assert quote("edge-1") == "'edge-1'" and quote("it's") == "'it''s'"
    assert [number(4.0), number(0.1), number(1e-05), number(250000)] == ["4", "0.1", "1e-05", "250000"]
    assert float(number(0.1 + 0.2)) == 0.1 + 0.2
