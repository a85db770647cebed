"""Run the front-end on a free loopback port from Python: in a thread (Werkzeug) or under gunicorn.

For tests and the benchmarks (a harness, not part of the front-end package). Both bind their socket first (port 0 = the kernel picks a free one),
so there is no window in which another process can take the port; gunicorn inherits the bound
socket as `fd://N`. Both stop cleanly (`stop()` or `with`), gunicorn with its whole process group.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping

import requests
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from cluster.local_proc import stop_group

__all__ = ["ServerThread", "GunicornServer", "wait_healthy"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_healthy(url: str, *, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url`/healthz until it answers 200; raise RuntimeError on timeout or if `proc` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"front-end exited with status {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"front-end at {url} not healthy within {timeout:g} s ({last})")


def _worker_pid(session: requests.Session, url: str) -> int:
    """The pid of the gunicorn worker that answers on `session`'s connection."""
    return session.get(f"{url}/healthz", timeout=10).json()["pid"]


class ServerThread:
    """Serve `app` with Werkzeug's threaded server in a background thread."""

    def __init__(self, app: Flask, *, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self.host = host
        self.port = self._server.server_port
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="frontend-server", daemon=True)

    def start(self) -> "ServerThread":
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the app's background work."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        runtime = self.app.extensions.get("frontend")
        if runtime is not None:
            runtime.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class GunicornServer:
    """Run `gunicorn -c frontend/gunicorn.conf.py 'frontend:create_app()'` on a free port."""

    def __init__(self, settings: Mapping[str, Any], *, host: str = "127.0.0.1", port: int = 0,
                 workers: int = 2, threads: int = 4, env: Mapping[str, str] | None = None,
                 log_path: str | Path | None = None):
        self.settings = dict(settings)
        self.host = host
        self.workers = workers
        self.threads = threads
        self.extra_env = dict(env or {})
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(1024)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="frontend-gunicorn-")
        self.config_path = Path(self._dir.name) / "frontend.json"
        self.log_path = Path(log_path) if log_path else Path(self._dir.name) / "gunicorn.log"
        self.proc: subprocess.Popen | None = None
        self._sessions: dict[int, requests.Session] = {}   # worker pid -> a connection it accepted

    def start(self, *, timeout: float = 60.0) -> "GunicornServer":
        """Start gunicorn and wait until /healthz answers."""
        self.config_path.write_text(json.dumps(self.settings))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FRONTEND_")}
        env.update({"FRONTEND_CONFIG": str(self.config_path), "FRONTEND_WORKERS": str(self.workers),
                    "FRONTEND_THREADS": str(self.threads), "PYTHONUNBUFFERED": "1"})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env.update(self.extra_env)
        fd = self._sock.fileno()
        os.set_inheritable(fd, True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "frontend" / "gunicorn.conf.py"),
                 "--bind", f"fd://{fd}", "frontend:create_app()"],
                cwd=REPO_ROOT, env=env, pass_fds=(fd,), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            wait_healthy(self.url, timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"gunicorn did not start; log tail:\n{self.log_tail()}") from None
        return self

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of gunicorn's log (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def every_worker(self, check: Callable[[requests.Session], object], *, timeout: float = 30.0) -> bool:
        """Tell whether `check(http)` is true in every worker. `http` is a keep-alive session whose
        connection one worker accepted (known by /healthz's pid): requests in a row on fresh
        connections may all reach the same worker, so "n answers in a row agree" proves nothing
        about the others."""
        for pid in sorted(self._bound(timeout)):
            for _ in range(5):
                session = self._bound(timeout)[pid]
                verdict = check(session)
                if _worker_pid(session, self.url) == pid:        # still pid's connection: the verdict is pid's
                    break
                self._sessions.pop(pid, None)          # keep-alive ended mid-check: bind again, ask again
                session.close()
            else:
                raise RuntimeError(f"could not keep a connection to worker {pid}")
            if not verdict:
                return False
        return True

    def _bound(self, timeout: float) -> dict[int, requests.Session]:
        """One session per worker: new connections are opened until every worker has accepted one
        (a session whose connection was replaced since is caught by every_worker's check after use)."""
        deadline = time.monotonic() + timeout
        while len(self._sessions) < self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only workers {sorted(self._sessions)} of {self.workers} accepted a "
                                   f"connection within {timeout:g} s")
            session = requests.Session()
            pid = _worker_pid(session, self.url)
            if pid in self._sessions:
                session.close()
            else:
                self._sessions[pid] = session
        return self._sessions

    def _terminate(self, *, timeout: float = 15.0) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()
        if self.proc is not None:
            stop_group(self.proc, grace=timeout)

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop gunicorn (SIGTERM: graceful; SIGKILL to the group after `timeout`) and free the port."""
        self._terminate(timeout=timeout)
        self._sock.close()

    def restart(self, *, timeout: float = 60.0) -> "GunicornServer":
        """Stop gunicorn and start it again on the same socket (statistics must survive this)."""
        self._terminate()
        return self.start(timeout=timeout)

    def cleanup(self) -> None:
        """Stop and remove the temporary files."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> "GunicornServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()
