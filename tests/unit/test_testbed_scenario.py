"""testbed/scenario.py: the scenario loader's errors name their field, in one line; shipped scenarios load."""
from __future__ import annotations

import copy
import pickle
import subprocess
import sys

import pytest
import yaml

from testbed.scenario import (DEFAULT_STRATEGIES, MAX_RATE, REPO_ROOT, SCENARIOS_DIR, FrozenMap, Scenario, ScenarioError,
                              load_scenario, parse_scenario)
from testbed.__main__ import main

BASE = {
    "seed": 7,
    "nodes": [{"name": "nano-1", "class": "small", "cpu": 0.25, "memory": 250000},
              {"name": "xavier", "class": "large", "cpu": 1.0, "memory": 800000}],
    "zones": [{"name": "zone-1", "rtt": {"nano-1": 0.004, "xavier": 0.012}},
              {"name": "zone-2", "rtt": {"nano-1": 0.030, "xavier": 0.010}}],
    "phases": [{"duration": 60, "rate": 20, "burstiness": 1.0, "zones": {"zone-1": 0.5, "zone-2": 0.5},
                "popularity": {"zipf": 1.1}},
               {"duration": 60, "rate": 30, "burstiness": 3.0, "zones": {"zone-1": 1},
                "popularity": {"half_plus_two": 0.7, "digits_logreg": 0.3}}],
}


def base(**changes) -> dict:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def error_of(data) -> str:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_valid_scenario_loads_into_frozen_dataclasses():
    s = parse_scenario(base(alto={"zone-2": {"xavier": 0.02}}, slo=0.1, strategies=["thesis", "ours-load"]))
    assert isinstance(s, Scenario) and s.seed == 7 and s.slo == 0.1
    assert s.node_names == ("nano-1", "xavier") and s.zone_names == ("zone-1", "zone-2")
    assert s.rtt("zone-2", "nano-1") == 0.030 and s.strategies == ("thesis", "ours-load")
    assert s.told_costs() == {"zone-1": {"nano-1": 0.004, "xavier": 0.012}, "zone-2": {"nano-1": 0.030, "xavier": 0.02}}
    assert s.alto_cost_map()["cost-map"]["zone-2"]["xavier"] == 0.02
    p0, p1 = s.phases
    assert (p0.start, p1.start, s.duration, s.expected_requests) == (0, 60, 120, 60 * 20 + 60 * 30)
    assert list(p0.popularity) == list(s.models)                      # Zipf over the catalog, in its order
    assert p1.popularity == {"half_plus_two": 0.7, "digits_logreg": 0.3} and p1.zones == {"zone-1": 1.0}
    assert s.cluster_nodes()[0] == {"name": "nano-1", "class": "small", "cpu": 0.25, "memory": 250000}
    with pytest.raises(AttributeError):
        s.seed = 8
    with pytest.raises(TypeError):
        s.phases[0].zones["zone-1"] = 2
    assert pickle.loads(pickle.dumps(s)) == s and hash(s.phases[0]) == hash(copy.deepcopy(s.phases[0]))


