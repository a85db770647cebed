"""The experiment's pure parts: Kubernetes-style spreading, strategy flags, the results document."""
import dataclasses
import json
from pathlib import Path

from testbed.clients import ClientResults, RequestRecord
import pytest

from testbed.report import PREDICTION_LAG, latency_stats, write_results
from testbed.runner import StrategyRun, _backend_runs, _read_report, spread_placement
from testbed.scenario import load_scenario
from testbed.strategies import STRATEGIES, backend_flags
from testbed.trace import generate_trace

SMOKE = Path(__file__).resolve().parents[2] / "testbed" / "scenarios" / "smoke.yaml"


def test_spread_is_least_allocated_first_and_as_many_as_fit():
    nodes = [{"name": "a", "memory": 100}, {"name": "b", "memory": 100}, {"name": "c", "memory": 300}]
    placed = spread_placement(["m", "n"], nodes, {"m": 60, "n": 40})
    # Round 1: m on a (all empty, first name), n on b; round 2: m on c (b is 40% used, c 0%), n on a...
    assert placed[:2] == [("m", "a"), ("n", "b")]
    assert ("m", "c") in placed and ("n", "c") in placed
    used = {"a": 0, "b": 0, "c": 0}
    for model, node in placed:
        used[node] += {"m": 60, "n": 40}[model]
    assert all(used[n["name"]] <= n["memory"] for n in nodes)
    assert len(set(placed)) == len(placed)                # one replica per (model, node)
    # Nothing else fits anywhere.
    for model, size in {"m": 60, "n": 40}.items():
        assert all((model, n["name"]) in placed or used[n["name"]] + size > n["memory"] for n in nodes)


def test_strategies_configure_what_the_issue_names():
    assert STRATEGIES["kubernetes"].backend is None and STRATEGIES["kubernetes"].policy == "random"
    thesis = backend_flags(STRATEGIES["thesis"])
    assert thesis[:4] == ["--mode", "1", "--solver", "ipopt"] and "latency" in thesis
    ours = backend_flags(STRATEGIES["ours"])
    assert "highs" in ours and STRATEGIES["ours"].policy == "plan" and "reports" in ours
    assert STRATEGIES["nearest"].policy == "nearest" and STRATEGIES["nearest"].backend == STRATEGIES["ours"].backend
    load, cloud = backend_flags(STRATEGIES["ours-load"]), backend_flags(STRATEGIES["ours-cloud"])
    assert load == cloud and load[load.index("--formulation") + 1] == "latency" and "--formulation" not in ours
    assert STRATEGIES["ours-cloud"].cloud and not any(STRATEGIES[n].cloud for n in STRATEGIES if n != "ours-cloud")
    assert {"--mode", "1", "highs", "reports"} <= set(load) and STRATEGIES["ours-load"].policy == "expected-delay"
    assert load[load.index("--rate-window") + 1] == "10" and "--rate-window" not in ours
    from testbed.scenario import STRATEGIES as NAMES
    assert set(STRATEGIES) == set(NAMES)          # every name a scenario may list can be run


def test_backend_runs_come_from_the_run_reports(tmp_path):
    report = {"started": 105.0, "solver": {"status": "optimal", "objective": 2.0, "seconds": 0.01, "name": "highs"},
              "inputs": {"requests": 40}, "summary": {"provisioned": 2, "deleted": 0}, "errors": []}
    path = tmp_path / "backend-report.json"
    path.write_text(json.dumps(report))
    assert _read_report(path) == report and _read_report(tmp_path / "missing.json") is None
    runs = _backend_runs([report], started_at=100.0)
    assert runs == [{"t": 5.0, "status": "optimal", "solver": "highs", "seconds": 0.01, "objective": 2.0,
                     "requests": 40, "predicted_mean": 0.05, "objective_mean": 0.05, "predictions": {},
                     "dispersion": None, "paces": None, "idle_paces": None, "joint_dispersion": None,
                     "provisioned": 2, "deleted": 0, "errors": []}]
    # a latency run's report carries predictions per dispatch: the one for the front-end's policy is used
    latency = {**report, "prediction": {"pooled": 0.03, "split": 0.04, "simulated": 0.035}}
    delay = _backend_runs([latency], started_at=100.0, policy="expected-delay")[0]
    assert delay["predicted_mean"] == 0.035 and delay["predictions"] == latency["prediction"]
    assert _backend_runs([latency], started_at=100.0, policy="plan")[0]["predicted_mean"] == 0.04
    assert _backend_runs([latency], started_at=100.0, policy="random")[0]["predicted_mean"] == 0.04
    nearest = _backend_runs([latency], started_at=100.0, policy="nearest")[0]
    assert nearest["predicted_mean"] == nearest["objective_mean"] == 0.05
    overload = {**report, "prediction": {"pooled": None, "split": None, "simulated": None}}
    assert _backend_runs([overload], started_at=100.0, policy="expected-delay")[0]["predicted_mean"] is None


