"""A discrete-event model of dispatch to first-come-first-served nodes: requests in, latencies out.

Two users need the same model. bench/slo_oracle replays a testbed trace through it to ask what a
dispatcher with perfect knowledge could achieve; solver.predict replays arrivals drawn from the
statistics window through the front-end's own policy to predict the mean latency a plan will give.
A closed form cannot do the latter near capacity: expected-delay does not pool a model's instances
(a far node only takes a request once the near ones' queues exceed the difference in round trip),
and bursty arrivals (Gamma, CV 3) fill the queues in ways an M/M/k average misses.

The model: each node is one FCFS server holding every model it has a service time for
(`queues="node"`), or runs one FCFS server per model (`queues="server"`: what the nodes run, a
model-server process per model taking its own turns, so a 5 ms model is not held behind another
model's queue; on the testbed's CV-3 phases a queue per node over-counted by 17-19%). A request
reaches its queue half a round trip (plus `overhead`) after it is sent, waits for the queue to end,
is served at the low-load pace `idle` when it finds the queue empty and at the back-to-back pace
otherwise, and its answer takes the other half round trip. Service is deterministic (the profile's
variability is a few per cent). expected-delay's estimate stays per node, as the front-end's
backlog is. Pure: numbers in, numbers out.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Protocol, Sequence

__all__ = ["DISPATCHERS", "QUEUES", "Arrival", "Result", "gamma_arrivals", "simulate"]

DISPATCHERS = ("earliest-finish", "earliest-finish, hopeless dropped", "expected-delay", "nearest")
QUEUES = ("node", "server")


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
             keep: bool = False, queues: str = "node") -> Result:
    """Replay `arrivals` through FCFS nodes under `dispatcher` (one of DISPATCHERS).

    `rtt`: zone -> node -> round trip (s); `service`: (model, node) -> (idle, back-to-back) seconds;
    `overhead`: seconds per request, or one per arrival (in order); `edge`: the nodes `nearest` may
    use; `drain`: expected-delay's backlog drain (the front-end's `backlog_drain`); `keep`: return
    every answered request's latency too; `queues`: one FCFS queue per node or per (node, model)."""
    if dispatcher not in DISPATCHERS:
        raise ValueError(f"dispatcher must be one of {', '.join(DISPATCHERS)}, got {dispatcher!r}")
    if queues not in QUEUES:
        raise ValueError(f"queues must be one of {', '.join(QUEUES)}, got {queues!r}")
    per_server = queues == "server"
    extra = [overhead] * len(arrivals) if isinstance(overhead, (int, float)) else list(overhead)
    free: dict = {}                        # queue (node, or (node, model)) -> when it ends
    busy: dict[str, float] = {}
    backlog: dict[str, tuple[float, float]] = {}     # expected-delay's estimate: node -> (seconds, as of)
    within = dropped = 0
    total = 0.0
    latencies: list[float] | None = [] if keep else None
    for a, overhead in zip(arrivals, extra):
        options = []
        for node, cost in rtt[a.zone].items():
            if (a.model, node) not in service or (dispatcher == "nearest" and node not in edge):
                continue
            idle, b2b = service[(a.model, node)]
            reach = a.offset + overhead + cost / 2
            ends = free.get((node, a.model) if per_server else node, 0.0)
            start = max(reach, ends)
            work = idle if reach >= ends else b2b      # found the queue empty
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
                return o[1] + left + (idle if left <= 0 else b2b), o[2]
            latency, _, node, start, work = min(options, key=guess)
            left, since = backlog.get(node, (0.0, a.offset))
            backlog[node] = (max(0.0, left - drain * (a.offset - since)) + service[(a.model, node)][1], a.offset)
        else:
            latency, _, node, start, work = min(options)
            if dispatcher.endswith("dropped") and latency > slo:
                dropped += 1
                continue
        free[(node, a.model) if per_server else node] = start + work
        busy[node] = busy.get(node, 0.0) + work
        within += latency <= slo
        total += latency
        if latencies is not None:
            latencies.append(latency)
    answered = len(arrivals) - dropped
    return Result(dispatcher, len(arrivals), within, dropped, total / answered if answered else 0.0, busy, latencies)


def gamma_arrivals(rates: Mapping[tuple[str, str], float], dispersion: Mapping[str, float], *,
                   horizon: float, seed: int = 0, joint: float | None = None) -> list[Arrival]:
    """Arrivals over [0, horizon): each model's stream a renewal process with Gamma gaps whose squared
    coefficient of variation is the model's index of dispersion (1: Poisson; missing: 1), at the sum
    of its rates, each arrival's zone drawn in proportion to them. `rates`: (model, zone) -> per
    second. (For a renewal stream the index of dispersion of long-window counts is the gaps' SCV,
    which is what the front-end measures per model.)

    `joint`: the index of all models' requests together. Where it exceeds what independent streams
    give (the models' rate-weighted mean), their bursts coincide: one stream is drawn at the total
    rate with that SCV and each arrival's (model, zone) drawn in proportion to the rates (a model's
    share p then has index p joint + 1 - p). Deterministic in `seed`."""
    draw = random.Random(seed)
    by_model: dict[str, list[tuple[str, float]]] = {}
    for (model, zone), rate in sorted(rates.items()):
        if rate > 0:
            by_model.setdefault(model, []).append((zone, rate))
    total = sum(rate for zones in by_model.values() for _, rate in zones)
    independent = sum(dispersion.get(m, 1.0) * sum(r for _, r in zones) for m, zones in by_model.items())
    if joint is not None and total > 0 and joint > independent / total:
        keys = [(model, zone) for model, zones in by_model.items() for zone, _ in zones]
        weights = [rate for zones in by_model.values() for _, rate in zones]
        return [Arrival(t, zone, model) for t, (model, zone) in
                zip(_gaps(draw, total, joint, horizon), _draws(draw, keys, weights))]
    out = []
    for model, zones in by_model.items():
        names = [zone for zone, _ in zones]
        weights = [rate for _, rate in zones]
        rate = sum(weights)
        out.extend(Arrival(t, zone, model) for t, zone in
                   zip(_gaps(draw, rate, dispersion.get(model, 1.0), horizon), _draws(draw, names, weights)))
    out.sort(key=lambda a: a.offset)
    return out


def _gaps(draw: random.Random, rate: float, scv: float, horizon: float) -> list[float]:
    """Arrival times over [0, horizon) of a renewal stream at `rate` with Gamma gaps of SCV `scv`."""
    shape = 1.0 / min(100.0, max(0.01, scv))
    scale = 1.0 / (rate * shape)                # mean gap 1 / rate
    times = []
    t = draw.gammavariate(shape, scale)
    while t < horizon:
        times.append(t)
        t += draw.gammavariate(shape, scale)
    return times


def _draws(draw: random.Random, names: list, weights: list[float]):
    """An endless sequence of `names` drawn in proportion to `weights`."""
    while True:
        yield draw.choices(names, weights)[0]
