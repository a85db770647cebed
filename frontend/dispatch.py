"""Dispatch policies and on-demand placement: pure functions over a ClusterState.

A policy only *selects*; the views act on the choice. Every function here is deterministic given
its arguments (randomness and counters are passed in), so the unit tests need no cluster.

- `lowest-cpu` (default, thesis 5.2.1): among nodes running the model, the lowest CPU usage
  (as a fraction of the node's cores); ties go to the node name, first in order.
- `plan`: the back-end's solver weights for (model, client zone), drawn in proportion; without a
  zone the weights of all zones are summed; falls back to lowest-cpu when no weighted node serves.
- `nearest`: the smallest round-trip time from the client's zone (rtt table or ALTO cost map),
  then nodes labelled with that zone, then lowest-cpu.
- `round-robin`: candidates in node-name order, one after another.
- `random`: uniformly at random among the ready instances (what a Kubernetes Service gives:
  kube-proxy's default iptables mode picks an endpoint at random); the testbed's baseline.
- `expected-delay`: the plan's instances for the model (those the back-end gave a service time),
  each request to the one that would answer first: the client zone's round trip + the work the
  front-end has already sent to that node and not yet seen drain (frontend/backlog.py) + the instance's service
  time: its low-load pace (the plan's `idle`) on a node with no backlog, which a request that finds
  it idle gets, else the back-to-back pace (`service`), which is also the work charged. At low load
  that is the nearest fast instance; in a burst, the requests spread over the nodes by their
  backlog instead of by chance (a random split queues a burst unevenly). Where the node has
  reported its pace lately (frontend/pace.py: busy seconds per answer back to back, measured by
  the model server), that figure replaces the plan's back-to-back one: it is what the node does
  now, under whatever shares its CPU. "Would answer first" is read at a quantile of the answer time
  (the front-end's `dispatch_quantile`, 0.9 by default; 0.5 is the mean): the work ahead of a
  request is the sum of the services queued before it and its own, each with the squared
  coefficient of variation the profile measured for the model on the node's class
  (`exec_time_scv`), so a request counts `z * sqrt(scv * (pace^2 + backlog * back-to-back pace))`
  beyond the mean (z the normal quantile). Why: an SLO is a tail, and with the mean alone a node
  with a long queue of variable services and one with a short queue look alike. On the testbed's
  overloaded edge (Nanos at a tenth of a core, service CV ~0.2) it kept more of the requests within
  the SLO in three of four paired runs (bench/RESULTS.md, issue 10). Falls back to `plan` when
  the plan has no service times (a fixed-time formulation's plan). Before the back-end's first
  plan, and for a model the plan does not time, the catalog's profile of each node's class gives
  the service times (`with_profile`).

Cloud sites (nodes labelled `topology=cloud`) are a fallback: every policy but `plan` and
`expected-delay` chooses among the edge instances whose node is below OVERLOAD_CPU of its cores,
and only when there is none (all overloaded, down, or refusing connections) among the cloud
instances; those two choose among all of them, cloud included, and move to the cloud when their
pick is an overloaded edge node. With no cloud instance the edge ones are used as before (busy
beats a 503).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from cluster.catalog import ModelSpec
from cluster.port import Node, node_tier
from common.plan_body import PlanBody, plan_problems
from common.validation import ValidationError

from .snapshot import Candidate, ClusterState

__all__ = [
    "choose", "lowest_cpu", "round_robin", "uniform", "nearest", "planned", "expected_delay",
    "service_time", "spread_of", "with_profile", "Plan", "PlanError", "parse_plan",
    "rtt_from_alto", "merge_rtt", "Placement", "choose_provision_node", "ZONE_LABELS", "OVERLOAD_CPU", "overloaded",
]

ZONE_LABELS = ("zone", "topology.kubernetes.io/zone")
OVERLOAD_CPU = 0.9       # an edge node using this fraction of its cores or more takes no more (cloud first)


def overloaded(candidate: Candidate) -> bool:
    """Return True when the candidate's node is at or above OVERLOAD_CPU of its cores."""
    return candidate.node.cpu_fraction >= OVERLOAD_CPU


def lowest_cpu(candidates: Sequence[Candidate]) -> Candidate:
    """Return the candidate whose node uses the smallest fraction of its CPU."""
    return min(candidates, key=lambda c: (c.node.cpu_fraction, c.node.name))


def round_robin(candidates: Sequence[Candidate], counter: int) -> Candidate:
    """Return the `counter`-th candidate, wrapping around."""
    return candidates[counter % len(candidates)]


