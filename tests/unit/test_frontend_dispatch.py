"""Dispatch policies, plan validation and on-demand placement, as pure functions of a state."""
import dataclasses

import pytest

from cluster.port import Deployment, Node
from frontend.backlog import Backlog
from frontend.dispatch import (Plan, PlanError, choose, choose_provision_node, expected_delay, lowest_cpu,
                               nearest, parse_plan, planned, round_robin, rtt_from_alto, service_time, spread_of)
from frontend.snapshot import ClusterState


def node(name, *, cpu=0.0, capacity=2.0, ready=True, total=250000, used=0, labels=None):
    return Node(name=name, address="127.0.0.1", ready=ready, memory_total=total, memory_used=used,
                cpu_capacity=capacity, cpu_usage=cpu, labels={"node-class": "small", **(labels or {})})


def dep(model, node_name, *, ready=True, port=8501, created=100.0):
    return Deployment(model=model, node=node_name, endpoint=f"127.0.0.{ord(node_name[-1]) % 200}:{port}",
                      ready=ready, created=created)


def state(nodes, deps):
    return ClusterState.build(nodes, deps, fetched=1.0)


def test_state_keeps_only_ready_deployments_on_ready_nodes():
    s = state([node("n-a"), node("n-b", ready=False), node("n-c")],
              [dep("m", "n-a"), dep("m", "n-b"), dep("m", "n-c", ready=False), dep("x", "n-b")])
    assert [c.node.name for c in s.serving["m"]] == ["n-a"]
    assert "x" not in s.serving
    assert len(s.deployments_of("m")) == 3


def test_lowest_cpu_uses_fraction_of_capacity():
    s = state([node("n-a", cpu=1.0, capacity=2.0), node("n-b", cpu=1.5, capacity=4.0)],
              [dep("m", "n-a"), dep("m", "n-b")])
    assert lowest_cpu(s.serving["m"]).node.name == "n-b"
    s = state([node("n-a", cpu=0.1), node("n-b", cpu=0.9)], [dep("m", "n-a"), dep("m", "n-b")])
    assert choose("lowest-cpu", s.serving["m"], model="m").node.name == "n-a"


def test_lowest_cpu_ties_go_to_the_first_name():
    s = state([node("n-b"), node("n-a")], [dep("m", "n-b"), dep("m", "n-a")])
    assert lowest_cpu(s.serving["m"]).node.name == "n-a"


def test_round_robin_cycles_in_name_order():
    s = state([node("n-a"), node("n-b"), node("n-c")], [dep("m", n) for n in ("n-c", "n-a", "n-b")])
    picks = [round_robin(s.serving["m"], i).node.name for i in range(6)]
    assert picks == ["n-a", "n-b", "n-c", "n-a", "n-b", "n-c"]


def test_nearest_by_rtt_then_zone_label_then_cpu():
    s = state([node("n-a", cpu=0.5, labels={"zone": "z2"}), node("n-b", cpu=1.0), node("n-c", cpu=0.1)],
              [dep("m", n) for n in ("n-a", "n-b", "n-c")])
    cands = s.serving["m"]
    rtt = {"z1": {"n-a": 0.030, "n-b": 0.002, "n-c": 0.040}}
    assert nearest(cands, "z1", rtt).node.name == "n-b"
    assert nearest(cands, "z2", rtt).node.name == "n-a"          # by label
    assert nearest(cands, None, rtt).node.name == "n-c"          # lowest cpu
    assert nearest(cands, "z9", rtt).node.name == "n-c"


def test_plan_weights_are_followed_for_the_zone():
    s = state([node("n-a"), node("n-b")], [dep("m", "n-a"), dep("m", "n-b")])
    plan = Plan(created=1, mode=1, solver="highs", weights={"m": {"z1": {"n-a": 0, "n-b": 3}, "z2": {"n-a": 1}}})
    cands = s.serving["m"]
    assert {planned(cands, "m", "z1", plan, u).node.name for u in (0.0, 0.5, 0.99)} == {"n-b"}
    assert {planned(cands, "m", "z2", plan, u).node.name for u in (0.0, 0.5, 0.99)} == {"n-a"}
    # no zone: weights summed over zones (n-a 1, n-b 3)
    assert planned(cands, "m", None, plan, 0.1).node.name == "n-a"
    assert planned(cands, "m", None, plan, 0.5).node.name == "n-b"


