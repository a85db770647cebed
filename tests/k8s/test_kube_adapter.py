"""The Kubernetes adapter against a real API server: objects, placement, idempotency, NotReady nodes."""
from __future__ import annotations

import pytest
from kubernetes.client.exceptions import ApiException

from cluster.catalog import load_catalog
from cluster.k8s_render import object_name, render_instance
from cluster.port import InsufficientMemory, NodeNotReady, UnknownModel, UnknownNode
from k8s_support import CATALOG, wait_for

MODEL = "half_plus_two"


def _contains(stored, sent, path: str = "") -> list[str]:
    """Where `sent` (what we rendered) is not found in `stored` (what the API server kept, with its defaults)."""
    if isinstance(sent, dict):
        if not isinstance(stored, dict):
            return [f"{path}: not an object"]
        return [p for key, value in sent.items() for p in _contains(stored.get(key), value, f"{path}.{key}")]
    if isinstance(sent, list):
        if not isinstance(stored, list) or len(stored) != len(sent):
            return [f"{path}: {stored!r} != {sent!r}"]
        return [p for i, (a, b) in enumerate(zip(stored, sent)) for p in _contains(a, b, f"{path}[{i}]")]
    return [] if stored == sent else [f"{path}: {stored!r} != {sent!r}"]


def _gone(read, name: str, namespace: str) -> bool:
    try:
        read(name, namespace)
    except ApiException as exc:
        return exc.status == 404
    return False


def test_deploy_creates_a_pinned_deployment_and_nodeport_service(kube):
    node_a, node_b = kube.add_node("a"), kube.add_node("b")
    cluster = kube.cluster()

    dep = cluster.deploy(MODEL, node_a, timeout=60)

    name = object_name(MODEL, node_a)
    deployment = kube.apps.read_namespaced_deployment(name, kube.namespace)
    service = kube.core.read_namespaced_service(name, kube.namespace)
    labels = deployment.metadata.labels
    assert labels["app.kubernetes.io/managed-by"] == "edge-inference"
    assert deployment.metadata.annotations["edge-inference/model"] == MODEL
    assert deployment.metadata.annotations["edge-inference/node"] == node_a
    pod_spec = deployment.spec.template.spec
    assert pod_spec.node_selector == {"kubernetes.io/hostname": node_a}
    container = pod_spec.containers[0]
    assert container.resources.requests["memory"] and container.resources.limits["memory"]
    assert container.readiness_probe.http_get.path == f"/v1/models/{MODEL}"
    assert service.spec.type == "NodePort"
    assert service.spec.external_traffic_policy == "Local"
    node_port = service.spec.ports[0].node_port
    assert 30000 <= node_port <= 32767

    # The scheduler put the pod on the named node, and KWOK runs it there.
    pods = kube.core.list_namespaced_pod(kube.namespace, label_selector="app.kubernetes.io/managed-by=edge-inference").items
    assert [p.spec.node_name for p in pods] == [node_a]
    assert pods[0].status.phase == "Running"

    assert dep.model == MODEL and dep.node == node_a and dep.ready
    assert dep.endpoint == f"{kube.nodes[node_a]}:{node_port}"
    assert dep.endpoint.startswith("127.")
    listed = cluster.deployments()
    assert [(d.model, d.node, d.endpoint, d.ready) for d in listed] == [(MODEL, node_a, dep.endpoint, True)]
    nodes = {n.name: n for n in cluster.nodes() if n.name in (node_a, node_b)}
    assert nodes[node_a].address == kube.nodes[node_a] and nodes[node_a].ready
    assert nodes[node_a].memory_used == 60000 and nodes[node_b].memory_used == 0

    # What the API server stored is what we rendered (plus its defaults), field by field.
    expected = render_instance(load_catalog(CATALOG)[MODEL], node_a,
                               cluster.render_settings, hostname=node_a)
    serialize = kube.api.sanitize_for_serialization
    assert _contains(serialize(deployment)["spec"], expected.deployment["spec"]) == []
    assert _contains(serialize(service)["spec"], expected.service["spec"]) == []


def test_two_models_on_two_nodes_each_land_on_their_node(kube):
    node_a, node_b = kube.add_node("a"), kube.add_node("b")
    cluster = kube.cluster()
    pairs = [("half_plus_two", node_a), ("half_plus_two", node_b), ("digits_logreg", node_b)]
    for model, node in pairs:
        cluster.deploy(model, node, wait=False)
    wait_for(lambda: sum(d.ready for d in cluster.deployments()) == 3, timeout=60, what="3 ready instances")
    pods = kube.core.list_namespaced_pod(kube.namespace).items
    placed = sorted((p.metadata.annotations["edge-inference/model"], p.spec.node_name) for p in pods)
    assert placed == sorted(pairs)
    endpoints = {d.endpoint for d in cluster.deployments()}
    assert len(endpoints) == 3                         # one NodePort per (model, node)


