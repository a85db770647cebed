"""A kubelet's resource-metrics endpoint for one KWOK node, from the real processes run on it.

Why this exists: metrics-server builds metrics.k8s.io from each kubelet's
https://<node InternalIP>:<kubelet port>/metrics/resource (Prometheus text). KWOK's kubelets run
nothing, but the stand-in (standin.py) runs real model servers "on" each node; this serves that
endpoint at the node's loopback address with the node's cumulative CPU time and working set taken
from those processes (psutil, children included), so a node whose model server works hard reports
the CPU it really burns. The port is free-picked; the stand-in writes it into the node's status
(daemonEndpoints.kubeletEndpoint.Port) as a kubelet does, and metrics-server runs with
--kubelet-use-node-status-port.
"""
from __future__ import annotations

import http.server
import ssl
import threading
import time
from pathlib import Path
from typing import Callable

import psutil

Sample = Callable[[], "tuple[float, int]"]      # () -> (cumulative CPU seconds, working-set bytes)


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


def render(cpu_seconds: float, memory_bytes: int, *, now: float | None = None) -> str:
    """Return the /metrics/resource text a kubelet serves for a node (the node series only)."""
    stamp = int((now if now is not None else time.time()) * 1000)
    return ("# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n"
            "# TYPE node_cpu_usage_seconds_total counter\n"
            f"node_cpu_usage_seconds_total {cpu_seconds:.9f} {stamp}\n"
            "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n"
            "# TYPE node_memory_working_set_bytes gauge\n"
            f"node_memory_working_set_bytes {memory_bytes} {stamp}\n"
            "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n"
            "# TYPE resource_scrape_error gauge\n"
            "resource_scrape_error 0\n")


class NodeKubelet:
    """HTTPS /metrics/resource for one node at (address, free port); `sample` gives its usage."""

    def __init__(self, node: str, address: str, sample: Sample, *, cert: Path, key: Path) -> None:
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
                cpu, memory = owner.sample()
                body = render(cpu, memory).encode()
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