def test_plan_falls_back_to_lowest_cpu():
    s = state([node("n-a", cpu=1.0), node("n-b", cpu=0.2), node("n-c")],
              [dep("m", "n-a"), dep("m", "n-b")])
    cands = s.serving["m"]
    plan = Plan(created=1, mode=1, solver="s", weights={"m": {"z1": {"n-c": 1.0}}})   # n-c runs nothing
    assert planned(cands, "m", "z1", plan, 0.3).node.name == "n-b"
    assert planned(cands, "m", "z1", None, 0.3).node.name == "n-b"
    assert choose("plan", cands, model="m", zone="z1", plan=plan, u=0.3).node.name == "n-b"


def test_choose_rejects_unknown_policy_and_empty_candidates():
    s = state([node("n-a"), node("n-b")], [dep("m", "n-a"), dep("m", "n-b")])
    with pytest.raises(ValueError):
        choose("fastest", s.serving["m"], model="m")
    with pytest.raises(ValueError):
        choose("lowest-cpu", (), model="m")


def test_parse_plan_accepts_the_contract_shape():
    plan = parse_plan({"created": 5, "mode": 2, "solver": "ipopt", "weights": {"a": {"z": {"n1": 0.5, "n2": 1}}}},
                      known_models=["a", "b"])
    assert plan.weights == {"a": {"z": {"n1": 0.5, "n2": 1.0}}} and plan.mode == 2


def test_parse_plan_reports_every_error():
    with pytest.raises(PlanError) as info:
        parse_plan({"created": -1, "mode": 3, "solver": "", "weights": {"zz": {}, "a": {"z": {"n": -2}}}, "x": 1},
                   known_models=["a"])
    message = str(info.value)
    for part in ("created", "mode", "solver", "weights.zz: unknown model", "weights.a.z.n", "unknown field"):
        assert part in message
    with pytest.raises(PlanError):
        parse_plan([1, 2], known_models=["a"])


def test_rtt_from_alto_cost_map():
    doc = {"meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "routingcost"}},
           "cost-map": {"zone-1": {"n-a": 1, "n-b": 5}, "zone-2": {"n-a": 7}}}
    assert rtt_from_alto(doc) == {"zone-1": {"n-a": 1.0, "n-b": 5.0}, "zone-2": {"n-a": 7.0}}
    with pytest.raises(ValueError):
        rtt_from_alto({"cost-map": {"z": {"n": -1}}})
    with pytest.raises(ValueError):
        rtt_from_alto({"nope": 1})


def test_provision_picks_ready_node_with_most_free_memory():
    s = state([node("n-a", used=100000), node("n-b", used=50000), node("n-c", ready=False, used=0)], [])
    placement = choose_provision_node(s, "m", 60000)
    assert placement.node.name == "n-b" and not placement.pending


def test_provision_refuses_when_nothing_fits():
    s = state([node("n-a", used=200000), node("n-b", used=240000)], [])
    placement = choose_provision_node(s, "m", 60000)
    assert placement.node is None and "no ready node has 60000 KB free" in placement.reason
    assert "50000 KB on n-a" in placement.reason


def test_provision_waits_for_an_instance_that_is_starting():
    s = state([node("n-a"), node("n-b")], [dep("m", "n-a", ready=False)])
    placement = choose_provision_node(s, "m", 60000)
    assert placement.pending and placement.node.name == "n-a"


def test_provision_avoids_a_down_node_that_holds_the_model():
    s = state([node("n-a", ready=False), node("n-b", used=10000), node("n-c", used=20000)],
              [dep("m", "n-a", ready=False)])
    placement = choose_provision_node(s, "m", 60000)
    assert not placement.pending and placement.node.name == "n-b"


def test_provision_ties_go_to_the_first_name():
    s = state([node("n-c"), node("n-b"), node("n-a", used=1)], [])
    assert choose_provision_node(s, "m", 10).node.name == "n-b"


