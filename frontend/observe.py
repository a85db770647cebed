"""Per-request bookkeeping: request id, timing, the stats row and the shared counters.

Views describe the request that named a model with `note_model_request(...)`; `after_request`
adds the status and the time taken and writes everything in one SQLite transaction, so the row,
the per-model and per-instance counts and the Prometheus counters never disagree.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
import time
from typing import Any

from flask import Flask, Response, g, has_app_context, request

from . import metrics
from .hints import HintError, parse_request_id, parse_rtt_report
from .runtime import current_runtime
from .store import Increment, RequestRecord, label_text

__all__ = ["init_app", "note_model_request", "update_model_request", "note_pace_report"]

log = logging.getLogger("frontend")
# Request ids: a random per-process prefix and a counter (no syscall per request, unlike uuid4).
_ID_PREFIX = {"pid": 0, "prefix": ""}
_ID_COUNTER = itertools.count(1)


def _new_request_id() -> str:
    if _ID_PREFIX["pid"] != os.getpid():
        _ID_PREFIX.update(pid=os.getpid(), prefix=os.urandom(5).hex())
    return f"{_ID_PREFIX['prefix']}{next(_ID_COUNTER):06x}"


@functools.lru_cache(maxsize=4096)
def _labels(*pairs: tuple[str, str]) -> str:
    return label_text(pairs)


_FROM_HEADERS: Any = object()


def note_model_request(*, model: str, kind: str, zone: str | None, latency: float | None,
                       node: str | None = None, endpoint: str | None = None, provisioned: float | None = None,
                       cached: bool | None = None, known_model: bool = True,
                       rtt: float | None = _FROM_HEADERS, rtt_node: str | None = _FROM_HEADERS) -> None:
    """Remember that this request named `model`; after_request records it with its outcome.

    `rtt` / `rtt_node`: the client's round-trip report (ClientHints.rtt / rtt_node). A caller that
    does not pass them (the proxy, whose body belongs to the model) gets the X-Client-RTT /
    X-Client-RTT-Node headers, which its parse_hints call has already validated."""
    if rtt is _FROM_HEADERS or rtt_node is _FROM_HEADERS:
        try:
            rtt, rtt_node = parse_rtt_report(request.headers)
        except HintError:
            rtt, rtt_node = None, None
    g.model_request = {"model": model, "kind": kind, "zone": zone, "latency": latency, "node": node,
                       "endpoint": endpoint, "provisioned": provisioned, "cached": cached,
                       "known_model": known_model, "rtt": rtt, "rtt_node": rtt_node, "paces": []}


def update_model_request(**fields: Any) -> None:
    """Change fields of the noted model request (e.g. the node once chosen)."""
    noted = g.get("model_request") if has_app_context() else None
    if noted is not None:
        noted.update(fields)


def note_pace_report(model: str, node: str, seconds: float, idle: bool = False) -> None:
    """Attach a validated pace report (`idle`: the node's time for a request that found it idle) to
    the noted model request, whose record carries it to the statistics (a request can carry several:
    a client's echoes and the proxied answer's own). Without a noted request (GET /services listing,
    no request at all) there is no record to carry it."""
    noted = g.get("model_request") if has_app_context() else None
    if noted is not None:
        noted["paces"].append((model, node, seconds, idle))


def init_app(app: Flask) -> None:
    """Register the before/after request hooks."""

    @app.before_request
    def _begin() -> None:
        g.started = time.perf_counter()
        g.request_id = parse_request_id(request.headers.get("X-Request-Id")) or _new_request_id()
        current_runtime().cache.ensure_running()

    @app.after_request
    def _finish(response: Response) -> Response:
        duration = time.perf_counter() - g.get("started", time.perf_counter())
        response.headers["X-Request-Id"] = g.get("request_id", "")
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = response.status_code
        increments = [Increment(metrics.HTTP_REQUESTS,
                                _labels(("method", request.method), ("route", route), ("status", str(status))))]
        increments += metrics.observe(metrics.HTTP_DURATION, {"route": route}, duration)
        record = None
        noted = g.pop("model_request", None)
        if noted is not None:
            record = RequestRecord(time=time.time(), status=status, duration=duration,
                                   **{**noted, "cached": bool(noted["cached"]), "paces": tuple(noted["paces"])})
            if noted["known_model"]:
                increments.append(Increment(metrics.MODEL_REQUESTS, _labels(
                    ("kind", noted["kind"]), ("model", noted["model"]), ("status", str(status)))))
                if noted["cached"] is not None:
                    increments.append(Increment(metrics.CACHE, label_text(
                        {"model": noted["model"], "result": "hit" if noted["cached"] else "miss"})))
        try:
            current_runtime().store.record(request=record, increments=increments)
        except Exception as exc:       # statistics must never break an answer
            log.warning("could not record request statistics", extra={"event": "stats_failed", "error": str(exc)})
        return response
