"""A stand-in for kubelet + kube-proxy: real model servers at nodeIP:nodePort for the pods KWOK runs.

Why this exists: KWOK simulates kubelets, so a pod it reports Running runs nothing. To send a real
prediction through state read from Kubernetes, this harness watches (polls) the namespace and,
for every Ready pod of ours, starts the real model server (`python -m modelserver`) bound to the
pod's node InternalIP (a loopback address) on the NodePort of the pod's Service, which is exactly
where kube-proxy with `externalTrafficPolicy: Local` would route it on a real node. When the pod,
its Service or its readiness goes away, the server is stopped. Every server runs in its own
process group and dies with the harness (stop(), interpreter exit, or the parent dying).
With kubelet_metrics=True it also serves each such node's kubelet /metrics/resource, with the real
CPU time of the model servers run on the node and of each pod's (kubelet_metrics.py), for
metrics-server to scrape.
"""
from __future__ import annotations

import atexit
import ctypes
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.local_proc import stop_group

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_ANNOTATION = "edge-inference/model"
NODE_ANNOTATION = "edge-inference/node"
MANAGED_BY_SELECTOR = "app.kubernetes.io/managed-by=edge-inference"


@dataclass
class Server:
    model: str
    node: str
    host: str
    port: int
    process: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.time)   # its "container's" start time
    pod: tuple[str, str] = ("", "")            # (pod name, container name) it stands for
    cpu_seen: float = field(default=0.0)       # highest CPU seconds read: the node's counter never falls

    @property
    def endpoint(self) -> str:
        """host:port the server is bound to."""
        return f"{self.host}:{self.port}"


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _identity(obj: dict[str, Any]) -> tuple[str, str] | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    model, node = annotations.get(MODEL_ANNOTATION), annotations.get(NODE_ANNOTATION)
    return (model, node) if model and node else None


def _internal_ip(node: dict[str, Any]) -> str | None:
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return address.get("address")
    return None


