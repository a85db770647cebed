"""ALTO cost maps (RFC 7285): parsing, validation, zone -> node lookups, the shipped file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from backend.alto import AltoError, CostMap, load_cost_map, parse_cost_map

REPO = Path(__file__).resolve().parents[2]


def doc(costs, **cost_type):
    return {"meta": {"cost-type": {"cost-mode": "numerical", "cost-metric": "delay", **cost_type}},
            "cost-map": costs}


def test_lookup_uses_the_zone_row_then_default():
    cm = parse_cost_map(doc({"z1": {"a": 0.01}, "default": {"a": 0.5, "b": 0.2}}))
    assert cm.rtt("z1", "a") == 0.01
    assert cm.rtt("z1", "b") == 0.2          # missing in z1's row -> default row
    assert cm.rtt("elsewhere", "a") == 0.5
    assert cm.rtt("z1", "nowhere") is None
    assert CostMap().rtt("z1", "a") is None


def test_every_error_is_reported_at_once():
    bad = {"meta": {"cost-type": {"cost-mode": "ordinal", "cost-metric": "hopcount"}},
           "cost-map": {"z1": {"a": -1, "b": "x"}, "z2": 3}}
    with pytest.raises(AltoError) as info:
        parse_cost_map(bad, source="f.json")
    text = str(info.value)
    for part in ("f.json", "cost-mode", "cost-metric", "cost-map.z1.a", "cost-map.z1.b", "cost-map.z2"):
        assert part in text


def test_routingcost_is_accepted_and_meta_is_optional():
    assert parse_cost_map(doc({"z": {"a": 1}}, **{"cost-metric": "routingcost"})).metric == "routingcost"
    assert parse_cost_map({"cost-map": {"z": {"a": 0}}}).rtt("z", "a") == 0.0
    with pytest.raises(AltoError):
        parse_cost_map([1, 2])


def test_load_reports_missing_and_malformed_files(tmp_path):
    with pytest.raises(AltoError, match="cannot read"):
        load_cost_map(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(AltoError, match="not valid JSON"):
        load_cost_map(bad)
    assert load_cost_map(None).costs == {}


def test_shipped_cost_map_covers_every_local_node_from_every_zone():
    cm = load_cost_map(REPO / "config" / "alto-costmap.json")
    nodes = [n["name"] for n in yaml.safe_load((REPO / "config" / "cluster.local.yaml").read_text())["nodes"]]
    assert "default" in cm.costs
    for zone in cm.zones:
        for node in nodes:
            assert cm.rtt(zone, node) is not None, (zone, node)
    # each zone's nearest node is a different small node
    nearest = {min(nodes, key=lambda n: cm.rtt(z, n)) for z in cm.zones if z != "default"}
    assert len(nearest) == len(cm.zones) - 1
    json.loads((REPO / "config" / "alto-costmap.json").read_text())["meta"]["cost-type"]
