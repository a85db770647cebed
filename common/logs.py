"""One log format for the front-end, the back-end and the model server.

Why here: every component imports this package (each image copies it), so
their lines look alike and one `grep`/`jq` reads them all. A record is one JSON object a line on
stderr: `time` (UTC, ISO 8601 with milliseconds), `level`, `component`, `message`, then the
record's extra fields (`extra={"event": ..., ...}` or `extra={"fields": {...}}`), `logger`, `pid`
and `exception` when there is one. When stderr is a terminal the same record is one readable
line instead (`09:12:03.456 WARNING frontend: message event=... model=...`). LOG_FORMAT=json or
LOG_FORMAT=human overrides the choice.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Iterable, TextIO

__all__ = ["JsonFormatter", "HumanFormatter", "formatter_for", "setup_logging", "gunicorn_logger_class",
           "FORMAT_ENV"]

FORMAT_ENV = "LOG_FORMAT"
# Attributes every LogRecord has: anything else on a record is an extra field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "fields",
                                                                          "taskName"}
_HEAD = ("time", "level", "component", "message")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the record's extra fields: `extra={...}` attributes and an `extra={"fields": {...}}` dict."""
    out = {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
    nested = getattr(record, "fields", None)
    if isinstance(nested, dict):
        out.update(nested)
    return {k: v for k, v in out.items() if k not in _HEAD}


def _iso(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, component, message, then the extra fields."""

    def __init__(self, component: str, *, context: Callable[[], dict] | None = None):
        super().__init__()
        self.component = component
        self.context = context

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {"time": _iso(record.created), "level": record.levelname.lower(),
                               "component": self.component, "message": record.getMessage()}
        if self.context is not None:
            out.update({k: v for k, v in self.context().items() if k not in _HEAD})
        out.update(_fields(record))
        out["logger"] = record.name
        out["pid"] = record.process or os.getpid()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return out

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.entry(record), default=str)


class HumanFormatter(JsonFormatter):
    """The same record as one readable line, for a person watching a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record)
        entry.pop("logger", None)
        entry.pop("pid", None)
        exception = entry.pop("exception", None)
        clock = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extras = " ".join(f"{k}={v}" for k, v in entry.items() if k not in _HEAD)
        line = f"{clock} {record.levelname:<7} {self.component}: {entry['message']}" + (f"  {extras}" if extras else "")
        return line + ("\n" + exception if exception else "")


def formatter_for(component: str, stream: TextIO | None = None, *, environ: dict | None = None,
                  context: Callable[[], dict] | None = None) -> logging.Formatter:
    """Return the human formatter when `stream` is a terminal (or LOG_FORMAT=human), else JSON."""
    stream = sys.stderr if stream is None else stream
    choice = (os.environ if environ is None else environ).get(FORMAT_ENV, "").strip().lower()
    if choice not in ("json", "human"):
        try:
            choice = "human" if stream.isatty() else "json"
        except (AttributeError, ValueError):
            choice = "json"
    cls = HumanFormatter if choice == "human" else JsonFormatter
    return cls(component, context=context)


class _StderrHandler(logging.StreamHandler):
    """Write to whatever sys.stderr is when a record is emitted (a test may swap it meanwhile)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:     # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def setup_logging(component: str, *, level: str = "INFO", loggers: Iterable[str] | None = None,
                  stream: TextIO | None = None, context: Callable[[], dict] | None = None) -> logging.Logger:
    """Send `loggers` (default: the one named `component`) to `stream` (stderr) in the shared format.

    Idempotent: calling it again replaces the handler it added before. Returns the first logger.
    """
    names = list(loggers) if loggers is not None else [component]
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(formatter_for(component, stream, context=context))
    handler._shared_logs = True          # type: ignore[attr-defined]
    for name in names:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_shared_logs", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False
    return logging.getLogger(names[0])


def gunicorn_logger_class(component: str):
    """Return a gunicorn logger class writing its error (and, when set, access) log in the shared format."""
    from gunicorn.glogging import Logger as GunicornLogger

    class SharedGunicornLogger(GunicornLogger):
        def setup(self, cfg) -> None:
            super().setup(cfg)
            formatter = formatter_for(component)
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

    SharedGunicornLogger.__name__ = SharedGunicornLogger.__qualname__ = f"{component.title()}GunicornLogger"
    return SharedGunicornLogger
