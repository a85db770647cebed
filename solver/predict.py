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
(minus the costs, which are not latency). Pure: numbers in, numbers out.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable, Mapping

from solver.problem import Assignment, Problem

__all__ = ["DISPATCHES", "erlang_c", "predicted_mean"]

DISPATCHES = ("pooled", "split")


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
