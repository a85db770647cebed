"""Build the solver's Problem from what the front-end observed (pure: no I/O, no clock).

Inputs are the window of recorded requests (as rows, or as the front-end's aggregates from
/stats/summary: both give the same problem, up to the duration histogram's error in execution
times), the nodes' memory, the model catalog, the cluster's
current deployments and an ALTO cost map; the output is a `solver.Problem` plus a summary of
where every number came from (the report prints it).

- Requests are grouped by (model, client zone); a request without a zone belongs to `default`.
  Requests for models the catalog does not know are ignored (and counted).
- RTT from a zone to a node, in seconds: the mean latency clients of that zone reported for
  requests the node served; otherwise the ALTO cost map (zone row, then its `default` row);
  otherwise `default_rtt`.
- Execution time of a model on a node, in seconds: the catalog profile for the node's class,
  replaced by the median of the proxy's measured times for that (model, node) once there are at
  least `min_exec_samples` of them. From aggregates the median is read from the merged duration
  histograms of that (model, node): the mean of the bin holding it, within the histogram's
  relative error (4.5 %) of the exact median.
- Memory: Mode 1 gives the solver each node's **available** memory and the current deployments
  (sunk: they keep running); Mode 2 gives it the **total** memory and nothing deployed (thesis 4.3).
- Compute: with `compute="average"` (the default) a request's cpu is the catalog's cores-per-request
  scaled by the share of the window it keeps them busy (slowest execution time / window), so a
  node's constraint bounds the average cores in use over the window (Little's law). The literal
  thesis reading (`compute="per-request"`) bounds the number of requests in a window by the
  node's cores, which makes any busy window infeasible.
- Only ready nodes are offered to the solver: a node that is down can neither be deployed to nor
  serve, and its deployments are left alone until it returns (thesis 4.5).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from typing import TYPE_CHECKING

from cluster.catalog import Catalog
from cluster.port import Deployment

from .alto import DEFAULT_ZONE, CostMap
from .collect import DurationStat, GroupStat, NodeMemory, RequestStat, Summary

if TYPE_CHECKING:
    from solver.problem import Problem

__all__ = ["BuildSettings", "Built", "build_problem", "group_requests", "rtt_table", "exec_table",
           "group_summary", "rtt_table_from_summary", "exec_table_from_summary", "bins_median",
           "FORMULATIONS", "COMPUTE_BASES"]

FORMULATIONS = ("placement", "thesis")
COMPUTE_BASES = ("average", "per-request")


@dataclass(frozen=True)
class BuildSettings:
    """How the problem is built. Times in seconds."""

    mode: int = 1                       # 1: available memory + current deployments; 2: total memory
    formulation: str = "placement"      # the solver formulation ("placement" or "thesis")
    window: float = 600.0               # seconds of requests considered
    default_rtt: float = 0.05           # seconds, when neither clients nor the ALTO map know
    min_exec_samples: int = 5           # measured proxy times needed to override the profile
    compute: str = "average"            # "average" (Little's law over the window) or "per-request"

    def __post_init__(self) -> None:
        if self.mode not in (1, 2):
            raise ValueError("mode must be 1 or 2")
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {', '.join(FORMULATIONS)}")
        if self.compute not in COMPUTE_BASES:
            raise ValueError(f"compute must be one of {', '.join(COMPUTE_BASES)}")
        if self.window <= 0 or self.default_rtt < 0 or self.min_exec_samples < 1:
            raise ValueError("window must be > 0, default_rtt >= 0 and min_exec_samples >= 1")


@dataclass
class Built:
    """The problem and where its numbers came from."""

    problem: "Problem"
    groups: list[tuple[str, str]]                  # (model, zone) of each request group, in order
    summary: dict = field(default_factory=dict)    # counts for the report


def _zone(row: RequestStat) -> str:
    return row.zone or DEFAULT_ZONE


def group_requests(rows: Iterable[RequestStat], known: set[str]) -> tuple[dict[tuple[str, str], int], int]:
    """Return ({(model, zone): count}, requests ignored because the model is unknown)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    unknown = 0
    for row in rows:
        if row.model not in known:
            unknown += 1
            continue
        counts[(row.model, _zone(row))] += 1
    return dict(counts), unknown


