"""The Kubernetes adapter against a real API server: cache reads, refusals, errors, permissions, close.

These were unit tests against a hand-written stand-in for kube-apiserver; here the same behaviour
comes from the real control plane (the real scheduler, RBAC, audit log and watch streams). What
cannot be produced here stays in tests/unit/test_k8s_adapter_fake_only.py (410 Gone; its
docstring says why) and tests/unit/test_k8s_adapter_no_server.py (no API server). Node CPU from
metrics.k8s.io (a real metrics-server) is in test_kube_metrics.py.
"""
from __future__ import annotations

import threading

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cluster.catalog import load_catalog
from cluster.k8s_render import object_name, render_instance
from cluster.kubernetes import API_PERMISSIONS
from cluster.port import ClusterError, InsufficientMemory, NodeNotReady, UnknownModel, UnknownNode
from k8s_support import CATALOG, _suffix, wait_for

MODEL = "half_plus_two"
METRICS_GROUP = "metrics.k8s.io"


def _by_name(cluster) -> dict:
    return {n.name: n for n in cluster.nodes()}


def test_nodes_come_from_the_cache_with_fallback_cpu(kube):
    node_a = kube.add_node("a", memory_kb=1_048_576, cpu=4.0, node_class="small")
    node_b = kube.add_node("b", memory_kb=2_097_152, cpu=2.0, node_class=None)
    kube.set_node_ready(node_b, False)
    cluster, calls = kube.audited_cluster()
    assert cluster.wait_synced(30)

    nodes = _by_name(cluster)
    a, b = nodes[node_a], nodes[node_b]
    assert a.ready and not b.ready
    assert a.address == kube.nodes[node_a] and b.address == kube.nodes[node_b]
    assert a.memory_total == 1_048_576 and b.memory_total == 2_097_152
    assert a.labels["node-class"] == "small" and b.labels["node-class"] == "unknown"
    assert a.cpu_capacity == 4.0 and b.cpu_capacity == 2.0
    assert a.cpu_usage == 0.0 and a.memory_used == 0

    # metrics.k8s.io is not served (metrics-server runs for test_kube_metrics.py only): the CPU
    # is estimated from our pods' requests (half_plus_two: 50m).
    cluster.deploy(MODEL, node_a, timeout=60)
    wait_for(lambda: _by_name(cluster)[node_a].cpu_usage == pytest.approx(0.05), timeout=30,
             what="cpu estimate from the pod's request")
    assert cluster.metrics_served is False
    assert _by_name(cluster)[node_a].memory_used == 60000

    # Reads are answered from the cache: the API server sees no request for them.
    before = [c for c in calls() if c[1] != METRICS_GROUP]
    for _ in range(20):
        assert {node_a, node_b} <= set(_by_name(cluster))
        assert [d.node for d in cluster.deployments()] == [node_a]
    assert [c for c in calls() if c[1] != METRICS_GROUP] == before
    assert ("list", "", "nodes", 200) in before and ("watch", "", "nodes", 200) in before


def test_deploy_refusals(kube):
    small = kube.add_node("small", memory_kb=100_000)
    down = kube.add_node("down")
    kube.set_node_ready(down, False)
    cluster = kube.cluster()
    wait_for(lambda: not _by_name(cluster)[down].ready, timeout=30, what="adapter sees node down not ready")
    with pytest.raises(UnknownModel):
        cluster.deploy("no_such_model", small)
    with pytest.raises(UnknownNode):
        cluster.deploy(MODEL, kube.node_name("ghost"))
    with pytest.raises(NodeNotReady):
        cluster.deploy(MODEL, down)
    with pytest.raises(InsufficientMemory):
        cluster.deploy("digits_forest", small)               # 120000 KB > 100000 KB
    cluster.deploy(MODEL, small, wait=False)                 # 60000 KB fits
    with pytest.raises(InsufficientMemory):
        cluster.deploy("half_plus_three", small, wait=False)  # the first one counts at once
    names = [d.metadata.name for d in kube.apps.list_namespaced_deployment(kube.namespace).items]
    assert names == [object_name(MODEL, small)]


def test_a_node_added_after_start_is_found(kube):
    cluster = kube.cluster()
    assert cluster.wait_synced(30)
    late = kube.node_name("late")
    assert late not in _by_name(cluster)
    kube.add_node("late")
    # The API server says Ready; the adapter learns it from its watch, a moment later.
    wait_for(lambda: late in _by_name(cluster) and _by_name(cluster)[late].ready, timeout=30,
             what="the watch cache sees the new node ready")
    dep = cluster.deploy(MODEL, late, timeout=60)
    assert dep.ready and dep.node == late
    assert late in _by_name(cluster)


def test_node_selector_uses_the_hostname_label(kube):
    hostname = f"host-{kube.node_tag}-{_suffix(3)}"
    node = kube.add_node("a", labels={"kubernetes.io/hostname": hostname})
    cluster = kube.cluster()
    assert cluster.deploy(MODEL, node, timeout=60).ready
    sent = kube.apps.read_namespaced_deployment(object_name(MODEL, node), kube.namespace)
    assert sent.spec.template.spec.node_selector == {"kubernetes.io/hostname": hostname}
    pods = kube.core.list_namespaced_pod(kube.namespace).items
    assert [p.spec.node_name for p in pods] == [node]       # the scheduler matched the label, not the name


def test_timeout_names_the_pod_problem(kube):
    # Memory passes the adapter's check, but the node has 20m of CPU for a 50m request: the real
    # scheduler marks the pod Unschedulable, and the timeout says so.
    node = kube.add_node("tiny", memory_kb=500_000, cpu=0.02)
    cluster = kube.cluster()
    with pytest.raises(ClusterError, match=r"not ready after 15s: pod .*Unschedulable: .*Insufficient cpu"):
        cluster.deploy(MODEL, node, timeout=15)
    assert kube.apps.read_namespaced_deployment(object_name(MODEL, node), kube.namespace)   # it was created


