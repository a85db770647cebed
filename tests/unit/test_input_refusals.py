"""The acceptance rule for the inputs that keep their own checks (solver problem JSON): a NaN, an
infinity, a wrong type or an unknown key is refused at load with its field named, all at once.
(The catalog, cluster description, front-end settings, plan bodies and scenarios have their own
tests next to them; they share common/validation.py.)"""
from __future__ import annotations

import copy
import json
import math

import pytest

from solver import Problem, ProblemError
from solver.problem import parse_json
from test_solver_problem import GOOD      # the same valid problem as the format's own tests



def _error(change) -> str:
    data = copy.deepcopy(GOOD)
    change(data)
    with pytest.raises(ProblemError) as caught:
        Problem.from_dict(json.loads(json.dumps(data)))           # as read from a file
    return str(caught.value)


@pytest.mark.parametrize("change, expect", [
    (lambda d: d["nodes"][0].update(cpu=math.nan), "nodes[0].cpu: must be finite"),
    (lambda d: d["exec_time"]["m1"].update(n2=math.inf), "exec_time.m1.n2: must be finite"),
    (lambda d: d["models"][0].update(cpu=-math.inf), "models[0].cpu: must be finite"),
    (lambda d: d["nodes"][1].update(memory="100000"), "nodes[1].memory: must be a non-negative integer"),
    (lambda d: d["requests"][0].update(count=2.0), "requests[0].count: must be an integer"),
    (lambda d: d["nodes"][0].update(gpu=1), "nodes[0].gpu: unknown field"),
])
def test_problem_json_refuses_naming_the_field(change, expect):
    assert expect in _error(change)


def test_a_nan_literal_in_the_file_is_refused():
    text = json.dumps(GOOD).replace('"cpu": 4.0', '"cpu": NaN')
    with pytest.raises(ProblemError, match=r"nodes\[0\]\.cpu: must be finite"):
        Problem.from_dict(parse_json(text, "p.json"))