def test_provision_goes_near_the_client_zone_then_by_free_memory():
    s = state([node("n-a", used=0), node("n-b", used=100000), node("n-c", used=120000), node("n-d", used=0)], [])
    rtt = {"zone-1": {"n-a": 0.030, "n-b": 0.004, "n-c": 0.004}, "zone-2": {"n-a": 0.002}}
    # zone-1: n-b and n-c are nearest; n-b has more free memory. n-d has no known RTT: last.
    assert choose_provision_node(s, "m", 60000, zone="zone-1", rtt=rtt).node.name == "n-b"
    assert choose_provision_node(s, "m", 60000, zone="zone-2", rtt=rtt).node.name == "n-a"
    # Nearest without room is skipped; an unknown zone falls back to the most free memory.
    assert choose_provision_node(s, "m", 200000, zone="zone-1", rtt=rtt).node.name == "n-a"
    assert choose_provision_node(s, "m", 60000, zone="zone-9", rtt=rtt).node.name == "n-a"
    assert choose_provision_node(s, "m", 60000, zone=None, rtt=rtt).node.name == "n-a"


def test_random_policy_is_uniform_over_the_candidates():
    s = state([node("n-a"), node("n-b"), node("n-c")], [dep("m", "n-a"), dep("m", "n-b"), dep("m", "n-c")])
    cands = s.serving["m"]
    picks = [choose("random", cands, model="m", u=i / 300).node.name for i in range(300)]
    assert {n: picks.count(n) for n in set(picks)} == {"n-a": 100, "n-b": 100, "n-c": 100}


def test_cloud_is_the_fallback_when_no_edge_instance_can_take_the_request():
    cloud = {"topology": "cloud"}
    edges_busy = state([node("n-a", cpu=1.9), node("n-b", cpu=1.85), node("n-c", cpu=0.0, capacity=64, labels=cloud)],
                       [dep("m", "n-a"), dep("m", "n-b"), dep("m", "n-c")])
    edge_free = state([node("n-a", cpu=1.9), node("n-b", cpu=0.5), node("n-c", cpu=0.0, capacity=64, labels=cloud)],
                      [dep("m", "n-a"), dep("m", "n-b"), dep("m", "n-c")])
    for policy in ("lowest-cpu", "round-robin", "nearest", "random"):
        # the cloud's idle cores do not make it the lowest-cpu choice: an edge node with room wins
        assert choose(policy, edge_free.serving["m"], model="m", zone="z", rtt={"z": {"n-c": 0.001}},
                      counter=2, u=0.99).node.name == "n-b"
        # every edge node at or above OVERLOAD_CPU: the cloud
        assert choose(policy, edges_busy.serving["m"], model="m", counter=1, u=0.1).node.name == "n-c"
    # no cloud instance: a busy edge node is still better than a 503
    no_cloud = state([node("n-a", cpu=1.9), node("n-b", cpu=1.95)], [dep("m", "n-a"), dep("m", "n-b")])
    assert choose("lowest-cpu", no_cloud.serving["m"], model="m").node.name == "n-a"
    # plan: the back-end's weights, cloud included; an overloaded edge pick moves to the cloud
    plan = Plan(created=1.0, mode=1, solver="highs", weights={"m": {"z": {"n-a": 0.5, "n-c": 0.5}}})
    assert choose("plan", edge_free.serving["m"], model="m", zone="z", plan=plan, u=0.9).node.name == "n-c"
    assert choose("plan", edge_free.serving["m"], model="m", zone="z", plan=plan, u=0.1).node.name == "n-b"
    only_a = Plan(created=1.0, mode=1, solver="highs", weights={"m": {"z": {"n-b": 1.0}}})
    assert choose("plan", edges_busy.serving["m"], model="m", zone="z", plan=only_a, u=0.1).node.name == "n-c"
    assert edges_busy.serving["m"][2].to_json()["tier"] == "cloud"
    assert edges_busy.serving["m"][0].to_json()["tier"] == "edge"


def _delay_world(**cloud_labels):
    nodes = [node("n-a"), node("n-b"), node("n-c", **cloud_labels)]
    s = state(nodes, [dep("m", n) for n in ("n-a", "n-b", "n-c")])
    plan = Plan(created=1.0, mode=1, solver="highs", weights={"m": {"z1": {"n-a": 1.0}}},
                service={"m": {"n-a": 0.070, "n-b": 0.070, "n-c": 0.020}})
    rtt = {"z1": {"n-a": 0.003, "n-b": 0.025, "n-c": 0.060}}
    return s.serving["m"], plan, rtt


