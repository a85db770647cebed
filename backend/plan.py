"""Turn a solution into provision/delete actions (pure: observed state in, selected actions out).

The policy only *selects* (descheduler's convention); `backend.apply` alone acts, and alone
enforces the deletion cap and dry-run. Modes (thesis 4.3, 5.3):

- Mode 1 provisions every (model, node) the solution wants and the cluster lacks. It deletes by
  recency and frequency only: an instance idle longer than `idle_seconds` that served fewer than
  `min_requests` requests since it was provisioned, and never one the solution still routes to.
- Mode 2 follows the solution strictly: provision what it wants and is missing, delete what runs
  and it does not want. Except when the solution places nothing (no requests in the window): then
  it deletes nothing, since a quiet window is no evidence that nothing is wanted (following it would
  empty the cluster at the first quiet moment, e.g. right after a start with pre-deployed models).
- A solve that failed, timed out or was infeasible selects nothing at all, in either mode: no
  provisioning (there is no placement to follow) and no deletion (not even Mode 1's recency ones:
  a run that could not see the whole picture must not shrink the cluster).
- Nodes that are not ready are left alone (their deployments come back with them, thesis 4.5).

Deletions are listed in the order they should survive a cap: the least useful first.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from cluster.port import Deployment
from common.plan_body import MAX_SERVICE

from .collect import ModelStat

__all__ = ["Action", "Thresholds", "Instance", "Plan", "desired_pairs", "instances_from",
           "plan_actions", "dispatch_weights", "service_times", "idle_times", "PROVISION", "DELETE", "SOLVED_STATUSES"]

PROVISION = "provision"
DELETE = "delete"
SOLVED_STATUSES = ("optimal", "repaired", "feasible")


@dataclass(frozen=True)
class Action:
    """One change to the cluster."""

    kind: str          # PROVISION or DELETE
    model: str
    node: str
    reason: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model, "node": self.node, "reason": self.reason}


@dataclass(frozen=True)
class Thresholds:
    """Mode 1's deletion rule (thesis 5.3: every threshold comes from the command line)."""

    idle_seconds: float = 900.0     # an instance must be idle longer than this, seconds
    min_requests: int = 10          # ... and have served fewer requests than this since provisioned


@dataclass(frozen=True)
class Instance:
    """A running (or starting) model instance with what the front-end knows of its use."""

    model: str
    node: str
    provisioned: float              # unix seconds
    count: int                      # requests it served since provisioned
    last_requested: float | None    # unix seconds
    ready: bool = True

    def idle(self, now: float) -> float:
        """Seconds since it last served a request (or since it was provisioned)."""
        last = max(self.provisioned, self.last_requested or 0.0)
        return max(0.0, now - last)


@dataclass
class Plan:
    """What the policy selected, and why."""

    mode: int
    solved: bool
    desired: list[tuple[str, str]]
    actions: list[Action]
    notes: list[str] = field(default_factory=list)

    @property
    def provisions(self) -> list[Action]:
        return [a for a in self.actions if a.kind == PROVISION]

    @property
    def deletions(self) -> list[Action]:
        return [a for a in self.actions if a.kind == DELETE]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "solved": self.solved, "desired": [list(p) for p in self.desired],
                "actions": [a.to_dict() for a in self.actions], "notes": list(self.notes)}


def desired_pairs(groups: list[tuple[str, str]], assignment: Iterable) -> set[tuple[str, str]]:
    """Return the (model, node) pairs the solution routes requests to.

    `groups[i]` is the (model, zone) of request group i; `assignment` holds objects with
    `request`, `node` and `count` (solver.Assignment)."""
    pairs = set()
    for a in assignment:
        if a.count > 0 and 0 <= a.request < len(groups):
            pairs.add((groups[a.request][0], a.node))
    return pairs


def instances_from(deployments: list[Deployment], models: list[ModelStat]) -> list[Instance]:
    """Join the cluster's deployments with the front-end's per-instance counts."""
    by_pair: dict[tuple[str, str], list] = {}
    for stat in models:
        for inst in stat.instances:
            by_pair.setdefault((stat.model, inst.node), []).append(inst)
    out = []
    for dep in deployments:
        candidates = by_pair.get((dep.model, dep.node), [])
        match = None
        if candidates:
            # The front-end keys its counts by provisioning time: take the closest one.
            match = min(candidates, key=lambda inst: abs((inst.provisioned or 0.0) - dep.created))
        out.append(Instance(model=dep.model, node=dep.node, provisioned=dep.created,
                            count=match.count if match else 0,
                            last_requested=match.last_requested if match else None, ready=dep.ready))
    return out