def test_defaults_nodes_from_the_cluster_config_and_all_strategies():
    data = base()
    del data["nodes"]
    data["zones"] = [{"name": "zone-1", "rtt": {n: 0.01 for n in ("nano-1", "nano-2", "nano-3", "nano-4", "xavier")}}]
    data["phases"][1]["zones"] = {"zone-1": 1}
    data["phases"][0]["zones"] = {"zone-1": 1}
    s = parse_scenario(data)
    assert s.nodes_default and s.node_names == ("nano-1", "nano-2", "nano-3", "nano-4", "xavier")
    assert s.strategies == DEFAULT_STRATEGIES and s.slo is None and s.alto is None


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(bogus=1), "bogus: unknown key"),
    (lambda d: d["phases"][1].update(colour="red"), "phases[1].colour: unknown key"),
    (lambda d: d["nodes"][0].update(gpu=1), "nodes[0].gpu: unknown key"),
    (lambda d: d["zones"][0].update(latency=1), "zones[0].latency: unknown key"),
    (lambda d: d.pop("seed"), "seed: missing"),
    (lambda d: d["phases"][0].pop("rate"), "phases[0].rate: missing"),
    (lambda d: d["zones"][0]["rtt"].pop("xavier"), "zones.zone-1.rtt: no rtt for node(s) xavier"),
    (lambda d: d["zones"][1]["rtt"].update({"nano-9": 0.01}), "zones.zone-2.rtt.nano-9: not a node of this scenario"),
    (lambda d: d["phases"][0].update(rate=MAX_RATE + 1), "phases[0].rate: 501 requests/s is more than the client emulator sends"),
    (lambda d: d["phases"][0].update(rate=float("nan")), "phases[0].rate: must be a finite number, got nan"),
    (lambda d: d["zones"][0]["rtt"].update({"xavier": float("inf")}), "zones.zone-1.rtt.xavier: must be a finite number"),
    (lambda d: d["phases"][1].update(duration=-5), "phases[1].duration: must be > 0"),
    (lambda d: d["phases"][0].update(burstiness="high"), "phases[0].burstiness: must be a number, got a string"),
    (lambda d: d["phases"][0].update(rate=True), "phases[0].rate: must be a number, got a boolean"),
    (lambda d: d.update(seed=1.5), "seed: must be an integer"),
    (lambda d: d["phases"][1]["zones"].update({"zone-4": 1}), "phases[1].zones.zone-4: not a zone of this scenario"),
    (lambda d: d["phases"][1].update(zones={"zone-1": 0, "zone-2": 0}), "phases[1].zones: weights must sum to a positive number"),
    (lambda d: d["phases"][1]["popularity"].update({"resnet": 1}), "phases[1].popularity.resnet: not a model of the catalog"),
    (lambda d: d["phases"][0]["popularity"].update({"half_plus_two": 1}), "phases[0].popularity: either {zipf: s} alone"),
    (lambda d: d.update(strategies=["ours", "magic"]), "strategies[1]: unknown strategy 'magic'"),
    (lambda d: d.update(alto={"zone-9": {"xavier": 0.1}}), "alto.zone-9: not a zone of this scenario"),
    (lambda d: d.update(alto={"zone-1": {"nano-7": 0.1}}), "alto.zone-1.nano-7: not a node of this scenario"),
    (lambda d: d["nodes"].append({"name": "xavier", "class": "large", "cpu": 1, "memory": 1}), "nodes[2].name: 'xavier' is listed twice"),
    (lambda d: d["nodes"][0].update({"class": "huge"}), "nodes[0].class: must be a node class of the catalog"),
    (lambda d: d["nodes"][0].update(memory=-1), "nodes[0].memory: must be > 0"),
    (lambda d: d.update(slo=0), "slo: must be > 0"),
    (lambda d: d.update(phases=[]), "phases: must be a non-empty list"),
])
def test_each_error_names_its_field_in_one_line(mutate, expected):
    data = base()
    mutate(data)
    assert expected in error_of(data)


def test_all_errors_are_reported_at_once():
    data = base(bogus=1, strategies=["nope"])
    data["phases"][0]["rate"] = float("nan")
    data["phases"][1]["popularity"] = {"resnet": 1}
    message = error_of(data)
    parts = message.split("; ")
    assert len(parts) == 4 and parts[0].startswith("bogus:")
    assert any(p.startswith("phases[0].rate:") for p in parts)
    assert any(p.startswith("phases[1].popularity.resnet:") for p in parts)
    assert any(p.startswith("strategies[0]:") for p in parts)


def test_not_a_mapping_and_bad_yaml_are_one_line(tmp_path):
    assert "scenario: must be a mapping" in error_of([1, 2])
    path = tmp_path / "bad.yaml"
    path.write_text("seed: 7\nzones: [\n  {name: a\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert "not valid YAML at line" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")


def test_nan_written_in_yaml_is_refused(tmp_path):
    path = tmp_path / "nan.yaml"
    data = base()
    text = yaml.safe_dump(data).replace("rate: 20", "rate: .nan")
    path.write_text(text)
    with pytest.raises(ScenarioError, match=r"phases\[0\]\.rate: must be a finite number"):
        load_scenario(path)


