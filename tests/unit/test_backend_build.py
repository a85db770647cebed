"""Problem building (pure): grouping, RTT and execution-time sources, memory per mode, compute."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.alto import CostMap
from backend.apply import ExecSettings, execute, render_dry_run
from backend.build import BuildSettings, build_problem, group_requests
from backend.collect import NodeMemory, RequestStat
from backend.plan import DELETE, PROVISION, Action
from cluster.catalog import load_catalog
from cluster.port import Deployment

CATALOG = load_catalog(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "models.yaml")
HP2, LOGREG = "half_plus_two", "digits_logreg"
NODES = [NodeMemory("a", True, "small", 250000, 60000, 190000, 4.0, 0.1),
         NodeMemory("b", True, "large", 800000, 0, 800000, 8.0, 0.0),
         NodeMemory("down", False, "small", 250000, 0, 250000, 4.0, 0.0)]
ALTO = CostMap({"z1": {"a": 0.01, "b": 0.03}, "default": {"a": 0.2, "b": 0.1}})


def req(model=HP2, zone="z1", *, latency=None, node=None, duration=None, status=200, kind="proxy", cached=False,
        rtt=None, rtt_node=None, time=1.0):
    return RequestStat(time=time, model=model, zone=zone, latency=latency, node=node, status=status,
                       duration=duration, kind=kind, cached=cached, rtt=rtt, rtt_node=rtt_node)


def build(requests, *, mode=1, deployments=(), **settings):
    return build_problem(requests=list(requests), nodes=NODES, catalog=CATALOG, deployments=list(deployments),
                         cost_map=ALTO, settings=BuildSettings(mode=mode, **settings))


def test_groups_by_model_and_zone_with_default_zone_and_unknown_models_counted():
    counts, unknown = group_requests([req(), req(), req(zone=None), req(model="nope"), req(LOGREG, "z2")],
                                     set(CATALOG.names()))
    assert counts == {(HP2, "z1"): 2, (HP2, "default"): 1, (LOGREG, "z2"): 1} and unknown == 1


def test_thesis_rtt_source_prefers_client_latency_then_alto_then_default():
    built = build([req(latency=0.5, node="a"), req(latency=0.7, node="a"), req(zone="elsewhere"),
                   req(zone="z9")], default_rtt=0.05, rtt_source="latency")
    groups = dict(zip(built.groups, built.problem.requests))
    assert groups[(HP2, "z1")].rtt == {"a": pytest.approx(0.6), "b": 0.03}     # measured, then ALTO
    assert groups[(HP2, "elsewhere")].rtt == {"a": 0.2, "b": 0.1}               # ALTO default row
    assert built.summary["rtt_sources"] == {"measured": 1, "alto": 5, "default": 0}
    no_alto = build_problem(requests=[req()], nodes=NODES, catalog=CATALOG, deployments=[], cost_map=CostMap(),
                            settings=BuildSettings(default_rtt=0.05))
    assert no_alto.problem.requests[0].rtt == {"a": 0.05, "b": 0.05}


def test_exec_time_from_profile_refined_by_enough_measurements():
    measured = [req(node="b", duration=0.5) for _ in range(3)] + [req(node="b", duration=0.1)] * 2
    noise = [req(node="b", duration=9.0, kind="lookup"), req(node="b", duration=9.0, cached=True),
             req(node="b", duration=9.0, status=502)]
    built = build(measured + noise, min_exec_samples=5)
    assert built.problem.exec_time[HP2] == {"a": 0.004, "b": 0.5}     # median of 5; profile for "a"
    assert build(measured[:4], min_exec_samples=5).problem.exec_time[HP2]["b"] == 0.002
    assert built.summary["exec_time_sources"]["measured"] == 1


def test_mode1_uses_available_memory_and_deployments_mode2_total_and_none():
    deps = [Deployment(HP2, "a", "x:1", True, 1.0), Deployment(LOGREG, "down", "x:2", False, 1.0),
            Deployment("unknown", "b", "x:3", True, 1.0)]
    one = build([req()], mode=1, deployments=deps).problem
    two = build([req()], mode=2, deployments=deps).problem
    assert [(n.name, n.memory) for n in one.nodes] == [("a", 190000), ("b", 800000)]   # not-ready node left out
    assert [(n.name, n.memory) for n in two.nodes] == [("a", 250000), ("b", 800000)]
    assert one.deployed == [(HP2, "a")] and two.deployed == []
    one.validate()
    two.validate()


def test_compute_average_scales_cpu_by_busy_share_of_the_window():
    avg = build([req()], window=100.0).problem
    literal = build([req()], compute="per-request").problem
    hp2 = CATALOG[HP2]
    assert {m.name: m.cpu for m in literal.models}[HP2] == hp2.cpu
    assert {m.name: m.cpu for m in avg.models}[HP2] == pytest.approx(hp2.cpu * 0.004 / 100.0)


def test_settings_are_validated():
    for bad in ({"mode": 3}, {"formulation": "x"}, {"compute": "x"}, {"window": 0}):
        with pytest.raises(ValueError):
            BuildSettings(**bad)


def test_dry_run_executor_changes_nothing_and_renders_the_objects():
    acts = [Action(PROVISION, HP2, "node-a", "placed"), Action(DELETE, LOGREG, "node-b", "idle"),
            Action(DELETE, LOGREG, "node-c", "idle")]
    result = execute(acts, cluster=None, settings=ExecSettings(dry_run=True, max_deletions=1),
                     available={}, model_memory={})
    assert [r.skipped for r in result.results] == ["dry run", "dry run", "over the --max-deletions cap of 1"]
    text = render_dry_run(acts[:2], acts[2:], catalog=CATALOG)
    assert "# provision half_plus_two on node-a: placed" in text and "kind: Deployment" in text
    assert "held back by the deletion cap: delete digits_logreg on node-c" in text
    assert text.count("kind: Service") == 1