def group_summary(groups: Iterable[GroupStat], known: set[str]) -> tuple[dict[tuple[str, str], int], int]:
    """group_requests for aggregates: ({(model, zone): count}, requests of unknown models)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    unknown = 0
    for g in groups:
        if g.model not in known:
            unknown += g.count
        elif g.count:
            counts[(g.model, g.zone or DEFAULT_ZONE)] += g.count
    return dict(counts), unknown


def rtt_table(rows: Iterable[RequestStat], zones: Iterable[str], nodes: Iterable[str], *,
              cost_map: CostMap, default_rtt: float) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Return ({zone: {node: seconds}}, {source: how many (zone, node) pairs used it})."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for row in rows:
        if row.latency is not None and row.node is not None:
            acc = sums[(_zone(row), row.node)]
            acc[0] += row.latency
            acc[1] += 1
    return _rtt_from(sums, zones, nodes, cost_map=cost_map, default_rtt=default_rtt)


def rtt_table_from_summary(groups: Iterable[GroupStat], zones: Iterable[str], nodes: Iterable[str], *,
                           cost_map: CostMap, default_rtt: float) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """rtt_table for aggregates: the same mean of client-reported latencies per (zone, node)."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for g in groups:
        if g.latency_count and g.node is not None:
            acc = sums[(g.zone or DEFAULT_ZONE, g.node)]
            acc[0] += g.latency_sum
            acc[1] += g.latency_count
    return _rtt_from(sums, zones, nodes, cost_map=cost_map, default_rtt=default_rtt)


def _rtt_from(sums: dict[tuple[str, str], list[float]], zones: Iterable[str], nodes: Iterable[str], *,
              cost_map: CostMap, default_rtt: float) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    table: dict[str, dict[str, float]] = {}
    sources = {"measured": 0, "alto": 0, "default": 0}
    node_list = list(nodes)
    for zone in zones:
        table[zone] = {}
        for node in node_list:
            total, n = sums.get((zone, node), (0.0, 0))
            if n:
                table[zone][node] = total / n
                sources["measured"] += 1
                continue
            cost = cost_map.rtt(zone, node)
            if cost is not None:
                table[zone][node] = cost
                sources["alto"] += 1
            else:
                table[zone][node] = default_rtt
                sources["default"] += 1
    return table, sources


def _usable_duration(row: RequestStat) -> bool:
    return (row.duration is not None and row.node is not None and not row.cached
            and (row.status is None or 200 <= row.status < 300) and row.kind in (None, "proxy"))


