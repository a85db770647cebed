"""The front-end's logs in the shared format (common/logs.py), carrying the request id when there is one."""
from __future__ import annotations

from flask import Flask, g, has_request_context

from common.logs import setup_logging

__all__ = ["init_app"]


def _request_context() -> dict:
    if has_request_context():
        request_id = getattr(g, "request_id", None)
        if request_id:
            return {"request_id": request_id}
    return {}


def init_app(app: Flask, *, level: str = "INFO") -> None:
    """Send the `frontend` logger's records, and the cluster adapter's warnings, to stderr in the shared
    format (JSON lines, or readable lines on a terminal)."""
    logger = setup_logging("frontend", level=level, context=_request_context)
    quieter = level.upper() if level.upper() in ("ERROR", "CRITICAL") else "WARNING"
    setup_logging("frontend", level=quieter, loggers=("cluster",))
    app.logger.handlers = logger.handlers
    app.logger.setLevel(logger.level)
    app.logger.propagate = False