def test_create_and_delete_are_idempotent(kube):
    node_a = kube.add_node("a")
    cluster = kube.cluster()
    name = object_name(MODEL, node_a)
    cluster.deploy(MODEL, node_a)
    uid = kube.apps.read_namespaced_deployment(name, kube.namespace).metadata.uid
    service_uid = kube.core.read_namespaced_service(name, kube.namespace).metadata.uid

    again = cluster.deploy(MODEL, node_a)            # exists: success, nothing replaced
    assert again.ready
    assert kube.apps.read_namespaced_deployment(name, kube.namespace).metadata.uid == uid
    assert kube.core.read_namespaced_service(name, kube.namespace).metadata.uid == service_uid
    assert len(kube.apps.list_namespaced_deployment(kube.namespace).items) == 1
    # A second adapter (another process) finds the objects and treats them as done, too.
    other = kube.cluster()
    assert other.deploy(MODEL, node_a, wait=False).node == node_a
    assert kube.apps.read_namespaced_deployment(name, kube.namespace).metadata.uid == uid
    assert kube.core.read_namespaced_service(name, kube.namespace).metadata.uid == service_uid

    cluster.remove(MODEL, node_a)
    cluster.remove(MODEL, node_a)                    # already being deleted / gone: success
    wait_for(lambda: _gone(kube.apps.read_namespaced_deployment, name, kube.namespace), timeout=60,
             what="deployment deleted")
    wait_for(lambda: _gone(kube.core.read_namespaced_service, name, kube.namespace), timeout=60,
             what="service deleted")
    wait_for(lambda: not kube.core.list_namespaced_pod(kube.namespace).items, timeout=60, what="pod deleted")
    wait_for(lambda: cluster.deployments() == [], timeout=30, what="cache forgets the instance")
    wait_for(lambda: {n.name: n for n in cluster.nodes()}[node_a].memory_used == 0, timeout=30,
             what="its memory is free again")
    cluster.remove(MODEL, node_a)                    # long gone: still success

    redeployed = cluster.deploy(MODEL, node_a)       # and it can come back
    assert redeployed.ready
    assert kube.apps.read_namespaced_deployment(name, kube.namespace).metadata.uid != uid


def test_remove_deletes_deployment_and_service_but_not_the_others(kube):
    node_a, node_b = kube.add_node("a"), kube.add_node("b")
    cluster = kube.cluster()
    cluster.deploy(MODEL, node_a)
    cluster.deploy(MODEL, node_b)
    cluster.remove(MODEL, node_a)
    gone = object_name(MODEL, node_a)
    kept = object_name(MODEL, node_b)
    wait_for(lambda: _gone(kube.apps.read_namespaced_deployment, gone, kube.namespace), timeout=60,
             what="deployment deleted")
    assert _gone(kube.core.read_namespaced_service, gone, kube.namespace)
    assert kube.apps.read_namespaced_deployment(kept, kube.namespace).metadata.name == kept
    assert kube.core.read_namespaced_service(kept, kube.namespace).metadata.name == kept
    wait_for(lambda: [(d.model, d.node) for d in cluster.deployments()] == [(MODEL, node_b)], timeout=30,
             what="only the kept instance listed")


def test_not_ready_node_is_reported_and_refused(kube):
    node_a, node_b = kube.add_node("a"), kube.add_node("b")
    cluster = kube.cluster()
    cluster.deploy(MODEL, node_a)
    cluster.deploy(MODEL, node_b)

    kube.set_node_ready(node_a, False)
    wait_for(lambda: not {n.name: n for n in cluster.nodes()}[node_a].ready, timeout=30,
             what="adapter sees node a not ready")
    by_node = {d.node: d for d in cluster.deployments()}
    assert not by_node[node_a].ready                 # its instance is not offered any more
    assert by_node[node_b].ready
    assert {n.name: n for n in cluster.nodes()}[node_b].ready
    with pytest.raises(NodeNotReady):
        cluster.deploy("digits_logreg", node_a, timeout=10)

    kube.set_node_ready(node_a, True)                # and it comes back
    wait_for(lambda: {d.node: d for d in cluster.deployments()}[node_a].ready, timeout=30,
             what="instance on node a ready again")


def test_unknown_model_and_node_are_refused(kube):
    kube.add_node("a")
    cluster = kube.cluster()
    with pytest.raises(UnknownModel):
        cluster.deploy("no_such_model", kube.node_name("a"))
    with pytest.raises(UnknownNode):
        cluster.deploy(MODEL, "no-such-node-xyz")
    assert kube.apps.list_namespaced_deployment(kube.namespace).items == []


def test_deploy_after_remove_on_a_full_node_waits_for_the_memory(kube):
    # 60000 of 130000 KB in use: digits_logreg (80000) fits only once half_plus_two is gone, and
    # Kubernetes frees it only when the pod is deleted, a moment after remove() returned.
    node_a = kube.add_node("a", memory_kb=130_000)
    cluster = kube.cluster()
    cluster.deploy(MODEL, node_a)
    with pytest.raises(InsufficientMemory):
        cluster.deploy("digits_logreg", node_a, timeout=5)   # nothing is being freed: refused at once
    cluster.remove(MODEL, node_a)
    dep = cluster.deploy("digits_logreg", node_a, timeout=60)
    assert dep.ready
    assert [(d.model, d.node) for d in cluster.deployments()] == [("digits_logreg", node_a)]
