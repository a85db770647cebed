"""Client hints (zone, observed latency) and request ids: validated at the boundary, pure functions."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["ClientHints", "HintError", "parse_hints", "parse_request_id", "ZONE_RE"]

ZONE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_LATENCY = 3600.0   # seconds; anything larger is a client bug, not a measurement


class HintError(ValueError):
    """A hint is present but malformed."""


@dataclass(frozen=True)
class ClientHints:
    zone: str | None = None
    latency: float | None = None   # seconds the client observed


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


def parse_hints(headers: Mapping[str, str], body: Mapping[str, Any] | None = None) -> ClientHints:
    """Read X-Client-Zone / X-Client-Latency, or `zone` / `latency` in a JSON body (headers win)."""
    body = body or {}
    zone = _zone(headers.get("X-Client-Zone"), "X-Client-Zone")
    if zone is None:
        zone = _zone(body.get("zone"), "body field 'zone'")
    latency = _latency(headers.get("X-Client-Latency"), "X-Client-Latency")
    if latency is None:
        latency = _latency(body.get("latency"), "body field 'latency'")
    return ClientHints(zone=zone, latency=latency)


def parse_request_id(value: str | None) -> str | None:
    """Return the client's X-Request-Id when it is safe to log and echo, else None."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return None