def test_expected_delay_sends_a_lone_request_to_the_first_answer():
    cands, plan, rtt = _delay_world()
    # 3 + 70 ms on n-a beats 25 + 70 on n-b and 60 + 20 on n-c
    assert expected_delay(cands, "m", "z1", plan, rtt, {}, 0.0).node.name == "n-a"
    assert choose("expected-delay", cands, model="m", zone="z1", plan=plan, rtt=rtt).node.name == "n-a"


def test_expected_delay_spreads_a_burst_by_backlog():
    cands, plan, rtt = _delay_world()
    backlog, picks = Backlog(), []
    for _ in range(9):                  # nine requests in the same instant
        now = 100.0
        pick = choose("expected-delay", cands, model="m", zone="z1", plan=plan, rtt=rtt,
                      backlog=backlog.seconds([c.node.name for c in cands], now))
        backlog.charge(pick.node.name, plan.service["m"][pick.node.name], now)
        picks.append(pick.node.name)
    # n-a (73 ms) first; then n-c (80 ms) before n-a's 143; then n-b (95) before n-c's 100
    assert picks[:3] == ["n-a", "n-c", "n-b"]
    assert {"n-a", "n-b", "n-c"} == set(picks)
    finish = {n: rtt["z1"][n] + plan.service["m"][n] * picks.count(n) for n in set(picks)}
    assert max(finish.values()) - min(finish.values()) <= 0.070 + 1e-9    # no node a whole request behind


def test_before_any_plan_expected_delay_times_the_nodes_by_the_catalog_profile():
    from cluster.catalog import ModelSpec
    from frontend.dispatch import with_profile

    spec = ModelSpec(name="m", image="i", port=1, model_file="m", memory=1, cpu=1.0,
                     exec_time={"small": 0.070, "large": 0.020}, exec_time_idle={"small": 0.050})
    nodes = [node("n-a"), node("n-b"), node("n-c", labels={"node-class": "large"})]
    cands = state(nodes, [dep("m", n.name) for n in nodes]).serving["m"]
    profiled = with_profile(None, spec, cands)
    assert profiled.service == {"m": {"n-a": 0.070, "n-b": 0.070, "n-c": 0.020}}
    assert profiled.idle == {"m": {"n-a": 0.050, "n-b": 0.050, "n-c": 0.020}} and profiled.weights == {}
    # A burst with no plan: spread by backlog over every node, not all to the one lowest-CPU node.
    rtt = {"z1": {"n-a": 0.003, "n-b": 0.025, "n-c": 0.060}}
    backlog, picks = Backlog(), []
    for _ in range(6):
        plan = with_profile(None, spec, cands)
        pick = choose("expected-delay", cands, model="m", zone="z1", plan=plan, rtt=rtt,
                      backlog=backlog.seconds([c.node.name for c in cands], 100.0))
        backlog.charge(pick.node.name, service_time(plan, "m", pick.node.name), 100.0)
        picks.append(pick.node.name)
    assert picks[:3] == ["n-a", "n-b", "n-c"] and set(picks) == {"n-a", "n-b", "n-c"}   # 53, 75, 80 ms
    # A plan that times the model is kept as it is; so is a fixed-time plan (its weights decide).
    cands3, timed, _ = _delay_world()
    assert with_profile(timed, spec, cands3) is timed
    fixed = Plan(created=1.0, mode=1, solver="highs", weights={"m": {"z1": {"n-b": 1.0}}})
    assert with_profile(fixed, spec, cands3) is fixed
    # A load-aware plan made before the model was provisioned: the profile for it, the rest kept.
    other = Plan(created=1.0, mode=1, solver="highs", weights={"x": {"z1": {"n-a": 1.0}}},
                 service={"x": {"n-a": 0.001}}, idle={"x": {"n-a": 0.0009}})
    added = with_profile(other, spec, cands)
    assert added.service == {"x": {"n-a": 0.001}, "m": {"n-a": 0.070, "n-b": 0.070, "n-c": 0.020}}
    assert added.idle["x"] == {"n-a": 0.0009} and added.weights == other.weights and added.created == 1.0


