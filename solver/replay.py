"""A discrete-event model of dispatch to first-come-first-served nodes: requests in, latencies out.

Two users need the same model. bench/slo_oracle replays a testbed trace through it to ask what a
dispatcher with perfect knowledge could achieve; solver.predict replays arrivals drawn from the
statistics window through the front-end's own policy to predict the mean latency a plan will give.
A closed form cannot do the latter near capacity: expected-delay does not pool a model's instances
(a far node only takes a request once the near ones' queues exceed the difference in round trip),
and bursty arrivals (Gamma, CV 3) fill the queues in ways an M/M/k average misses.

The model: each node is one FCFS server holding every model it has a service time for. A request
reaches the node half a round trip (plus `overhead`) after it is sent, waits for the node's queue
to end, is served at the low-load pace `idle` when it finds the node idle and at the back-to-back
pace otherwise, and its answer takes the other half round trip. Service is deterministic unless
`variability` is given: then each service is drawn around its mean (the testbed's Nanos at a tenth
of a core vary by ~20%, the CFS period's phase). Pure: numbers in, numbers out (seeded).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist
from typing import Mapping, NamedTuple, Protocol, Sequence

__all__ = ["DISPATCHERS", "Arrival", "Result", "gamma_arrivals", "simulate", "spread_at"]

DISPATCHERS = ("earliest-finish", "earliest-finish, hopeless dropped", "expected-delay", "nearest")


class Request(Protocol):
    offset: float
    zone: str
    model: str


class Arrival(NamedTuple):
    offset: float        # seconds from the start
    zone: str            # whatever keys `rtt`: a zone, or a request group
    model: str


@dataclass
class Result:
    dispatcher: str
    requests: int
    within: int          # answered within the SLO
    dropped: int
    mean: float          # seconds, over the requests answered
    busy: dict[str, float]   # node -> busy seconds
    latencies: list[float] | None = None    # per answered request, in arrival order, when asked

    @property
    def share(self) -> float:
        return self.within / self.requests if self.requests else 1.0


def simulate(arrivals: Sequence[Request], rtt: Mapping[str, Mapping[str, float]],
             service: Mapping[tuple[str, str], tuple[float, float]], *, slo: float,
             overhead: float | Sequence[float], dispatcher: str, edge: set[str], drain: float = 0.85,
             spread: Mapping[tuple[str, str], float] | None = None,
             variability: Mapping[tuple[str, str], float] | None = None, seed: int = 0,
             keep: bool = False) -> Result:
    """Replay `arrivals` through FCFS nodes under `dispatcher` (one of DISPATCHERS).

    `rtt`: zone -> node -> round trip (s); `service`: (model, node) -> (idle, back-to-back) seconds;
    `overhead`: seconds per request, or one per arrival (in order); `edge`: the nodes `nearest` may
    use; `drain`: expected-delay's backlog drain (the front-end's `backlog_drain`); `spread`: (model,
    node) -> z * the service's coefficient of variation, expected-delay's quantile margin (the
    front-end's `dispatch_quantile`, frontend/dispatch.py; missing: the mean); `variability`: (model,
    node) -> squared coefficient of variation of the real service there (each service drawn from a
    Gamma law with that mean and scv, seeded by `seed`, once the request is dispatched: no
    dispatcher knows it beforehand; missing: deterministic); `keep`: return every answered request's
    latency too."""
    if dispatcher not in DISPATCHERS:
        raise ValueError(f"dispatcher must be one of {', '.join(DISPATCHERS)}, got {dispatcher!r}")
    extra = [overhead] * len(arrivals) if isinstance(overhead, (int, float)) else list(overhead)
    free: dict[str, float] = {}            # node -> when its queue ends
    busy: dict[str, float] = {}
    backlog: dict[str, tuple[float, float]] = {}     # expected-delay's estimate: node -> (seconds, as of)
    within = dropped = 0
    total = 0.0
    latencies: list[float] | None = [] if keep else None
    draw = random.Random(seed) if variability else None
    for a, overhead in zip(arrivals, extra):
        options = []
        for node, cost in rtt[a.zone].items():
            if (a.model, node) not in service or (dispatcher == "nearest" and node not in edge):
                continue
            idle, b2b = service[(a.model, node)]
            reach = a.offset + overhead + cost / 2
            start = max(reach, free.get(node, 0.0))
            work = idle if reach >= free.get(node, 0.0) else b2b      # found the node idle
            done = start + work
            options.append((done + cost / 2 - a.offset, cost, node, start, work))
        if not options:
            raise ValueError(f"no node serves {a.model!r} from {a.zone!r}")
        if dispatcher == "nearest":
            latency, _, node, start, work = min(options, key=lambda o: (o[1], o[2]))
        elif dispatcher == "expected-delay":
            def guess(o: tuple) -> tuple[float, str]:
                left, since = backlog.get(o[2], (0.0, a.offset))
                left = max(0.0, left - drain * (a.offset - since))
                idle, b2b = service[(a.model, o[2])]
                pace = idle if left <= 0 else b2b
                margin = spread.get((a.model, o[2]), 0.0) * math.sqrt(pace * pace + left * b2b) if spread else 0.0
                return o[1] + left + pace + margin, o[2]
            latency, _, node, start, work = min(options, key=guess)
            left, since = backlog.get(node, (0.0, a.offset))
            backlog[node] = (max(0.0, left - drain * (a.offset - since)) + service[(a.model, node)][1], a.offset)
        else:
            latency, _, node, start, work = min(options)
            if dispatcher.endswith("dropped") and latency > slo:
                dropped += 1
                continue
        scv = variability.get((a.model, node), 0.0) if draw is not None else 0.0
        if scv > 0:
            real = draw.gammavariate(1.0 / scv, work * scv)
            latency += real - work
            work = real
        free[node] = start + work
        busy[node] = busy.get(node, 0.0) + work
        within += latency <= slo
        total += latency
        if latencies is not None:
            latencies.append(latency)
    answered = len(arrivals) - dropped
    return Result(dispatcher, len(arrivals), within, dropped, total / answered if answered else 0.0, busy, latencies)


def spread_at(quantile: float, scv: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], float] | None:
    """`simulate`'s `spread` for expected-delay choosing at `quantile` (the front-end's
    `dispatch_quantile`) with the services' `scv` ((model, node) -> squared CV): z * CV where the
    scv is positive; None at the median (the choice by the mean)."""
    z = NormalDist().inv_cdf(quantile)
    return {key: z * math.sqrt(v) for key, v in scv.items() if v > 0} if z > 0 else None


def gamma_arrivals(rates: Mapping[tuple[str, str], float], dispersion: Mapping[str, float], *,
                   horizon: float, seed: int = 0) -> list[Arrival]:
    """Arrivals over [0, horizon): each model's stream a renewal process with Gamma gaps whose squared
    coefficient of variation is the model's index of dispersion (1: Poisson; missing: 1), at the sum
    of its rates, each arrival's zone drawn in proportion to them. `rates`: (model, zone) -> per
    second. (For a renewal stream the index of dispersion of long-window counts is the gaps' SCV,
    which is what the front-end measures per model.) Deterministic in `seed`."""
    draw = random.Random(seed)
    by_model: dict[str, list[tuple[str, float]]] = {}
    for (model, zone), rate in sorted(rates.items()):
        if rate > 0:
            by_model.setdefault(model, []).append((zone, rate))
    out: list[Arrival] = []
    for model, zones in by_model.items():
        total = sum(rate for _, rate in zones)
        scv = min(100.0, max(0.01, dispersion.get(model, 1.0)))
        shape = 1.0 / scv
        scale = 1.0 / (total * shape)           # mean gap 1 / total
        names = [zone for zone, _ in zones]
        weights = [rate for _, rate in zones]
        t = draw.gammavariate(shape, scale)
        while t < horizon:
            out.append(Arrival(t, draw.choices(names, weights)[0], model))
            t += draw.gammavariate(shape, scale)
    out.sort(key=lambda a: a.offset)
    return out
