"""The back-end's routes (thesis 5.2.3-5.2.5): /stats/requests, /stats/summary, /stats/models, /stats/memory, /plan.

All behind the bearer token. They read the shared database and this worker's cluster cache only.
"""
from __future__ import annotations

import math
import time

from flask import Blueprint, Flask, request

from cluster.port import node_costs, node_tier

from .auth import require_token
from .dispatch import PlanError, parse_plan
from .errors import ApiError
from .runtime import current_runtime
from .services import read_json_body

__all__ = ["bp", "init_app", "MAX_LIMIT", "DEFAULT_LIMIT", "MAX_ID", "DEFAULT_WINDOW", "MAX_WINDOW"]

bp = Blueprint("stats", __name__)
DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
MAX_ID = 2 ** 63 - 1            # SQLite's largest integer: a bigger `after` is a client error, not a 500
DEFAULT_WINDOW = 600.0          # seconds summarised by /stats/summary unless ?window= says otherwise
MAX_WINDOW = 7 * 24 * 3600.0


@bp.before_request
def _token() -> None:
    require_token()


def _number_arg(name: str, *, kind: type, low: float, high: float | None = None):
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, f"{name} must be finite")
    if value < low or (high is not None and value > high):
        fmt = (lambda v: str(v)) if kind is int else (lambda v: f"{v:g}")
        raise ApiError(400, f"{name} must be between {fmt(low)} and {fmt(high)}" if high is not None
                       else f"{name} must be >= {fmt(low)}")
    return value


@bp.get("/stats/requests")
def requests_log():
    """Recorded requests with time >= since, oldest first, at most limit of them."""
    since = _number_arg("since", kind=float, low=0)
    limit = _number_arg("limit", kind=int, low=1, high=MAX_LIMIT) or DEFAULT_LIMIT
    after = _number_arg("after", kind=int, low=0, high=MAX_ID)
    rows = current_runtime().store.requests(since=since, limit=limit, after_id=after)
    return {"requests": rows}


@bp.get("/stats/summary")
def summary():
    """Per (model, zone, node, kind) aggregates of the last `window` seconds (10 s buckets)."""
    window = _number_arg("window", kind=float, low=1, high=MAX_WINDOW)
    return current_runtime().store.summary(window=DEFAULT_WINDOW if window is None else window, now=time.time())


@bp.get("/stats/models")
def models():
    """Per catalog model: requests ever, last requested, and per instance since it was provisioned."""
    rt = current_runtime()
    totals = rt.store.model_counts()
    per_instance = rt.store.instance_counts()
    state = rt.cache.state
    out = []
    for spec in rt.cache.catalog:
        count, last = totals.get(spec.name, (0, None))
        instances = []
        for dep in state.deployments_of(spec.name):
            served, served_last = per_instance.get((dep.model, dep.node, dep.created), (0, None))
            instances.append({"node": dep.node, "provisioned": dep.created, "count": served,
                              "last_requested": served_last, "ready": dep.ready, "endpoint": dep.endpoint})
        out.append({"model": spec.name, "count": count, "last_requested": last, "memory": spec.memory,
                    "instances": instances})
    return {"models": out, "fetched": state.fetched or None}


@bp.get("/stats/memory")
def memory():
    """Per node: memory total, used, available (KB) and CPU capacity and usage (cores)."""
    state = current_runtime().cache.state
    nodes = []
    for node in state.nodes:
        nodes.append({"node": node.name, "ready": node.ready, "class": node.labels.get("node-class"),
                      "total": node.memory_total, "used": node.memory_used, "available": node.memory_available,
                      "cpu_capacity": node.cpu_capacity, "cpu_usage": node.cpu_usage,
                      "address": node.address, "rss": node.memory_rss, "tier": node_tier(node),
                      "cost_per_request": node_costs(node)[0], "cost_per_instance_hour": node_costs(node)[1]})
    return {"nodes": nodes, "fetched": state.fetched or None}


@bp.put("/plan")
def put_plan():
    """Store the back-end's latest plan for the plan dispatch policy."""
    rt = current_runtime()
    body = read_json_body()
    if not body:
        raise ApiError(400, "plan body required")
    try:
        plan = parse_plan(body, known_models=rt.cache.catalog.names())
    except PlanError as exc:
        raise ApiError(400, str(exc)) from None
    received = time.time()
    rt.store.put_plan(plan.to_json(), received=received)
    rt.cache.set_plan(plan, received=received)
    return {"ok": True}


@bp.get("/plan")
def get_plan():
    """Return the stored plan."""
    stored = current_runtime().store.get_plan()
    if stored is None:
        raise ApiError(404, "no plan has been stored yet")
    plan, received = stored
    return {**plan, "received": received}


def init_app(app: Flask) -> None:
    """Register the stats blueprint."""
    app.register_blueprint(bp)
