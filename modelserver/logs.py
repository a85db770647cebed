"""Structured logging: one JSON object per line on stderr, for our own logs and gunicorn's."""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from gunicorn.glogging import Logger as GunicornLogger

__all__ = ["JsonFormatter", "JsonGunicornLogger", "configure_logging"]


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line; structured fields come from `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process or os.getpid(),
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(*, level: str = "info") -> logging.Logger:
    """Send the `modelserver` logger to stderr as JSON lines at `level`; return it."""
    logger = logging.getLogger("modelserver")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


class JsonGunicornLogger(GunicornLogger):
    """Gunicorn's logger with JSON lines on stderr; access lines only when `accesslog` is set."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for handler in self.error_log.handlers:
            handler.setFormatter(formatter)
        for handler in list(self.access_log.handlers):
            if getattr(handler, "_gunicorn", False):
                self.access_log.removeHandler(handler)
        if cfg.accesslog is not None:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(formatter)
            handler._gunicorn = True  # type: ignore[attr-defined]
            self.access_log.addHandler(handler)

    def access(self, resp, req, environ, request_time) -> None:
        if self.cfg.accesslog is None:
            return
        status = getattr(resp, "status_code", None) or str(getattr(resp, "status", "")).split(" ")[0]
        self.access_log.info("request", extra={"fields": {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status,
            "seconds": round(request_time.total_seconds(), 6),
            "request_id": environ.get("HTTP_X_REQUEST_ID"),
            "remote": environ.get("REMOTE_ADDR"),
        }})
