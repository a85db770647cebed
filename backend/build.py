"""Build the solver's Problem from what the front-end observed (pure: no I/O, no clock).

Inputs are the window of recorded requests (as rows, or as the front-end's aggregates from
/stats/summary: both give the same problem, up to the duration histogram's error in execution
times), the nodes' memory, the model catalog, the cluster's
current deployments and an ALTO cost map; the output is a `solver.Problem` plus a summary of
where every number came from (the report prints it).

- Requests are grouped by (model, client zone); a request without a zone belongs to `default`.
  Requests for models the catalog does not know are ignored (and counted).
- RTT from a zone to a node, in seconds, is the **network** round trip only (`rtt_source="reports"`,
  the default): the recency-weighted mean of the round trips clients of that zone reported for that
  node (`X-Client-RTT` / `X-Client-RTT-Node`: the end-to-end time of their previous call to the
  node minus the server's own time from `Server-Timing`). Each report weighs 2 ** (-age /
  rtt_half_life), its age being its 10 s bucket's start before the newest bucket of that pair
  (exponential decay with time constant rtt_half_life / ln 2; default half-life 60 s: a report a
  minute older counts half as much; a bucket weighs its report count). A pair nobody reported
  takes the ALTO cost map as the prior (zone row, then its `default` row); otherwise `default_rtt`.
  `rtt_source="latency"` is the thesis's original measurement, kept for the testbed's `thesis`
  strategy: the mean `X-Client-Latency` of the zone's requests the node served. That value is the
  previous request's end-to-end time (possibly for another model or node), so it already holds an
  execution time, and the solver adds `exec_time` on top: execution is counted twice.
- Execution time of a model on a node, in seconds (counted once: with reports the RTT holds none
  of it): the catalog profile for the node's class,
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
- `latency` (the load-aware formulation): each group's arrival rate is its count over the seconds
  the front-end's aggregates cover (`window`, up to one 10 s bucket more; `recent_peaks` with a
  rate window),
  the service time is the catalog's low-load profile for the node's class (the measured proxy
  times hold waiting, which the queueing model adds itself), and no instance is planned above
  `max_utilisation`. Nodes carry their tier and costs (cloud sites) from the cluster.
- Only ready nodes are offered to the solver: a node that is down can neither be deployed to nor
  serve, and its deployments are left alone until it returns (thesis 4.5).
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from typing import TYPE_CHECKING

from cluster.catalog import Catalog
from cluster.port import Deployment

from .alto import DEFAULT_ZONE, CostMap
from .collect import BUCKET_SECONDS, DurationStat, GroupStat, NodeMemory, RequestStat, RttStat, Summary

if TYPE_CHECKING:
    from solver.problem import Problem

__all__ = ["BuildSettings", "Built", "build_problem", "group_requests", "rtt_table", "exec_table",
           "group_summary", "rtt_table_from_summary", "exec_table_from_summary", "bins_median",
           "rtt_reports_from_rows", "recency_mean", "recent_peaks", "rtt_table_from_reports", "measured_part",
           "measured_paces", "steady_dispersion", "steady_joint",
           "FORMULATIONS", "COMPUTE_BASES", "RTT_SOURCES"]

FORMULATIONS = ("placement", "thesis", "latency")
COMPUTE_BASES = ("average", "per-request")
RTT_SOURCES = ("reports", "latency")


@dataclass(frozen=True)
class BuildSettings:
    """How the problem is built. Times in seconds."""

    mode: int = 1                       # 1: available memory + current deployments; 2: total memory
    formulation: str = "placement"      # the solver formulation ("placement" or "thesis")
    window: float = 600.0               # seconds of requests considered
    default_rtt: float = 0.05           # seconds, when neither clients nor the ALTO map know
    min_exec_samples: int = 5           # measured proxy times needed to override the profile
    compute: str = "average"            # "average" (Little's law over the window) or "per-request"
    rtt_source: str = "reports"         # "reports" (X-Client-RTT, network only) or "latency" (the thesis's)
    rtt_half_life: float = 60.0         # seconds: a report this much older weighs half as much
    max_utilisation: float = 0.85       # `latency`: ceiling on each instance's planned utilisation
    rate_window: float = 0.0            # `latency`: > 0 plans each group for the larger of its rates over
                                        # `window` and over the last `rate_window` seconds (0: window only)
    pace: bool = True                   # `latency`: service times from the model servers' reported pace
                                        # where measured (False: the catalog's profile only)

    def __post_init__(self) -> None:
        if self.mode not in (1, 2):
            raise ValueError("mode must be 1 or 2")
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {', '.join(FORMULATIONS)}")
        if self.compute not in COMPUTE_BASES:
            raise ValueError(f"compute must be one of {', '.join(COMPUTE_BASES)}")
        if self.rtt_source not in RTT_SOURCES:
            raise ValueError(f"rtt_source must be one of {', '.join(RTT_SOURCES)}")
        if not 0 < self.max_utilisation < 1:
            raise ValueError("max_utilisation must be strictly between 0 and 1")
        if not self.rtt_half_life > 0:
            raise ValueError("rtt_half_life must be > 0")
        if not 0 <= self.rate_window <= self.window:
            raise ValueError("rate_window must be between 0 and window")
        if self.window <= 0 or self.default_rtt < 0 or self.min_exec_samples < 1:
            raise ValueError("window must be > 0, default_rtt >= 0 and min_exec_samples >= 1")


@dataclass
class Built:
    """The problem and where its numbers came from."""

    problem: "Problem"
    groups: list[tuple[str, str]]                  # (model, zone) of each request group, in order
    summary: dict = field(default_factory=dict)    # counts for the report
    measured_rtt: dict[str, dict[str, float]] = field(default_factory=dict)   # the measured entries of the
    #                                                rtt table used ({zone: {node: s}}): pushed with the plan
    queueing: "QueueingInputs | None" = None       # `latency`: what solver.predict needs beyond the problem


@dataclass(frozen=True)
class QueueingInputs:
    """The measured figures a latency prediction uses beside the problem (solver.predict): each
    model's low-load service time per node (the nodes' measured one, else the catalog's profile),
    its service-time variability per node (the profile) and its arrivals' index of dispersion (the
    front-end's per-second counts; empty: unknown)."""

    idle: dict[str, dict[str, float]]
    scv: dict[str, dict[str, float]]
    dispersion: dict[str, float]


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


