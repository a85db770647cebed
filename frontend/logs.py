"""Structured logs: one JSON object a line on stderr, carrying the request id when there is one."""
from __future__ import annotations

import json
import logging
import os
import sys

from flask import Flask, g, has_request_context

__all__ = ["JsonFormatter", "init_app"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": os.getpid(),
            "message": record.getMessage(),
        }
        if has_request_context():
            request_id = getattr(g, "request_id", None)
            if request_id:
                out["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def init_app(app: Flask, *, level: str = "INFO") -> None:
    """Send the `frontend` logger's records to stderr as JSON lines (once per process)."""
    logger = logging.getLogger("frontend")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_frontend_json", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._frontend_json = True          # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    app.logger.handlers = logger.handlers
    app.logger.setLevel(logger.level)