def test_the_catalog_path_is_a_parameter(tmp_path):
    catalog = tmp_path / "models.yaml"
    catalog.write_text(yaml.safe_dump({"models": [{"name": "only_one", "exec_time": {"small": 0.1, "large": 0.1}}]}))
    data = base()
    data["phases"] = [{"duration": 1, "rate": 1, "zones": {"zone-1": 1}, "popularity": {"zipf": 1}}]
    s = parse_scenario(data, catalog_path=catalog)
    assert s.models == ("only_one",) and s.phases[0].popularity == {"only_one": 1.0}
    assert s.phases[0].burstiness == 1.0        # optional, Poisson
    data["phases"][0]["popularity"] = {"half_plus_two": 1}
    with pytest.raises(ScenarioError, match="half_plus_two: not a model of the catalog"):
        parse_scenario(data, catalog_path=catalog)


@pytest.mark.parametrize("name", ["default.yaml", "smoke.yaml", "load.yaml", "steady.yaml"])
def test_the_shipped_scenarios_load(name):
    s = load_scenario(SCENARIOS_DIR / name)
    assert s.phases and s.zones and s.slo == 0.1
    if name == "default.yaml":
        assert s.nodes_default and len(s.nodes) == 5 and len(s.zones) >= 3 and len(s.phases) == 3
        assert max(p.rate for p in s.phases) <= 40 and any(p.burstiness == 3.0 for p in s.phases)
        assert all(60 <= p.duration <= 100 for p in s.phases)
        wrong = [(z, n) for z, costs in s.alto.items() for n, c in costs.items() if c != s.rtt(z, n)]
        assert wrong and all(s.alto[z][n] / s.rtt(z, n) in (2.0, 0.5) for z, n in wrong)
    elif name in ("load.yaml", "steady.yaml"):      # one world: steady.yaml holds load.yaml's levels longer
        load = load_scenario(SCENARIOS_DIR / "load.yaml")
        assert (s.nodes, s.zones, s.seed) == (load.nodes, load.zones, load.seed)
        if name == "steady.yaml":
            assert all(p.duration == 90 for p in s.phases) and s.strategies == ("ours-load", "ours-cloud")
            assert [(p.rate, p.burstiness) for p in s.phases] == [(7, 1.0), (28, 1.0), (56, 1.0), (56, 3.0)]
    else:
        assert len(s.phases) == 2 and all(p.duration == 10 for p in s.phases)
        assert len(s.zones) == 2 and len(s.strategies) == 2


def test_cli_check(capsys, tmp_path):
    assert main(["check", str(SCENARIOS_DIR / "default.yaml")]) == 0
    assert "phase 1" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    data = base()
    data["phases"][1]["zones"] = {"zone-4": 1}
    bad.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "testbed", "check", str(bad)], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == "testbed: phases[1].zones.zone-4: not a zone of this scenario"


def test_frozen_map_is_read_only():
    m = FrozenMap({"a": 1})
    with pytest.raises(TypeError):
        m["a"] = 2
    with pytest.raises(AttributeError):
        m._data = {}
    assert m == {"a": 1} and dict(m) == {"a": 1}


def test_a_node_may_be_in_the_cloud_tier_with_its_own_quota():
    data = base()
    data["nodes"].append({"name": "cloud", "class": "large", "cpu": 16.0, "memory": 4000000, "tier": "cloud",
                          "cpu_quota": 0.5})
    for zone in data["zones"]:
        zone["rtt"]["cloud"] = 0.06
    s = parse_scenario(data)
    cloud = next(n for n in s.nodes if n.name == "cloud")
    assert (cloud.tier, cloud.cpu_quota) == ("cloud", 0.5)
    assert s.nodes[0].tier == "edge" and s.nodes[0].cpu_quota is None
    assert cloud.to_dict()["tier"] == "cloud" and "tier" not in s.nodes[0].to_dict()


@pytest.mark.parametrize("field, value, expected", [
    ("tier", "fog", "nodes[0].tier: must be one of edge, cloud, got 'fog'"),
    ("cpu_quota", float("nan"), "nodes[0].cpu_quota: must be a finite number"),
    ("cpu_quota", 0, "nodes[0].cpu_quota: must be > 0"),
])
def test_bad_tier_and_quota_name_their_field(field, value, expected):
    data = base()
    data["nodes"][0][field] = value
    assert expected in error_of(data)
