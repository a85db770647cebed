"""The Cluster port: the one narrow interface everything above the cluster talks to.

Two adapters implement it: `cluster.local` (the embedded default: loopback addresses as nodes,
real model-server processes) and `cluster.kubernetes` (one Deployment + NodePort Service per
(model, node)). Callers see only these dataclasses and exceptions, never an adapter's own types.

Exception tree::

    ClusterError
    ├── UnknownModel      model name not in the catalog
    ├── UnknownNode       node name not in the cluster
    ├── NodeNotReady      the node is down / NotReady
    ├── InsufficientMemory  deploying would exceed the node's declared memory
    └── ClusterUnavailable  the cluster itself cannot be reached (API server, state file)
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

__all__ = [
    "Node", "Deployment", "Cluster", "TIER_LABEL", "COST_REQUEST_LABEL", "COST_HOUR_LABEL", "node_tier", "node_costs",
    "ClusterError", "UnknownModel", "UnknownNode", "NodeNotReady",
    "InsufficientMemory", "ClusterUnavailable",
]


@dataclass(frozen=True)
class Node:
    """A node as the cluster reports it. Memory in KB (the thesis's unit), CPU in cores."""

    name: str
    address: str                 # IP the node's model servers are reached on
    ready: bool
    memory_total: int            # KB, declared capacity
    memory_used: int             # KB, sum of declared memory of the instances on it
    cpu_capacity: float          # cores
    cpu_usage: float             # cores in use, measured (0.0 when unknown)
    labels: dict[str, str] = field(default_factory=dict)   # includes "node-class"
    memory_rss: int | None = None  # KB actually resident in its model servers, when measured

    @property
    def memory_available(self) -> int:
        return max(0, self.memory_total - self.memory_used)

    @property
    def cpu_fraction(self) -> float:
        """CPU usage as a fraction of capacity (the lowest-cpu dispatch key)."""
        return self.cpu_usage / self.cpu_capacity if self.cpu_capacity > 0 else 1.0


TIER_LABEL = "topology"                       # "cloud" marks a cloud site; anything else is edge
COST_REQUEST_LABEL = "cost-per-request"       # objective seconds per request served there
COST_HOUR_LABEL = "cost-per-instance-hour"    # objective seconds per instance-hour there


def node_tier(node: Node) -> str:
    """Return "cloud" for a node labelled topology=cloud, else "edge"."""
    return "cloud" if node.labels.get(TIER_LABEL) == "cloud" else "edge"


def node_costs(node: Node) -> tuple[float, float]:
    """Return (cost per request, cost per instance-hour) from the node's labels (0 when absent or bad)."""
    out = []
    for key in (COST_REQUEST_LABEL, COST_HOUR_LABEL):
        try:
            value = float(node.labels.get(key, 0.0))
        except (TypeError, ValueError):
            value = 0.0
        out.append(value if value >= 0 and value == value and value != float("inf") else 0.0)
    return out[0], out[1]


@dataclass(frozen=True)
class Deployment:
    """One model instance on one node."""

    model: str
    node: str
    endpoint: str                # "host:port" a client or the proxy calls
    ready: bool
    created: float               # unix time the instance was created
    reason: str | None = None    # why it is not ready when it failed (e.g. killed by OOM)


class Cluster(abc.ABC):
    """Read the cluster's state and change which models run where."""

    @abc.abstractmethod
    def nodes(self) -> list[Node]:
        """Return every node, ready or not."""

    @abc.abstractmethod
    def deployments(self) -> list[Deployment]:
        """Return every model instance, ready or not."""

    @abc.abstractmethod
    def deploy(self, model: str, node: str, *, wait: bool = True, timeout: float = 60.0) -> Deployment:
        """Start `model` on `node`; idempotent (already running is success).

        With `wait`, return once the instance answers (or raise ClusterError on timeout)."""

    @abc.abstractmethod
    def remove(self, model: str, node: str) -> None:
        """Stop `model` on `node`; idempotent (already gone is success)."""

    def close(self) -> None:
        """Release background resources (watches, threads)."""


class ClusterError(Exception):
    """Base of every error the cluster port raises."""


class UnknownModel(ClusterError):
    pass


class UnknownNode(ClusterError):
    pass


class NodeNotReady(ClusterError):
    pass


class InsufficientMemory(ClusterError):
    pass


class ClusterUnavailable(ClusterError):
    pass
