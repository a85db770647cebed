"""Run the WSGI app under gunicorn (threads worker), configured in code rather than by a config file.

Startup order: the port is bound first (a clash fails at once, with one line) and the layout is
checked; then gunicorn listens and forks its one worker, which loads the ONNX sessions before it
takes its first request, so `GET /v1/models/NAME` answers 200 only once the model is loaded (a
connection made earlier waits in the backlog). The sessions are created in the worker, never in
the master: ONNX Runtime's native state does not survive a fork (the forked worker aborts at exit),
and the master stays small.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from common.logs import gunicorn_logger_class

from .app import arrival

__all__ = ["ServerSettings", "bind_socket", "GunicornServer", "QuickStopWorker"]


@dataclass(frozen=True)
class ServerSettings:
    """How gunicorn runs. Seconds for timeouts."""

    threads: int = 4                 # request threads in the one worker process
    graceful_timeout: float = 5.0    # SIGTERM: seconds in-flight requests get to finish
    keepalive: float = 2.0           # seconds an idle keep-alive connection stays open
    timeout: float = 60.0            # a worker silent this long is restarted
    backlog: int = 256
    access_log: bool = False
    log_level: str = "info"
    proc_name: str = "modelserver"


# After SIGTERM, idle connections get this long (seconds) before they are closed.
STOP_LINGER = 0.5


class QuickStopWorker(ThreadWorker):
    """gunicorn's threads worker, but idle connections do not hold up a stop.

    On SIGTERM the stock worker keeps idle keep-alive connections up to 2 s and connections that have
    sent nothing yet for the whole keep-alive time; a cluster removing a model would wait for them.
    Here both get STOP_LINGER seconds, and a fresh connection holds a thread at most STOP_LINGER
    seconds waiting for its first bytes before it is parked on the poller (stock: 5 s, which a stop
    also waits for). Requests in flight still get the graceful timeout. Each request's wait for a
    free request thread is noted and counted in its Server-Timing (modelserver/app.py).
    """

    def init_process(self) -> None:
        from gunicorn.workers import gthread

        # A module constant of the pinned gunicorn; read at call time, in this worker process only.
        gthread.DEFAULT_WORKER_DATA_TIMEOUT = STOP_LINGER
        super().init_process()

    def enqueue_req(self, conn) -> None:
        """Note when the connection's request became ready to serve (its wait for a thread counts
        as the server's time in Server-Timing)."""
        conn.edge_ready_at = time.perf_counter()
        super().enqueue_req(conn)

    def handle(self, conn):
        arrival.at = getattr(conn, "edge_ready_at", None)
        try:
            return super().handle(conn)
        finally:
            arrival.at = None

    def _cap_keepalive(self, deadline: float) -> None:
        deadline = min(deadline, time.monotonic() + STOP_LINGER)
        super()._cap_keepalive(deadline)
        # pending_conns is sorted by timeout; capping all at one deadline keeps it sorted.
        for conn in getattr(self, "pending_conns", ()):
            conn.timeout = min(conn.timeout, deadline)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (without listening) a TCP socket to host:port; raise OSError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class GunicornServer(BaseApplication):
    """gunicorn serving the WSGI app `load_app()` builds (in the worker) on an already-bound socket."""

    def __init__(self, load_app: Callable[[], Callable], *, sock: socket.socket, settings: ServerSettings,
                 post_worker_init: Callable[[Any], None] | None = None) -> None:
        self._load_app = load_app
        self._sock = sock
        self._settings = settings
        self._post_worker_init = post_worker_init
        super().__init__()

    def load_config(self) -> None:
        s = self._settings
        options = {
            "bind": [f"fd://{self._sock.fileno()}"],
            "workers": 1,
            "worker_class": "modelserver.server.QuickStopWorker",
            "threads": s.threads,
            "preload_app": False,
            "graceful_timeout": max(1, round(s.graceful_timeout)),   # gunicorn takes whole seconds
            "keepalive": max(1, round(s.keepalive)),
            "timeout": max(1, round(s.timeout)),
            "backlog": s.backlog,
            "accesslog": "-" if s.access_log else None,
            "errorlog": "-",
            "loglevel": s.log_level,
            "logger_class": gunicorn_logger_class("modelserver"),
            "proc_name": s.proc_name,
            # Many servers run side by side: no shared control socket, no config file lookups.
            "control_socket_disable": True,
            "worker_tmp_dir": "/dev/shm" if _is_dir("/dev/shm") else None,
        }
        if self._post_worker_init is not None:
            options["post_worker_init"] = self._post_worker_init
        for key, value in options.items():
            if value is not None or key == "accesslog":
                self.cfg.set(key, value)

    def load(self) -> Callable:
        return self._load_app()


def _is_dir(path: str) -> bool:
    import os

    return os.path.isdir(path) and os.access(path, os.W_OK)
