"""An immutable picture of the cluster, built once per refresh so requests only read memory."""
from __future__ import annotations

from dataclasses import dataclass, field

from cluster.port import Deployment, Node, node_tier

__all__ = ["Candidate", "ClusterState", "EMPTY_STATE"]


@dataclass(frozen=True)
class Candidate:
    """A ready deployment on a ready node: something a client may be sent to."""

    deployment: Deployment
    node: Node

    @property
    def endpoint(self) -> str:
        return self.deployment.endpoint

    def to_json(self) -> dict:
        """Return the contract's service object for this candidate."""
        model = self.deployment.model
        return {"model": model, "node": self.node.name, "endpoint": self.endpoint,
                "url": f"http://{self.endpoint}/v1/models/{model}", "tier": node_tier(self.node)}


@dataclass(frozen=True)
class ClusterState:
    """Nodes and deployments as last read, plus the per-model candidates derived from them."""

    nodes: tuple[Node, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    fetched: float = 0.0          # unix time of the successful read; 0 = never read
    serving: dict[str, tuple[Candidate, ...]] = field(default_factory=dict)
    nodes_by_name: dict[str, Node] = field(default_factory=dict)
    generation: dict[str, tuple] = field(default_factory=dict)   # model -> identity of its instances

    @classmethod
    def build(cls, nodes: list[Node], deployments: list[Deployment], *, fetched: float) -> "ClusterState":
        """Index `nodes` and `deployments`: keep ready deployments on ready nodes as candidates."""
        by_name = {n.name: n for n in nodes}
        serving: dict[str, list[Candidate]] = {}
        generation: dict[str, list] = {}
        for dep in deployments:
            generation.setdefault(dep.model, []).append((dep.node, dep.endpoint, dep.created, dep.ready))
            node = by_name.get(dep.node)
            if dep.ready and node is not None and node.ready:
                serving.setdefault(dep.model, []).append(Candidate(deployment=dep, node=node))
        return cls(
            nodes=tuple(sorted(nodes, key=lambda n: n.name)),
            deployments=tuple(sorted(deployments, key=lambda d: (d.model, d.node))),
            fetched=fetched,
            serving={m: tuple(sorted(c, key=lambda c: c.node.name)) for m, c in sorted(serving.items())},
            nodes_by_name=by_name,
            generation={m: tuple(sorted(g)) for m, g in generation.items()},
        )

    def deployments_of(self, model: str) -> list[Deployment]:
        """Return every instance of `model`, ready or not."""
        return [d for d in self.deployments if d.model == model]


EMPTY_STATE = ClusterState()
