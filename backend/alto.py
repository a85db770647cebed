"""Network costs between client zones and nodes from an ALTO cost map (RFC 7285, section 11.2.3).

Why ALTO: the network, not the application, knows what it costs to reach a node from where the
clients are (seed 003); a cost map is the standard JSON for it. Our convention, the same as the
front-end's `nearest` policy uses: source PIDs are client zones (the `X-Client-Zone` values),
destination PIDs are node names, and every cost is a round-trip time in **seconds**. The
`cost-type` must be numerical with metric `routingcost` or `delay`; an ordinal map ranks but does
not measure, so it is refused. A source PID named `default` stands for requests with no zone or a
zone the map does not list.

    {"meta": {"dependent-vtags": [...],
              "cost-type": {"cost-mode": "numerical", "cost-metric": "delay"}},
     "cost-map": {"zone-a": {"nano-1": 0.004, "xavier": 0.012}, "default": {...}}}
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CostMap", "AltoError", "parse_cost_map", "load_cost_map", "DEFAULT_ZONE", "METRICS"]

DEFAULT_ZONE = "default"
METRICS = ("routingcost", "delay")


class AltoError(ValueError):
    """The cost map file is unreadable or not a numerical RFC 7285 cost map."""


@dataclass(frozen=True)
class CostMap:
    """Round-trip seconds from a client zone (source PID) to a node (destination PID)."""

    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    metric: str = "delay"
    source: str = ""                 # where it was read from, for the report

    def rtt(self, zone: str, node: str) -> float | None:
        """Return the cost from `zone` to `node`, falling back to the `default` zone, else None."""
        row = self.costs.get(zone)
        if row is not None and node in row:
            return row[node]
        row = self.costs.get(DEFAULT_ZONE)
        if row is not None and node in row:
            return row[node]
        return None

    @property
    def zones(self) -> list[str]:
        return list(self.costs)


def parse_cost_map(doc: Any, *, source: str = "") -> CostMap:
    """Validate an RFC 7285 cost map document; raise AltoError listing every problem."""
    where = source or "ALTO cost map"
    if not isinstance(doc, dict):
        raise AltoError(f"{where}: must be a JSON object")
    errors: list[str] = []
    metric = "delay"
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        errors.append("meta: must be an object")
    else:
        cost_type = meta.get("cost-type", {"cost-mode": "numerical", "cost-metric": "delay"})
        if not isinstance(cost_type, dict):
            errors.append("meta.cost-type: must be an object")
        else:
            mode = cost_type.get("cost-mode", "numerical")
            metric = cost_type.get("cost-metric", "delay")
            if mode != "numerical":
                errors.append(f"meta.cost-type.cost-mode: must be 'numerical' (costs are seconds), got {mode!r}")
            if metric not in METRICS:
                errors.append(f"meta.cost-type.cost-metric: must be one of {', '.join(METRICS)}, got {metric!r}")
    table = doc.get("cost-map")
    costs: dict[str, dict[str, float]] = {}
    if not isinstance(table, dict):
        errors.append("cost-map: must be an object {source PID: {destination PID: cost}}")
    else:
        for src, row in table.items():
            if not isinstance(row, dict):
                errors.append(f"cost-map.{src}: must be an object")
                continue
            out: dict[str, float] = {}
            for dst, cost in row.items():
                if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
                    errors.append(f"cost-map.{src}.{dst}: must be a number of seconds >= 0, got {cost!r}")
                else:
                    out[str(dst)] = float(cost)
            costs[str(src)] = out
    if errors:
        raise AltoError(f"{where}: " + "; ".join(errors))
    return CostMap(costs=costs, metric=str(metric), source=source)


def load_cost_map(path: str | Path | None) -> CostMap:
    """Read a cost map file; None or an empty path gives an empty map."""
    if path is None or str(path) == "":
        return CostMap()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AltoError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AltoError(f"{path}: not valid JSON: {exc}") from None
    return parse_cost_map(doc, source=str(path))
