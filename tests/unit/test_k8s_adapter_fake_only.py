"""The one adapter behaviour that cannot be produced on the real control plane of tests/k8s/.

Everything else the Kubernetes adapter does is tested against a real kube-apiserver, scheduler,
controller-manager and KWOK in tests/k8s/ (test_kube_adapter.py, test_kube_adapter_more.py, and
test_kube_metrics.py for metrics.k8s.io served by a real metrics-server through the aggregator,
replacing the CPU estimate). Only this one stays on a loopback stand-in for kube-apiserver
(FakeApiServer below, which implements just list/watch of the four resources the adapter watches,
and 410 Gone):

- **A watch recovering from 410 Gone.** The adapter re-lists after any failed or cut stream; it
  watches again from its stored resourceVersion only after a stream the server ended cleanly.
  The real API server serves watches from its watch cache, which keeps ~75 s of history and
  sends bookmarks that keep the adapter's resourceVersion fresh, so a 410 would need the watch
  cache disabled on the shared control plane plus an etcd compaction timed between a stream's
  end and the next watch: not reproducible, and it would change the control plane every other
  test runs on. The stand-in ends the streams and forgets its history on demand.

The adapter only gets a kubeconfig pointing at the stand-in, as it would for a real server.
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from cluster import open_cluster
from cluster.kubernetes import CacheSettings

from tests.waiting import wait_for

NS = "edge-inference"
_ROUTES = [
    (re.compile(r"^/api/v1/nodes$"), "nodes"),
    (re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<res>services|pods)$"), None),
    (re.compile(r"^/apis/apps/v1/namespaces/(?P<ns>[^/]+)/deployments$"), "deployments"),
]


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
            "message": message, "code": code}


class FakeApiServer:
    """Loopback stand-in for kube-apiserver: list/watch with 410 Gone (metrics.k8s.io: 404, not served)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[str, dict[str, dict]] = {r: {} for r in ("nodes", "deployments", "services", "pods")}
        self.events: list[tuple[int, str, str, dict]] = []
        self.compacted = 0             # a watch from a resourceVersion below this gets 410
        self.stream_epoch = 0          # bumping it ends every open watch stream
        self.calls: list[tuple[str, str]] = []          # (verb, resource)
        self.stopping = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.handle(self)

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

    def put(self, resource: str, obj: dict) -> None:
        with self.cond:
            kind = "MODIFIED" if obj["metadata"]["name"] in self.objects[resource] else "ADDED"
            self.objects[resource][obj["metadata"]["name"]] = obj
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            self.events.append((self.rv, resource, kind, json.loads(json.dumps(obj))))
            self.cond.notify_all()

    def add_node(self, name: str, *, ready: bool = True, cpu: str = "4") -> None:
        self.put("nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": cpu, "memory": "1Gi"}, "capacity": {"cpu": cpu, "memory": "1Gi"},
                       "addresses": [{"type": "InternalIP", "address": "127.0.1.1"}],
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

    def count(self, call: tuple[str, str]) -> int:
        with self.cond:
            return self.calls.count(call)

    # --- the API (GET only: list and watch) -----------------------------------------------------

    def _send(self, h: BaseHTTPRequestHandler, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for pattern, fixed in _ROUTES:
            m = pattern.match(url.path)
            if m:
                break
        else:
            return self._send(h, 404, _status(404, "NotFound", f"no route {url.path}"))
        resource = fixed or m.group("res")
        verb = "watch" if query.get("watch") == "true" else "list"
        with self.cond:
            self.calls.append((verb, resource))
        if verb == "watch":
            return self._watch(h, resource, query)
        with self.cond:
            items = sorted(self.objects[resource].values(), key=lambda o: o["metadata"]["name"])
            rv = str(self.rv)
        self._send(h, 200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})

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
                expired = cursor < self.compacted
            if expired:
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
                        if res == resource:
                            chunk({"type": kind, "object": obj})
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        h.close_connection = True


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


def test_watch_recovers_from_410_and_sees_what_it_missed(fake, connect):
    fake.add_node("a")
    cluster = connect()
    lists_before = fake.count(("list", "nodes"))
    fake.expire_watches()
    fake.add_node("b", ready=False)
    wait_for(lambda: {n.name for n in cluster.nodes()} == {"a", "b"}, 10)
    wait_for(lambda: fake.count(("list", "nodes")) > lists_before, 10)
    fake.set_ready("b", True)
    wait_for(lambda: all(n.ready for n in cluster.nodes()), 10)
