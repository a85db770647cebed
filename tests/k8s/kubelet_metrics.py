"""A kubelet's resource-metrics endpoint for one KWOK node, from the real processes run on it.

Why this exists: metrics-server builds metrics.k8s.io from each kubelet's
https://<node InternalIP>:<kubelet port>/metrics/resource (Prometheus text). KWOK's kubelets run
nothing, but the stand-in (standin.py) runs real model servers "on" each node; this serves that
endpoint at the node's loopback address with the node's and each pod's container's cumulative CPU
time and working set taken from those processes (psutil, children included), so a node whose
model server works hard reports the CPU it really burns. The port is free-picked; the stand-in writes it into the node's status
(daemonEndpoints.kubeletEndpoint.Port) as a kubelet does, and metrics-server runs with
--kubelet-use-node-status-port.
"""
from __future__ import annotations

import http.server
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil


@dataclass(frozen=True)
class Usage:
    """Cumulative CPU seconds and working-set bytes (and, for a container, its start time)."""

    cpu_seconds: float
    memory_bytes: int
    start_time: float = 0.0


@dataclass(frozen=True)
class NodeSample:
    """What one scrape reports: the node, and each container by (namespace, pod, container)."""

    node: Usage
    containers: dict[tuple[str, str, str], Usage] = field(default_factory=dict)


def process_usage(pid: int) -> tuple[float, int]:
    """Return (CPU seconds, resident bytes) of process `pid` and its descendants (0, 0 once gone)."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    cpu, memory = 0.0, 0
    for process in family:
        try:
            times = process.cpu_times()
            cpu += times.user + times.system + (times.children_user + times.children_system if process is root else 0)
            memory += process.memory_info().rss
        except psutil.Error:
            continue
    return cpu, memory


def _family(name: str, kind: str, help_text: str, rows: list[tuple[str, str]], stamp: int) -> list[str]:
    return [f"# HELP {name} [STABLE] {help_text}", f"# TYPE {name} {kind}",
            *(f"{name}{labels} {value} {stamp}" for labels, value in rows)]


def render(sample: NodeSample, *, now: float | None = None) -> str:
    """Return the /metrics/resource text a kubelet serves: node and container series, timestamped (ms)."""
    stamp = int((now if now is not None else time.time()) * 1000)
    keys = sorted(sample.containers)
    labels = {key: f'{{container="{key[2]}",namespace="{key[0]}",pod="{key[1]}"}}' for key in keys}
    node = sample.node
    lines = [
        *_family("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the container in core-seconds",
                 [(labels[k], f"{sample.containers[k].cpu_seconds:.9f}") for k in keys], stamp),
        *_family("container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes",
                 [(labels[k], str(sample.containers[k].memory_bytes)) for k in keys], stamp),
        *_family("container_start_time_seconds", "gauge", "Start time of the container since unix epoch in seconds",
                 [(labels[k], f"{sample.containers[k].start_time:.6f}") for k in keys], stamp),
        *_family("node_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the node in core-seconds",
                 [("", f"{node.cpu_seconds:.9f}")], stamp),
        *_family("node_memory_working_set_bytes", "gauge", "Current working set of the node in bytes",
                 [("", str(node.memory_bytes))], stamp),
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
        "# TYPE resource_scrape_error gauge",
        "resource_scrape_error 0",
    ]
    return "\n".join(lines) + "\n"


class NodeKubelet:
    """HTTPS /metrics/resource for one node at (address, free port); `sample()` gives its usage."""

    def __init__(self, node: str, address: str, sample: Callable[[], NodeSample], *, cert: Path, key: Path) -> None:
        if not address.startswith("127."):
            raise ValueError(f"kubelet stand-in binds loopback addresses only, got {address}")
        self.node, self.sample = node, sample
        self.scrapes = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/metrics/resource":
                    self.send_error(404)
                    return
                body = render(owner.sample()).encode()
                owner.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self._server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"kubelet-{node}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
