"""Which headers cross the proxy, in each direction (RFC 9110 section 7.6.1): pure functions."""
from __future__ import annotations

from typing import Iterable

__all__ = ["HOP_BY_HOP", "upstream_headers", "downstream_headers"]

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
# Set by the proxy itself or meaningless to the model server; the client's credentials for the
# front-end and its cookies are not the model server's business.
_NOT_FORWARDED_UP = frozenset({"host", "content-length", "accept-encoding", "authorization", "cookie",
                               "x-client-zone", "x-client-latency", "expect"})
_NOT_FORWARDED_DOWN = frozenset({"content-length", "server", "date", "set-cookie"})


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
