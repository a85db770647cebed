"""Prometheus text exposition (format 0.0.4), rendered from the shared counters table.

Counters are stored in SQLite (see store.py), so whichever gunicorn worker answers /metrics
reports the totals of all workers. A histogram observation is stored as one increment of the
bucket it falls in (not cumulative) plus its sum; rendering accumulates the buckets.
"""
from __future__ import annotations

import bisect
import functools
import math
import re
from typing import Iterable

from .store import Increment, label_text

__all__ = ["BUCKETS", "HTTP_REQUESTS", "HTTP_DURATION", "MODEL_REQUESTS", "PROVISIONS", "REFRESH_FAILURES",
           "CACHE", "observe", "render", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = "frontend_http_requests_total"
HTTP_DURATION = "frontend_http_request_duration_seconds"
MODEL_REQUESTS = "frontend_model_requests_total"
PROVISIONS = "frontend_provisions_total"
REFRESH_FAILURES = "frontend_cluster_refresh_failures_total"
CACHE = "frontend_prediction_cache_total"

_HELP = {
    HTTP_REQUESTS: ("counter", "HTTP requests answered, by route, method and status."),
    HTTP_DURATION: ("histogram", "Time to answer an HTTP request in seconds, by route."),
    MODEL_REQUESTS: ("counter", "Requests naming a catalog model, by model, kind (lookup|proxy) and status."),
    PROVISIONS: ("counter", "On-demand provisioning attempts, by model and outcome."),
    REFRESH_FAILURES: ("counter", "Failed reads of the cluster state."),
    CACHE: ("counter", "Prediction cache lookups, by model and result (hit|miss)."),
}
_LE = re.compile(r'(^|,)le="[^"]*"')


def _le_text(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


@functools.lru_cache(maxsize=4096)
def _series(name: str, labels: tuple[tuple[str, str], ...], index: int) -> tuple[str, str, str, str]:
    bound = BUCKETS[index] if index < len(BUCKETS) else math.inf
    return (f"{name}_bucket", label_text(dict(labels) | {"le": _le_text(bound)}), f"{name}_sum",
            label_text(dict(labels)))


def observe(name: str, labels: dict[str, str], value: float) -> list[Increment]:
    """Return the increments that record one histogram observation."""
    bucket, bucket_labels, total, total_labels = _series(name, tuple(sorted(labels.items())),
                                                         bisect.bisect_left(BUCKETS, value))
    return [Increment(bucket, bucket_labels), Increment(total, total_labels, value)]


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(counters: Iterable[tuple[str, str, float]], gauges: Iterable[tuple[str, str, str, float]]) -> str:
    """Render stored counters and (name, help, labels, value) gauges as Prometheus text."""
    plain: dict[str, list[tuple[str, float]]] = {}
    buckets: dict[str, dict[str, dict[str, float]]] = {}    # name -> labels without le -> le -> n
    sums: dict[str, dict[str, float]] = {}
    for name, labels, value in counters:
        if name.endswith("_bucket"):
            base = name[: -len("_bucket")]
            le_match = re.search(r'le="([^"]*)"', labels)
            le = le_match.group(1) if le_match else "+Inf"
            rest = _LE.sub("", labels).strip(",")
            buckets.setdefault(base, {}).setdefault(rest, {})[le] = value
        elif name.endswith("_sum") and name[: -len("_sum")] in _HELP:
            sums.setdefault(name[: -len("_sum")], {})[labels] = value
        else:
            plain.setdefault(name, []).append((labels, value))
    lines: list[str] = []
    for name in sorted(set(plain) | {n for n, (kind, _) in _HELP.items() if kind == "counter"}):
        kind, text = _HELP.get(name, ("counter", name))
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in plain.get(name, []):
            lines.append(f"{name}{{{labels}}} {_number(value)}" if labels else f"{name} {_number(value)}")
    for name in sorted(set(buckets) | {n for n, (kind, _) in _HELP.items() if kind == "histogram"}):
        kind, text = _HELP.get(name, ("histogram", name))
        lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
        series = buckets.get(name, {})
        for labels in sorted(series):
            counts = series[labels]
            total = 0.0
            prefix = f"{labels}," if labels else ""
            for bound in (*BUCKETS, math.inf):
                total += counts.get(_le_text(bound), 0.0)
                lines.append(f'{name}_bucket{{{prefix}le="{_le_text(bound)}"}} {_number(total)}')
            sel = f"{{{labels}}}" if labels else ""
            lines.append(f"{name}_sum{sel} {_number(sums.get(name, {}).get(labels, 0.0))}")
            lines.append(f"{name}_count{sel} {_number(total)}")
    seen: set[str] = set()
    for name, text, labels, value in gauges:
        if name not in seen:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge"]
            seen.add(name)
        lines.append(f"{name}{{{labels}}} {_number(value)}" if labels else f"{name} {_number(value)}")
    return "\n".join(lines) + "\n"