def rtt_reports_from_rows(rows: Iterable[RequestStat], *, bucket_seconds: float = BUCKET_SECONDS) -> list[RttStat]:
    """The rows' X-Client-RTT reports in the front-end's buckets: what /stats/summary's `rtt` holds."""
    acc: dict[tuple[str | None, str], dict[float, list]] = defaultdict(dict)
    for row in rows:
        if row.rtt is None or row.rtt_node is None:
            continue
        start = math.floor(row.time / bucket_seconds) * bucket_seconds
        bucket = acc[(row.zone, row.rtt_node)].setdefault(float(start), [0, 0.0])
        bucket[0] += 1
        bucket[1] += row.rtt
    return [RttStat(zone=zone, node=node, buckets=tuple((t, c, total) for t, (c, total) in sorted(buckets.items())))
            for (zone, node), buckets in acc.items()]


def recency_mean(buckets: Iterable[tuple[float, int, float]], half_life: float) -> float | None:
    """Recency-weighted mean of bucketed reports ((start, count, sum) each), None without any.

    Every report in a bucket weighs w = 2 ** (-(newest start - start) / half_life), so the mean is
    sum(w * sum) / sum(w * count). Measuring the age from the newest bucket instead of from "now"
    changes every weight by the same factor, which cancels: the result needs no clock."""
    entries = [(t, c, total) for t, c, total in buckets if c > 0]
    if not entries:
        return None
    newest = max(t for t, _, _ in entries)
    num = den = 0.0
    for t, c, total in entries:
        w = 2.0 ** (-(newest - t) / half_life)
        num += w * total
        den += w * c
    return num / den if den > 0 else None