def test_expected_delay_counts_the_idle_pace_on_a_node_without_backlog():
    cands, plan, rtt = _delay_world()
    fast = dataclasses.replace(plan, idle={"m": {"n-b": 0.045, "n-c": 0.5}})
    # idle n-b: 25 + 45 = 70 ms beats n-a's 3 + 70; n-c's idle figure above its service time is ignored
    assert expected_delay(cands, "m", "z1", fast, rtt, {}, 0.0).node.name == "n-b"
    assert expected_delay(cands, "m", "z1", dataclasses.replace(plan, idle={"m": {"n-c": 0.5}}), rtt, {},
                          0.0).node.name == "n-a"
    # with work queued on n-b it runs back to back: 25 + 1 + 70 ms loses to n-a's 73
    assert expected_delay(cands, "m", "z1", fast, rtt, {"n-b": 0.001}, 0.0).node.name == "n-a"


def test_a_drained_backlog_sends_back_to_the_nearest():
    cands, plan, rtt = _delay_world()
    backlog = Backlog()
    backlog.charge("n-a", 1.0, 10.0)
    assert expected_delay(cands, "m", "z1", plan, rtt, backlog.seconds(["n-a"], 10.5), 0.0).node.name == "n-c"
    assert expected_delay(cands, "m", "z1", plan, rtt, backlog.seconds(["n-a"], 12.0), 0.0).node.name == "n-a"


def test_expected_delay_without_service_times_follows_the_weights():
    cands, plan, rtt = _delay_world()
    bare = Plan(created=1.0, mode=1, solver="highs", weights={"m": {"z1": {"n-b": 1.0}}})
    assert expected_delay(cands, "m", "z1", bare, rtt, {"n-b": 9.0}, 0.3).node.name == "n-b"
    assert choose("expected-delay", cands, model="m", zone="z1", plan=None, rtt=rtt).node.name == "n-a"  # lowest cpu
    # instances the plan has no service time for are not candidates; unknown zone: rtt counts as the farthest
    only_b = Plan(created=1.0, mode=1, solver="x", weights={}, service={"m": {"n-b": 0.07}})
    assert expected_delay(cands, "m", "z1", only_b, rtt, {"n-b": 5.0}, 0.0).node.name == "n-b"
    assert expected_delay(cands, "m", "z9", plan, rtt, {}, 0.0).node.name == "n-c"     # 20 ms service, rtt unknown


def test_expected_delay_takes_the_cloud_when_the_edge_is_overloaded():
    cloud = {"topology": "cloud"}
    nodes = [node("n-a", cpu=1.95), node("n-b", cpu=1.9), node("n-c", capacity=64, labels=cloud)]
    s = state(nodes, [dep("m", n) for n in ("n-a", "n-b", "n-c")])
    plan = Plan(created=1.0, mode=1, solver="highs", weights={"m": {"z1": {"n-a": 1.0}}},
                service={"m": {"n-a": 0.070, "n-b": 0.070, "n-c": 0.020}})
    rtt = {"z1": {"n-a": 0.003, "n-b": 0.025, "n-c": 0.300}}
    # n-a would answer first by the backlog it knows of, but its node is at OVERLOAD_CPU: the cloud
    assert choose("expected-delay", s.serving["m"], model="m", zone="z1", plan=plan, rtt=rtt).node.name == "n-c"


