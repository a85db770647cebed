"""Mode 1 / Mode 2 planning: a pure function of observed state (no cluster, no clock)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from backend.apply import cap_deletions
from backend.collect import InstanceStat, ModelStat
from backend.plan import (DELETE, PROVISION, Instance, Thresholds, desired_pairs, dispatch_weights,
                          instances_from, plan_actions)
from cluster.port import Deployment

NOW = 1_000_000.0
MODELS = ["m1", "m2", "m3", "m4"]
NODES = ["a", "b", "c"]


@dataclass
class A:  # the shape of solver.Assignment
    request: int
    node: str
    count: int


def inst(model, node, *, age=5000.0, count=0, last=None, ready=True):
    return Instance(model=model, node=node, provisioned=NOW - age, count=count,
                    last_requested=None if last is None else NOW - last, ready=ready)


def run(mode, desired, instances, *, solved=True, idle=600.0, min_requests=5):
    return plan_actions(mode=mode, solved=solved, status="optimal" if solved else "infeasible",
                        desired=set(desired), instances=instances, nodes=NODES, known_models=MODELS,
                        thresholds=Thresholds(idle_seconds=idle, min_requests=min_requests), now=NOW)


def pairs(actions, kind):
    return [(a.model, a.node) for a in actions if a.kind == kind]


def test_desired_pairs_takes_groups_with_traffic_only():
    groups = [("m1", "z1"), ("m1", "z2"), ("m2", "z1")]
    assignment = [A(0, "a", 3), A(1, "b", 0), A(1, "c", 2), A(2, "a", 1), A(7, "a", 1)]
    assert desired_pairs(groups, assignment) == {("m1", "a"), ("m1", "c"), ("m2", "a")}


def test_nothing_to_do_when_desired_is_running():
    plan = run(1, {("m1", "a")}, [inst("m1", "a", count=100, last=1)])
    assert plan.actions == []
    assert run(2, {("m1", "a")}, [inst("m1", "a")]).actions == []


def test_mode1_provisions_missing_and_keeps_busy_or_recent_instances():
    instances = [inst("m2", "b", count=100, last=10_000),   # idle but busy since provisioned
                 inst("m3", "b", count=0, last=None, age=60),  # new, not idle long enough
                 inst("m4", "c", count=1, last=700)]           # idle and rarely used: goes
    plan = run(1, {("m1", "a"), ("m1", "b")}, instances)
    assert pairs(plan.actions, PROVISION) == [("m1", "a"), ("m1", "b")]
    assert pairs(plan.actions, DELETE) == [("m4", "c")]
    assert "idle" in plan.deletions[0].reason


def test_mode1_never_deletes_what_the_solver_routes_to():
    plan = run(1, {("m4", "c")}, [inst("m4", "c", count=0, last=None, age=99_999)])
    assert plan.actions == []


def test_mode1_boundaries_are_strict():
    # idle exactly the threshold: kept; count exactly min_requests: kept.
    assert run(1, set(), [inst("m1", "a", age=600.0)], idle=600.0).actions == []
    assert run(1, set(), [inst("m1", "a", count=5, last=10_000)], min_requests=5).actions == []
    assert pairs(run(1, set(), [inst("m1", "a", count=4, last=10_000)], min_requests=5).actions, DELETE) == [("m1", "a")]


def test_mode2_follows_the_solver_strictly():
    instances = [inst("m2", "b", count=1000, last=1), inst("m1", "a")]
    plan = run(2, {("m1", "a"), ("m3", "c")}, instances)
    assert pairs(plan.actions, PROVISION) == [("m3", "c")]
    assert pairs(plan.actions, DELETE) == [("m2", "b")]


def test_mode2_deletes_nothing_when_the_solution_places_nothing():
    instances = [inst("m1", "a", count=0, age=99_999), inst("m2", "b", count=50, last=1)]
    plan = run(2, set(), instances)
    assert plan.actions == [] and plan.solved
    assert "places nothing" in plan.notes[0]
    # Mode 1 keeps its idle rule in a quiet window.
    assert pairs(run(1, set(), instances).actions, DELETE) == [("m1", "a")]


def test_failed_solve_selects_nothing_in_either_mode():
    idle = [inst("m1", "a", count=0, age=99_999), inst("m2", "b")]
    for mode in (1, 2):
        plan = run(mode, {("m3", "c")}, idle, solved=False)
        assert plan.actions == [] and not plan.solved
        assert "nothing provisioned or deleted" in plan.notes[0]


def test_nodes_not_ready_and_unknown_models_are_left_alone():
    instances = [inst("m1", "down-node", age=99_999), inst("zz", "a", age=99_999)]
    assert run(2, {("m1", "down-node")}, instances).actions == []


def test_deletions_are_ordered_least_useful_first_and_the_cap_keeps_that_order():
    instances = [inst("m1", "a", count=3, last=1000), inst("m2", "a", count=0, last=5000),
                 inst("m3", "b", count=1, last=2000)]
    plan = run(1, set(), instances)
    assert pairs(plan.actions, DELETE) == [("m2", "a"), ("m3", "b"), ("m1", "a")]
    kept, held = cap_deletions(plan.actions, 2)
    assert pairs(kept, DELETE) == [("m2", "a"), ("m3", "b")] and pairs(held, DELETE) == [("m1", "a")]
    plan2 = run(2, {("m4", "c")}, instances)
    assert pairs(plan2.actions, DELETE)[0] == ("m2", "a")     # fewest requests first


def test_cap_never_holds_back_provisions():
    plan = run(2, {("m1", "a"), ("m2", "b")}, [inst("m3", "c"), inst("m4", "c")])
    kept, held = cap_deletions(plan.actions, 0)
    assert pairs(kept, PROVISION) == [("m1", "a"), ("m2", "b")] and len(held) == 2 and not pairs(kept, DELETE)


def test_both_modes_select_the_same_provisions_when_nothing_is_deployed():
    desired = {("m1", "a"), ("m2", "c"), ("m4", "b")}
    assert run(1, desired, []).actions == run(2, desired, []).actions


def test_instances_from_joins_counts_by_provisioning_time():
    deps = [Deployment("m1", "a", "h:1", True, NOW - 100), Deployment("m2", "b", "h:2", False, NOW - 50)]
    stats = [ModelStat("m1", 10, NOW - 5, (InstanceStat("a", NOW - 900, 99, NOW - 800),
                                           InstanceStat("a", NOW - 100, 7, NOW - 5))),
             ModelStat("m2", 0, None, ())]
    out = instances_from(deps, stats)
    assert out[0] == Instance("m1", "a", NOW - 100, 7, NOW - 5, True)
    assert out[1] == Instance("m2", "b", NOW - 50, 0, None, False)


def test_dispatch_weights_are_shares_per_model_and_zone():
    groups = [("m1", "z1"), ("m1", "default"), ("m2", "z1")]
    w = dispatch_weights(groups, [A(0, "a", 3), A(0, "b", 1), A(1, "c", 2), A(2, "a", 0)])
    assert w == {"m1": {"z1": {"a": 0.75, "b": 0.25}, "default": {"c": 1.0}}}


def test_mode_must_be_1_or_2():
    with pytest.raises(ValueError):
        run(3, set(), [])


def test_service_times_cover_the_routed_and_running_instances_of_weighted_models():
    from backend.plan import service_times
    weights = {"m": {"z1": {"a": 0.7, "b": 0.3, "c": 0.0}}}
    exec_time = {"m": {"a": 0.07, "b": 0.07, "c": 0.07, "d": 0.02, "e": 0.0}, "other": {"a": 0.01}}
    running = [Deployment(model="m", node="d", endpoint="127.0.0.1:1", ready=True, created=1.0),
               Deployment(model="m", node="e", endpoint="127.0.0.1:2", ready=True, created=1.0),
               Deployment(model="other", node="a", endpoint="127.0.0.1:3", ready=True, created=1.0)]
    # c has no weight and runs nothing; e's service time is 0 (unmeasured); 'other' is not in the plan
    assert service_times(weights, exec_time, running) == {"m": {"a": 0.07, "b": 0.07, "d": 0.02}}


def test_idle_times_only_where_the_low_load_pace_is_faster():
    from backend.plan import idle_times
    service = {"m": {"a": 0.07, "b": 0.07, "d": 0.02}}
    idle = {"m": {"a": 0.05, "b": 0.07, "d": 0.03, "z": 0.01}, "other": {"a": 0.001}}
    # b: the same pace (nothing to say); d: slower when idle (noise: the planned pace stands); z, other: not planned
    assert idle_times(service, idle) == {"m": {"a": 0.05}}
    assert idle_times(service, {}) == {}