def test_results_document_has_the_promised_shape(tmp_path):
    smoke = load_scenario(SMOKE)               # phases of 10 s; twice as long, so one holds a run PREDICTION_LAG in
    scenario = dataclasses.replace(smoke, phases=tuple(dataclasses.replace(p, start=2 * p.start, duration=2 * p.duration)
                                                       for p in smoke.phases))
    trace = generate_trace(scenario)
    runs = []
    for name, base in (("ours", 0.010), ("kubernetes", 0.030)):
        # kubernetes: the calls of phase 0's first PREDICTION_LAG seconds take twice as long
        slow = {a.index for a in trace if name == "kubernetes" and a.phase == 0 and a.offset < PREDICTION_LAG}
        records = [RequestRecord(request_id=a.request_id, index=a.index, phase=a.phase, zone=a.zone, client=0,
                                 model=a.model, scheduled=a.offset, started=a.offset, ok=i % 10 != 0,
                                 latency=(2 * base if a.index in slow else base) if i % 10 else 10.0,
                                 node=scenario.node_names[0],
                                 network=base / 2, server=base / 2, error=None if i % 10 else "timeout",
                                 lookup=base / 5)
                   for i, a in enumerate(trace)]
        clients = ClientResults(mode="lookup", frontend="http://x", scheduled=len(trace), records=records,
                                seconds=scenario.duration, started_at=1000.0, timeout=10.0, slo=scenario.slo)
        lag = PREDICTION_LAG
        runs.append(StrategyRun(name=name, clients=clients, samples=[{"t": 0.0, "instances": 1}],
                                backend_runs=[{"t": lag - 1, "predicted_mean": 1.0, "requests": 10, "seconds": 0.01},
                                              {"t": lag, "predicted_mean": base, "objective_mean": 2 * base,
                                               "requests": 10, "seconds": 0.01,
                                               "predictions": {"simulated": base, "pooled": 0.5 * base}}]))
    doc = write_results(scenario, trace, runs, tmp_path, mode="lookup", every=10.0,
                        frontend_settings={"dispatch_quantile": "0.5"})
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["frontend_settings"] == {"dispatch_quantile": "0.5"}
    assert "front-end settings dispatch_quantile=0.5." in (tmp_path / "results.md").read_text()
    for name in ("ours", "kubernetes"):
        s = saved["strategies"][name]
        assert set(s["latency"]) >= {"mean", "p50", "p95", "p99"}
        assert len(s["phases"]) == len(scenario.phases) and set(s["phases"][0]["latency"]) >= {"mean", "p95"}
        assert set(s["zones"]) == set(scenario.zone_names)
        assert s["sent"] == len(trace) and s["failed"] == len(trace[::10])      # failures count
        assert s["latency"]["p99"] == 10.0                                      # ... in the tail, at the timeout
    assert saved["scenario"]["seed"] == scenario.seed and saved["trace"]["requests"] == len(trace)
    assert "| kubernetes |" in (tmp_path / "results.md").read_text()
    for plot in ("latency_cdf.png", "p95_over_time.png", "instances_over_time.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    ours = doc["strategies"]["ours"]
    assert ours["predicted_mean"] == pytest.approx((1.0 + 0.01) / 2)           # every run, over the whole trace
    # a phase's prediction: the runs made PREDICTION_LAG s or more into it (the first planned for the phase before)
    assert ours["phases"][0]["predicted_mean"] == 0.01 and ours["phases"][0]["objective_mean"] == 0.02
    assert ours["phases"][0]["predictions"] == {"pooled": 0.005, "simulated": 0.01}   # every kind, beside
    assert "(pred 10.0, obj 20.0, pooled 5.0, ach" in (tmp_path / "results.md").read_text()
    assert ours["achieved_mean_ok"] == 0.01 and ours["achieved_call_mean_ok"] == 0.008   # the lookup left out
    assert saved["initial"] == "spread" and "call 8.0, from 10 s 8.0)" in (tmp_path / "results.md").read_text()
    after = [a for a in trace if a.phase == 0 and a.offset >= scenario.phases[0].start + PREDICTION_LAG and a.index % 10]
    assert after and ours["phases"][0]["achieved_call_mean_after_lag"] == pytest.approx(0.008)
    # the after-lag mean leaves the phase's first seconds out, the whole-phase mean does not
    k8s = doc["strategies"]["kubernetes"]["phases"][0]
    assert k8s["achieved_call_mean_after_lag"] == pytest.approx(0.024) and k8s["achieved_call_mean_ok"] > 0.03
    # where each phase's requests went: all to the first node here, 1 in 10 failed (outside the SLO)
    node = scenario.node_names[0]
    first = [a for a in trace if a.phase == 0]
    assert ours["phases"][0]["nodes"] == {node: {
        "rate": pytest.approx(len(first) / scenario.phases[0].duration, abs=1e-3),
        "slo_met": pytest.approx(sum(1 for a in first if a.index % 10) / len(first), abs=1e-6),
        "server_p50": 0.005}}
    assert f"| ours | 0 | {len(first) / scenario.phases[0].duration:.1f}/s," in (tmp_path / "results.md").read_text()


def test_latency_stats_nearest_rank():
    assert latency_stats([0.1, 0.2, 0.3, 0.4]) == {"mean": 0.25, "p50": 0.2, "p95": 0.4, "p99": 0.4, "n": 4}
    assert latency_stats([])["mean"] is None


def test_an_unknown_initial_deployment_is_refused_before_anything_runs(tmp_path):
    import pytest

    from testbed.runner import run_experiment
    from testbed.scenario import SCENARIOS_DIR, load_scenario

    with pytest.raises(ValueError, match="initial: expected one of spread, empty"):
        run_experiment(load_scenario(SCENARIOS_DIR / "smoke.yaml"), tmp_path / "out", initial="warm")
    assert not (tmp_path / "out" / "trace.jsonl").exists()


def test_cloud_nodes_only_for_a_strategy_with_a_cloud_tier(tmp_path):
    import yaml

    from testbed.runner import _cluster_file, _nodes_for
    from testbed.scenario import Node, SCENARIOS_DIR, load_scenario
    from testbed.strategies import Strategy

    scenario = load_scenario(SCENARIOS_DIR / "smoke.yaml")
    cloud = Node(name="cloud", node_class="large", cpu=16.0, memory=4_000_000, tier="cloud", cpu_quota=0.5)
    scenario = dataclasses.replace(scenario, nodes=(*scenario.nodes, cloud))
    edge_only, with_cloud = Strategy("a", policy="plan", backend=None), Strategy("b", policy="plan", backend=None,
                                                                                 cloud=True)
    assert [n.name for n in _nodes_for(scenario, edge_only)] == ["nano-1", "xavier"]
    nodes = _nodes_for(scenario, with_cloud)
    assert [n.name for n in nodes] == ["nano-1", "xavier", "cloud"]
    doc = yaml.safe_load(_cluster_file(scenario, tmp_path / "cluster.yaml", nodes).read_text())
    entry = {n["name"]: n for n in doc["nodes"]}
    assert entry["cloud"]["tier"] == "cloud" and entry["cloud"]["cpu_quota"] == 0.5
    assert "tier" not in entry["nano-1"] and entry["nano-1"]["cpu_quota"] > 0
    assert len({n["address"] for n in doc["nodes"]}) == 3


def test_a_front_end_setting_reaches_every_strategys_system_and_bad_ones_stop_the_run(tmp_path, capsys):
    from testbed.__main__ import main
    from testbed.runner import _System, frontend_setting
    from testbed.scenario import SCENARIOS_DIR

    assert frontend_setting("dispatch_quantile=0.5") == ("dispatch_quantile", "0.5")
    assert frontend_setting("Backlog-Shared=false") == ("backlog_shared", "false")
    for item, why in (("dispatch_quantile", "expected KEY=VALUE"), ("=1", "expected KEY=VALUE"),
                      ("colour=red", "colour is not a front-end setting"),
                      ("policy=nearest", "policy is set by the testbed"),
                      ("database=/tmp/x.db", "database is set by the testbed"),
                      ("dispatch_quantile=0.2", "dispatch_quantile: must be >= 0.5"),
                      ("measured_pace=maybe", "must be true or false")):
        with pytest.raises(ValueError, match=why):
            frontend_setting(item)
    scenario = load_scenario(SCENARIOS_DIR / "smoke.yaml")
    (tmp_path / "sys").mkdir()
    system = _System(scenario, STRATEGIES["ours-load"], tmp_path / "sys", every=10.0,
                     frontend_settings={"dispatch_quantile": "0.5"})
    flags = [system.command[i + 1] for i, f in enumerate(system.command) if f == "--frontend-setting"]
    assert flags == ["policy=expected-delay", "dispatch_quantile=0.5"]
    # on the command line: one line, exit 2, nothing run
    out = tmp_path / "out"
    assert main(["run", str(SCENARIOS_DIR / "smoke.yaml"), "--out", str(out),
                 "--frontend-setting", "policy=nearest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["testbed: --frontend-setting: policy is set by the testbed (each strategy's own)"]
    assert not out.exists()
