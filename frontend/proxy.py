"""POST /services/<model>/<TF Serving path>: forward an inference to the chosen model server.

Why so guarded (DESIGN section 8): the proxy holds connections into the cluster, so it only ever
calls an endpoint the cluster reports for that very model, with a URL rebuilt from a validated TF
Serving path; it strips hop-by-hop headers both ways, never follows redirects, bounds the body and
both timeouts, and reports upstream trouble as 502 (failure) or 504 (timeout) JSON. A connection
refused before anything was sent marks the endpoint bad for this worker and tries the next one.
"""
from __future__ import annotations

import json
import logging
import time

from flask import Blueprint, Flask, Response, g, request

from .errors import ApiError, read_body
from .headers import downstream_headers, timing_headers, upstream_headers, upstream_timings
from .hints import HintError, parse_hints
from .observe import note_model_request, update_model_request
from .predcache import CachedAnswer, PredictionCache
from .runtime import MODEL_NAME, current_runtime
from .tfs import TfsPathError, parse_tfs_path
from .upstream import (UpstreamConnectTimeout, UpstreamError, UpstreamProtocolError, UpstreamRefused,
                       UpstreamTimeout)

__all__ = ["bp", "init_app"]

log = logging.getLogger("frontend.proxy")
bp = Blueprint("proxy", __name__)
_HINT_KEYS = (b'"zone"', b'"latency"')


def _body_hints(body: bytes, content_type: str | None) -> tuple[dict, bytes]:
    """Take `zone`/`latency` out of a JSON body that carries them; return (hints, body to forward)."""
    if not body or not any(key in body for key in _HINT_KEYS):
        return {}, body
    if content_type and "json" not in content_type.lower():
        return {}, body
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}, body           # the model server will say what is wrong with it
    if not isinstance(doc, dict) or not ({"zone", "latency"} & doc.keys()):
        return {}, body
    hints = {k: doc.pop(k) for k in ("zone", "latency") if k in doc}
    return hints, json.dumps(doc).encode()


@bp.route("/services/<model>/<path:tfs_path>", methods=["GET", "POST"])
def forward(model: str, tfs_path: str):
    """Proxy a TF Serving REST call for `model` to one of its instances."""
    began = time.perf_counter()
    rt = current_runtime()
    if not MODEL_NAME.fullmatch(model):
        raise ApiError(404, f"unknown model {model!r}")
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or ""
    if "%" in raw.split("?", 1)[0]:
        raise ApiError(400, "refused path: percent-encoded characters are not allowed")
    try:
        path = parse_tfs_path(tfs_path, model=model)
    except TfsPathError as exc:
        raise ApiError(400, f"refused path: {exc}") from None
    if request.method != path.method:
        raise ApiError(405, f"{path.url_path()} takes {path.method}", headers={"Allow": path.method})
    body = read_body() if path.method == "POST" else b""
    body_hints, body = _body_hints(body, request.content_type)
    try:
        hints = parse_hints(request.headers, body_hints)
    except HintError as exc:
        raise ApiError(400, str(exc)) from None
    known = model in rt.cache.catalog
    note_model_request(model=model, kind="proxy", zone=hints.zone, latency=hints.latency, known_model=known)
    rt.note_pace(hints.pace_model, hints.rtt_node, hints.pace, hints.pace_idle)
    rt.spec(model)                                   # 404 at once for an unknown model

    cache: PredictionCache = rt.predictions
    cache_key = None
    if cache.enabled and path.verb:
        cache_key = PredictionCache.key(path.cache_key(), request.content_type, body)
        generation = rt.cache.state.generation.get(model, ())
        hit = cache.get(cache_key, generation=generation)
        update_model_request(cached=hit is not None)
        if hit is not None:
            update_model_request(node=hit.node)
            return Response(hit.body, status=hit.status, headers=[
                *hit.headers, *timing_headers(node=hit.node, seconds=time.perf_counter() - began)])

    tried: set[str] = set()
    attempts = 1 + max(0, rt.settings.proxy_retries)
    forward_headers = upstream_headers(request.headers.items(), request_id=g.get("request_id"),
                                       client_addr=request.remote_addr)
    last_error: ApiError | None = None
    for _ in range(attempts):
        try:
            chosen = rt.pick(model, zone=hints.zone, exclude=frozenset(tried), provision=not tried)
        except ApiError:
            if last_error is not None:
                raise last_error from None
            raise
        tried.add(chosen.endpoint)
        update_model_request(node=chosen.node.name, endpoint=chosen.endpoint,
                             provisioned=chosen.deployment.created)
        where = f"model {model} on node {chosen.node.name}"
        try:
            upstream = rt.pool(chosen.endpoint).request(path.method, path.url_path(), headers=forward_headers,
                                                        body=body)
        except UpstreamRefused:
            rt.cache.mark_bad(chosen.endpoint, created=chosen.deployment.created)
            last_error = ApiError(502, f"cannot reach {where}")
            continue
        except UpstreamConnectTimeout:
            rt.cache.mark_bad(chosen.endpoint, created=chosen.deployment.created)
            last_error = ApiError(504, f"timed out connecting to {where}")
            continue
        except UpstreamTimeout:
            raise ApiError(504, f"{where} did not answer within the {rt.settings.call_timeout:g} s call deadline") \
                from None
        except UpstreamProtocolError as exc:
            rt.cache.mark_bad(chosen.endpoint, created=chosen.deployment.created)
            last_error = ApiError(502, f"bad answer from {where}: {exc}")
            continue
        except UpstreamError as exc:
            raise ApiError(502, f"bad answer from {where}: {exc}") from None
        if 300 <= upstream.status < 400:
            raise ApiError(502, f"model server for {model} answered with a redirect; not followed")
        if not 200 <= upstream.status <= 599:        # the pool refuses these already; never pass one on
            raise ApiError(502, f"bad answer from {where}: status {upstream.status}")
        headers = downstream_headers(upstream.headers)
        content = upstream.body
        timings = upstream_timings(upstream.headers)
        rt.note_pace(model, chosen.node.name, timings.get("pace"), timings.get("pace-idle"))
        if cache_key is not None and upstream.status == 200:
            cache.put(cache_key, CachedAnswer(status=200, headers=tuple(headers), body=content,
                                              node=chosen.node.name, stored=time.monotonic(),
                                              generation=rt.cache.state.generation.get(model, ())))
        headers += timing_headers(node=chosen.node.name, seconds=time.perf_counter() - began, upstream=timings)
        return Response(content, status=upstream.status, headers=headers)
    assert last_error is not None
    raise last_error


def init_app(app: Flask) -> None:
    """Register the proxy blueprint."""
    app.register_blueprint(bp)
