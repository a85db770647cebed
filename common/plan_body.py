"""The body of `PUT /plan`: the contract between the back-end (it writes it) and the front-end
(it reads it), validated by the same model on both sides so a NaN weight never leaves the one
nor enters the other.

{"created": unix seconds, "mode": 1|2, "solver": name, "weights": {model: {zone: {node: weight >= 0}}},
 "rtt": {zone: {node: seconds in 0..MAX_RTT}} (optional),
 "service": {model: {node: seconds in (0, MAX_SERVICE]}} (optional: the service time per request the
 load-aware solve used for each instance, which the expected-delay policy charges to its node's backlog),
 "idle": {model: {node: seconds in (0, MAX_SERVICE]}} (optional: the low-load service time, what a
 request that finds the node idle takes; expected-delay counts it for a node with no backlog)}
"""
from __future__ import annotations

import re
from typing import Any

from .validation import Checked, Strict, ValidationError, check_number, problems

__all__ = ["PlanBody", "plan_problems", "NAME_RE", "MAX_RTT", "MAX_SERVICE"]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")   # zone and node names on the wire
MAX_RTT = 60.0         # seconds; a network round trip longer than this is not one
MAX_SERVICE = 3600.0   # seconds; a service time longer than this is a unit error


def _number(reason: str, **rules: Any):
    """A check_number rule whose failure reads `reason` (the API's wording)."""
    def check(value: Any) -> float:
        try:
            return float(check_number(value, **rules))
        except ValueError:
            raise ValueError(reason) from None
    return check


_created = _number("must be a unix time in seconds", minimum=0)
_weight = _number("must be a number >= 0", minimum=0)
_seconds = _number(f"must be a number of seconds in 0..{MAX_RTT:g}", minimum=0, maximum=MAX_RTT)
_service = _number(f"must be a number of seconds in (0, {MAX_SERVICE:g}]", minimum=0, maximum=MAX_SERVICE,
                   positive=True)


def _mode(value: Any) -> int:
    if isinstance(value, bool) or value not in (1, 2):
        raise ValueError("must be 1 or 2")
    return int(value)


def _solver(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ValueError("must be a non-empty string")
    return value


def _weights_shape(value: Any) -> Any:
    if not isinstance(value, dict) or not all(isinstance(zones, dict) and all(isinstance(row, dict) for row in zones.values())
                                              for zones in value.values()):
        raise ValueError("must map model -> zone -> node -> weight")
    return value


def _rtt_shape(value: Any) -> Any:
    return _table_shape(value, "zone")


def _service_shape(value: Any) -> Any:
    return _table_shape(value, "model")


def _table_shape(value: Any, outer: str) -> Any:
    """A {outer: {node: seconds}} table with wire-safe names (models are checked against the catalog
    by the front-end, as in `weights`)."""
    if not isinstance(value, dict) or not all(isinstance(row, dict) for row in value.values()):
        raise ValueError(f"must map {outer} -> node -> seconds")
    bad = [f"{key[:64]!r} is not a {outer} name" for key in value if not isinstance(key, str) or not NAME_RE.fullmatch(key)]
    bad += [f"{node[:64]!r} is not a node name" for row in value.values() for node in row
            if not isinstance(node, str) or not NAME_RE.fullmatch(node)]
    if bad:
        raise ValueError("; ".join(bad) + " (1-64 letters, digits, '_', '.', ':' or '-')")
    return value


class PlanBody(Strict):
    """A plan as it crosses the wire (unknown keys, NaN and infinities refused)."""

    created: Checked(float, _created)
    mode: Checked(int, _mode)
    solver: Checked(str, _solver)
    weights: Checked(dict[str, dict[str, dict[str, Checked(float, _weight)]]], _weights_shape)
    rtt: Checked(dict[str, dict[str, Checked(float, _seconds)]], _rtt_shape) = None
    service: Checked(dict[str, dict[str, Checked(float, _service)]], _service_shape) = None
    idle: Checked(dict[str, dict[str, Checked(float, _service)]], _service_shape) = None


def plan_problems(exc: ValidationError) -> list[str]:
    """The errors of a plan body as `path: text` lines (the API's and the report's wording)."""
    return problems(exc, named=lambda field, text: f"{field}: {text}",
                    unknown_keys=lambda parent, names: [f"unknown field(s): {', '.join(sorted(names))}"])