def uniform(candidates: Sequence[Candidate], u: float) -> Candidate:
    """Return a candidate chosen uniformly by `u` in [0, 1)."""
    return candidates[min(int(max(u, 0.0) * len(candidates)), len(candidates) - 1)]


def nearest(candidates: Sequence[Candidate], zone: str | None,
            rtt: Mapping[str, Mapping[str, float]]) -> Candidate:
    """Return the candidate closest to `zone` by rtt, else one labelled with it, else lowest-cpu."""
    if zone:
        row = rtt.get(zone)
        if row:
            known = [c for c in candidates if c.node.name in row]
            if known:
                return min(known, key=lambda c: (row[c.node.name], c.node.cpu_fraction, c.node.name))
        local = [c for c in candidates if any(c.node.labels.get(k) == zone for k in ZONE_LABELS)]
        if local:
            return lowest_cpu(local)
    return lowest_cpu(candidates)


@dataclass(frozen=True)
class Plan:
    """The back-end's latest plan: weights[model][zone][node] >= 0, and optionally the round trips
    rtt[zone][node] (seconds) it measured from the clients' reports, the service times
    service[model][node] (seconds) it planned with and the low-load ones idle[model][node]."""

    created: float
    mode: int
    solver: str
    weights: dict[str, dict[str, dict[str, float]]]
    rtt: dict[str, dict[str, float]] | None = None
    service: dict[str, dict[str, float]] | None = None
    idle: dict[str, dict[str, float]] | None = None

    def to_json(self) -> dict:
        doc = {"created": self.created, "mode": self.mode, "solver": self.solver, "weights": self.weights}
        for field in ("rtt", "service", "idle"):
            if getattr(self, field) is not None:
                doc[field] = getattr(self, field)
        return doc


class PlanError(ValueError):
    """The plan body is malformed; the message lists every problem."""


def parse_plan(body: Any, *, known_models: Sequence[str]) -> Plan:
    """Validate a PUT /plan body (common/plan_body.py, plus: every model is in the catalog); raise
    PlanError naming every bad field."""
    if not isinstance(body, dict):
        raise PlanError("plan must be a JSON object")
    errors: list[str] = []
    doc = None
    try:
        doc = PlanBody.model_validate(body)
    except ValidationError as exc:
        errors.extend(plan_problems(exc))
    known = set(known_models)
    for field in ("weights", "service", "idle"):
        table = body.get(field)
        if isinstance(table, dict):
            errors[:0] = [f"{field}.{model}: unknown model" for model in table if model not in known]
    if errors or doc is None:
        raise PlanError("; ".join(errors))
    return Plan(created=doc.created, mode=doc.mode, solver=doc.solver,
                weights={m: {str(z): dict(row) for z, row in zones.items()} for m, zones in doc.weights.items()},
                rtt={z: dict(row) for z, row in doc.rtt.items()} if doc.rtt is not None else None,
                service={m: dict(row) for m, row in doc.service.items()} if doc.service is not None else None,
                idle={m: dict(row) for m, row in doc.idle.items()} if doc.idle is not None else None)