def rtt_table_from_reports(reports: Iterable[RttStat], zones: Iterable[str], nodes: Iterable[str], *,
                           cost_map: CostMap, default_rtt: float, half_life: float
                           ) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Return ({zone: {node: seconds}}, {source: pairs}) from the clients' round-trip reports.

    A (zone, node) with reports gets their recency-weighted mean (`recency_mean`): the network
    round trip only, since the clients subtract the server's own time, so the solver's
    `exec_time` is the one place execution time is counted. Other pairs take the ALTO cost map
    (the prior), then `default_rtt`. Reports without a zone belong to the `default` zone."""
    merged: dict[tuple[str, str], dict[float, list]] = defaultdict(dict)
    for r in reports:
        hist = merged[(r.zone or DEFAULT_ZONE, r.node)]
        for t, c, total in r.buckets:
            acc = hist.setdefault(t, [0, 0.0])
            acc[0] += c
            acc[1] += total
    means: dict[tuple[str, str], float] = {}
    for key, hist in merged.items():
        mean = recency_mean(((t, c, total) for t, (c, total) in hist.items()), half_life)
        if mean is not None:
            means[key] = mean
    return _rtt_table(means, zones, nodes, cost_map=cost_map, default_rtt=default_rtt)


def measured_part(table: dict[str, dict[str, float]], *, measured: set[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """The entries of `table` whose (zone, node) is in `measured` ({zone: {node: seconds}})."""
    out: dict[str, dict[str, float]] = {}
    for zone, row in table.items():
        for node, seconds in row.items():
            if (zone, node) in measured:
                out.setdefault(zone, {})[node] = seconds
    return out


def rtt_table(rows: Iterable[RequestStat], zones: Iterable[str], nodes: Iterable[str], *,
              cost_map: CostMap, default_rtt: float) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """The thesis's RTT (`rtt_source="latency"`): ({zone: {node: seconds}}, {source: pairs}) from the
    mean X-Client-Latency of the zone's requests the node served. That latency is the client's
    previous end-to-end time, execution included, so with `exec_time` added by the solver the
    execution is counted twice; kept only to reproduce the thesis."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for row in rows:
        if row.latency is not None and row.node is not None:
            acc = sums[(_zone(row), row.node)]
            acc[0] += row.latency
            acc[1] += 1
    return _rtt_from(sums, zones, nodes, cost_map=cost_map, default_rtt=default_rtt)


def rtt_table_from_summary(groups: Iterable[GroupStat], zones: Iterable[str], nodes: Iterable[str], *,
                           cost_map: CostMap, default_rtt: float) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """rtt_table (the thesis's, `rtt_source="latency"`) for aggregates: the same mean of
    client-reported latencies per (zone, node)."""
    sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for g in groups:
        if g.latency_count and g.node is not None:
            acc = sums[(g.zone or DEFAULT_ZONE, g.node)]
            acc[0] += g.latency_sum
            acc[1] += g.latency_count
    return _rtt_from(sums, zones, nodes, cost_map=cost_map, default_rtt=default_rtt)


def _rtt_from(sums: dict[tuple[str, str], list[float]], zones: Iterable[str], nodes: Iterable[str], *,
              cost_map: CostMap, default_rtt: float) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    means = {key: total / n for key, (total, n) in sums.items() if n}
    return _rtt_table(means, zones, nodes, cost_map=cost_map, default_rtt=default_rtt)


def _rtt_table(means: dict[tuple[str, str], float], zones: Iterable[str], nodes: Iterable[str], *,
               cost_map: CostMap, default_rtt: float) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    table: dict[str, dict[str, float]] = {}
    sources = {"measured": 0, "alto": 0, "default": 0}
    node_list = list(nodes)
    for zone in zones:
        table[zone] = {}
        for node in node_list:
            if (zone, node) in means:
                table[zone][node] = means[(zone, node)]
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
    """Return ({model: {node: seconds}}, {source: how many (model, node) pairs used it}).

    The proxy's measured time of the model server's answer (the front-end and the model server
    are next to each other, so this is the server's time), or the catalog profile: the only
    execution time in the problem; the RTT (from reports) holds none."""
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


RISE_SIGMAS = 2.0        # a recent count this many Poisson deviations above the window's pace is a rise


