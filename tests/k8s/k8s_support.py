"""Helpers for tests/k8s: a test's slice of the shared control plane, and polling."""
from __future__ import annotations

import random
import string
import time
from pathlib import Path
from typing import Callable

import controlplane
from controlplane import ControlPlane, node_manifest

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG = REPO_ROOT / "config" / "models.yaml"
NODE_CLASS_LABEL = "edge-inference/node-class"
FRONTEND_TOKEN = "k8s-test-token-0123456789"


def _suffix(length: int = 5) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))


def wait_for(predicate: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> object:
    """Poll `predicate` until it returns something truthy; return it, or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:      # the thing waited for may raise until it exists
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


class KubeEnv:
    """One test's slice of the shared control plane: a namespace and KWOK nodes of its own."""

    def __init__(self, plane: ControlPlane, api, namespace: str, tmp_path: Path) -> None:
        from kubernetes import client

        self.plane, self.api, self.namespace, self.tmp_path = plane, api, namespace, tmp_path
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.prefix = f"127.{random.randint(2, 254)}.{random.randint(2, 254)}"   # nodes' loopback /24
        self.node_tag = _suffix(4)
        self.nodes: dict[str, str] = {}          # name -> address
        self.clusters: list = []

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig."""
        return self.plane.kubeconfig

    def node_name(self, short: str) -> str:
        """Return this test's full name for node `short` (unique across tests)."""
        return f"{short}-{self.node_tag}"

    def add_node(self, short: str, *, memory_kb: int = 500_000, cpu: float = 2.0, node_class: str = "small",
                 wait_ready: bool = True) -> str:
        """Create a KWOK node with a loopback InternalIP; return its full name."""
        name = self.node_name(short)
        address = f"{self.prefix}.{len(self.nodes) + 2}"
        body = node_manifest(name, address=address, cpu=cpu, memory_kib=memory_kb,
                             labels={NODE_CLASS_LABEL: node_class})
        self.core.create_node(body)
        self.nodes[name] = address
        if wait_ready:
            self.wait_node_ready(name, True)
        return name

    def node_is_ready(self, name: str) -> bool:
        """Return the Ready condition of node `name` as the API reports it."""
        node = self.core.read_node(name)
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    def wait_node_ready(self, name: str, ready: bool, *, timeout: float = 30.0) -> None:
        """Wait until node `name`'s Ready condition is `ready`."""
        wait_for(lambda: self.node_is_ready(name) == ready, timeout=timeout, what=f"node {name} ready={ready}")

    def set_node_ready(self, name: str, ready: bool) -> None:
        """Make KWOK report node `name` NotReady (ready=False) or Ready again, and wait for it."""
        value = None if ready else "true"
        self.core.patch_node(name, {"metadata": {"labels": {controlplane.NOT_READY_LABEL: value}}})
        self.wait_node_ready(name, ready)

    def cluster(self, **kwargs):
        """Return a KubernetesCluster on this namespace (closed at teardown)."""
        from cluster.kubernetes import KubernetesCluster

        kwargs.setdefault("catalog_path", CATALOG)
        kwargs.setdefault("node_class_label", NODE_CLASS_LABEL)
        made = KubernetesCluster(kubeconfig=self.kubeconfig, namespace=self.namespace, **kwargs)
        self.clusters.append(made)
        return made

    def cleanup(self) -> None:
        """Close adapters, delete the nodes and the namespace (not waiting for the namespace)."""
        for made in self.clusters:
            try:
                made.close()
            except Exception:
                pass
        for name in self.nodes:
            try:
                self.core.delete_node(name)
            except Exception:
                pass
        try:
            self.core.delete_namespace(self.namespace)
        except Exception:
            pass
