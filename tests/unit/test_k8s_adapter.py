"""The Kubernetes adapter's I/O paths over real HTTP on loopback.

Until the real control plane arrives (issue 6, tests/k8s/), the adapter runs here against a small
loopback stand-in for kube-apiserver that speaks the same wire protocol for exactly the calls the
adapter makes: chunked list/watch streams with resourceVersions, bookmarks and 410 Gone, create
with 409, delete with uid preconditions and 404, metrics.k8s.io served or not, and a minimal
Deployment "controller" that binds the pod to the node named by its nodeSelector. The adapter
itself only gets a kubeconfig, exactly as the issue 6 tests will give it.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from cluster import (ClusterError, ClusterUnavailable, InsufficientMemory, NodeNotReady, UnknownModel,
                     UnknownNode, open_cluster)
from cluster.catalog import load_catalog
from cluster.k8s_render import object_name, render_instance
from cluster.kubernetes import API_PERMISSIONS, CacheSettings, KubernetesCluster

NS = "edge-inference"
_ROUTES = [
    (re.compile(r"^/api/v1/nodes(?:/(?P<name>[^/]+))?$"), "nodes"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<res>services|pods)(?:/(?P<name>[^/]+))?$"), None),
    (re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments(?:/(?P<name>[^/]+))?$"), "deployments"),
    (re.compile(r"^/apis/metrics\.k8s\.io/v1beta1/nodes$"), "metrics"),
]
_GROUPS = {"nodes": "", "services": "", "pods": "", "deployments": "apps", "metrics": "metrics.k8s.io"}


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
            "message": message, "code": code}


def _matches(obj: dict, selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",")))


class FakeApiServer:
    """Loopback stand-in for kube-apiserver (see the module docstring)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[str, dict[str, dict]] = {r: {} for r in ("nodes", "deployments", "services", "pods")}
        self.events: list[tuple[int, str, str, dict]] = []
        self.compacted = 0             # a watch from a resourceVersion below this gets 410
        self.stream_epoch = 0          # bumping it ends every open watch stream
        self.metrics: dict[str, str] | None = None
        self.forbidden: set[str] = set()
        self.full: set[str] = set()     # nodes the "scheduler" finds full (other workloads)
        self.calls: list[tuple[str, str, str]] = []    # (verb, group, resource)
        self.next_node_port = 30000
        self.stopping = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.handle(self, "GET")

            def do_POST(self):
                fake.handle(self, "POST")

            def do_DELETE(self):
                fake.handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    # --- test controls --------------------------------------------------------------------------

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, path) -> str:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "u", "user": {"token": "test-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
        }))
        return str(path)

    def _bump(self, resource: str, kind: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.events.append((self.rv, resource, kind, json.loads(json.dumps(obj))))
        self.cond.notify_all()

    def put(self, resource: str, obj: dict) -> None:
        with self.cond:
            kind = "MODIFIED" if obj["metadata"]["name"] in self.objects[resource] else "ADDED"
            obj["metadata"].setdefault("uid", f"uid-{self.rv + 1}")
            obj["metadata"].setdefault("creationTimestamp", "2024-01-02T03:04:05Z")
            self.objects[resource][obj["metadata"]["name"]] = obj
            self._bump(resource, kind, obj)

    def add_node(self, name: str, *, ready: bool = True, memory: str = "1Gi", cpu: str = "4",
                 address: str = "127.0.1.1", node_class: str | None = "small", hostname: str | None = None) -> None:
        labels = {"kubernetes.io/hostname": hostname or name}
        if node_class:
            labels["edge-inference/node-class"] = node_class
        self.put("nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"cpu": cpu, "memory": memory}, "capacity": {"cpu": cpu, "memory": memory},
                       "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": address}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})

    def set_ready(self, name: str, ready: bool) -> None:
        with self.cond:
            node = json.loads(json.dumps(self.objects["nodes"][name]))
        node["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        self.put("nodes", node)

    def expire_watches(self) -> None:
        """Forget the event history and end every stream: the adapter must re-list after 410."""
        with self.cond:
            self.compacted = self.rv + 1
            self.stream_epoch += 1
            self.cond.notify_all()

    def verbs(self) -> set[tuple[str, str, str]]:
        with self.cond:
            return set(self.calls)

    # --- the API --------------------------------------------------------------------------------

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = None
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(h.rfile.read(length))
        for pattern, fixed in _ROUTES:
            m = pattern.match(url.path)
            if m:
                break
        else:
            return self._send(h, 404, _status(404, "NotFound", f"no route {url.path}"))
        groups = m.groupdict()
        resource = fixed or groups["res"]
        name = groups.get("name")
        if groups.get("ns") not in (None, NS):
            return self._send(h, 403, _status(403, "Forbidden", "wrong namespace"))
        verb = {"POST": "create", "DELETE": "delete"}.get(method) or (
            "get" if name else ("watch" if query.get("watch") == "true" else "list"))
        with self.cond:
            self.calls.append((verb, _GROUPS[resource], "nodes" if resource == "metrics" else resource))
        if resource in self.forbidden:
            return self._send(h, 403, _status(403, "Forbidden", f"{resource} is forbidden: test"))
        if resource == "metrics":
            if self.metrics is None:
                return self._send(h, 404, _status(404, "NotFound", "the server could not find the requested resource"))
            return self._send(h, 200, {"kind": "NodeMetricsList", "items": [
                {"metadata": {"name": n}, "usage": {"cpu": c, "memory": "1Mi"}} for n, c in self.metrics.items()]})
        if verb == "watch":
            return self._watch(h, resource, query)
        if verb == "list":
            return self._list(h, resource, query)
        if verb == "get":
            with self.cond:
                obj = self.objects[resource].get(name)
            if obj is None:
                return self._send(h, 404, _status(404, "NotFound", f'{resource} "{name}" not found'))
            return self._send(h, 200, obj)
        if verb == "create":
            return self._create(h, resource, body)
        return self._delete(h, resource, name, body or {})

    def _list(self, h, resource: str, query: dict) -> None:
        with self.cond:
            items = sorted((o for o in self.objects[resource].values() if _matches(o, query.get("labelSelector"))),
                           key=lambda o: o["metadata"]["name"])
            rv = str(self.rv)
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or len(items) or 1)
        page = items[start:start + limit]
        meta = {"resourceVersion": rv}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        self._send(h, 200, {"kind": "List", "apiVersion": "v1", "metadata": meta, "items": page})

    def _watch(self, h, resource: str, query: dict) -> None:
        cursor = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + int(query.get("timeoutSeconds") or 60)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(obj: dict) -> None:
            data = json.dumps(obj).encode() + b"\n"
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            h.wfile.flush()

        try:
            with self.cond:
                epoch = self.stream_epoch
                if cursor < self.compacted:
                    events = None
                else:
                    events = []
            if events is None:
                chunk({"type": "ERROR", "object": _status(410, "Expired", "too old resource version")})
            else:
                while True:
                    with self.cond:
                        self.cond.wait_for(lambda: self.stopping or self.stream_epoch != epoch
                                           or (self.events and self.events[-1][0] > cursor),
                                           max(0.0, deadline - time.monotonic()))
                        if self.stopping or self.stream_epoch != epoch or time.monotonic() >= deadline:
                            break
                        fresh = [e for e in self.events if e[0] > cursor]
                    for rv, res, kind, obj in fresh:
                        cursor = rv
                        if res == resource and _matches(obj, query.get("labelSelector")):
                            chunk({"type": kind, "object": obj})
                    if query.get("allowWatchBookmarks") == "true":
                        chunk({"type": "BOOKMARK", "object": {"kind": "Bookmark",
                                                               "metadata": {"resourceVersion": str(cursor)}}})
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        h.close_connection = True

    def _create(self, h, resource: str, body: dict) -> None:
        name = body["metadata"]["name"]
        with self.cond:
            if name in self.objects[resource]:
                return self._send(h, 409, _status(409, "AlreadyExists", f'{resource} "{name}" already exists'))
            if resource == "services":
                for port in body["spec"]["ports"]:
                    self.next_node_port += 1
                    port.setdefault("nodePort", self.next_node_port)
        self.put(resource, body)
        self._send(h, 201, body)
        if resource == "deployments":
            self._reconcile(body)

    def _reconcile(self, dep: dict) -> None:
        """Play scheduler + kubelet + deployment controller for one Deployment."""
        template = dep["spec"]["template"]
        wanted = template["spec"].get("nodeSelector", {}).get("kubernetes.io/hostname")
        with self.cond:
            node = next((n for n in self.objects["nodes"].values()
                         if n["metadata"]["labels"].get("kubernetes.io/hostname") == wanted), None)
        ready = (node is not None and node["status"]["conditions"][0]["status"] == "True"
                 and node["metadata"]["name"] not in self.full)
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": dep["metadata"]["name"] + "-7f9c-x2x", "namespace": NS,
                            "labels": dict(template["metadata"]["labels"]),
                            "annotations": dict(template["metadata"]["annotations"])},
               "spec": dict(template["spec"])}
        if ready:
            pod["spec"]["nodeName"] = node["metadata"]["name"]
            pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        else:
            pod["status"] = {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 Insufficient memory."}]}
        self.put("pods", pod)
        if ready:
            with self.cond:
                current = json.loads(json.dumps(self.objects["deployments"][dep["metadata"]["name"]]))
            current["status"] = {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}
            self.put("deployments", current)

    def _delete(self, h, resource: str, name: str, body: dict) -> None:
        with self.cond:
            obj = self.objects[resource].get(name)
            if obj is None:
                return self._send(h, 404, _status(404, "NotFound", f'{resource} "{name}" not found'))
            uid = (body.get("preconditions") or {}).get("uid")
            if uid and uid != obj["metadata"]["uid"]:
                return self._send(h, 409, _status(409, "Conflict", "Precondition failed: UID mismatch"))
            foreground = body.get("propagationPolicy") == "Foreground"
            obj = json.loads(json.dumps(obj))
        obj["metadata"]["deletionTimestamp"] = "2024-01-02T03:05:00Z"
        if foreground:
            self.put(resource, obj)            # visible while dependents go
        self._send(h, 200, obj)
        with self.cond:
            if resource == "deployments":
                for pod_name, pod in list(self.objects["pods"].items()):
                    if pod["metadata"]["annotations"] == obj["metadata"]["annotations"]:
                        del self.objects["pods"][pod_name]
                        self._bump("pods", "DELETED", pod)
            del self.objects[resource][name]
            self._bump(resource, "DELETED", obj)


def _wait(predicate, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.fixture
def fake():
    server = FakeApiServer()
    yield server
    server.stop()


@pytest.fixture
def connect(fake, tmp_path):
    opened = []

    def make(**kwargs):
        cache = CacheSettings(metrics_seconds=0.1, backoff_initial_seconds=0.05, backoff_max_seconds=0.2,
                              sync_timeout_seconds=10, **kwargs)
        cluster = open_cluster("kubernetes", kubeconfig=fake.kubeconfig(tmp_path / "kubeconfig"), cache=cache)
        opened.append(cluster)
        assert cluster.wait_synced(10)
        return cluster

    yield make
    for cluster in opened:
        cluster.close()


def test_nodes_come_from_the_cache_with_fallback_cpu(fake, connect):
    fake.add_node("nano-1", memory="1Gi", cpu="4", address="127.0.1.1")
    fake.add_node("nano-2", ready=False, memory="2048Mi", cpu="2", address="127.0.1.2", node_class=None)
    cluster = connect()
    nodes = {n.name: n for n in cluster.nodes()}
    assert nodes["nano-1"].ready and not nodes["nano-2"].ready
    assert nodes["nano-1"].address == "127.0.1.1"
    assert nodes["nano-1"].memory_total == 1024 * 1024 and nodes["nano-2"].memory_total == 2048 * 1024
    assert nodes["nano-1"].labels["node-class"] == "small" and nodes["nano-2"].labels["node-class"] == "unknown"
    assert nodes["nano-1"].cpu_capacity == 4.0 and nodes["nano-1"].cpu_usage == 0.0
    calls = len([c for c in fake.calls if c[1] != "metrics.k8s.io"])
    for _ in range(20):
        assert len(cluster.nodes()) == 2
        cluster.deployments()
    assert len([c for c in fake.calls if c[1] != "metrics.k8s.io"]) == calls     # answered from the cache


def test_metrics_replace_the_estimate_when_served(fake, connect):
    fake.add_node("nano-1", cpu="4")
    cluster = connect()
    cluster.deploy("half_plus_two", "nano-1")
    _wait(lambda: cluster.nodes()[0].cpu_usage == pytest.approx(0.05))   # our pod's request
    fake.metrics = {"nano-1": "1500000000n"}
    _wait(lambda: cluster.nodes()[0].cpu_usage == pytest.approx(1.5))
    assert cluster.metrics_served is True


def test_deploy_creates_the_rendered_objects_and_waits_for_readiness(fake, connect):
    fake.add_node("nano-1", address="127.0.1.7")
    cluster = connect()
    dep = cluster.deploy("half_plus_two", "nano-1")
    assert dep.ready and dep.model == "half_plus_two" and dep.node == "nano-1"
    name = object_name("half_plus_two", "nano-1")
    service = fake.objects["services"][name]
    assert dep.endpoint == f"127.0.1.7:{service['spec']['ports'][0]['nodePort']}"
    expected = render_instance(load_catalog()["half_plus_two"], "nano-1")
    sent = fake.objects["deployments"][name]
    assert sent["spec"] == expected.deployment["spec"]
    assert service["spec"]["selector"] == expected.service["spec"]["selector"]
    assert [(d.model, d.node, d.ready) for d in cluster.deployments()] == [("half_plus_two", "nano-1", True)]
    node = cluster.nodes()[0]
    assert node.memory_used == 60000


def test_deploy_and_remove_are_idempotent(fake, connect):
    fake.add_node("nano-1")
    cluster = connect()
    first = cluster.deploy("digits_forest", "nano-1")
    creates = sum(1 for c in fake.calls if c[0] == "create")
    again = cluster.deploy("digits_forest", "nano-1")
    assert again.endpoint == first.endpoint
    assert sum(1 for c in fake.calls if c[0] == "create") - creates <= 1     # the Service's 409 at most
    # A second adapter (another process) sees the objects and treats 409 as done.
    other = connect()
    assert other.deploy("digits_forest", "nano-1", wait=False).node == "nano-1"
    cluster.remove("digits_forest", "nano-1")
    assert not fake.objects["deployments"] and not fake.objects["services"] and not fake.objects["pods"]
    cluster.remove("digits_forest", "nano-1")
    _wait(lambda: cluster.deployments() == [])
    assert cluster.nodes()[0].memory_used == 0


def test_deploy_refusals(fake, connect):
    fake.add_node("small", memory="100000Ki")
    fake.add_node("down", ready=False)
    cluster = connect()
    with pytest.raises(UnknownModel):
        cluster.deploy("no_such_model", "small")
    with pytest.raises(UnknownNode):
        cluster.deploy("half_plus_two", "ghost")
    with pytest.raises(NodeNotReady):
        cluster.deploy("half_plus_two", "down")
    with pytest.raises(InsufficientMemory):
        cluster.deploy("digits_forest", "small")        # 120000 KB > 100000 KB
    cluster.deploy("half_plus_two", "small", wait=False)  # 60000 KB fits
    with pytest.raises(InsufficientMemory):
        cluster.deploy("half_plus_three", "small", wait=False)   # the first one counts at once
    assert set(fake.objects["deployments"]) == {object_name("half_plus_two", "small")}


def test_a_node_added_after_start_is_found(fake, connect):
    cluster = connect()
    fake.add_node("late")
    assert cluster.deploy("half_plus_two", "late").ready


def test_watch_recovers_from_410_and_sees_what_it_missed(fake, connect):
    fake.add_node("a")
    cluster = connect()
    lists_before = fake.calls.count(("list", "", "nodes"))
    fake.expire_watches()
    fake.add_node("b", ready=False)
    _wait(lambda: {n.name for n in cluster.nodes()} == {"a", "b"})
    _wait(lambda: fake.calls.count(("list", "", "nodes")) > lists_before)
    fake.set_ready("b", True)
    _wait(lambda: all(n.ready for n in cluster.nodes()))


def test_node_going_not_ready_is_reported(fake, connect):
    fake.add_node("a")
    cluster = connect()
    cluster.deploy("half_plus_two", "a")
    fake.set_ready("a", False)
    _wait(lambda: not cluster.nodes()[0].ready)
    assert not cluster.deployments()[0].ready


def test_node_selector_uses_the_hostname_label(fake, connect):
    fake.add_node("a", hostname="host-a")
    cluster = connect()
    assert cluster.deploy("half_plus_two", "a").ready
    sent = fake.objects["deployments"][object_name("half_plus_two", "a")]
    assert sent["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "host-a"}


def test_timeout_names_the_pod_problem(fake, connect):
    fake.add_node("a")
    fake.full.add("a")          # memory taken by workloads the adapter does not watch
    cluster = connect()
    with pytest.raises(ClusterError, match="Unschedulable.*Insufficient memory"):
        cluster.deploy("half_plus_two", "a", timeout=0.5)


def test_foreign_object_with_our_name_is_never_taken_or_deleted(fake, connect):
    fake.add_node("n")
    cluster = connect()
    name = object_name("half_plus_two", "n")
    fake.put("deployments", {"apiVersion": "apps/v1", "kind": "Deployment",
                             "metadata": {"name": name, "namespace": NS, "labels": {"app": "theirs"}},
                             "spec": {}})
    with pytest.raises(ClusterError, match="belongs to something else"):
        cluster.deploy("half_plus_two", "n", wait=False)
    with pytest.raises(ClusterError, match="refusing to delete"):
        cluster.remove("half_plus_two", "n")
    assert name in fake.objects["deployments"]


def test_forbidden_is_a_cluster_error_not_a_client_exception(fake, connect):
    fake.add_node("n")
    cluster = connect()
    fake.forbidden.add("deployments")
    with pytest.raises(ClusterError, match="not permitted") as info:
        cluster.deploy("half_plus_two", "n", wait=False)
    assert info.value.__cause__ is not None and type(info.value.__cause__).__module__.startswith("kubernetes")


def test_every_call_made_is_declared(fake, connect):
    fake.add_node("n")
    fake.metrics = {"n": "10m"}
    cluster = connect()
    cluster.deploy("half_plus_two", "n")
    cluster.deploy("half_plus_two", "n")
    cluster.remove("half_plus_two", "n")
    cluster.remove("half_plus_two", "n")
    _wait(lambda: cluster.deployments() == [])
    declared = {(verb, p.group, p.resource) for p in API_PERMISSIONS for verb in p.verbs}
    made = fake.verbs()
    assert made <= declared
    # And the list is not padded: everything declared except the cache-miss node get is exercised.
    assert declared - made <= {("get", "", "nodes")}


def test_unreachable_api_is_cluster_unavailable(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]           # closed again: nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    cluster = KubernetesCluster(kubeconfig=kubeconfig, cache=CacheSettings(sync_timeout_seconds=20,
                                                                          backoff_initial_seconds=0.05))
    try:
        with pytest.raises(ClusterUnavailable, match=f"127.0.0.1:{port}") as info:
            cluster.nodes()
        assert info.value.__cause__ is not None
    finally:
        cluster.close()


def test_missing_kubeconfig_is_cluster_unavailable(tmp_path):
    with pytest.raises(ClusterUnavailable, match="configuration"):
        KubernetesCluster(kubeconfig=tmp_path / "nope")


def test_close_stops_the_watch_threads(fake, connect):
    cluster = connect()
    threads = [t for t in threading.enumerate() if t.name.startswith("k8s-")]
    assert threads
    cluster.close()
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(ClusterError):
        cluster.nodes()