def recent_peaks(counts: dict[tuple[str, str], int], recent: dict[tuple[str, str], int], *,
                 scale: float, dispersion: Mapping[str, float] | None = None,
                 ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Return (counts, the groups raised): a group whose recent count is a significant rise over
    its pace in the window gets its recent count scaled to the window (`scale` = window seconds /
    recent seconds).

    Why: a window's mean lags a rise in load by up to the window, and the load-aware plan is sized
    by it, so for that long the instances run above the utilisation they were planned for. Why a
    significant rise only (more than RISE_SIGMAS deviations above the count the window's pace
    predicts for the recent seconds): the larger of two noisy estimates is biased upwards, so under
    a steady load it would plan, and predict, for more than arrives. A deviation is Poisson's
    sqrt(expected), times sqrt(the model's index of dispersion) when its arrivals are burstier
    (`dispersion`, model -> IDC): a burst is not a rise. A fall is followed by the window alone."""
    raised = dict(counts)
    peaks = {}
    dispersion = dispersion or {}
    for key, count in recent.items():
        expected = raised.get(key, 0) / scale
        spread = max(1.0, dispersion.get(key[0], 1.0))
        if count <= expected + RISE_SIGMAS * math.sqrt(max(expected, 1.0) * spread):
            continue
        scaled = math.ceil(count * scale - 1e-9)
        if scaled > raised.get(key, 0):
            raised[key] = peaks[key] = scaled
    return raised, peaks


def _span(summary: Summary | None, asked: float) -> float:
    """Seconds `summary`'s counts cover: the window asked for, or its buckets' span when longer."""
    if summary is None or summary.until is None:
        return asked
    return max(asked, summary.until - summary.since)


def steady_dispersion(window: Summary, recent: Summary) -> dict[str, float]:
    """Each model's index of dispersion within the window's two stretches, before the rate window
    and in it, so that a change of rate between them (the rise the rate window plans for) is not
    taken for burstiness: a step from 7 to 28 requests/s halfway through a window reads as an index
    of ~6 over the whole. The window's own figure where the stretches are unknown (a front-end
    without per-second sums, merged replicas)."""
    out = dict(window.dispersion)
    for model, count in window.arrival_count.items():
        sumsq = window.arrival_sumsq.get(model)
        if sumsq is not None:
            within = _within_stretches(window, recent, (count, sumsq),
                                       (recent.arrival_count.get(model, 0), recent.arrival_sumsq.get(model, 0)))
            if within is not None:
                out[model] = within
    return out


def steady_joint(window: Summary, recent: Summary) -> float | None:
    """The index of all models' requests together within the same two stretches (the window's own
    figure where they are unknown)."""
    if window.arrival_total is None or recent.arrival_total is None:
        return window.joint_dispersion
    within = _within_stretches(window, recent, window.arrival_total, recent.arrival_total)
    return window.joint_dispersion if within is None else within


def _within_stretches(window: Summary, recent: Summary, whole: tuple[int, int], last: tuple[int, int]
                      ) -> float | None:
    """Variance about each stretch's mean over the whole mean, from (count, per-second squares) over
    the window and over the rate window; None where the stretches are too short or disagree."""
    n_recent = recent.arrival_seconds
    n_before = window.arrival_seconds - n_recent
    (count, sumsq), (c_recent, s_recent) = whole, last
    if n_recent < 2 or n_before < 2 or not 0 <= c_recent <= count or count <= 0:
        return None
    c_before, s_before = count - c_recent, sumsq - s_recent
    within = max(0.0, s_before - c_before ** 2 / n_before) + max(0.0, s_recent - c_recent ** 2 / n_recent)
    return within / count


def measured_paces(summary: Summary | None, recent: Summary | None, *, min_samples: int,
                   idle: bool = False) -> dict[tuple[str, str], tuple[int, float]]:
    """(model, node) -> (answers, mean pace): the last rate window's where it holds `min_samples`
    answers (a rise in load slows the pace at once), else the whole window's. Back to back, or with
    `idle` the service time of answers whose request found the node idle."""
    def of(s: Summary) -> dict[tuple[str, str], tuple[int, float]]:
        return s.pace_idle if idle else s.pace
    out = dict(of(summary)) if summary is not None else {}
    if recent is not None:
        out.update({key: value for key, value in of(recent).items() if value[0] >= min_samples})
    return out


def build_problem(*, requests: list[RequestStat], nodes: list[NodeMemory], catalog: Catalog,
                  deployments: list[Deployment], cost_map: CostMap, settings: BuildSettings,
                  summary: Summary | None = None, recent: Summary | None = None) -> Built:
    """Return the Problem for one run, with a summary of its inputs.

    The window of requests is `summary` (the front-end's aggregates) when given, else the rows.
    `recent` is the last `settings.rate_window` seconds of it (`latency` with a rate window only)."""
    # Imported here so `--help` and usage errors never pay for loading the solver stack.
    from solver.problem import ModelReq, NodeCap, Problem, RequestGroup

    ready = [n for n in nodes if n.ready]
    node_names = [n.node for n in ready]
    known = set(catalog.names())
    dispersion = summary.dispersion if summary is not None else {}    # rows: not measured
    if summary is not None:
        counts, unknown = group_summary(summary.groups, known)
    else:
        counts, unknown = group_requests(requests, known)
    # The front-end aggregates whole 10 s buckets: its counts span since..until, up to a bucket more
    # than the window asked for; rates are counts over that span (rows: exactly the window).
    observed = _span(summary, settings.window)
    peaks: dict[tuple[str, str], int] = {}
    steady = dispersion     # the queueing model's burstiness, over the stretch its rates come from
    joint = summary.joint_dispersion if summary is not None else None     # ... of all models together
    if settings.formulation == "latency" and settings.rate_window > 0 and recent is not None:
        counts, peaks = recent_peaks(counts, group_summary(recent.groups, known)[0],
                                     scale=observed / _span(recent, settings.rate_window),
                                     dispersion=dispersion)
        steady = steady_dispersion(summary, recent) if summary is not None else {}
        joint = steady_joint(summary, recent) if summary is not None else None
        # a model planned for its recent rate is as bursty as it was lately
        steady.update({model: recent.dispersion[model] for model, _ in peaks if model in recent.dispersion})
        if peaks and recent.joint_dispersion is not None:
            joint = recent.joint_dispersion
    keys = sorted(counts)
    zones = sorted({zone for _, zone in keys})
    # RTT: network only (the clients' reports) and execution time once (exec_table), unless the
    # thesis's measurement is asked for (its latency already holds an execution time; see above).
    if settings.rtt_source == "reports":
        reports = summary.rtt if summary is not None else rtt_reports_from_rows(requests)
        rtt, rtt_sources = rtt_table_from_reports(reports, zones, node_names, cost_map=cost_map,
                                                  default_rtt=settings.default_rtt,
                                                  half_life=settings.rtt_half_life)
        measured = {(r.zone or DEFAULT_ZONE, r.node) for r in reports if r.count}
    elif summary is not None:
        rtt, rtt_sources = rtt_table_from_summary(summary.groups, zones, node_names, cost_map=cost_map,
                                                  default_rtt=settings.default_rtt)
        measured = {(g.zone or DEFAULT_ZONE, g.node) for g in summary.groups if g.latency_count and g.node}
    else:
        rtt, rtt_sources = rtt_table(requests, zones, node_names, cost_map=cost_map,
                                     default_rtt=settings.default_rtt)
        measured = {(_zone(r), r.node) for r in requests if r.latency is not None and r.node is not None}
    if settings.formulation == "latency":
        # the queueing model adds the waiting itself: it needs the service time without waiting, not
        # the proxy's times, which hold it: the pace the model servers reported (busy seconds per
        # answer: the real throughput back to back) where enough answers carried it, else the
        # catalog's profile (`python -m cluster profile`), which a busy host can leave by 15-45%
        paces = measured_paces(summary, recent, min_samples=settings.min_exec_samples) if settings.pace else {}
        idle_paces = (measured_paces(summary, recent, min_samples=settings.min_exec_samples, idle=True)
                      if settings.pace else {})
        exec_time, exec_sources = _exec_from(paces, catalog, ready, min_samples=settings.min_exec_samples)
    elif summary is not None:
        exec_time, exec_sources = exec_table_from_summary(summary.durations, catalog, ready,
                                                          min_samples=settings.min_exec_samples)
    else:
        exec_time, exec_sources = exec_table(requests, catalog, ready, min_samples=settings.min_exec_samples)

    node_caps = [NodeCap(name=n.node, memory=int(n.available if settings.mode == 1 else n.total),
                         cpu=float(n.cpu_capacity), tier=n.tier, cost_per_request=n.cost_per_request,
                         cost_per_instance_hour=n.cost_per_instance_hour) for n in ready]
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
    latency = settings.formulation == "latency"
    problem = Problem(formulation=settings.formulation, nodes=node_caps, models=models, requests=groups,
                      exec_time=exec_time, deployed=deployed, window=observed if latency else None,
                      max_utilisation=settings.max_utilisation)
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
        "rtt_source": settings.rtt_source,
        "rtt_half_life": settings.rtt_half_life if settings.rtt_source == "reports" else None,
        "exec_time_sources": exec_sources,
        "compute": settings.compute,
        "statistics": "summary" if summary is not None else "rows",
        "tiers": {n.node: n.tier for n in ready if n.tier != "edge"},
    }
    if latency:
        summary["max_utilisation"] = settings.max_utilisation
        summary["rates"] = {f"{model}/{zone}": round(counts[(model, zone)] / observed, 6) for model, zone in keys}
        summary["rates_over_seconds"] = round(observed, 3)
        if settings.rate_window > 0:
            summary["rate_window_seconds"] = settings.rate_window
            summary["rates_from_recent"] = sorted(f"{model}/{zone}" for model, zone in peaks)
    queueing = None
    if latency:
        idle_measured = {key: mean for key, (count, mean) in idle_paces.items()
                         if count >= settings.min_exec_samples}
        queueing = queueing_inputs(catalog, ready, dispersion=steady, measured_idle=idle_measured)
        summary["dispersion"] = {m: round(d, 3) for m, d in sorted(queueing.dispersion.items())}
        # all models' requests together: above the count-weighted mean of `dispersion` when their
        # bursts coincide, which the prediction's independent streams do not model (yet)
        summary["joint_dispersion"] = round(joint, 3) if joint is not None else None
        # the measured paces planned with (the rest is the profile's): what the prediction rests on
        summary["paces"] = {f"{m}/{n}": round(exec_time[m][n], 6) for (m, n), (count, _) in sorted(paces.items())
                            if count >= settings.min_exec_samples and n in exec_time.get(m, {})}
        summary["idle_paces"] = {f"{m}/{n}": round(queueing.idle[m][n], 6) for m, n in sorted(idle_measured)
                                 if n in queueing.idle.get(m, {})}
    return Built(problem=problem, groups=keys, summary=summary, measured_rtt=measured_part(rtt, measured=measured),
                 queueing=queueing)


def queueing_inputs(catalog: Catalog, nodes: list[NodeMemory], *, dispersion: Mapping[str, float],
                    measured_idle: Mapping[tuple[str, str], float] | None = None) -> QueueingInputs:
    """The low-load pace and variability per (model, node) by node class, and `dispersion`. The
    low-load pace is the one the nodes measured (`measured_idle`: (model, node) -> seconds) where
    given, else the catalog's profile: a profile is one moment of a host whose speed drifts (the
    testbed's nodes served requests that found them idle in 46-48 ms against a 51 ms profile, and
    predictions at low load were 8-18% high)."""
    measured_idle = measured_idle or {}
    idle: dict[str, dict[str, float]] = {}
    scv: dict[str, dict[str, float]] = {}
    for spec in catalog:
        idle[spec.name] = {n.node: measured_idle.get((spec.name, n.node), spec.idle_time_on(n.node_class or ""))
                           for n in nodes}
        measured = {n.node: spec.scv_on(n.node_class or "") for n in nodes}
        scv[spec.name] = {node: v for node, v in measured.items() if v is not None}
    return QueueingInputs(idle=idle, scv=scv, dispersion=dict(dispersion))
