"""Client hints (zone, observed latency, measured round trip) and request ids: validated at the
boundary, pure functions.

The round-trip report is a pair: `X-Client-RTT: <seconds>` (the network round trip the client
observed on its previous call to a node: that call's end-to-end time minus the server's own time
from the answer's `Server-Timing: app;dur=<ms>`) and `X-Client-RTT-Node: <node name>` (the node
that call went to). Or `rtt` / `rtt_node` in a JSON body (GET /services). One without the other is
refused; the pair comes from the headers when either header is present, else from the body.

The pace report rides on it: `X-Client-Pace: <seconds>` (the `pace` metric of that call's answer,
`Server-Timing: pace;dur=<ms>`: the node's busy time per answer back to back lately) and `X-Client-Pace-Model:
<model>` (the model that call was for), or `pace` / `pace_model` in the body; the node is the
round-trip report's, which must be there too. expected-delay counts the node's work at that pace
(frontend/pace.py). Beside it or alone, `X-Client-Pace-Idle: <seconds>` (body `pace_idle`): the
`pace-idle` metric of that answer, the node's service time of requests that found it idle (a
CPU-limited node serves those faster than back to back), which only the statistics keep: the
back-end predicts the low-load delay with it."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from common.plan_body import MAX_RTT, NAME_RE

__all__ = ["ClientHints", "HintError", "parse_hints", "parse_rtt_report", "parse_pace_report", "parse_request_id",
           "ZONE_RE", "NODE_RE", "MAX_LATENCY", "MAX_RTT", "MAX_PACE", "RTT_HEADER", "RTT_NODE_HEADER", "PACE_HEADER",
           "PACE_MODEL_HEADER", "PACE_IDLE_HEADER"]

ZONE_RE = NAME_RE      # the wire alphabet of common/plan_body.py
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
NODE_RE = ZONE_RE      # node names in an RTT report: the zone's alphabet
_NUMBER = re.compile(r"[+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")   # plain decimal, no '_', inf or nan
MAX_LATENCY = 3600.0   # seconds; anything larger is a client bug, not a measurement
RTT_HEADER = "X-Client-RTT"
RTT_NODE_HEADER = "X-Client-RTT-Node"
PACE_HEADER = "X-Client-Pace"
PACE_MODEL_HEADER = "X-Client-Pace-Model"
PACE_IDLE_HEADER = "X-Client-Pace-Idle"
MAX_PACE = 60.0        # seconds per answer; more is a client bug, not a node's pace


class HintError(ValueError):
    """A hint is present but malformed."""


@dataclass(frozen=True)
class ClientHints:
    zone: str | None = None
    latency: float | None = None   # seconds the client observed
    rtt: float | None = None       # network round trip (s) the client observed to `rtt_node`
    rtt_node: str | None = None    # set exactly when rtt is
    pace: float | None = None      # seconds per answer `rtt_node` reported for `pace_model`
    pace_idle: float | None = None  # seconds `rtt_node` took for `pace_model` when it found itself idle
    pace_model: str | None = None  # set exactly when pace or pace_idle is


def _zone(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not ZONE_RE.fullmatch(value):
        raise HintError(f"{where}: zone must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
    return value


def _latency(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise HintError(f"{where}: latency must be a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HintError(f"{where}: latency must be a number of seconds")
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > MAX_LATENCY:
        raise HintError(f"{where}: latency must be between 0 and {MAX_LATENCY:g} seconds")
    return value


def _seconds(value: Any, where: str, *, most: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.fullmatch(text):
            raise HintError(f"{where}: must be a number of seconds")
        value = float(text)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HintError(f"{where}: must be a number of seconds")
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > most:
        raise HintError(f"{where}: must be between 0 and {most:g} seconds")
    return value


def _node(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not NODE_RE.fullmatch(value):
        raise HintError(f"{where}: node must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
    return value


def parse_rtt_report(headers: Mapping[str, str], body: Mapping[str, Any] | None = None
                     ) -> tuple[float | None, str | None]:
    """Return (rtt seconds, node) of an X-Client-RTT / X-Client-RTT-Node report, (None, None) without one.

    The pair is read from the headers when they carry one, else from the body's `rtt` / `rtt_node`
    (a body pair is validated either way); one without the other, an empty value, a value outside 0..MAX_RTT seconds (or not
    finite) or a node name outside the zone alphabet raise HintError."""
    from_headers = _rtt_pair(headers.get(RTT_HEADER), headers.get(RTT_NODE_HEADER), RTT_HEADER, RTT_NODE_HEADER)
    from_body = (_rtt_pair(body.get("rtt"), body.get("rtt_node"), "body field 'rtt'", "body field 'rtt_node'")
                 if body else (None, None))        # checked even when the headers win
    return from_headers if from_headers[1] is not None else from_body


def _both_or_neither(first: Any, second: Any, where_first: str, where_second: str, why: str) -> bool:
    """True when both halves of a report are there, False when neither is; HintError for one alone."""
    if first is None and second is None:
        return False
    if first is None or second is None:
        raise HintError(f"{where_first} and {where_second} must be sent together ({why})")
    return True


def _rtt_pair(raw_rtt: Any, raw_node: Any, where_rtt: str, where_node: str) -> tuple[float | None, str | None]:
    if not _both_or_neither(raw_rtt, raw_node, where_rtt, where_node, "the round trip and the node it was measured to"):
        return None, None
    return _seconds(raw_rtt, where_rtt, most=MAX_RTT), _node(raw_node, where_node)


def parse_pace_report(headers: Mapping[str, str], body: Mapping[str, Any] | None, node: str | None
                      ) -> tuple[float | None, float | None, str | None]:
    """Return (seconds back to back, seconds idle, model) of an X-Client-Pace / X-Client-Pace-Idle /
    X-Client-Pace-Model report (or the body's `pace` / `pace_idle` / `pace_model`, validated either
    way), Nones without one. The headers win when any of them is there. `node`: the round-trip
    report's node, which the paces are for; a pace without it, a pace without the model or the model
    without a pace, a pace outside (0, MAX_PACE] seconds or a model name outside the alphabet raise
    HintError."""
    from_headers = _pace_report(headers.get(PACE_HEADER), headers.get(PACE_IDLE_HEADER),
                                headers.get(PACE_MODEL_HEADER), PACE_HEADER, PACE_IDLE_HEADER, PACE_MODEL_HEADER)
    from_body = (_pace_report(body.get("pace"), body.get("pace_idle"), body.get("pace_model"), "body field 'pace'",
                              "body field 'pace_idle'", "body field 'pace_model'")
                 if body else (None, None, None))
    report = from_headers if from_headers[2] is not None else from_body
    if report[2] is not None and node is None:
        raise HintError(f"{PACE_HEADER} / {PACE_IDLE_HEADER} need the round-trip report's node ({RTT_NODE_HEADER}): "
                        f"a pace is that node's")
    return report


def _pace_report(raw_pace: Any, raw_idle: Any, raw_model: Any, where_pace: str, where_idle: str, where_model: str
                 ) -> tuple[float | None, float | None, str | None]:
    """One source's report: the model with the back-to-back pace, the idle one or both."""
    why = "the pace and the model it was measured for"
    if raw_model is None:
        for raw, where in ((raw_pace, where_pace), (raw_idle, where_idle)):
            _both_or_neither(raw, raw_model, where, where_model, why)      # raises for a pace alone
        return None, None, None
    if raw_pace is None and raw_idle is None:
        raise HintError(f"{where_model} must be sent together with {where_pace} or {where_idle} ({why})")
    pace, idle = _pace(raw_pace, where_pace), _pace(raw_idle, where_idle)
    if not isinstance(raw_model, str) or not NAME_RE.fullmatch(raw_model):
        raise HintError(f"{where_model}: model must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
    return pace, idle, raw_model


def _pace(raw: Any, where: str) -> float | None:
    """Seconds per answer in (0, MAX_PACE], None when not sent: a node's pace is never 0."""
    pace = _seconds(raw, where, most=MAX_PACE)
    if pace is not None and not pace:
        raise HintError(f"{where}: must be more than 0 seconds")
    return pace


def parse_hints(headers: Mapping[str, str], body: Mapping[str, Any] | None = None) -> ClientHints:
    """Read X-Client-Zone / X-Client-Latency / X-Client-RTT + X-Client-RTT-Node / X-Client-Pace and/or
    X-Client-Pace-Idle + X-Client-Pace-Model, or `zone` / `latency` / `rtt` + `rtt_node` / `pace` and/or
    `pace_idle` + `pace_model` in a JSON body (headers win)."""
    body = body or {}
    # A body hint is validated even when the header wins: a malformed hint is a 400 wherever it is.
    zone = _zone(headers.get("X-Client-Zone"), "X-Client-Zone")
    body_zone = _zone(body.get("zone"), "body field 'zone'")
    if zone is None:
        zone = body_zone
    latency = _latency(headers.get("X-Client-Latency"), "X-Client-Latency")
    body_latency = _latency(body.get("latency"), "body field 'latency'")
    if latency is None:
        latency = body_latency
    rtt, rtt_node = parse_rtt_report(headers, body)
    pace, pace_idle, pace_model = parse_pace_report(headers, body, rtt_node)
    return ClientHints(zone=zone, latency=latency, rtt=rtt, rtt_node=rtt_node, pace=pace, pace_idle=pace_idle,
                       pace_model=pace_model)


def parse_request_id(value: str | None) -> str | None:
    """Return the client's X-Request-Id when it is safe to log and echo, else None."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return None
