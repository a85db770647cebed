"""Gunicorn settings for the front-end: `gunicorn -c frontend/gunicorn.conf.py 'frontend:create_app()'`.

Environment: FRONTEND_BIND (default 127.0.0.1:5000, the thesis's Flask port), FRONTEND_WORKERS
(default: number of CPU cores, at least 2), FRONTEND_THREADS (threads per worker, default 4),
FRONTEND_TIMEOUT (seconds, default 60), FRONTEND_ACCESS_LOG ("-" for stdout; default off).
The app itself reads FRONTEND_CONFIG / FRONTEND_* (see frontend/config.py).

gthread workers keep client connections alive and let a worker wait on a model server (proxy)
while its other threads answer lookups. The app is not preloaded: each worker builds its own app,
cluster adapter and state-refresh thread after the fork.
"""
import os

bind = [b.strip() for b in os.environ.get("FRONTEND_BIND", "127.0.0.1:5000").split(",") if b.strip()]
workers = int(os.environ.get("FRONTEND_WORKERS") or max(2, os.cpu_count() or 1))
worker_class = "gthread"
threads = int(os.environ.get("FRONTEND_THREADS") or 4)
timeout = int(os.environ.get("FRONTEND_TIMEOUT") or 60)
graceful_timeout = 10
keepalive = 5
preload_app = False
accesslog = os.environ.get("FRONTEND_ACCESS_LOG") or None
errorlog = "-"
loglevel = "info"
proc_name = "edge-frontend"
# The app must be importable whatever directory gunicorn is started from.
chdir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_exit(server, worker):
    """Stop the worker's refresh thread and close its database connections."""
    app = getattr(worker, "wsgi", None)
    runtime = getattr(app, "extensions", {}).get("frontend") if app is not None else None
    if runtime is not None:
        runtime.close()