def test_foreign_object_with_our_name_is_never_taken_or_deleted(kube):
    node = kube.add_node("n")
    cluster = kube.cluster()
    name = object_name(MODEL, node)
    theirs = kube.apps.create_namespaced_deployment(kube.namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": "theirs"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "theirs"}},
                 "template": {"metadata": {"labels": {"app": "theirs"}},
                              "spec": {"containers": [{"name": "c", "image": "example.invalid/theirs:1"}]}}}})
    with pytest.raises(ClusterError, match="belongs to something else"):
        cluster.deploy(MODEL, node, wait=False)
    with pytest.raises(ClusterError, match="refusing to delete"):
        cluster.remove(MODEL, node)
    still = kube.apps.read_namespaced_deployment(name, kube.namespace)
    assert still.metadata.uid == theirs.metadata.uid and still.metadata.deletion_timestamp is None
    assert still.metadata.labels == {"app": "theirs"}
    assert kube.core.list_namespaced_service(kube.namespace).items == []
    assert cluster.deployments() == []


def test_forbidden_is_a_cluster_error_not_a_client_exception(kube):
    # A client-certificate user who may read everything the adapter watches, but create nothing.
    node = kube.add_node("n")
    user = f"reader-{kube.namespace}"
    rbac = k8s.RbacAuthorizationV1Api(kube.api)
    subject = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    rbac.create_namespaced_role(kube.namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
        "rules": [{"apiGroups": ["", "apps"], "resources": ["deployments", "services", "pods"],
                   "verbs": ["get", "list", "watch"]}]})
    rbac.create_namespaced_role_binding(kube.namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": subject})
    cluster_wide = f"node-reader-{kube.namespace}"        # cluster-scoped: deleted below
    rbac.create_cluster_role({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": cluster_wide},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]})
    rbac.create_cluster_role_binding({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": cluster_wide},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_wide},
        "subjects": subject})
    try:
        from cluster.kubernetes import KubernetesCluster

        kubeconfig = kube.plane.client_kubeconfig(user, group="edge-readers")
        cluster = KubernetesCluster(kubeconfig=kubeconfig, namespace=kube.namespace, catalog_path=CATALOG)
        kube.clusters.append(cluster)
        assert node in _by_name(cluster)                     # reading is allowed...
        with pytest.raises(ClusterError, match=r"create deployments: not permitted \(403\)") as info:
            cluster.deploy(MODEL, node, wait=False)          # ...creating is not
        cause = info.value.__cause__
        assert isinstance(cause, ApiException) and cause.status == 403
        assert type(cause).__module__.startswith("kubernetes")
        assert kube.apps.list_namespaced_deployment(kube.namespace).items == []
    finally:
        rbac.delete_cluster_role_binding(cluster_wide)
        rbac.delete_cluster_role(cluster_wide)


def test_every_call_made_is_declared(kube):
    node = kube.add_node("n")
    cluster, calls = kube.audited_cluster()
    cluster.deploy(MODEL, node, timeout=60)
    cluster.deploy(MODEL, node, timeout=60)
    cluster.remove(MODEL, node)
    cluster.remove(MODEL, node)
    wait_for(lambda: cluster.deployments() == [], timeout=60, what="the instance removed")
    wait_for(lambda: any(c[1] == METRICS_GROUP for c in calls()), timeout=30, what="a metrics poll")
    # The plan (the ConfigMap the manifests create) and the front-end replicas behind a Service.
    kube.core.create_namespaced_config_map(kube.namespace, {"metadata": {"name": "edge-inference-plan"}})
    cluster.write_plan({"created": 1.0, "mode": 1, "solver": "highs", "weights": {}})
    wait_for(lambda: cluster.plan_document(), timeout=30, what="the plan seen through the watch")
    kube.core.create_namespaced_service(kube.namespace, {"metadata": {"name": "frontend"}, "spec": {
        "selector": {"app.kubernetes.io/name": "frontend"}, "ports": [{"port": 5000}]}})
    assert cluster.frontend_replicas("frontend") == []
    declared = {(verb, p.group, p.resource) for p in API_PERMISSIONS for verb in p.verbs}
    made = {(verb, group, resource) for verb, group, resource, _ in calls()}
    assert made <= declared, made - declared
    # And the list is not padded: everything declared except the cache-miss node get is exercised.
    assert declared - made <= {("get", "", "nodes")}
    # Nothing was refused: the verbs the server saw are the ones it authorised.
    assert not [c for c in calls() if c[3] in (401, 403)]


def test_close_stops_the_watch_threads(kube):
    kube.add_node("n")
    before = set(threading.enumerate())
    cluster = kube.cluster()
    assert cluster.wait_synced(30)
    threads = [t for t in set(threading.enumerate()) - before if t.name.startswith("k8s-")]
    assert {t.name for t in threads} == {"k8s-watch-nodes", "k8s-watch-deployments", "k8s-watch-services",
                                         "k8s-watch-pods", "k8s-metrics"}
    assert cluster.plan_document() is None          # the plan's watch starts on first use, and stops too
    threads += [t for t in set(threading.enumerate()) - before if t.name == "k8s-watch-plan"]
    assert "k8s-watch-plan" in {t.name for t in threads}
    cluster.close()               # the watches are open streams (resync 300 s): close must cut them
    assert not [t.name for t in threads if t.is_alive()]
    with pytest.raises(ClusterError, match="closed"):
        cluster.nodes()
