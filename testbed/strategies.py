"""The strategies the experiment compares: how each configures the same system (pure data).

Every strategy runs the same code (`scripts/run_system.py`, what `make run` starts) on a clean
local cluster with node limits, and differs only in what it tells the front-end and back-end:

- `kubernetes`: what an operator gets without this project. Replicas of every model the scenario
  asks for, spread over the nodes as the default scheduler would (least allocated first, as many
  as fit), dispatch uniformly at random among ready instances (kube-proxy's default), no back-end.
- `thesis`: the thesis as published: Mode 1, the relaxation solved by Ipopt and rounded,
  lowest-CPU dispatch, RTT as the thesis measured it (clients' reported end-to-end latency).
- `nearest`: provisioning as `ours`, dispatch to the lowest-RTT node serving the model.
- `ours`: the best configuration: exact MILP (HiGHS), the solver's plan for dispatch, RTT from the
  clients' network reports (ALTO only as the prior), Mode 2 (the solver's placement is the target).
- `ours-load`: `ours` on the load-aware formulation (`--formulation latency`: arrival rates from the
  window, M/M/1 waiting per instance, no instance planned above 85% busy), in Mode 1: it deletes
  only instances left idle (the thesis's recency/frequency rule), not every instance one window's
  solution does not route to. Why: a placement that follows each window re-provisions, and on a
  quarter-core node a model server's start takes seconds of that node's CPU from the instances
  serving there (measured on load.yaml in Mode 2: the same balanced split as `kubernetes` at ~40%
  load, with p95 1.7-2.9x its, while instances were being replaced on those nodes). It plans each
  group for the larger of its rates over the window and over the last 10 s (`--rate-window 10`), so
  a rise in load is planned for within one run instead of after a whole window. Dispatch is
  `expected-delay`: each request to the planned instance that would answer first (round trip +
  the node's backlog of work the front-end sent it + the planned service time), so a burst is
  spread by backlog where the plan's weights (and `kubernetes`' random choice) split it by chance.
- `ours-cloud`: `ours-load` with the scenario's cloud-tier nodes (`tier: cloud`), which no other
  strategy gets: the solver may route part of a group's traffic there, and the front-end falls back
  to a cloud instance when no edge instance can take a request.

Back-end cadence and windows are the same for every strategy that has a back-end.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Strategy", "STRATEGIES", "backend_flags"]


@dataclass(frozen=True)
class Strategy:
    name: str
    policy: str                         # the front-end's dispatch policy
    backend: tuple[str, ...] | None     # the back-end's flags; None: no back-end at all
    spread: bool = False                # pre-deploy replicas the way Kubernetes' scheduler spreads them
    cloud: bool = False                 # runs with the scenario's cloud-tier nodes (others: edge only)
    description: str = ""


# The back-end's flags every re-planning strategy shares: a window and idle time scaled to the
# experiment (phases of a minute or two instead of the thesis's hours).
COMMON = ("--window", "30", "--idle-seconds", "20", "--min-requests", "3", "--max-deletions", "5",
          "--time-limit", "5")

STRATEGIES: dict[str, Strategy] = {
    "kubernetes": Strategy("kubernetes", policy="random", backend=None, spread=True,
                           description="replicas spread least-allocated-first, random dispatch, no re-planning"),
    "thesis": Strategy("thesis", policy="lowest-cpu",
                       backend=("--mode", "1", "--solver", "ipopt", "--rtt-source", "latency"),
                       description="Mode 1, Ipopt relaxation rounded, lowest-CPU dispatch, reported latency"),
    "nearest": Strategy("nearest", policy="nearest",
                        backend=("--mode", "2", "--solver", "highs", "--rtt-source", "reports"),
                        description="provisioning as ours, dispatch to the lowest-RTT instance"),
    "ours": Strategy("ours", policy="plan",
                     backend=("--mode", "2", "--solver", "highs", "--rtt-source", "reports"),
                     description="exact MILP, plan dispatch, measured network RTT"),
    "ours-load": Strategy("ours-load", policy="expected-delay",
                          backend=("--mode", "1", "--solver", "highs", "--rtt-source", "reports",
                                   "--formulation", "latency", "--rate-window", "10"),
                          description="ours on the load-aware formulation (M/M/1 waiting, utilisation <= 0.85), "
                                      "Mode 1, expected-delay dispatch"),
    "ours-cloud": Strategy("ours-cloud", policy="expected-delay",
                           backend=("--mode", "1", "--solver", "highs", "--rtt-source", "reports",
                                    "--formulation", "latency", "--rate-window", "10"), cloud=True,
                           description="ours-load with the scenario's cloud site(s)"),
}


def backend_flags(strategy: Strategy) -> list[str]:
    """The back-end's full flag list for `strategy` (mode first, as run_system expects it)."""
    if strategy.backend is None:
        return []
    return [*strategy.backend, *COMMON]