def plan_actions(*, mode: int, solved: bool, status: str, desired: set[tuple[str, str]],
                 instances: list[Instance], nodes: Iterable[str], known_models: Iterable[str],
                 thresholds: Thresholds, now: float) -> Plan:
    """Select the actions for one run (see the module doc for the rules)."""
    if mode not in (1, 2):
        raise ValueError("mode must be 1 or 2")
    node_set = set(nodes)
    known = set(known_models)
    desired = {(m, n) for m, n in desired if n in node_set and m in known}
    ordered = sorted(desired)
    if not solved:
        return Plan(mode=mode, solved=False, desired=[], actions=[],
                    notes=[f"solve {status}: nothing provisioned or deleted this run"])
    notes: list[str] = []
    existing = {(i.model, i.node) for i in instances}
    actions = [Action(PROVISION, model, node, "placed by the solver, not running")
               for model, node in ordered if (model, node) not in existing]
    # Only instances we may act on: a known model on a ready node, one per pair.
    candidates: dict[tuple[str, str], Instance] = {}
    for inst in instances:
        if inst.node in node_set and inst.model in known:
            candidates.setdefault((inst.model, inst.node), inst)
    skipped_down = sorted({(i.model, i.node) for i in instances if i.node not in node_set})
    if skipped_down:
        notes.append(f"{len(skipped_down)} instance(s) on nodes that are not ready left alone")
    deletions: list[tuple[tuple, Action]] = []
    if mode == 2 and not desired and candidates:
        notes.append("the solution places nothing (no requests in the window): nothing deleted")
        candidates = {}
    for pair, inst in candidates.items():
        if pair in desired:
            continue
        idle = inst.idle(now)
        if mode == 1:
            if idle > thresholds.idle_seconds and inst.count < thresholds.min_requests:
                reason = (f"idle {idle:.0f} s > {thresholds.idle_seconds:g} s and "
                          f"{inst.count} < {thresholds.min_requests} requests since provisioned")
                deletions.append(((-idle, inst.count, pair), Action(DELETE, inst.model, inst.node, reason)))
        else:
            reason = f"not placed by the solver ({inst.count} requests since provisioned, idle {idle:.0f} s)"
            deletions.append(((inst.count, -idle, pair), Action(DELETE, inst.model, inst.node, reason)))
    deletions.sort(key=lambda item: item[0])
    actions.extend(action for _, action in deletions)
    if mode == 1:
        kept = [p for p in candidates if p not in desired and p not in {(a.model, a.node) for _, a in deletions}]
        if kept:
            notes.append(f"{len(kept)} instance(s) the solver does not place kept (recently used or busy)")
    return Plan(mode=mode, solved=True, desired=ordered, actions=actions, notes=notes)


def dispatch_weights(groups: list[tuple[str, str]], assignment: Iterable) -> dict[str, dict[str, dict[str, float]]]:
    """Return {model: {zone: {node: share}}} from the solution's assignment (the plan policy's input)."""
    counts: dict[int, dict[str, int]] = {}
    for a in assignment:
        if a.count > 0 and 0 <= a.request < len(groups):
            counts.setdefault(a.request, {}).setdefault(a.node, 0)
            counts[a.request][a.node] += a.count
    weights: dict[str, dict[str, dict[str, float]]] = {}
    for index, per_node in sorted(counts.items()):
        total = sum(per_node.values())
        model, zone = groups[index]
        weights.setdefault(model, {})[zone] = {node: round(c / total, 6) for node, c in sorted(per_node.items())}
    return weights


def service_times(weights: dict[str, dict[str, dict[str, float]]], exec_time: dict[str, dict[str, float]],
                  deployments: Iterable[Deployment]) -> dict[str, dict[str, float]]:
    """Return {model: {node: seconds}}: the service time the solver planned with for every instance
    the plan routes to or that runs (the expected-delay policy's input), for the weighted models."""
    running: dict[str, set[str]] = {}
    for dep in deployments:
        running.setdefault(dep.model, set()).add(dep.node)
    out: dict[str, dict[str, float]] = {}
    for model, zones in sorted(weights.items()):
        nodes = {node for row in zones.values() for node, w in row.items() if w > 0} | running.get(model, set())
        row = exec_time.get(model, {})
        times = {node: float(row[node]) for node in sorted(nodes) if 0 < float(row.get(node, 0.0)) <= MAX_SERVICE}
        if times:
            out[model] = times
    return out


def idle_times(service: dict[str, dict[str, float]], idle: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Return {model: {node: seconds}}: the low-load service time of each instance in `service` where
    it is below the planned (back-to-back) one; elsewhere the two are the same and it is left out."""
    out: dict[str, dict[str, float]] = {}
    for model, row in service.items():
        times = {node: float(idle[model][node]) for node in row
                 if 0 < float(idle.get(model, {}).get(node, 0.0)) < row[node]}
        if times:
            out[model] = times
    return out
