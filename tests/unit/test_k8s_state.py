"""Pure conversion of API-shaped objects into the port's Node and Deployment."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from cluster.catalog import load_catalog
from cluster.k8s_render import render_instance
from cluster.k8s_state import (build_deployments, build_node, build_nodes, estimate_cpu_usage, format_endpoint,
                               memory_used_by_node, metrics_cpu, node_address, node_ready, parse_cpu,
                               parse_memory_kb, parse_quantity, parse_time, pod_problem, pod_requests,
                               tier_label_problems)
from cluster.local_config import LocalNodeSpec
from cluster.port import node_costs, node_tier

FIXTURE_CATALOG = Path(__file__).resolve().parents[1] / "fixtures" / "models.yaml"


def node(name="nano-1", *, ready="True", cpu="4", memory="4Gi", address="10.0.0.1", labels=None,
         unschedulable=False):
    obj = {"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
           "spec": {"unschedulable": True} if unschedulable else {},
           "status": {"capacity": {"cpu": cpu, "memory": memory}, "allocatable": {"cpu": cpu, "memory": memory},
                      "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": address}],
                      "conditions": [{"type": "MemoryPressure", "status": "False"},
                                     {"type": "Ready", "status": ready}]}}
    return obj


def rendered(model="half_plus_two", node_name="nano-1"):
    return render_instance(load_catalog(FIXTURE_CATALOG)[model], node_name)


def pod_for(out, *, node_name="nano-1", phase="Running"):
    template = out.deployment["spec"]["template"]
    return {"metadata": {"name": out.name + "-abc", "labels": template["metadata"]["labels"],
                         "annotations": template["metadata"]["annotations"]},
            "spec": {**template["spec"], "nodeName": node_name}, "status": {"phase": phase}}


@pytest.mark.parametrize("text,cores", [
    ("250m", 0.25), ("1", 1.0), ("1500000n", 0.0015), ("2", 2.0), ("0.5", 0.5), ("100u", 0.0001),
    ("1e3m", 1.0), (3, 3.0), (0.25, 0.25), ("1k", 1000.0),
])
def test_cpu_quantities(text, cores):
    assert parse_cpu(text) == pytest.approx(cores)


@pytest.mark.parametrize("text,kb", [
    ("4Gi", 4 * 1024 * 1024), ("1024Ki", 1024), ("512Mi", 512 * 1024), ("1G", 976562), ("1048576", 1024),
    ("60000Ki", 60000), ("1.5Gi", 1536 * 1024), ("129e6", 125976),
])
def test_memory_quantities(text, kb):
    assert parse_memory_kb(text) == kb


def test_memory_requests_round_up_and_quantities_are_exact():
    assert parse_memory_kb("1G", round_up=True) == 976563
    assert parse_quantity("1500000n") == Decimal("0.0015")
    for bad in ["", "abc", "1Qi", "Gi", "1e", True]:
        with pytest.raises(ValueError):
            parse_quantity(bad)


def test_ready_and_not_ready_nodes():
    assert node_ready(node(ready="True"))
    assert not node_ready(node(ready="False"))
    assert not node_ready(node(ready="Unknown"))
    no_conditions = node()
    del no_conditions["status"]["conditions"]
    assert not node_ready(no_conditions)


def test_node_conversion():
    out = build_node(node(labels={"edge-inference/node-class": "large"}, cpu="8", memory="16Gi"),
                     memory_used=120000)
    assert out.name == "nano-1" and out.address == "10.0.0.1" and out.ready
    assert out.memory_total == 16 * 1024 * 1024 and out.memory_used == 120000
    assert out.cpu_capacity == 8.0 and out.cpu_usage == 0.0
    assert out.labels["node-class"] == "large" and out.labels["kubernetes.io/hostname"] == "nano-1"
    assert build_node(node()).labels["node-class"] == "unknown"
    assert build_node(node(), node_class_label="tier").labels["node-class"] == "unknown"
    assert build_node(node(labels={"tier": "small"}), node_class_label="tier").labels["node-class"] == "small"


def test_tier_and_costs_come_from_the_node_labels_as_on_the_local_cluster():
    cloud = build_node(node(labels={"topology": "cloud", "cost-per-request": "0.001",
                                    "cost-per-instance-hour": "36"}))
    assert node_tier(cloud) == "cloud" and node_costs(cloud) == (0.001, 36.0)
    # the labels a local `tier: cloud` node reports are read the same way from a Kubernetes node
    local = LocalNodeSpec(name="c", address="127.0.0.9", memory=1, cpu=1.0, node_class="large", tier="cloud",
                          cost_per_request=0.001, cost_per_instance_hour=36.0)
    same = build_node(node(labels={k: v for k, v in local.labels().items() if k != "node-class"}))
    assert (node_tier(same), node_costs(same)) == ("cloud", (0.001, 36.0))
    for labels in ({}, {"topology": "edge"}):
        edge = build_node(node(labels=labels))
        assert node_tier(edge) == "edge" and node_costs(edge) == (0.0, 0.0)
        assert tier_label_problems(node(labels=labels)) == []
    assert tier_label_problems(node(labels=cloud.labels)) == []


def test_tier_and_cost_labels_the_port_would_ignore_are_named():
    bad = node(labels={"topology": "Cloud", "cost-per-request": "cheap", "cost-per-instance-hour": "inf"})
    assert tier_label_problems(bad) == [
        "node nano-1: label topology='Cloud' is neither 'edge' nor 'cloud'; the node counts as edge",
        "node nano-1: label cost-per-request='cheap' is not a finite number >= 0; counted as 0",
        "node nano-1: label cost-per-instance-hour='inf' is not a finite number >= 0; counted as 0",
    ]
    built = build_node(bad)
    assert node_tier(built) == "edge" and node_costs(built) == (0.0, 0.0)     # what the lines say


def test_address_preference():
    n = node()
    n["status"]["addresses"] = [{"type": "ExternalIP", "address": "192.0.2.1"}, {"type": "Hostname", "address": "h"}]
    assert node_address(n) == "192.0.2.1"
    n["status"]["addresses"].append({"type": "InternalIP", "address": "10.1.1.1"})
    assert node_address(n) == "10.1.1.1"
    n["status"]["addresses"] = []
    assert node_address(n) == ""


def test_fallback_cpu_estimate_from_pod_requests():
    assert estimate_cpu_usage(0.3, 4.0) == 0.3
    assert estimate_cpu_usage(9.0, 4.0) == 4.0          # capped at allocatable
    assert estimate_cpu_usage(0.0, 0.0) == 0.0
    a, b = rendered("half_plus_two"), rendered("digits_forest")
    pods = [pod_for(a), pod_for(b), pod_for(b, phase="Succeeded"), pod_for(a, node_name="other")]
    (n,) = build_nodes([node(cpu="2")], pods, [a.deployment, b.deployment], None)
    assert n.cpu_usage == pytest.approx(0.05 + 0.2)     # requests of the active pods on this node
    (measured,) = build_nodes([node(cpu="2")], pods, [], {"nano-1": 1.25})
    assert measured.cpu_usage == 1.25                   # metrics win when served


def test_metrics_items():
    items = [{"metadata": {"name": "a"}, "usage": {"cpu": "1500000n", "memory": "10Mi"}},
             {"metadata": {"name": "b"}, "usage": {"cpu": "250m"}},
             {"metadata": {"name": "c"}, "usage": {"cpu": "garbage"}},
             {"metadata": {"name": "d"}}]
    assert metrics_cpu(items) == {"a": pytest.approx(0.0015), "b": 0.25}


def test_memory_used_counts_pods_and_not_yet_scheduled_deployments():
    a, b = rendered("half_plus_two"), rendered("digits_forest")
    # b's pod is not there yet: its Deployment's template counts, so a new instance is charged at once.
    assert memory_used_by_node([pod_for(a)], [a.deployment, b.deployment]) == {"nano-1": 60000 + 120000}
    # Once the pod exists it is counted once, not twice.
    assert memory_used_by_node([pod_for(a), pod_for(b)], [a.deployment, b.deployment]) == {"nano-1": 180000}
    assert memory_used_by_node([pod_for(a, phase="Failed")], []) == {}
    assert pod_requests(pod_for(b)) == (pytest.approx(0.2), 120000)


def test_endpoint_from_internal_ip_and_node_port():
    out = rendered()
    dep = dict(out.deployment, status={"availableReplicas": 1},
               metadata=dict(out.deployment["metadata"], creationTimestamp="2024-01-02T03:04:05Z"))
    svc = dict(out.service, spec=dict(out.service["spec"], ports=[dict(out.service["spec"]["ports"][0], nodePort=31234)]))
    (d,) = build_deployments([dep], {out.name: svc}, {"nano-1": node(address="10.0.0.9")})
    assert (d.model, d.node, d.endpoint, d.ready) == ("half_plus_two", "nano-1", "10.0.0.9:31234", True)
    assert d.created == parse_time("2024-01-02T03:04:05Z") == 1704164645.0


def test_deployment_readiness_needs_replica_port_and_ready_node():
    out = rendered()
    available = dict(out.deployment, status={"availableReplicas": 1})
    unavailable = dict(out.deployment, status={"replicas": 1, "unavailableReplicas": 1})
    svc = dict(out.service, spec=dict(out.service["spec"], ports=[{"port": 8501, "nodePort": 30001}]))
    nodes = {"nano-1": node()}
    assert not build_deployments([unavailable], {out.name: svc}, nodes)[0].ready
    no_port = build_deployments([available], {out.name: out.service}, nodes)[0]
    assert not no_port.ready and no_port.endpoint == ""
    assert not build_deployments([available], {out.name: svc}, {"nano-1": node(ready="False")})[0].ready
    gone_node = build_deployments([available], {out.name: svc}, {})[0]
    assert not gone_node.ready and gone_node.endpoint == ""
    deleting = dict(available, metadata=dict(available["metadata"], deletionTimestamp="2024-01-01T00:00:00Z"))
    assert build_deployments([deleting], {out.name: svc}, nodes) == []
    foreign = {"metadata": {"name": "x", "labels": {}}, "status": {"availableReplicas": 1}}
    assert build_deployments([foreign], {}, nodes) == []


def test_ipv6_endpoint_and_unknown_parts():
    assert format_endpoint("fd00::1", 30001) == "[fd00::1]:30001"
    assert format_endpoint("10.0.0.1", None) == ""
    assert format_endpoint("", 30001) == ""


def test_pod_problem_explains_a_pending_pod():
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: Insufficient memory."}]}}
    assert "Unschedulable" in pod_problem([pod]) and "Insufficient memory" in pod_problem([pod])
    pulling = {"metadata": {"name": "q"}, "status": {"phase": "Pending", "containerStatuses": [
        {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}}
    assert "ImagePullBackOff" in pod_problem([pulling])
    assert pod_problem([{"metadata": {"name": "r"}, "status": {"phase": "Pending"}}]) == "pod r: phase Pending"
    assert pod_problem([]) == ""


def _frontend_pod(ip, *, ready="True", deleting=False, port_name="http", port=5000):
    meta = {"name": f"frontend-{ip}"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T10:00:00Z"
    return {"metadata": meta,
            "spec": {"containers": [{"name": "frontend", "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]}}


def test_front_end_replicas_are_the_ready_pods_with_an_ip():
    from cluster.k8s_state import ready_pod_urls

    pods = [_frontend_pod("10.0.0.2"), _frontend_pod("10.0.0.1"), _frontend_pod("10.0.0.3", ready="False"),
            _frontend_pod("10.0.0.4", deleting=True), _frontend_pod(""), _frontend_pod("fd00::5")]
    assert ready_pod_urls(pods, "http") == ["http://10.0.0.1:5000", "http://10.0.0.2:5000", "http://[fd00::5]:5000"]
    assert ready_pod_urls(pods, 8080) == ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://[fd00::5]:8080"]
    # a named target port the pod does not declare leaves the pod out
    assert ready_pod_urls([_frontend_pod("10.0.0.1", port_name="web")], "http") == []
