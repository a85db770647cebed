"""Statistics from every front-end replica, merged into one window (issue: the front-end scales out).

Why: each replica records the requests it answered in its own database, so the back-end must read
them all; reading through the Service reaches one replica at random. The adapter lists the ready
pods behind the Service (`KubernetesCluster.frontend_replicas`); this module reads each one's
/stats/summary, /stats/models and /stats/memory and merges them (pure: `merge_observed`):

- a request is recorded by exactly one replica, so the window's aggregates are summed; two replicas
  answering with the same statistics database (`store` id: a shared volume) are counted once;
- per-model and per-instance counts are summed, last-request times take the latest;
- each model's index of dispersion of its requests per second is the count-weighted mean of the
  replicas' (see `_merge_dispersion`), and so is that of all models' requests together;
- each (model, node)'s measured paces (back to back, after idleness) are the count-weighted means
  of the replicas' (every report counts once, whichever replica heard it);
- node memory and CPU come from the cluster, identical on every replica: the first answer is used;
- a replica that cannot be reached (killed, restarting) is left out with a warning: its requests
  not yet read are missing from this run, never counted twice. No replica answering is an error.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Iterable

from .collect import (DurationStat, FrontendClient, FrontendError, GroupStat, InstanceStat, ModelStat, Observed,
                      RttStat, Summary, collect)

__all__ = ["merge_observed", "collect_replicas"]


def _merge_dispersion(summaries: list[Summary]) -> tuple[dict[str, float], dict[str, int]]:
    """Each model's index of dispersion over several stores: the count-weighted mean of theirs, the
    index of a sum of independent streams (variances add, and so do means). Replicas behind one
    Service see a random split of one stream, which is not independent when it is bursty (a burst
    reaches them all): the mean then understates the whole stream's index (a split into k parts of a
    stream with index D has 1 + (D - 1) / k in each), the exact value needing the per-second counts."""
    weighted: dict[str, list] = {}
    counts: dict[str, int] = {}
    for s in summaries:
        for model, count in s.arrival_count.items():
            counts[model] = counts.get(model, 0) + count
        for model, d in s.dispersion.items():
            acc = weighted.setdefault(model, [0, 0.0])
            acc[0] += s.arrival_count.get(model, 0)
            acc[1] += s.arrival_count.get(model, 0) * d
    return {m: total / n for m, (n, total) in weighted.items() if n}, counts


def _merge_joint(summaries: list[Summary]) -> float | None:
    """The index of all models' requests together over several stores: the count-weighted mean of
    theirs, as for each model (`_merge_dispersion`)."""
    known = [(s.arrival_total[0], s.joint_dispersion) for s in summaries
             if s.joint_dispersion is not None and s.arrival_total]
    count = sum(n for n, _ in known)
    return sum(n * d for n, d in known) / count if count else None


def _merge_pace(paces: Iterable[dict[tuple[str, str], tuple[int, float]]]) -> dict[tuple[str, str], tuple[int, float]]:
    totals: dict[tuple[str, str], list] = {}
    for pace in paces:
        for key, (count, mean) in pace.items():
            acc = totals.setdefault(key, [0, 0.0])
            acc[0] += count
            acc[1] += count * mean
    return {key: (n, total / n) for key, (n, total) in totals.items() if n}


def _merge_summaries(summaries: list[Summary]) -> Summary:
    groups: dict[tuple, list] = {}
    for s in summaries:
        for g in s.groups:
            key = (g.model, g.zone, g.node, g.kind)
            acc = groups.setdefault(key, [0, 0, 0, 0.0, None])
            acc[0] += g.count
            acc[1] += g.ok
            acc[2] += g.latency_count
            acc[3] += g.latency_sum
            if g.last_request is not None:
                acc[4] = g.last_request if acc[4] is None else max(acc[4], g.last_request)
    durations: dict[tuple, dict[int, list]] = defaultdict(dict)
    for s in summaries:
        for d in s.durations:
            bins = durations[(d.model, d.node, d.kind)]
            for b, c, total in d.bins:
                acc = bins.setdefault(b, [0, 0.0])
                acc[0] += c
                acc[1] += total
    rtt: dict[tuple, dict[float, list]] = defaultdict(dict)
    for s in summaries:
        for r in s.rtt:
            buckets = rtt[(r.zone, r.node)]
            for start, c, total in r.buckets:
                acc = buckets.setdefault(start, [0, 0.0])
                acc[0] += c
                acc[1] += total
    untils = [s.until for s in summaries if s.until is not None]
    dispersion, arrival_count = _merge_dispersion(summaries)
    return Summary(
        groups=[GroupStat(model=m, zone=z, node=n, kind=k, count=a[0], ok=a[1], latency_count=a[2],
                          latency_sum=a[3], last_request=a[4]) for (m, z, n, k), a in groups.items()],
        durations=[DurationStat(model=m, node=n, kind=k, bins=tuple((b, a[0], a[1]) for b, a in sorted(bins.items())))
                   for (m, n, k), bins in durations.items()],
        since=min(s.since for s in summaries),
        relative_error=max(s.relative_error for s in summaries),
        rtt=[RttStat(zone=z, node=n, buckets=tuple((t, a[0], a[1]) for t, a in sorted(b.items())))
             for (z, n), b in rtt.items()],
        until=max(untils) if untils else None,
        store=None, dispersion=dispersion, arrival_count=arrival_count, joint_dispersion=_merge_joint(summaries),
        pace=_merge_pace(s.pace for s in summaries), pace_idle=_merge_pace(s.pace_idle for s in summaries))


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _merge_models(lists: Iterable[list[ModelStat]]) -> list[ModelStat]:
    totals: dict[str, list] = {}
    instances: dict[str, dict[tuple, list]] = defaultdict(dict)
    for models in lists:
        for m in models:
            acc = totals.setdefault(m.model, [0, None])
            acc[0] += m.count
            acc[1] = _latest(acc[1], m.last_requested)
            for inst in m.instances:
                i = instances[m.model].setdefault((inst.node, inst.provisioned), [0, None])
                i[0] += inst.count
                i[1] = _latest(i[1], inst.last_requested)
    return [ModelStat(model=name, count=acc[0], last_requested=acc[1],
                      instances=tuple(InstanceStat(node=node, provisioned=prov, count=i[0], last_requested=i[1])
                                      for (node, prov), i in instances[name].items()))
            for name, acc in totals.items()]


def merge_observed(parts: list[tuple[str, Observed]]) -> Observed:
    """Merge what each replica (url, Observed) reported into one window; same store id counted once."""
    if not parts:
        raise FrontendError("no front-end replica answered")
    kept: list[tuple[str, Observed]] = []
    seen: dict[str, str] = {}
    warnings: list[str] = []
    for url, observed in parts:
        if observed.summary is None:
            raise FrontendError(f"front-end replica {url} has no /stats/summary: replicas need a front-end "
                                "that aggregates its window")
        store = observed.summary.store
        if store is not None and store in seen:
            warnings.append(f"replicas {seen[store]} and {url} share one statistics database; counted once")
            continue
        if store is not None:
            seen[store] = url
        kept.append((url, observed))
        warnings.extend(observed.warnings)
    summaries = [o.summary for _, o in kept]
    recents = [o.recent for _, o in kept if o.recent is not None]
    return Observed(requests=[], models=_merge_models(o.models for _, o in kept), nodes=kept[0][1].nodes,
                    since=min(o.since for _, o in kept), collected=max(o.collected for _, o in kept),
                    warnings=warnings, summary=_merge_summaries(summaries),
                    recent=_merge_summaries(recents) if len(recents) == len(kept) else None)


def collect_replicas(urls: list[str], *, token: str | None, timeout: float, window: float,
                     recent: float = 0.0) -> Observed:
    """Read every replica at `urls` and merge; unreachable ones are left out with a warning."""
    parts: list[tuple[str, Observed]] = []
    missed: list[str] = []
    for url in urls:
        client = FrontendClient(url, token=token, timeout=timeout)
        try:
            parts.append((url, collect(client, window=window, recent=recent)))
        except FrontendError as exc:
            missed.append(f"front-end replica {url} left out: {exc}")
        finally:
            client.close()
    if not parts:
        detail = f": {missed[0]}" if missed else " (no ready pod behind the Service)"
        raise FrontendError(f"no front-end replica answered{detail}")
    merged = merge_observed(parts)
    merged.warnings.extend(missed)
    merged.warnings.append(f"statistics merged from {len(parts)} of {len(urls)} front-end replica(s)")
    return Observed(requests=merged.requests, models=merged.models, nodes=merged.nodes, since=merged.since,
                    collected=time.time(), warnings=merged.warnings, summary=merged.summary,
                    recent=merged.recent)