def exec_table(rows: Iterable[RequestStat], catalog: Catalog, nodes: list[NodeMemory], *,
               min_samples: int) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Return ({model: {node: seconds}}, {source: how many (model, node) pairs used it})."""
    measured: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if _usable_duration(row):
            measured[(row.model, row.node)].append(row.duration)
    medians = {key: (len(samples), statistics.median(samples)) for key, samples in measured.items()}
    return _exec_from(medians, catalog, nodes, min_samples=min_samples)


def bins_median(bins: Iterable[tuple[int, int, float]]) -> float | None:
    """Median of a duration histogram of (bin, count, sum) entries, ranked as `statistics.median`
    (mean of the two middle values for an even count), each value being its bin's mean."""
    entries = sorted((b, c, total) for b, c, total in bins if c > 0)
    n = sum(c for _, c, _ in entries)
    if n == 0:
        return None
    values = []
    for rank in sorted({(n - 1) // 2, n // 2}):
        seen = 0
        for _, count, total in entries:
            seen += count
            if rank < seen:
                values.append(total / count)
                break
    return sum(values) / len(values)


def exec_table_from_summary(durations: Iterable[DurationStat], catalog: Catalog, nodes: list[NodeMemory], *,
                            min_samples: int) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """exec_table for aggregates: the median of the proxy duration histogram per (model, node)."""
    merged: dict[tuple[str, str], dict[int, list]] = defaultdict(dict)
    for d in durations:
        if d.node is None or d.kind not in (None, "proxy"):
            continue
        hist = merged[(d.model, d.node)]
        for b, count, total in d.bins:
            acc = hist.setdefault(b, [0, 0.0])
            acc[0] += count
            acc[1] += total
    medians = {}
    for key, hist in merged.items():
        n = sum(c for c, _ in hist.values())
        if n:
            medians[key] = (n, bins_median((b, c, t) for b, (c, t) in hist.items()))
    return _exec_from(medians, catalog, nodes, min_samples=min_samples)


def _exec_from(medians: dict[tuple[str, str], tuple[int, float]], catalog: Catalog, nodes: list[NodeMemory], *,
               min_samples: int) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    table: dict[str, dict[str, float]] = {}
    sources = {"measured": 0, "profile": 0}
    for spec in catalog:
        table[spec.name] = {}
        for node in nodes:
            n, median = medians.get((spec.name, node.node), (0, 0.0))
            if n >= min_samples:
                table[spec.name][node.node] = median
                sources["measured"] += 1
            else:
                table[spec.name][node.node] = spec.exec_time_on(node.node_class or "")
                sources["profile"] += 1
    return table, sources


def build_problem(*, requests: list[RequestStat], nodes: list[NodeMemory], catalog: Catalog,
                  deployments: list[Deployment], cost_map: CostMap, settings: BuildSettings,
                  summary: Summary | None = None) -> Built:
    """Return the Problem for one run, with a summary of its inputs.

    The window of requests is `summary` (the front-end's aggregates) when given, else the rows."""
    # Imported here so `--help` and usage errors never pay for loading the solver stack.
    from solver.problem import ModelReq, NodeCap, Problem, RequestGroup

    ready = [n for n in nodes if n.ready]
    node_names = [n.node for n in ready]
    known = set(catalog.names())
    if summary is not None:
        counts, unknown = group_summary(summary.groups, known)
    else:
        counts, unknown = group_requests(requests, known)
    keys = sorted(counts)
    zones = sorted({zone for _, zone in keys})
    if summary is not None:
        rtt, rtt_sources = rtt_table_from_summary(summary.groups, zones, node_names, cost_map=cost_map,
                                                  default_rtt=settings.default_rtt)
        exec_time, exec_sources = exec_table_from_summary(summary.durations, catalog, ready,
                                                          min_samples=settings.min_exec_samples)
    else:
        rtt, rtt_sources = rtt_table(requests, zones, node_names, cost_map=cost_map,
                                     default_rtt=settings.default_rtt)
        exec_time, exec_sources = exec_table(requests, catalog, ready, min_samples=settings.min_exec_samples)

    node_caps = [NodeCap(name=n.node, memory=int(n.available if settings.mode == 1 else n.total),
                         cpu=float(n.cpu_capacity)) for n in ready]
    models = []
    for spec in catalog:
        cpu = spec.cpu
        if settings.compute == "average":
            slowest = max(exec_time[spec.name].values(), default=0.0)
            cpu = spec.cpu * slowest / settings.window
        models.append(ModelReq(name=spec.name, memory=int(spec.memory), cpu=float(cpu)))
    groups = [RequestGroup(model=model, count=counts[(model, zone)], rtt=dict(rtt[zone])) for model, zone in keys]

    ready_set = set(node_names)
    deployed: list[tuple[str, str]] = []
    if settings.mode == 1:
        deployed = sorted({(d.model, d.node) for d in deployments if d.node in ready_set and d.model in known})
    problem = Problem(formulation=settings.formulation, nodes=node_caps, models=models, requests=groups,
                      exec_time=exec_time, deployed=deployed)
    summary = {
        "window_seconds": settings.window,
        "requests": sum(counts.values()),
        "requests_unknown_model": unknown,
        "groups": len(groups),
        "zones": zones,
        "models_requested": sorted({model for model, _ in keys}),
        "nodes": node_names,
        "nodes_not_ready": sorted(n.node for n in nodes if not n.ready),
        "memory": "available" if settings.mode == 1 else "total",
        "deployed": [list(pair) for pair in sorted({(d.model, d.node) for d in deployments})],
        "rtt_sources": rtt_sources,
        "exec_time_sources": exec_sources,
        "compute": settings.compute,
        "statistics": "summary" if summary is not None else "rows",
    }
    return Built(problem=problem, groups=keys, summary=summary)
