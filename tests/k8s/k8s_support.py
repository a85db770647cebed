"""Helpers for tests/k8s: a test's slice of the shared control plane, and polling."""
from __future__ import annotations

import json
import random
import string
import time
from pathlib import Path
from typing import Callable

import controlplane
from controlplane import ControlPlane, node_manifest

from tests.waiting import wait_for as _wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG = REPO_ROOT / "tests" / "fixtures" / "models.yaml"
NODE_CLASS_LABEL = "edge-inference/node-class"
FRONTEND_TOKEN = "k8s-test-token-0123456789"

# The session's API server writes an audit log of the requests made by client certificates in
# this group (and of nothing else); the group is bound to cluster-admin (conftest.py), so an
# adapter running as such a user behaves as with the admin kubeconfig, and every request it
# makes is on record: KubeEnv.audited_cluster().
AUDITED_GROUP = "edge-audited"
AUDIT_POLICY = f"""apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    userGroups: ["{AUDITED_GROUP}"]
  - level: None
"""


def audited_calls(audit_log: Path, user: str) -> list[tuple[str, str, str, int | None]]:
    """Return (verb, API group, resource, response code) of every request `user` made, in order.

    One entry per request: a watch logs ResponseStarted and, when it ends, ResponseComplete under
    the same auditID; its first record counts."""
    seen: dict[str, tuple[str, str, str, int | None]] = {}
    if not audit_log.exists():
        return []
    for line in audit_log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:          # a line still being written
            continue
        if (event.get("user") or {}).get("username") != user:
            continue
        ref = event.get("objectRef") or {}
        seen.setdefault(event["auditID"], (event["verb"], ref.get("apiGroup", ""), ref.get("resource", ""),
                                           (event.get("responseStatus") or {}).get("code")))
    return list(seen.values())


def _suffix(length: int = 5) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))


def wait_for(predicate: Callable[[], object], *, timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> object:
    """tests/waiting.py's wait_for; an API call that raises until its object exists counts as "not yet"."""
    return _wait_for(predicate, timeout, what, interval=interval, ignore=(Exception,))


class KubeEnv:
    """One test's slice of the shared control plane: a namespace and KWOK nodes of its own."""

    def __init__(self, plane: ControlPlane, api, namespace: str, tmp_path: Path,
                 audit_log: Path | None = None) -> None:
        from kubernetes import client

        self.plane, self.api, self.namespace, self.tmp_path = plane, api, namespace, tmp_path
        self.audit_log = audit_log
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

    def add_node(self, short: str, *, memory_kb: int = 500_000, cpu: float = 2.0, node_class: str | None = "small",
                 labels: dict[str, str] | None = None, wait_ready: bool = True) -> str:
        """Create a KWOK node with a loopback InternalIP; return its full name.

        node_class=None leaves the class label off; `labels` are added (and may replace
        kubernetes.io/hostname, which defaults to the node's name)."""
        name = self.node_name(short)
        address = f"{self.prefix}.{len(self.nodes) + 2}"
        extra = {NODE_CLASS_LABEL: node_class} if node_class else {}
        body = node_manifest(name, address=address, cpu=cpu, memory_kib=memory_kb, labels={**extra, **(labels or {})})
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

    def audited_cluster(self, **kwargs):
        """Return (adapter, calls): an adapter running as its own audited user (cluster-admin rights),
        and calls() -> the (verb, group, resource, code) of every request it has made so far."""
        if self.audit_log is None:
            raise RuntimeError("the control plane was started without an audit log")
        from cluster.kubernetes import KubernetesCluster

        user = f"audited-{self.namespace}-{_suffix(4)}"
        kubeconfig = self.plane.client_kubeconfig(user, group=AUDITED_GROUP)
        kwargs.setdefault("catalog_path", CATALOG)
        kwargs.setdefault("node_class_label", NODE_CLASS_LABEL)
        made = KubernetesCluster(kubeconfig=kubeconfig, namespace=self.namespace, **kwargs)
        self.clusters.append(made)
        return made, lambda: audited_calls(self.audit_log, user)

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
