"""Validation of the local cluster description: every error names the file, the node and the field."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.local_config import (DEFAULT_LOCAL_CONFIG, LocalConfigError, LocalNodeSpec,
                                  load_local_config, parse_local_config)
from cluster.port import ClusterError

GOOD = {"name": "n1", "address": "127.0.1.1", "memory": 1000, "cpu": 2, "class": "small"}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _error(tmp_path: Path, nodes: object) -> str:
    path = _write(tmp_path, {"nodes": nodes})
    with pytest.raises(LocalConfigError) as info:
        load_local_config(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_shipped_config_mirrors_the_thesis_testbed():
    nodes = load_local_config(DEFAULT_LOCAL_CONFIG)
    classes = [n.node_class for n in nodes]
    assert classes.count("small") == 4 and classes.count("large") == 1
    assert len({n.address for n in nodes}) == len(nodes)
    assert all(n.address.startswith("127.") for n in nodes)


def test_good_config_parses(tmp_path):
    nodes = load_local_config(_write(tmp_path, {"nodes": [GOOD, {**GOOD, "name": "n2", "address": "127.0.1.2",
                                                                  "cpu": 1.5}]}))
    assert nodes[0] == LocalNodeSpec(name="n1", address="127.0.1.1", memory=1000, cpu=2.0, node_class="small")
    assert nodes[1].cpu == 1.5


@pytest.mark.parametrize("field, value, expect", [
    ("address", "10.0.0.1", "field 'address' must be a loopback"),
    ("address", "::1", "field 'address' must be a loopback"),
    ("address", "127.0.0.0", "field 'address' must be a loopback"),
    ("address", "localhost", "field 'address' must be a loopback"),
    ("address", None, "field 'address' must be a loopback"),
    ("memory", 0, "field 'memory' must be positive"),
    ("memory", 1.5, "field 'memory' must be an integer"),
    ("memory", "lots", "field 'memory' must be a positive number"),
    ("memory", True, "field 'memory' must be a positive number"),
    ("cpu", -1, "field 'cpu' must be positive"),
    ("cpu", None, "field 'cpu' must be a positive number"),
    ("class", "", "field 'class' must be a non-empty string"),
    ("class", 3, "field 'class' must be a non-empty string"),
    ("colour", "red", "unknown field(s) colour"),
    ("tier", "fog", "field 'tier' must be one of edge, cloud"),
    ("cost_per_request", -1, "field 'cost_per_request' must be a non-negative number, got -1"),
    ("cost_per_instance_hour", float("nan"), "field 'cost_per_instance_hour' must be a finite number, got nan"),
])
def test_each_bad_field_is_named(tmp_path, field, value, expect):
    entry = {**GOOD, field: value}
    message = _error(tmp_path, [entry])
    assert "node 'n1'" in message
    assert expect in message


def test_missing_field_is_named(tmp_path):
    entry = {k: v for k, v in GOOD.items() if k != "cpu"}
    assert "node 'n1': field 'cpu'" in _error(tmp_path, [entry])


@pytest.mark.parametrize("name", [None, "", "Bad_Name", "-x", "a" * 64])
def test_bad_names_are_reported_by_position(tmp_path, name):
    message = _error(tmp_path, [GOOD, {**GOOD, "name": name, "address": "127.0.1.9"}])
    assert "nodes[1]: field 'name'" in message


def test_duplicates_are_refused(tmp_path):
    message = _error(tmp_path, [GOOD, {**GOOD, "address": "127.0.1.2"}, {**GOOD, "name": "n3"}])
    assert "node 'n1': field 'name' duplicates" in message
    assert "node 'n3': field 'address' 127.0.1.1 already used by node 'n1'" in message


def test_every_error_is_reported_at_once(tmp_path):
    message = _error(tmp_path, [{**GOOD, "memory": -5, "cpu": "x"}, {**GOOD, "name": "n2", "address": "8.8.8.8"}])
    assert "node 'n1': field 'memory'" in message
    assert "node 'n1': field 'cpu'" in message
    assert "node 'n2': field 'address'" in message


@pytest.mark.parametrize("text", ["nodes: []", "nodes: 3", "[]", "", "other: 1"])
def test_bad_shapes(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(LocalConfigError, match="non-empty 'nodes' list"):
        load_local_config(path)


def test_entry_not_a_mapping(tmp_path):
    assert "nodes[0]: must be a mapping" in _error(tmp_path, ["n1"])


def test_unknown_top_level_field(tmp_path):
    with pytest.raises(LocalConfigError, match="unknown top-level field"):
        parse_local_config({"nodes": [GOOD], "extra": 1}, source="x.yaml")


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(LocalConfigError, match="cannot read"):
        load_local_config(tmp_path / "missing.yaml")
    with pytest.raises(LocalConfigError, match="not valid YAML"):
        load_local_config(_write(tmp_path, "nodes: [unclosed"))


def test_config_errors_are_cluster_errors():
    assert issubclass(LocalConfigError, ClusterError)


def test_a_cloud_node_carries_its_tier_and_costs_as_labels(tmp_path):
    from cluster.port import Node, node_costs, node_tier

    cloud = {**GOOD, "name": "cloud-1", "address": "127.0.1.2", "tier": "cloud", "cost_per_request": 0.01,
             "cost_per_instance_hour": 2}
    edge, spec = load_local_config(_write(tmp_path, {"nodes": [GOOD, cloud]}))
    assert (edge.tier, edge.labels()) == ("edge", {"node-class": "small"})
    assert spec.tier == "cloud" and spec.labels() == {"node-class": "small", "topology": "cloud",
                                                      "cost-per-request": "0.01", "cost-per-instance-hour": "2.0"}
    node = Node(name="cloud-1", address="127.0.1.2", ready=True, memory_total=1000, memory_used=0,
                cpu_capacity=2, cpu_usage=0, labels=spec.labels())
    assert node_tier(node) == "cloud" and node_costs(node) == (0.01, 2.0)
    bad = Node(name="x", address="127.0.1.3", ready=True, memory_total=1, memory_used=0, cpu_capacity=1,
               cpu_usage=0, labels={"topology": "edge", "cost-per-request": "nan"})
    assert node_tier(bad) == "edge" and node_costs(bad) == (0.0, 0.0)


@pytest.mark.parametrize("field, value, expect", [
    ("memory", float("nan"), "field 'memory' must be a finite number, got nan"),
    ("cpu", float("inf"), "field 'cpu' must be a finite number, got inf"),
    ("cpu_quota", float("nan"), "field 'cpu_quota' must be a finite number of cores"),
    ("cpu", "2", "field 'cpu' must be a positive number, got '2'"),
    ("memory", [1000], "field 'memory' must be a positive number, got [1000]"),
])
def test_non_finite_and_wrong_types_are_refused_naming_the_field(tmp_path, field, value, expect):
    assert f"node 'n1': {expect}" in _error(tmp_path, [{**GOOD, field: value}])


def test_nan_as_written_in_the_file_is_refused(tmp_path):
    path = _write(tmp_path, "nodes:\n- {name: n1, address: 127.0.1.1, memory: 1000, cpu: .nan, class: small}\n")
    with pytest.raises(LocalConfigError, match=r"node 'n1': field 'cpu' must be a finite number, got nan"):
        load_local_config(path)
