"""The mean latency a plan's requests should see, under the dispatch that will carry it out.

The `latency` formulation's objective (solver/queueing.py) charges each instance an M/M/1 queue fed
by the requests the plan routes to it: separable and convex, so it can be optimised exactly, but it
is not how the front-end sends requests, and it ignores what the testbed measured about the
servers. This module predicts instead, for an assignment already chosen:

- Service time depends on load. On a CPU-limited node a request that finds a server free is
  served at the low-load pace `idle` (the catalog's `exec_time_idle`), one that has to wait starts
  as the one before it ends and runs at the back-to-back pace `exec_time` (CFS bandwidth control
  lets an idle group start on unused quota). So the mean service time is
  idle + (exec_time - idle) P(wait), P(wait) = rho for one server and Erlang C for a pool;
  capacity and waiting use the back-to-back pace.
- Arrivals are not Poisson. `dispersion` is the index of dispersion of each model's per-second
  arrival counts (1 for Poisson; ~9 for Gamma CV 3), measured by the front-end; `scv` is the
  service time's squared coefficient of variation (profiled; 1 when unknown, as M/M/1 assumes).
- `dispatch="pooled"` (the front-end's `expected-delay`: each request to the instance that would
  answer first): a model's instances work as one G/G/k queue, waiting as in M/M/k (Erlang C)
  scaled by (c_a^2 + c_s^2) / 2 (Allen-Cunneen). `dispatch="split"` (`plan`, `random`: each request
  drawn by weight): each instance is its own G/G/1 fed a random share p of the model's stream,
  whose c_a^2 becomes p c_a^2 + 1 - p, waiting by Kingman's formula.

With idle = exec_time, dispersion = scv = 1 and `split`, this is the objective's M/M/1 exactly
(minus the costs, which are not latency).

`simulated_mean` predicts expected-delay dispatch without a closed form: arrivals drawn at the
window's rates, as bursty as the window's (Gamma gaps whose SCV is the measured index of
dispersion), replayed through the front-end's own choice (round trip + estimated backlog + pace)
over FCFS nodes (solver.replay). Measured on the testbed, the pooled formula under-predicted the
bursty phase by 36-62%: it pools a model's instances, but expected-delay sends a request to a far
node only once the near ones' queues exceed the difference in round trip, and Allen-Cunneen's
average misses what CV-3 bursts do near capacity. Pure: numbers in, numbers out (seeded).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping

from solver.problem import Assignment, Problem
from solver.replay import gamma_arrivals, simulate, spread_at

__all__ = ["DISPATCHES", "erlang_c", "predicted_mean", "simulated_mean", "SIMULATED_ARRIVALS", "MAX_CHOICES"]

DISPATCHES = ("pooled", "split")
SIMULATED_ARRIVALS = 50_000     # per prediction: ~0.35 s; near capacity at CV 3 other seeds differ by up to ~9%
MAX_CHOICES = 2_000_000         # arrivals x the nodes each may choose: beyond it, no simulation (None)
WARM_UP = 0.1                   # share of the simulated time whose requests are not counted (empty start)


def erlang_c(servers: int, load: float) -> float:
    """Return the probability that an arrival waits in M/M/k with `servers` and offered `load`
    (erlangs, < servers), by the Erlang B recursion (stable for thousands of servers)."""
    if load <= 0:
        return 0.0
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    return servers * b / (servers - load * (1 - b))


def predicted_mean(problem: Problem, assignment: Iterable[Assignment], *, dispatch: str,
                   idle: Mapping[str, Mapping[str, float]] | None = None,
                   dispersion: Mapping[str, float] | None = None,
                   scv: Mapping[str, Mapping[str, float]] | None = None) -> float | None:
    """Return the predicted mean latency (s) of the assigned requests: round trip + service +
    waiting, or None when nothing is assigned, the window is unknown or an instance (split) or a
    model's instances together (pooled) would be at or above utilisation 1.

    `idle`, `scv`: model -> node -> value (missing: the back-to-back pace, 1); `dispersion`:
    model -> index of dispersion (missing: 1)."""
    if dispatch not in DISPATCHES:
        raise ValueError(f"dispatch must be one of {', '.join(DISPATCHES)}, got {dispatch!r}")
    window = problem.window
    if not window:
        return None
    idle, dispersion, scv = idle or {}, dispersion or {}, scv or {}
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))    # model -> node -> requests
    total = 0
    latency = 0.0                                                                # summed round trips
    for a in assignment:
        if a.count <= 0:
            continue
        group = problem.requests[a.request]
        counts[group.model][a.node] += a.count
        latency += a.count * group.rtt[a.node]
        total += a.count
    if total == 0:
        return None
    for model, per_node in counts.items():
        s = {j: problem.exec_time[model][j] for j in per_node}
        s0 = {j: min(idle.get(model, {}).get(j, s[j]), s[j]) for j in per_node}
        cs2 = {j: scv.get(model, {}).get(j, 1.0) for j in per_node}
        ca2 = max(0.0, dispersion.get(model, 1.0))
        n_model = sum(per_node.values())
        if dispatch == "pooled":
            busy = [j for j in per_node if s[j] > 0]
            capacity = sum(1 / s[j] for j in busy)                # requests per second, all instances
            rho = n_model / window / capacity if capacity else 0.0
            if rho >= 1:
                return None
            k = len(busy)
            waits = erlang_c(k, k * rho) if busy else 0.0       # P(all k busy): the request queues
            for j, n in per_node.items():
                latency += n * (s0[j] + (s[j] - s0[j]) * waits)
            if busy:
                mean_s = k / capacity                               # the pool's mean back-to-back pace
                c2 = sum(per_node[j] * cs2[j] for j in busy) / sum(per_node[j] for j in busy)
                latency += n_model * waits * mean_s / (k * (1 - rho)) * (ca2 + c2) / 2
        else:
            for j, n in per_node.items():
                rho = n / window * s[j]
                if rho >= 1:
                    return None
                share = n / n_model
                ca2_j = share * ca2 + 1 - share
                wait = rho / (1 - rho) * s[j] * (ca2_j + cs2[j]) / 2
                latency += n * (s0[j] + (s[j] - s0[j]) * rho + wait)
    return latency / total if math.isfinite(latency) else None


def simulated_mean(problem: Problem, assignment: Iterable[Assignment], *,
                   idle: Mapping[str, Mapping[str, float]] | None = None,
                   dispersion: Mapping[str, float] | None = None, drain: float = 0.85,
                   scv: Mapping[str, Mapping[str, float]] | None = None, quantile: float = 0.9,
                   arrivals: int = SIMULATED_ARRIVALS, seed: int = 0) -> float | None:
    """Return the mean latency (s) expected-delay dispatch should give the plan's traffic, by
    simulation (solver.replay); None when nothing is assigned, the window is unknown, a model's
    instances together would be at or above utilisation 1, or the simulation would be too large
    (MAX_CHOICES).

    Each request group keeps its rate (count / window) and its round trips; it may go to any node
    holding an instance of its model after the plan (where the assignment routes that model, and
    the instances the problem says stay deployed), as the front-end's expected-delay does, with
    backlog `drain` (its `backlog_drain`), choosing at `quantile` of the answer time with the
    service's `scv` (model -> node; its `dispatch_quantile` and the profile's `exec_time_scv`).
    Service: `problem.exec_time` back to back, `idle` (model -> node; missing: back to back) for a
    request that finds its node idle; deterministic (the scv only moves the choice)."""
    window = problem.window
    if not window:
        return None
    idle, dispersion = idle or {}, dispersion or {}
    counts: dict[int, int] = defaultdict(int)                # group index -> requests
    nodes: dict[str, set[str]] = defaultdict(set)            # model -> nodes holding it after the plan
    for a in assignment:
        if a.count > 0:
            counts[a.request] += a.count
            nodes[problem.requests[a.request].model].add(a.node)
    if not counts:
        return None
    for model, node in problem.deployed:
        if model in nodes and node in problem.exec_time.get(model, {}):
            nodes[model].add(node)
    rates: dict[tuple[str, str], float] = {}
    rtt: dict[str, dict[str, float]] = {}
    service: dict[tuple[str, str], tuple[float, float]] = {}
    for index, count in counts.items():
        group = problem.requests[index]
        key = str(index)
        rates[(group.model, key)] = count / window
        rtt[key] = {j: group.rtt[j] for j in nodes[group.model] if j in group.rtt}
    for model, held in nodes.items():
        for j in held:
            s = problem.exec_time[model][j]
            service[(model, j)] = (min(idle.get(model, {}).get(j, s), s), s)
        rate = sum(r for (m, _), r in rates.items() if m == model)
        capacity = sum(1 / service[(model, j)][1] for j in held if service[(model, j)][1] > 0)
        if capacity and rate >= capacity:
            return None
    total = sum(rates.values())
    choices = sum(rates[(m, key)] / total * len(rtt[key]) for m, key in rates)
    if arrivals * choices > MAX_CHOICES:
        return None
    horizon = arrivals / total
    drawn = gamma_arrivals(rates, dispersion, horizon=horizon, seed=seed)
    spread = spread_at(quantile, {(m, j): v for m, row in (scv or {}).items() for j, v in row.items()
                                  if (m, j) in service})
    result = simulate(drawn, rtt, service, slo=math.inf, overhead=0.0, dispatcher="expected-delay", edge=set(),
                      drain=drain, spread=spread, keep=True)
    counted = [lat for a, lat in zip(drawn, result.latencies or []) if a.offset >= WARM_UP * horizon]
    return sum(counted) / len(counted) if counted else None
