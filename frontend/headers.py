"""Which headers cross the proxy, in each direction (RFC 9110 section 7.6.1): pure functions."""
from __future__ import annotations

import math
from typing import Iterable, Mapping

__all__ = ["HOP_BY_HOP", "upstream_headers", "downstream_headers", "timing_headers", "upstream_timings"]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Set by the proxy itself or meaningless to the model server; the client's credentials for the
# front-end and its cookies are not the model server's business.
_NOT_FORWARDED_UP = frozenset({"host", "content-length", "accept-encoding", "authorization", "cookie",
                               "x-client-zone", "x-client-latency", "x-client-rtt", "x-client-rtt-node",
                               "expect"})
# Server-Timing is rewritten by the proxy (its own time, the model server's as `upstream`).
_NOT_FORWARDED_DOWN = frozenset({"content-length", "server", "date", "set-cookie", "server-timing",
                                 "x-served-by"})


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Return header names listed in Connection: those are hop-by-hop too."""
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens |= {t.strip().lower() for t in value.split(",") if t.strip()}
    return tokens


def upstream_headers(headers: Iterable[tuple[str, str]], *, request_id: str | None = None,
                     client_addr: str | None = None) -> dict[str, str]:
    """Return the client's end-to-end headers to send to the model server."""
    headers = list(headers)
    drop = HOP_BY_HOP | _NOT_FORWARDED_UP | _connection_tokens(headers)
    out: dict[str, str] = {}
    for name, value in headers:
        if name.lower() in drop:
            continue
        out[name] = value
    # No compression upstream: the body is passed back byte for byte with its own content type.
    out["Accept-Encoding"] = "identity"
    if request_id:
        out["X-Request-Id"] = request_id
    if client_addr:
        prior = next((v for n, v in headers if n.lower() == "x-forwarded-for"), None)
        out = {k: v for k, v in out.items() if k.lower() != "x-forwarded-for"}
        out["X-Forwarded-For"] = f"{prior}, {client_addr}" if prior else client_addr
    return out


def downstream_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Return the model server's end-to-end headers to pass back to the client."""
    headers = list(headers)
    drop = HOP_BY_HOP | _NOT_FORWARDED_DOWN | _connection_tokens(headers)
    return [(n, v) for n, v in headers if n.lower() not in drop]


def timing_headers(*, node: str, seconds: float, upstream: Mapping[str, float] | None = None) -> list[tuple[str, str]]:
    """`X-Served-By` (the node that answered) and `Server-Timing` for a proxied answer.

    `app` is the front-end's whole time for the call (the model server's included), so a client
    that subtracts it from what it waited is left with the network's share; `upstream` repeats
    the model server's own `app` figure (from `upstream_timings`) when it sent one.
    """
    metrics = [f"app;dur={seconds * 1000:.3f}"]
    app = (upstream or {}).get("app")
    if app is not None:
        metrics.append(f"upstream;dur={app * 1000:.3f}")
    return [("X-Served-By", node), ("Server-Timing", ", ".join(metrics))]


def upstream_timings(headers: Iterable[tuple[str, str]]) -> dict[str, float]:
    """The model server's Server-Timing metrics in seconds (`name;dur=<ms>`, the first of each name);
    a metric without a valid, finite, non-negative `dur` is left out."""
    out: dict[str, float] = {}
    seen: set[str] = set()
    for name, value in headers:
        if name.lower() != "server-timing":
            continue
        for part in value.split(","):
            fields = [f.strip() for f in part.split(";")]
            if fields[0] in seen:
                continue
            seen.add(fields[0])
            dur = next((f[4:] for f in fields[1:] if f.startswith("dur=")), None)
            try:
                ms = float(dur)
            except (TypeError, ValueError):
                continue
            if math.isfinite(ms) and ms >= 0:
                out[fields[0]] = ms / 1000
    return out
