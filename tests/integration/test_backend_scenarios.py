"""The thesis testbed scenarios of 6.2.2 (Tables 6.4 and 6.5) on the local cluster with real processes.

Demand is recorded through the real front-end's proxy; the back-end runs with the default solver
(ipopt) and acts on the real local cluster. Each test checks the report and the cluster itself.
"""
from __future__ import annotations

from test_backend_support import (FOREST, HP2, HP3, LOGREG, actions, make_system)  # noqa: F401

A, B, C = "node-a", "node-b", "node-c"


def check_ok(code: int, report: dict) -> None:
    assert code == 0, report["errors"]
    assert report["errors"] == [] and report["solver"]["status"] in ("optimal", "feasible")
    assert report["provisioning_latency_ms"] is not None


def test_nothing_to_do(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 6}, keep=[(HP2, A)])
    for mode in (1, 2):
        code, report = system.backend(mode, "--wait-ready")
        check_ok(code, report)
        assert report["actions"] == [] and report["plan"]["desired"] == [[HP2, A]]
        assert report["inputs"]["requests"] == 6 and report["inputs"]["rtt_sources"]["measured"] == 1
    assert system.pairs() == {(HP2, A)}


def test_mode1_provision_one_model(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5})
    assert system.pairs() == set()
    code, report = system.backend(1, "--wait-ready")
    check_ok(code, report)
    assert actions(report, "provision") == {(HP2, A)} and actions(report, "delete") == set()
    assert report["summary"] == {"provisioned": 1, "deleted": 0, "failed": 0, "skipped": 0}
    assert system.pairs() == {(HP2, A)}
    assert all(d.ready for d in system.cluster.deployments())
    # the dispatch plan reached the front-end: zone z-a's requests for HP2 go to node-a
    assert report["plan_pushed"] and system.plan()["weights"] == {HP2: {"z-a": {A: 1.0}}}
    # and the model answers through the proxy again
    system.settle()
    assert system.request(HP2, "z-a").json() == {"predictions": [2.5, 3.0, 4.5]}


def test_mode1_provision_four_models(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 4, (HP3, "z-a"): 3, (LOGREG, "z-b"): 3, (FOREST, "z-c"): 3})
    code, report = system.backend(1, "--wait-ready")
    check_ok(code, report)
    expected = {(HP2, A), (HP3, A), (LOGREG, B), (FOREST, C)}
    assert actions(report, "provision") == expected
    assert system.pairs() == expected
    # concurrent: every provision started before the first one finished
    starts = [a["start_ms"] for a in report["actions"]]
    ends = [a["start_ms"] + a["ms"] for a in report["actions"]]
    assert max(starts) < min(ends)


def test_mode2_delete_three_models(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5}, keep=[(HP2, A)])
    system.deploy([(HP3, B), (LOGREG, B), (FOREST, C)])
    code, report = system.backend(2, "--wait-ready")
    check_ok(code, report)
    assert actions(report, "provision") == set()
    assert actions(report, "delete") == {(HP3, B), (LOGREG, B), (FOREST, C)}
    assert system.pairs() == {(HP2, A)}


def test_mode2_provision_one_and_delete_two(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5})
    system.deploy([(HP3, B), (LOGREG, C)])
    code, report = system.backend(2, "--wait-ready")
    check_ok(code, report)
    assert actions(report, "provision") == {(HP2, A)}
    assert actions(report, "delete") == {(HP3, B), (LOGREG, C)}
    assert system.pairs() == {(HP2, A)}


def test_mode2_provision_two_and_delete_three(make_system):
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 4, (HP3, "z-b"): 4})
    system.deploy([(LOGREG, A), (FOREST, C), (HP2, C)])
    code, report = system.backend(2, "--wait-ready")
    check_ok(code, report)
    assert actions(report, "provision") == {(HP2, A), (HP3, B)}
    assert actions(report, "delete") == {(LOGREG, A), (FOREST, C), (HP2, C)}
    assert system.pairs() == {(HP2, A), (HP3, B)}


def test_mode1_keeps_unplaced_models_until_idle_and_rarely_used(make_system):
    """Mode 1 deletes by recency and frequency only, never because the solver left a model out."""
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 5}, keep=[(HP2, A)])
    system.deploy([(HP3, B)])
    code, report = system.backend(1, "--idle-seconds", "3600", "--min-requests", "1")
    check_ok(code, report)
    assert report["actions"] == [] and system.pairs() == {(HP2, A), (HP3, B)}
    code, report = system.backend(1, "--idle-seconds", "0", "--min-requests", "1")
    check_ok(code, report)
    assert actions(report, "delete") == {(HP3, B)} and system.pairs() == {(HP2, A)}
    assert "idle" in report["actions"][0]["reason"]


def test_memory_is_freed_before_it_is_needed_on_the_same_node(make_system):
    """Mode 2 replaces a model on a full node: the provision waits for the deletion there."""
    system = make_system([{"name": A, "memory": 130000, "class": "small"},
                          {"name": B, "memory": 130000, "class": "small"}])
    system.seed_demand({(LOGREG, "z-a"): 5})
    system.deploy([(HP2, A)])           # 60000 of 130000 KB: LOGREG (80000) fits only once HP2 is gone
    code, report = system.backend(2, "--wait-ready")
    check_ok(code, report)
    by_kind = {a["kind"]: a for a in report["actions"]}
    assert (by_kind["delete"]["model"], by_kind["delete"]["node"]) == (HP2, A)
    assert (by_kind["provision"]["model"], by_kind["provision"]["node"]) == (LOGREG, A)
    assert by_kind["provision"].get("waited_for_deletions") is True
    assert by_kind["provision"]["start_ms"] >= by_kind["delete"]["start_ms"] + by_kind["delete"]["ms"] - 1
    assert system.pairs() == {(LOGREG, A)}


def test_solvers_and_formulations_agree_on_a_clear_case(make_system):
    """Each zone's demand goes next to it, whichever solver or formulation decides (dry runs)."""
    system = make_system()
    system.seed_demand({(HP2, "z-a"): 3, (LOGREG, "z-b"): 2})
    expected = [[LOGREG, B], [HP2, A]]
    for solver, formulation in (("ipopt", "placement"), ("highs", "placement"), ("glpk", "placement"),
                                ("ipopt", "thesis"), ("highs", "thesis")):
        code, report = system.backend(1, "--dry-run", "--solver", solver, "--formulation", formulation)
        assert code == 0, (solver, formulation, report["errors"])
        assert sorted(report["plan"]["desired"]) == sorted(expected), (solver, formulation)
        assert report["solver"]["formulation"] == formulation and report["solver"]["requested"] == solver
    assert system.pairs() == set()
