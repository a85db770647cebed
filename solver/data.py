"""Dense numpy arrays of a validated Problem: what the formulations and heuristics compute on.

Groups with a zero count are kept (indices stay those of Problem.requests) but carry no
variables. Rows of `rtt` are built once per distinct mapping object, so callers that share one
rtt dict between the groups of a zone (as large generated instances do) convert fast.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from solver.problem import Problem


@dataclass(frozen=True)
class Arrays:
    """The problem as arrays: G groups, S nodes, M models."""

    placement: bool             # memory once per instance: formulation "placement" or "latency"
    node_names: list[str]
    model_names: list[str]
    count: np.ndarray           # (G,) int64 requests per group
    group_model: np.ndarray     # (G,) int64 model index of each group
    rtt: np.ndarray             # (G, S) seconds
    exec_time: np.ndarray       # (M, S) seconds
    mem: np.ndarray             # (M,) KB per instance (placement) or per request (thesis)
    cpu: np.ndarray             # (M,) cores per request
    mem_cap: np.ndarray         # (S,) KB
    cpu_cap: np.ndarray         # (S,) cores
    deployed: np.ndarray        # (M, S) bool, running already (placement only: no memory charged)
    latency: bool = False       # formulation == "latency": queueing delay, costs, utilisation ceiling
    window: float = 0.0         # latency: seconds the counts were observed over
    max_util: float = 1.0       # latency: utilisation ceiling per instance
    cost_req: np.ndarray | None = None    # (S,) latency: objective seconds added per request on a node
    cost_inst: np.ndarray | None = None   # (S,) latency: objective seconds per instance over the window

    @functools.cached_property
    def cost(self) -> np.ndarray:
        """Return the (G, S) unit cost rtt + exec_time of each group on each node (+ the cost per request
        in `latency`, where it is the low-load cost: waiting comes on top). Built once (read-only):
        at 5,000 groups x 1,000 nodes a build takes ~13 ms, and the bounds ask for it per model."""
        base = self.rtt + self.exec_time[self.group_model]
        out = base + self.cost_req[None, :] if self.latency else base
        out.setflags(write=False)
        return out

    @property
    def n_groups(self) -> int:
        """Return G."""
        return len(self.count)

    @property
    def n_nodes(self) -> int:
        """Return S."""
        return len(self.node_names)

    @property
    def n_models(self) -> int:
        """Return M."""
        return len(self.model_names)


def to_arrays(problem: Problem) -> Arrays:
    """Convert a validated problem to arrays."""
    node_names = [n.name for n in problem.nodes]
    model_names = [m.name for m in problem.models]
    node_index = {n: j for j, n in enumerate(node_names)}
    model_index = {m: k for k, m in enumerate(model_names)}
    rows: dict[int, np.ndarray] = {}
    rtt = np.empty((len(problem.requests), len(node_names)))
    for g, group in enumerate(problem.requests):
        row = rows.get(id(group.rtt))
        if row is None:
            row = np.fromiter((group.rtt[n] for n in node_names), dtype=float, count=len(node_names))
            rows[id(group.rtt)] = row
        rtt[g] = row
    exec_time = np.array([[problem.exec_time[m][n] for n in node_names] for m in model_names], dtype=float)
    exec_time = exec_time.reshape(len(model_names), len(node_names))
    deployed = np.zeros((len(model_names), len(node_names)), dtype=bool)
    placement = problem.formulation in ("placement", "latency")
    latency = problem.formulation == "latency"
    if placement:
        for model, node in problem.deployed:
            deployed[model_index[model], node_index[node]] = True
    return Arrays(
        placement=placement,
        node_names=node_names,
        model_names=model_names,
        count=np.array([g.count for g in problem.requests], dtype=np.int64),
        group_model=np.array([model_index[g.model] for g in problem.requests], dtype=np.int64),
        rtt=rtt,
        exec_time=exec_time,
        mem=np.array([m.memory for m in problem.models], dtype=float),
        cpu=np.array([m.cpu for m in problem.models], dtype=float),
        mem_cap=np.array([n.memory for n in problem.nodes], dtype=float),
        cpu_cap=np.array([n.cpu for n in problem.nodes], dtype=float),
        deployed=deployed,
        latency=latency,
        window=float(problem.window or 0.0),
        max_util=float(problem.max_utilisation) if latency else 1.0,
        cost_req=np.array([n.cost_per_request for n in problem.nodes], dtype=float) if latency else None,
        cost_inst=(np.array([n.cost_per_instance_hour for n in problem.nodes], dtype=float)
                   * float(problem.window or 0.0) / 3600.0) if latency else None,
    )