def test_expected_delay_counts_a_node_at_its_measured_pace():
    cands, plan, rtt = _delay_world()
    # the cloud (n-c, 60 + 20 ms) reported 45 ms per request: n-a (3 + 70) still first, and in a
    # burst n-b (25 + 70) now comes before the cloud (60 + 45)
    slow_c = {"n-c": 0.045}
    assert expected_delay(cands, "m", "z1", plan, rtt, {"n-a": 0.07}, 0.0).node.name == "n-c"
    assert expected_delay(cands, "m", "z1", plan, rtt, {"n-a": 0.07}, 0.0, slow_c).node.name == "n-b"
    assert choose("expected-delay", cands, model="m", zone="z1", plan=plan, rtt=rtt, backlog={"n-a": 0.07},
                  paces=slow_c).node.name == "n-b"
    # the measured pace is the back-to-back one: on an idle node the plan's low-load time still holds
    # (n-b idle at 45 ms though it reported 90 back to back), behind a backlog the measured one counts
    fast = dataclasses.replace(plan, idle={"m": {"n-b": 0.045}})
    assert expected_delay(cands, "m", "z1", fast, rtt, {}, 0.0).node.name == "n-b"
    assert expected_delay(cands, "m", "z1", fast, rtt, {}, 0.0, {"n-b": 0.090}).node.name == "n-b"
    assert expected_delay(cands, "m", "z1", fast, rtt, {"n-b": 0.001}, 0.0, {"n-b": 0.090}).node.name == "n-a"
    # ... and an idle node whose measured pace is below the plan's time gets that (25 + 40 < 3 + 70)
    assert expected_delay(cands, "m", "z1", plan, rtt, {}, 0.0).node.name == "n-a"
    assert expected_delay(cands, "m", "z1", plan, rtt, {}, 0.0, {"n-b": 0.040}).node.name == "n-b"
    # the charge follows the measured figure; a node the plan does not time gets none
    assert service_time(plan, "m", "n-c", slow_c) == 0.045
    assert service_time(plan, "m", "n-b", slow_c) == 0.070
    assert service_time(plan, "m", "n-zz", {"n-zz": 0.1}) is None
    assert service_time(None, "m", "n-c", slow_c) is None


def test_expected_delay_at_a_quantile_counts_the_variability_of_the_work_ahead():
    cands, plan, rtt = _delay_world()
    # At the mean n-a answers first (3 + 70 ms against n-c's 60 + 20). Its service varying with a
    # CV of 0.5 at z = 1.28 adds 0.64 * 70 = 45 ms: the deterministic cloud (no spread) is safer.
    assert expected_delay(cands, "m", "z1", plan, rtt, {}, 0.0).node.name == "n-a"
    assert expected_delay(cands, "m", "z1", plan, rtt, {}, 0.0, spread={"n-a": 0.64}).node.name == "n-c"
    assert choose("expected-delay", cands, model="m", zone="z1", plan=plan, rtt=rtt,
                  spread={"n-a": 0.64, "n-b": 0.64}).node.name == "n-c"
    # a small spread (3.5 ms) does not outweigh the 7 ms n-a is ahead by
    assert expected_delay(cands, "m", "z1", plan, rtt, {}, 0.0, spread={"n-a": 0.05}).node.name == "n-a"
    # The queue's variability counts too: behind 0.3 s of 0.1 s services (CV 1, z 1) n-a answers at
    # 0.4 s on average and 0.4 + sqrt(0.1^2 + 0.3 * 0.1) = 0.6 s at the quantile; n-b, deterministic,
    # at 0.55 s. Without the queue's term n-a would be 0.5 s, ahead of n-b.
    queued = Plan(created=1.0, mode=1, solver="highs", weights={}, service={"m": {"n-a": 0.1, "n-b": 0.55}})
    flat = {"z1": {"n-a": 0.0, "n-b": 0.0}}
    two = cands[:2]
    assert expected_delay(two, "m", "z1", queued, flat, {"n-a": 0.3}, 0.0).node.name == "n-a"
    assert expected_delay(two, "m", "z1", queued, flat, {"n-a": 0.3}, 0.0, spread={"n-a": 1.0}).node.name == "n-b"
    assert expected_delay(two, "m", "z1", queued, flat, {"n-a": 0.2}, 0.0, spread={"n-a": 1.0}).node.name == "n-a"


def test_spread_comes_from_the_profiled_variability_of_each_candidates_class():
    from cluster.catalog import ModelSpec

    spec = ModelSpec(name="m", image="i", port=1, model_file="m", memory=1, cpu=1.0,
                     exec_time={"small": 0.070, "large": 0.020}, exec_time_scv={"small": 0.25, "large": 0.0})
    nodes = [node("n-a"), node("n-b", labels={"node-class": "tiny"}), node("n-c", labels={"node-class": "large"})]
    cands = state(nodes, [dep("m", n.name) for n in nodes]).serving["m"]
    # z * CV where the class has a (non-zero) scv; nothing for a class without one
    assert spread_of(spec, cands, 1.5) == {"n-a": pytest.approx(0.75)}
    assert spread_of(spec, cands, 0.0) == {}                  # the median: choose by the mean
    assert spread_of(dataclasses.replace(spec, exec_time_scv={}), cands, 1.5) == {}
