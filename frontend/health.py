"""GET /healthz (liveness and a summary of the cluster cache) and GET /metrics (Prometheus)."""
from __future__ import annotations

import os

from flask import Blueprint, Flask, Response

from . import metrics
from .runtime import current_runtime
from .store import label_text

__all__ = ["bp", "init_app"]

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """Liveness: this worker answers; also how fresh its view of the cluster is."""
    rt = current_runtime()
    return {"status": "ok", "pid": os.getpid(), "policy": rt.settings.policy, "cluster": rt.cache.describe()}


@bp.get("/metrics")
def prometheus():
    """Counters summed over all workers (from the shared database) and this worker's gauges."""
    rt = current_runtime()
    state = rt.cache.state
    gauges: list[tuple[str, str, str, float]] = []
    ready = sum(1 for n in state.nodes if n.ready)
    gauges.append(("frontend_cluster_nodes", "Nodes the cluster reports, by readiness.",
                   label_text({"ready": "true"}), ready))
    gauges.append(("frontend_cluster_nodes", "", label_text({"ready": "false"}), len(state.nodes) - ready))
    per_model: dict[tuple[str, bool], int] = {}
    for dep in state.deployments:
        per_model[(dep.model, dep.ready)] = per_model.get((dep.model, dep.ready), 0) + 1
    for (model, is_ready), count in sorted(per_model.items()):
        gauges.append(("frontend_cluster_deployments", "Model instances the cluster reports.",
                       label_text({"model": model, "ready": str(is_ready).lower()}), count))
    for node in state.nodes:
        gauges.append(("frontend_node_cpu_usage_cores", "CPU in use on a node (cores).",
                       label_text({"node": node.name}), node.cpu_usage))
    for node in state.nodes:
        gauges.append(("frontend_node_memory_available_kb", "Memory not claimed by model instances (KB).",
                       label_text({"node": node.name}), node.memory_available))
    age = rt.cache.age()
    gauges.append(("frontend_cluster_state_age_seconds", "Seconds since this worker last read the cluster.",
                   "", age if age is not None else -1))
    gauges.append(("frontend_stats_request_rows", "Request rows kept in the statistics database.",
                   "", rt.store.request_rows()))
    gauges.append(("frontend_prediction_cache_entries", "Entries in this worker's prediction cache.",
                   "", len(rt.predictions)))
    text = metrics.render(rt.store.counters(), gauges)
    return Response(text, mimetype=None, content_type=metrics.CONTENT_TYPE)


def init_app(app: Flask) -> None:
    """Register the health blueprint."""
    app.register_blueprint(bp)
