"""The cluster the system acts on, behind one port (`cluster.port.Cluster`).

`open_cluster("local", ...)` is the embedded default; `open_cluster("kubernetes", ...)` talks to a
real API server. Adapters are imported lazily so the local path never loads the kubernetes client.
"""
from __future__ import annotations

from .port import (Cluster, ClusterError, ClusterUnavailable, Deployment, InsufficientMemory, Node,
                   NodeNotReady, UnknownModel, UnknownNode)

__all__ = [
    "open_cluster", "Cluster", "Node", "Deployment", "ClusterError", "UnknownModel", "UnknownNode",
    "NodeNotReady", "InsufficientMemory", "ClusterUnavailable",
]


def open_cluster(kind: str = "local", **settings) -> Cluster:
    """Return the adapter for `kind` ("local" or "kubernetes"), configured by `settings`."""
    if kind == "local":
        from .local import LocalCluster
        return LocalCluster(**settings)
    if kind == "kubernetes":
        from .kubernetes import KubernetesCluster
        return KubernetesCluster(**settings)
    raise ClusterError(f"unknown cluster kind {kind!r} (expected 'local' or 'kubernetes')")
