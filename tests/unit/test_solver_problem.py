"""The problem file format: parsing, validation errors naming the field, and the Solution JSON."""
from __future__ import annotations

import copy

import pytest

from solver import Assignment, ModelReq, NodeCap, Problem, ProblemError, RequestGroup, Solution

GOOD = {
    "formulation": "thesis",
    "nodes": [{"name": "n1", "memory": 250000, "cpu": 4.0}, {"name": "n2", "memory": 100000, "cpu": 2}],
    "models": [{"name": "m1", "memory": 20000, "cpu": 1.0}],
    "requests": [{"model": "m1", "count": 2, "rtt": {"n1": 0.21, "n2": 0.1}}],
    "exec_time": {"m1": {"n1": 0.34, "n2": 0.5}},
    "deployed": [{"model": "m1", "node": "n2"}],
}


def mutated(change) -> dict:
    data = copy.deepcopy(GOOD)
    change(data)
    return data


def error_of(data) -> str:
    with pytest.raises(ProblemError) as caught:
        Problem.from_dict(data)
    return str(caught.value)


def test_round_trip_keeps_every_field():
    problem = Problem.from_dict(GOOD)
    assert problem.nodes[0] == NodeCap("n1", 250000, 4.0)
    assert problem.requests[0] == RequestGroup("m1", 2, {"n1": 0.21, "n2": 0.1})
    assert problem.deployed == [("m1", "n2")]
    assert Problem.from_dict(problem.to_dict()) == problem
    assert problem.to_dict() == GOOD


def test_deployed_is_optional_and_duplicates_collapse():
    data = mutated(lambda d: d.pop("deployed"))
    assert Problem.from_dict(data).deployed == []
    data = mutated(lambda d: d["deployed"].append({"model": "m1", "node": "n2"}))
    assert Problem.from_dict(data).deployed == [("m1", "n2")]


@pytest.mark.parametrize("change, field", [
    (lambda d: d.pop("nodes"), "nodes: missing"),
    (lambda d: d.update(formulation="exact"), "formulation: must be one of thesis, placement"),
    (lambda d: d.update(extra=1), "extra: unknown field"),
    (lambda d: d["nodes"][1].update(memory=-5), "nodes[1].memory: must be a non-negative number, got -5"),
    (lambda d: d["nodes"][0].update(cpu=-0.5), "nodes[0].cpu: must be a non-negative number, got -0.5"),
    (lambda d: d["models"][0].update(memory=1.5), "models[0].memory: must be an integer (KB), got 1.5"),
    (lambda d: d["models"][0].update(cpu="fast"), "models[0].cpu: must be a non-negative number, got 'fast'"),
    (lambda d: d["nodes"][1].update(name="n1"), "nodes[1].name: duplicate name 'n1'"),
    (lambda d: d["nodes"][1].update(name="bad name"), "nodes[1].name: 'bad name' is not a valid name"),
    (lambda d: d["requests"][0].update(model="m9"), "requests[0].model: unknown model 'm9'"),
    (lambda d: d["requests"][0].update(count=True), "requests[0].count: must be a non-negative integer, got True"),
    (lambda d: d["requests"][0].update(count=-1), "requests[0].count: must be a non-negative number, got -1"),
    (lambda d: d["requests"][0]["rtt"].update(n9=0.1), "requests[0].rtt.n9: unknown node 'n9'"),
    (lambda d: d["requests"][0]["rtt"].pop("n2"), "requests[0].rtt: missing node(s) 'n2'"),
    (lambda d: d["requests"][0]["rtt"].update(n1=-0.2), "requests[0].rtt.n1: must be a non-negative number, got -0.2"),
    (lambda d: d["requests"][0]["rtt"].update(n1=float("nan")), "requests[0].rtt.n1: must be a finite number, got nan"),
    (lambda d: d["requests"][0].pop("rtt"), "requests[0].rtt: missing"),
    (lambda d: d["exec_time"].pop("m1"), "exec_time.m1: missing"),
    (lambda d: d["exec_time"].update(m7={"n1": 1, "n2": 1}), "exec_time.m7: unknown model 'm7'"),
    (lambda d: d["exec_time"]["m1"].update(n3=0.1), "exec_time.m1.n3: unknown node 'n3'"),
    (lambda d: d["deployed"].append({"model": "m1", "node": "n5"}), "deployed[1].node: unknown node 'n5'"),
    (lambda d: d.update(requests={}), "requests: must be a list"),
    (lambda d: d.update(nodes=[]), "nodes: at least one node is needed"),
])
def test_errors_name_the_field(change, field):
    message = error_of(mutated(change))
    assert field in message
    assert "\n" not in message


def test_not_an_object():
    assert "problem: must be a JSON object" in error_of([1, 2])


def test_every_error_is_reported_at_once():
    data = mutated(lambda d: (d["nodes"][0].update(memory=-1), d["models"][0].update(cpu="x")))
    message = error_of(data)
    assert "nodes[0].memory" in message and "models[0].cpu" in message
    data = mutated(lambda d: (d["requests"][0].update(model="zz"), d["deployed"][0].update(node="n9")))
    message = error_of(data)
    assert "requests[0].model" in message and "deployed[0].node" in message


def test_validate_checks_problems_built_in_code():
    problem = Problem(formulation="placement", nodes=[NodeCap("n1", 10, 1.0)], models=[ModelReq("m1", 5, 0.1)],
                      requests=[RequestGroup("m1", 1, {"n1": 0.1, "n2": 0.3})], exec_time={"m1": {"n1": 0.2}})
    with pytest.raises(ProblemError, match=r"requests\[0\].rtt.n2: unknown node"):
        problem.validate()


def test_solution_json_round_trip():
    solution = Solution(status="feasible", objective=1.25, bound=1.0, solver="ipopt", seconds=0.0123456789,
                        assignment=[Assignment(0, "n1", 2)], placement={"m1": {"n1": 0.5}}, message="ok")
    data = solution.to_dict()
    assert list(data) == ["status", "objective", "bound", "solver", "seconds", "assignment", "placement", "message"]
    assert data["assignment"] == [{"request": 0, "node": "n1", "count": 2}]
    assert data["seconds"] == 0.012346
    again = Solution.from_dict(data)
    assert again.assignment == solution.assignment and again.placement == solution.placement
    assert again.pairs(Problem.from_dict(GOOD)) == {("m1", "n1")}