class ModelServerStandIn:
    """Keep one real model server per Ready pod of ours, at its node's IP and its Service's NodePort."""

    def __init__(self, *, kubeconfig: str | Path, namespace: str, catalog_path: str | Path,
                 models_dir: str | Path, log_dir: str | Path, poll_seconds: float = 0.3,
                 kubelet_metrics: bool = False) -> None:
        from kubernetes import client, config

        from cluster.catalog import load_catalog

        self.catalog = load_catalog(catalog_path)
        self.namespace, self.models_dir, self.poll_seconds = namespace, Path(models_dir), poll_seconds
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._api = config.new_client_from_config(config_file=str(kubeconfig))
        self._core = client.CoreV1Api(self._api)
        self._servers: dict[tuple[str, str], Server] = {}
        self.kubelet_metrics = kubelet_metrics
        self.kubelets: dict[str, Any] = {}          # node -> kubelet_metrics.NodeKubelet
        self._retired_cpu: dict[str, float] = {}    # node -> CPU seconds of its stopped servers
        self._pods: dict[tuple[str, str], tuple[str, str]] = {}   # (model, node) -> (pod, container)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="standin", daemon=True)
        self.errors: list[str] = []
        _LIVE.add(self)

    def start(self) -> "ModelServerStandIn":
        """Start watching; return self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching and kill every model server started."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            _kill(server)
        for kubelet in list(self.kubelets.values()):
            kubelet.close()
        self.kubelets.clear()
        _LIVE.discard(self)
        try:
            self._api.close()
        except Exception:
            pass

    def __enter__(self) -> "ModelServerStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def servers(self) -> dict[tuple[str, str], str]:
        """Return {(model, node): "host:port"} of the servers running now."""
        with self._lock:
            return {key: s.endpoint for key, s in self._servers.items() if s.process.poll() is None}

    def wait_serving(self, model: str, node: str, *, timeout: float = 60.0) -> str:
        """Wait until the model server for (model, node) answers its status URL; return host:port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                server = self._servers.get((model, node))
            if server is not None and server.process.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://{server.endpoint}/v1/models/{model}", timeout=2) as r:
                        if r.status == 200:
                            return server.endpoint
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.2)
        raise TimeoutError(f"no model server for {model} on {node} after {timeout:g}s "
                           f"(running: {self.servers()}, errors: {self.errors[-3:]})")

    def node_usage(self, node: str) -> tuple[float, int]:
        """Return (cumulative CPU seconds, resident bytes) of the model servers run on `node`."""
        usage = self.node_sample(node).node
        return usage.cpu_seconds, usage.memory_bytes

    def node_sample(self, node: str):
        """Return a kubelet_metrics.NodeSample for `node`: the live model servers' process trees, each
        as its pod's container, and for the node the CPU of those already stopped too (a counter)."""
        from kubelet_metrics import NodeSample, Usage, process_usage

        with self._lock:
            servers = [s for s in self._servers.values() if s.node == node]
            cpu, memory, containers = self._retired_cpu.get(node, 0.0), 0, {}
            for server in servers:
                used, resident = process_usage(server.process.pid)
                server.cpu_seen = max(server.cpu_seen, used)
                cpu, memory = cpu + server.cpu_seen, memory + resident
                if server.pod[0] and resident:
                    containers[(self.namespace, *server.pod)] = Usage(server.cpu_seen, resident, server.started)
            return NodeSample(Usage(cpu, memory), containers)

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:    # the API may be briefly unavailable; keep trying
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_seconds)

    def _desired(self) -> dict[tuple[str, str], tuple[str, int]]:
        def items(response: Any) -> list[dict[str, Any]]:
            return self._api.sanitize_for_serialization(response).get("items") or []

        pods = items(self._core.list_namespaced_pod(self.namespace, label_selector=MANAGED_BY_SELECTOR))
        services = items(self._core.list_namespaced_service(self.namespace, label_selector=MANAGED_BY_SELECTOR))
        nodes = {(n.get("metadata") or {}).get("name"): n for n in items(self._core.list_node())}
        ports: dict[tuple[str, str], int] = {}
        for service in services:
            ident = _identity(service)
            for port in (service.get("spec") or {}).get("ports") or []:
                if ident and port.get("nodePort"):
                    ports[ident] = int(port["nodePort"])
                    break
        desired: dict[tuple[str, str], tuple[str, int]] = {}
        self._pods = {}
        for pod in pods:
            ident = _identity(pod)
            node_name = (pod.get("spec") or {}).get("nodeName")
            if not ident or not _pod_ready(pod) or node_name not in nodes or ident not in ports:
                continue
            if ident[1] != node_name or ident[0] not in self.catalog:
                continue
            address = _internal_ip(nodes[node_name])
            if address and address.startswith("127."):     # loopback only, never anything else
                desired[ident] = (address, ports[ident])
                containers = (pod.get("spec") or {}).get("containers") or [{}]
                self._pods[ident] = (pod["metadata"]["name"], containers[0].get("name", ""))
        return desired

    def _sync(self) -> None:
        desired = self._desired()
        with self._lock:
            current = dict(self._servers)
            for key, server in current.items():
                server.pod = self._pods.get(key, server.pod)   # a replaced pod keeps the server
        for key, server in current.items():
            if desired.get(key) != (server.host, server.port) or server.process.poll() is not None:
                self.node_usage(server.node)             # last reading of its CPU before it goes
                with self._lock:
                    self._servers.pop(key, None)
                    self._retired_cpu[server.node] = self._retired_cpu.get(server.node, 0.0) + server.cpu_seen
                _kill(server)
        for key, (host, port) in desired.items():
            with self._lock:
                if key in self._servers:
                    continue
            if self._stop.is_set():
                return
            self._spawn(key, host, port)
        if self.kubelet_metrics:
            for (_, node), (host, _) in desired.items():
                if node not in self.kubelets and not self._stop.is_set():
                    self._start_kubelet(node, host)

    def _start_kubelet(self, node: str, address: str) -> None:
        """Serve the node's /metrics/resource and publish the port in its status, as a kubelet does."""
        from controlplane import _openssl
        from kubelet_metrics import NodeKubelet

        cert, key = self.log_dir / "kubelet.crt", self.log_dir / "kubelet.key"
        if not cert.is_file():
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", key.name, "-out", cert.name, "-days", "3", "-subj", "/CN=kubelet-stand-in",
                     cwd=self.log_dir)
        kubelet = NodeKubelet(node, address, lambda: self.node_sample(node), cert=cert, key=key)
        try:
            self._core.patch_node_status(node, {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet.port}}}})
        except BaseException:
            kubelet.close()
            raise
        self.kubelets[node] = kubelet

    def _spawn(self, key: tuple[str, str], host: str, port: int) -> None:
        model, node = key
        spec = self.catalog[model]
        log = self.log_dir / f"{model}-{node}.log"
        command = [sys.executable, "-m", "modelserver", "--host", host, "--rest_api_port", str(port),
                   "--model_name", model, "--model_base_path", str(self.models_dir / spec.model_file),
                   "--rest_api_num_threads", "2"]
        with open(log, "ab") as handle:
            process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True,
                                       preexec_fn=_die_with_parent)
        with self._lock:
            self._servers[key] = Server(model, node, host, port, process, log, pod=self._pods.get(key, ("", "")))


def _kill(server: Server, grace: float = 3.0) -> None:
    stop_group(server.process, grace=grace)


_LIVE: set[ModelServerStandIn] = set()


@atexit.register
def _stop_all() -> None:
    for harness in list(_LIVE):
        harness.stop()
