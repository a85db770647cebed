"""GET /services and GET /services/<model>: where to run an inference (thesis 5.2.1)."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, request

from .errors import ApiError, read_body
from .hints import HintError, parse_hints
from .observe import note_model_request, update_model_request
from .runtime import MODEL_NAME, current_runtime

__all__ = ["bp", "init_app", "read_json_body"]

bp = Blueprint("services", __name__)


def read_json_body() -> dict[str, Any]:
    """Return the request's JSON object body, {} when there is none; 400 when malformed."""
    raw = read_body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "request body is not valid JSON (or nested too deeply)") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _one(model: Any, body: dict[str, Any]) -> dict:
    if not isinstance(model, str) or not MODEL_NAME.fullmatch(model):
        raise ApiError(400 if not isinstance(model, str) else 404,
                       "model must be a string" if not isinstance(model, str) else f"unknown model {model!r}")
    try:
        hints = parse_hints(request.headers, body)
    except HintError as exc:
        raise ApiError(400, str(exc)) from None
    rt = current_runtime()
    note_model_request(model=model, kind="lookup", zone=hints.zone, latency=hints.latency,
                       rtt=hints.rtt, rtt_node=hints.rtt_node, known_model=model in rt.cache.catalog)
    rt.note_pace(hints.pace_model, hints.rtt_node, hints.pace, hints.pace_idle)
    chosen = rt.pick(model, zone=hints.zone)
    update_model_request(node=chosen.node.name, endpoint=chosen.endpoint,
                         provisioned=chosen.deployment.created)
    return chosen.to_json()


@bp.get("/services")
def list_services():
    """One endpoint per deployed model, or only the one asked for by ?model= or a JSON body."""
    body = read_json_body()
    model = request.args.get("model")
    if model is None and "model" in body:
        model = body["model"]
    if model is not None:
        return _one(model, body)
    try:
        hints = parse_hints(request.headers, body)
    except HintError as exc:
        raise ApiError(400, str(exc)) from None
    rt = current_runtime()
    rt.note_pace(hints.pace_model, hints.rtt_node, hints.pace, hints.pace_idle)
    return {"services": rt.listing(zone=hints.zone)}


@bp.get("/services/<model>")
def one_service(model: str):
    """The endpoint for one model."""
    return _one(model, read_json_body())


def init_app(app: Flask) -> None:
    """Register the services blueprint."""
    app.register_blueprint(bp)
