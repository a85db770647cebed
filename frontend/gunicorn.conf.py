"""Gunicorn settings for the front-end: `gunicorn -c frontend/gunicorn.conf.py 'frontend:create_app()'`.

Environment: FRONTEND_BIND (default 127.0.0.1:5000, the thesis's Flask port), FRONTEND_WORKERS
(default: number of CPU cores, at least 2), FRONTEND_WORKER_CLASS (`gevent`, the default, or
`gthread`), FRONTEND_CONNECTIONS (connections one gevent worker serves at once, default 4096),
FRONTEND_THREADS (threads per gthread worker, default 4), FRONTEND_TIMEOUT (seconds, default 60),
FRONTEND_KEEPALIVE (seconds, default 5), FRONTEND_ACCESS_LOG ("-" for stdout; default off).
The app itself reads FRONTEND_CONFIG / FRONTEND_* (see frontend/config.py).

Why gevent: the front-end is I/O-bound (a lookup is a dictionary read, a proxied call waits on a
model server), and a thread-per-request worker is starved by a dozen clients that open a
connection and send half a request: each such client holds a thread until it gives up (issue
found with 12 sockets against 2 x 4 gthread threads). Under gevent a waiting client costs a
greenlet, and every read has a deadline: a request's line and headers must arrive within
`keepalive` seconds (gunicorn's gevent worker reads them under that timeout and closes the
connection when it runs out), its body within the app's `body_timeout`, and a proxied call ends at
the app's `call_timeout`. Connections beyond FRONTEND_CONNECTIONS per worker wait in the listen
backlog instead of being served half-way.

The app is not preloaded: each worker builds its own app, cluster adapter and state-refresh
greenlet after the fork.
"""
import os
import resource
import sys

bind = [b.strip() for b in os.environ.get("FRONTEND_BIND", "127.0.0.1:5000").split(",") if b.strip()]
workers = int(os.environ.get("FRONTEND_WORKERS") or max(2, os.cpu_count() or 1))
worker_class = os.environ.get("FRONTEND_WORKER_CLASS") or "gevent"
worker_connections = int(os.environ.get("FRONTEND_CONNECTIONS") or 4096)
threads = int(os.environ.get("FRONTEND_THREADS") or 4)
timeout = int(os.environ.get("FRONTEND_TIMEOUT") or 60)
graceful_timeout = 10
keepalive = int(os.environ.get("FRONTEND_KEEPALIVE") or 5)
backlog = 2048
preload_app = False
accesslog = os.environ.get("FRONTEND_ACCESS_LOG") or None
errorlog = "-"
loglevel = "info"
proc_name = "edge-frontend"
# Several front-ends may run side by side (tests, benches, the testbed): gunicorn 27's control
# socket has one default path per user, so it is off.
control_socket_disable = True
# The app must be importable whatever directory gunicorn is started from.
chdir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if chdir not in sys.path:
    sys.path.insert(0, chdir)
from common.logs import gunicorn_logger_class  # noqa: E402  (needs the repository on sys.path)

# gunicorn's own lines in the shared log format (docs/operating.md)
logger_class = gunicorn_logger_class("frontend")


def on_starting(server):
    """Raise the open-file limit to what the connection count needs (soft limit up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = workers * worker_connections + 1024
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            server.log.warning("cannot raise the open-file limit from %s to %s: %s", soft, wanted, exc)


def worker_exit(server, worker):
    """Stop the worker's refresh thread and close its database connections."""
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("frontend") if app is not None else None
    if runtime is not None:
        runtime.close()