def merge_rtt(configured: Mapping[str, Mapping[str, float]],
              measured: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    """Return the rtt table the `nearest` policy and on-demand placement use: the measured entry of a
    (zone, node) where the back-end's plan has one, the configured one (settings rtt, then ALTO) else."""
    out = {zone: dict(row) for zone, row in configured.items()}
    for zone, row in (measured or {}).items():
        out.setdefault(zone, {}).update(row)
    return out


def planned(candidates: Sequence[Candidate], model: str, zone: str | None, plan: Plan | None,
            u: float) -> Candidate:
    """Draw a candidate in proportion to the plan's weights (`u` uniform in [0, 1))."""
    zones = plan.weights.get(model, {}) if plan else {}
    if zone and zone in zones:
        weights = zones[zone]
    else:
        weights = {}
        for row in zones.values():
            for node, w in row.items():
                weights[node] = weights.get(node, 0.0) + w
    weighted = [(c, weights.get(c.node.name, 0.0)) for c in candidates]
    weighted = [(c, w) for c, w in weighted if w > 0]
    if not weighted:
        return lowest_cpu(candidates)
    total = sum(w for _, w in weighted)
    target = min(max(u, 0.0), 1.0 - 1e-12) * total
    acc = 0.0
    for cand, w in weighted:
        acc += w
        if target < acc:
            return cand
    return weighted[-1][0]


def expected_delay(candidates: Sequence[Candidate], model: str, zone: str | None, plan: Plan | None,
                   rtt: Mapping[str, Mapping[str, float]], backlog: Mapping[str, float], u: float,
                   paces: Mapping[str, float] | None = None, spread: Mapping[str, float] | None = None
                   ) -> Candidate:
    """Return the candidate that would answer first: rtt from `zone` + the node's `backlog` (seconds
    of work sent and not yet drained) + its service time: back to back, the node's measured pace
    (`paces`) where it has one, else the plan's; where the node has no backlog, the plan's low-load
    `idle` time if lower. `spread`: node -> z * the service's coefficient of variation there, adds
    `spread * sqrt(service^2 + backlog * back-to-back)` (the answer at a quantile, see the module's
    docstring; missing: none). Candidates without a service time in the plan are left out; with
    none, the plan's weights decide (`planned`). An unknown rtt counts as the largest known one (a
    node nobody measured is not assumed near)."""
    service = (plan.service or {}).get(model, {}) if plan else {}
    timed = [(c, service[c.node.name]) for c in candidates if c.node.name in service]
    if not timed:
        return planned(candidates, model, zone, plan, u)
    idle = (plan.idle or {}).get(model, {})
    row = rtt.get(zone, {}) if zone else {}
    far = max(row.values(), default=0.0)
    measured = paces or {}
    spread = spread or {}

    def answer(cs: tuple[Candidate, float]) -> tuple[float, str]:
        node = cs[0].node.name
        waiting = backlog.get(node, 0.0)
        busy = measured.get(node, cs[1])
        pace = min(idle.get(node, busy), busy) if waiting <= 0 else busy
        margin = spread.get(node, 0.0) * math.sqrt(pace * pace + waiting * busy) if spread else 0.0
        return row.get(node, far) + waiting + pace + margin, node
    return min(timed, key=answer)[0]


def with_profile(plan: Plan | None, spec: ModelSpec, candidates: Sequence[Candidate]) -> Plan | None:
    """`plan` with service times for `spec`'s model from the catalog's profile of each candidate's
    node class where there is no plan yet, or the (load-aware) plan times other models but not this
    one (provisioned on demand since): expected-delay then counts every node's backlog from the
    first request, instead of falling back to the weights (lowest CPU without a plan), which sent a
    burst to one node until its CPU reading refreshed. A plan's own times are kept, and a plan
    without any (a fixed-time formulation's) is returned as it is: its weights decide."""
    if plan is not None and (plan.service is None or plan.service.get(spec.name)):
        return plan
    classes = {c.node.name: c.node.labels.get("node-class", "") for c in candidates}
    service = {**(plan.service if plan else {}), spec.name: {n: spec.exec_time_on(c) for n, c in classes.items()}}
    idle = {**((plan.idle or {}) if plan else {}), spec.name: {n: spec.idle_time_on(c) for n, c in classes.items()}}
    if plan is None:
        return Plan(created=0.0, mode=0, solver="profile", weights={}, service=service, idle=idle)
    return dataclasses.replace(plan, service=service, idle=idle)


def spread_of(spec: ModelSpec, candidates: Sequence[Candidate], z: float) -> dict[str, float]:
    """node -> `z` * the coefficient of variation of `spec`'s service on the node's class (the
    profile's `exec_time_scv`), for the candidates whose class has one: expected-delay's `spread`."""
    if z <= 0 or not spec.exec_time_scv:
        return {}
    out = {}
    for c in candidates:
        scv = spec.scv_on(c.node.labels.get("node-class", ""))
        if scv:
            out[c.node.name] = z * math.sqrt(scv)
    return out


def service_time(plan: Plan | None, model: str, node: str, paces: Mapping[str, float] | None = None
                 ) -> float | None:
    """Return the work one request of `model` costs `node`: its measured pace (`paces`) where the
    plan times the node, else the plan's service time (None: the plan has none)."""
    if plan is None or not plan.service:
        return None
    planned_time = plan.service.get(model, {}).get(node)
    if planned_time is None:
        return None
    return (paces or {}).get(node, planned_time)


def choose(policy: str, candidates: Sequence[Candidate], *, model: str, zone: str | None = None,
           plan: Plan | None = None, rtt: Mapping[str, Mapping[str, float]] | None = None,
           counter: int = 0, u: float = 0.0, backlog: Mapping[str, float] | None = None,
           paces: Mapping[str, float] | None = None, spread: Mapping[str, float] | None = None) -> Candidate:
    """Pick one of `candidates` (non-empty) for `model` under `policy` (cloud sites as the fallback).
    `backlog`: node -> seconds of work ahead, `paces`: node -> measured seconds per request of
    `model`, `spread`: node -> z * coefficient of variation of its service, all for `expected-delay`."""
    if not candidates:
        raise ValueError("no candidates")
    if len(candidates) == 1:
        return candidates[0]
    cloud: list[Candidate] = []
    edge: list[Candidate] = []
    for c in candidates:              # one label lookup per candidate on every request
        (cloud if node_tier(c.node) == "cloud" else edge).append(c)
    if cloud:
        if policy in ("plan", "expected-delay"):
            pick = _choose(policy, candidates, model=model, zone=zone, plan=plan, rtt=rtt, counter=counter,
                           u=u, backlog=backlog, paces=paces, spread=spread)
            if node_tier(pick.node) == "cloud" or not overloaded(pick):
                return pick
        usable = [c for c in edge if not overloaded(c)]
        return _choose(policy, usable or cloud, model=model, zone=zone, plan=plan, rtt=rtt, counter=counter, u=u,
                       backlog=backlog, paces=paces, spread=spread)
    return _choose(policy, candidates, model=model, zone=zone, plan=plan, rtt=rtt, counter=counter, u=u,
                   backlog=backlog, paces=paces, spread=spread)


def _choose(policy: str, candidates: Sequence[Candidate], *, model: str, zone: str | None,
            plan: Plan | None, rtt: Mapping[str, Mapping[str, float]] | None, counter: int, u: float,
            backlog: Mapping[str, float] | None = None, paces: Mapping[str, float] | None = None,
            spread: Mapping[str, float] | None = None) -> Candidate:
    if len(candidates) == 1:
        return candidates[0]
    if policy == "expected-delay":
        return expected_delay(candidates, model, zone, plan, rtt or {}, backlog or {}, u, paces, spread)
    if policy == "lowest-cpu":
        return lowest_cpu(candidates)
    if policy == "round-robin":
        return round_robin(candidates, counter)
    if policy == "nearest":
        return nearest(candidates, zone, rtt or {})
    if policy == "plan":
        return planned(candidates, model, zone, plan, u)
    if policy == "random":
        return uniform(candidates, u)
    raise ValueError(f"unknown policy {policy!r}")


def rtt_from_alto(doc: Any) -> dict[str, dict[str, float]]:
    """Read an RFC 7285 cost map: {"cost-map": {src PID: {dst PID: cost}}} -> {zone: {node: cost}}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("cost-map"), dict):
        raise ValueError("ALTO cost map must be an object with a 'cost-map' object")
    out: dict[str, dict[str, float]] = {}
    for src, row in doc["cost-map"].items():
        if not isinstance(row, dict):
            raise ValueError(f"cost-map.{src}: must be an object")
        out[str(src)] = {}
        for dst, cost in row.items():
            if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
                raise ValueError(f"cost-map.{src}.{dst}: must be a number >= 0")
            out[str(src)][str(dst)] = float(cost)
    return out


@dataclass(frozen=True)
class Placement:
    """Where to provision a model on demand, or why it cannot be."""

    node: Node | None
    reason: str
    pending: bool = False      # an instance already exists and is starting: just wait


def choose_provision_node(state: ClusterState, model: str, memory: int, *, zone: str | None = None,
                          rtt: Mapping[str, Mapping[str, float]] | None = None) -> Placement:
    """Pick where to start `model` for a client in `zone` (thesis 4.5: by the client's location).

    Among ready nodes with `memory` KB free: the lowest round-trip time from the zone (rtt table or
    ALTO map), then the most free memory; nodes with no known RTT come after those with one. With
    no zone (or no RTT row for it): the most free memory.
    """
    existing = state.deployments_of(model)
    for dep in existing:
        node = state.nodes_by_name.get(dep.node)
        if not dep.ready and node is not None and node.ready:
            return Placement(node=node, reason=f"model {model} is starting on node {node.name}", pending=True)
    busy = {d.node for d in existing}
    ready = [n for n in state.nodes if n.ready and n.name not in busy]
    if not ready:
        return Placement(node=None, reason=f"model {model} is not deployed and no ready node can take it")
    fits = [n for n in ready if n.memory_available >= memory]
    if not fits:
        best = max(ready, key=lambda n: (n.memory_available, n.name))
        return Placement(node=None, reason=(
            f"model {model} is not deployed and no ready node has {memory} KB free "
            f"(most free: {best.memory_available} KB on {best.name})"))
    row = (rtt or {}).get(zone) if zone else None
    if row:
        node = min(fits, key=lambda n: (row.get(n.name, math.inf), -n.memory_available, n.name))
    else:
        node = max(fits, key=lambda n: (n.memory_available, -_rank(n.name, fits)))
    return Placement(node=node, reason=f"model {model} is being provisioned on node {node.name}")


def _rank(name: str, nodes: Sequence[Node]) -> int:
    """Return the position of `name` in name order (ties on memory go to the first name)."""
    return sorted(n.name for n in nodes).index(name)
