"""The acceptance rule for the solver's problem JSON: a NaN, an infinity, a wrong type or an unknown
key is refused at load with its field named, all at once. (The catalog, cluster description,
front-end settings, plan bodies and scenarios have their own tests next to them; all of them, and
the problem file, share common/validation.py.)"""
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
    (lambda d: d["nodes"][0].update(cpu=math.nan), "nodes[0].cpu: must be a finite number, got nan"),
    (lambda d: d["exec_time"]["m1"].update(n2=math.inf), "exec_time.m1.n2: must be a finite number, got inf"),
    (lambda d: d["models"][0].update(cpu=-math.inf), "models[0].cpu: must be a finite number, got -inf"),
    (lambda d: d["nodes"][1].update(memory="100000"), "nodes[1].memory: must be a non-negative integer"),
    (lambda d: d["requests"][0].update(count=2.5), "requests[0].count: must be an integer, got 2.5"),
    (lambda d: d["nodes"][0].update(tier="fog"), "nodes[0].tier: must be one of edge, cloud, got 'fog'"),
    (lambda d: d["deployed"].append({"model": 3, "node": "n1"}), "deployed[1].model: must be a non-empty string"),
    (lambda d: d["nodes"][0].update(gpu=1), "nodes[0].gpu: unknown field"),
])
def test_problem_json_refuses_naming_the_field(change, expect):
    assert expect in _error(change)


def test_a_nan_literal_in_the_file_is_refused():
    text = json.dumps(GOOD).replace('"cpu": 4.0', '"cpu": NaN')
    with pytest.raises(ProblemError, match=r"nodes\[0\]\.cpu: must be a finite number"):
        Problem.from_dict(parse_json(text, "p.json"))


def test_an_integral_number_is_an_integer_as_everywhere_else():
    """The shared rule (common.validation.check_number): 2.0 is the integer 2; 2.5 is refused above."""
    data = copy.deepcopy(GOOD)
    data["requests"][0]["count"] = 2.0
    count = Problem.from_dict(json.loads(json.dumps(data))).requests[0].count
    assert count == 2 and type(count) is int


def test_shape_errors_come_at_once_then_references():
    """Every shape and value fault of the file is named in one message; the references between its
    parts (a request's model, a row's nodes) are checked once the file has the right shape."""
    data = copy.deepcopy(GOOD)
    data["nodes"][0].update(memory=-1, cpu=math.nan)
    data["requests"][0].update(count="2", extra=1)
    data["requests"][0]["model"] = "zz"
    message = _error(lambda d: d.update(data))
    for fault in ("nodes[0].memory", "nodes[0].cpu", "requests[0].count", "requests[0].extra: unknown field"):
        assert fault in message
    assert "requests[0].model" not in message
    data = copy.deepcopy(GOOD)
    data["requests"][0].update(model="zz", rtt={"n1": 0.1, "n9": 0.2})
    message = _error(lambda d: d.update(data))
    for fault in ("requests[0].model: unknown model 'zz'", "requests[0].rtt.n9: unknown node 'n9'",
                  "requests[0].rtt: missing node(s) 'n2'"):
        assert fault in message


@pytest.mark.parametrize("change, expect", [
    (lambda d: d.update(status="great"), "status: must be one of optimal"),
    (lambda d: d.update(objective=math.nan), "objective: must be a finite number, got nan"),
    (lambda d: d["assignment"][0].update(count=-1), "assignment[0].count: must be a non-negative number, got -1"),
    (lambda d: d["assignment"][0].update(node=7), "assignment[0].node: must be a non-empty string"),
    (lambda d: d["placement"]["m1"].update(n1="half"), "placement.m1.n1: must be a non-negative number"),
    (lambda d: d.update(extra=1), "extra: unknown field"),
])
def test_solution_json_refuses_naming_the_field(change, expect):
    from solver import Solution

    good = {"status": "feasible", "objective": 1.0, "bound": 0.5, "solver": "greedy", "seconds": 0.1,
            "assignment": [{"request": 0, "node": "n1", "count": 2}], "placement": {"m1": {"n1": 1.0}},
            "message": ""}
    assert Solution.from_dict(good).assignment[0].count == 2
    data = copy.deepcopy(good)
    change(data)
    with pytest.raises(ProblemError) as caught:
        Solution.from_dict(json.loads(json.dumps(data)))
    assert expect in str(caught.value) and "\n" not in str(caught.value)
