"""`make run`: the whole system on this machine, in the foreground, until Ctrl-C.

Starts the embedded local cluster (config/cluster.local.yaml, state in .run/cluster.db), the
front-end under gunicorn on 127.0.0.1:5000 and the back-end every 30 s (Mode 1), deploys one
model so the printed `curl` answers at once, and stops everything on Ctrl-C or SIGTERM: the
back-end loop, gunicorn, and every model server. State, logs and the admin token live in the
state directory (.run/, git-ignored; the token in .run/token).

Why a supervisor of its own: a crash (kill -9, a closed terminal) must not stop the next start.
Every child runs in its own session and is recorded as (pid, start time) in .run/run.pids; the
next start stops whatever of that list is still alive, any front-end of ours still holding the
port, and model servers on the cluster's addresses, before starting afresh. A lock on
.run/run.lock keeps two supervisors from sharing one state directory.

    .venv/bin/python scripts/run_system.py [--port 5000] [--state-dir .run] [--mode 1] [--every 30]
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402

INITIAL_MODEL = "half_plus_two"
EXAMPLE_BODY = '{"instances": [1.0, 2.0, 5.0]}'


class StartError(Exception):
    """The system cannot start; the message is the one line the user sees."""


def say(text: str) -> None:
    print(text, flush=True)


# ---- processes ---------------------------------------------------------------------------------

def _identity(pid: int) -> list:
    try:
        return [pid, psutil.Process(pid).create_time()]
    except psutil.Error:
        return [pid, 0.0]


def _alive(entry) -> psutil.Process | None:
    try:
        pid, created = int(entry[0]), float(entry[1])
        proc = psutil.Process(pid)
        if abs(proc.create_time() - created) > 0.05 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, TypeError, ValueError, IndexError):
        return None


def _stop_tree(proc: psutil.Process, *, grace: float) -> None:
    """SIGTERM the process's group (it leads its own session) and descendants; SIGKILL what stays."""
    try:
        family = [proc] + proc.children(recursive=True)
    except psutil.Error:
        family = [proc]
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass
    for p in family:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def _listener(host: str, port: int) -> psutil.Process | None:
    """Return the process listening on host:port, when this user may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and \
                c.laddr.ip in (host, "0.0.0.0", "::") and c.pid:
            try:
                return psutil.Process(c.pid)
            except psutil.Error:
                return None
    return None


def _ours(proc: psutil.Process) -> bool:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return "frontend:create_app" in cmd or "-m backend" in cmd


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    return sock


# ---- the supervisor ----------------------------------------------------------------------------

class System:
    """The running system: its children, its cluster and how to stop them."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.state = Path(args.state_dir).expanduser()
        if not self.state.is_absolute():
            self.state = REPO_ROOT / self.state
        self.cluster_config = Path(args.cluster_config)
        if not self.cluster_config.is_absolute():
            self.cluster_config = REPO_ROOT / self.cluster_config
        self.url = f"http://{args.host}:{args.port}"
        self.pids_file = self.state / "run.pids"
        self.children: dict[str, subprocess.Popen] = {}
        self.cluster = None
        self.sock: socket.socket | None = None
        self._lock_fd: int | None = None
        self.stop = threading.Event()

    # -- start ----------------------------------------------------------------------------------
    def lock(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartError(f"another run_system is already using {self.state} (stop it with Ctrl-C first)")
        self._lock_fd = fd

    def clean_leftovers(self) -> None:
        """Stop what a crashed earlier run left: recorded children, our front-end on the port, servers."""
        try:
            recorded = json.loads(self.pids_file.read_text())
        except (OSError, ValueError):
            recorded = {}
        for name, entry in recorded.items():
            proc = _alive(entry)
            if proc is not None:
                say(f"stopping {name} left by an earlier run (pid {proc.pid})")
                _stop_tree(proc, grace=10)
        self.pids_file.unlink(missing_ok=True)
        for proc in self._ours_by_state():      # run.pids lost or never written: find them by their state
            say(f"stopping {proc.name()} left by an earlier run (pid {proc.pid})")
            _stop_tree(proc, grace=10)
        holder = _listener(self.args.host, self.args.port)
        if holder is not None and _ours(holder):
            say(f"stopping an orphaned front-end holding port {self.args.port} (pid {holder.pid})")
            _stop_tree(holder, grace=10)
        self._kill_orphan_servers()

    def _ours_by_state(self) -> list[psutil.Process]:
        """Front-ends and back-ends of ours that use this state directory (session leaders only)."""
        database = str(self.state / "frontend.db")
        lock = str(self.state / "backend.lock")
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info.get("cmdline") or []
            try:
                if proc.pid == os.getpid() or os.getsid(proc.pid) != proc.pid:
                    continue
                if "-m" in cmd and "backend" in cmd and "--lock" in cmd and lock in cmd:
                    found.append(proc)
                elif "frontend:create_app()" in cmd and proc.environ().get("FRONTEND_DATABASE") == database:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def _addresses(self) -> set[str]:
        try:
            doc = yaml.safe_load(self.cluster_config.read_text())
            return {str(n["address"]) for n in doc.get("nodes", [])}
        except (OSError, yaml.YAMLError, AttributeError, KeyError, TypeError):
            return set()

    def _kill_orphan_servers(self) -> None:
        """Stop model servers bound to this cluster's addresses that no state file accounts for."""
        addresses = self._addresses()
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if "modelserver" in cmd and "--host" in cmd:
                i = cmd.index("--host")
                if i + 1 < len(cmd) and cmd[i + 1] in addresses:
                    try:
                        proc.kill()
                    except psutil.Error:
                        pass

    def open_cluster(self) -> None:
        from cluster.catalog import load_catalog
        from cluster.local import LocalCluster

        models_dir = REPO_ROOT / "build" / "models"
        catalog = load_catalog(REPO_ROOT / "config" / "models.yaml")
        missing = [s.name for s in catalog if not any((models_dir / s.model_file).glob("*/model.onnx"))]
        if missing:
            say(f"building the shipped models into {models_dir} ...")
            subprocess.run([sys.executable, "-m", "modelserver.build_models", "--out", str(models_dir)],
                           cwd=REPO_ROOT, check=True)
        self.cluster = LocalCluster(self.cluster_config, state_path=self.state / "cluster.db",
                                    models_dir=models_dir)
        self.cluster.reset()       # servers of an earlier run that crashed

    def token(self) -> Path:
        path = self.state / "token"
        if not path.exists() or not path.read_text().strip():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        return path

    def _spawn(self, name: str, command: list[str], *, env: dict[str, str], log: str, pass_fds=()) -> None:
        with open(self.state / log, "ab") as handle:
            handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            handle.flush()
            proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=handle,
                                    stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)
        self.children[name] = proc
        self._record()

    def _record(self) -> None:
        doc = {"supervisor": _identity(os.getpid())}
        doc.update({name: _identity(p.pid) for name, p in self.children.items() if p.poll() is None})
        tmp = self.pids_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.pids_file)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FRONTEND_", "BACKEND_"))}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        return env

    def start_frontend(self, token: Path) -> None:
        try:
            self.sock = _bind(self.args.host, self.args.port)
        except OSError as exc:
            holder = _listener(self.args.host, self.args.port)
            who = f" by pid {holder.pid} ({holder.name()})" if holder is not None else ""
            raise StartError(f"cannot listen on {self.args.host}:{self.args.port}: {exc.strerror}{who}; "
                             f"choose another with --port") from None
        env = self._env()
        env.update({
            "FRONTEND_WORKERS": str(self.args.workers),
            "FRONTEND_CLUSTER": "local",
            "FRONTEND_CLUSTER_SETTINGS": json.dumps({"config_path": str(self.cluster_config),
                                                     "state_path": str(self.state / "cluster.db")}),
            "FRONTEND_DATABASE": str(self.state / "frontend.db"),
            "FRONTEND_TOKEN_FILE": str(token),
            "FRONTEND_POLICY": "plan",
            "FRONTEND_ALTO_COST_MAP": str(REPO_ROOT / "config" / "alto-costmap.json"),
        })
        fd = self.sock.fileno()
        os.set_inheritable(fd, True)
        self._spawn("frontend", [sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "frontend" / "gunicorn.conf.py"),
                                 "--bind", f"fd://{fd}", "frontend:create_app()"],
                    env=env, log="frontend.log", pass_fds=(fd,))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.children["frontend"].poll() is not None:
                raise StartError(f"the front-end exited during start-up; see {self.state / 'frontend.log'}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise StartError(f"the front-end did not answer within 60 s; see {self.state / 'frontend.log'}")

    def deploy_initial(self) -> str:
        nodes = sorted(self.cluster.nodes(), key=lambda n: -n.memory_available)
        node = nodes[0].name
        self.cluster.deploy(INITIAL_MODEL, node, wait=True, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                listing = requests.get(f"{self.url}/services", timeout=5).json()
                if any(s.get("model") == INITIAL_MODEL for s in listing.get("services", [])):
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        # One worker has seen it; every worker refreshes its view of the cluster within
        # FRONTEND_REFRESH_INTERVAL (1 s), so after that the printed curl works whichever answers.
        time.sleep(1.5)
        return node

    def check_prediction(self) -> str:
        """Send the banner's request once; return the answer (proof the whole path works)."""
        url = f"{self.url}/services/{INITIAL_MODEL}/v1/models/{INITIAL_MODEL}:predict"
        deadline = time.monotonic() + 30
        last = ""
        while time.monotonic() < deadline:
            try:
                answer = requests.post(url, data=EXAMPLE_BODY, timeout=10)
                if answer.status_code == 200:
                    return answer.text.strip()
                last = f"{answer.status_code} {answer.text.strip()}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.5)
        raise StartError(f"the example prediction does not work ({last}); see {self.state / 'frontend.log'}")

    def start_backend(self, token: Path) -> None:
        a = self.args
        command = [sys.executable, "-m", "backend", "--mode", str(a.mode), "--frontend", self.url,
                   "--token-file", str(token), "--every", str(a.every),
                   "--cluster-config", str(self.cluster_config), "--cluster-state", str(self.state / "cluster.db"),
                   "--lock", str(self.state / "backend.lock"), "--report", str(self.state / "backend-report.json")]
        self._spawn("backend", command, env=self._env(), log="backend.log")

    # -- stop -----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        for name in ("backend", "frontend"):
            proc = self.children.get(name)
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for name in ("backend", "frontend"):
            proc = self.children.get(name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=5)
        if self.cluster is not None:
            try:
                self.cluster.reset()
            except Exception as exc:  # keep stopping the rest
                say(f"could not stop every model server: {exc}")
        self._kill_orphan_servers()
        if self.sock is not None:
            self.sock.close()
        self.pids_file.unlink(missing_ok=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    def watch(self) -> int:
        while not self.stop.wait(0.5):
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    say(f"the {name} exited with status {proc.returncode}; see {self.state / (name + '.log')}")
                    return 1
        return 0


def banner(system: System, node: str, token: Path, answer: str) -> str:
    url = system.url
    curl = (f"curl -s -X POST {url}/services/{INITIAL_MODEL}/v1/models/{INITIAL_MODEL}:predict "
            f"-d '{EXAMPLE_BODY}'")
    return "\n".join([
        "",
        f"The system is running (state, logs and token in {system.state}).",
        f"  front-end:  {url}   (gunicorn, {system.args.workers} workers; log {system.state / 'frontend.log'})",
        f"  back-end:   Mode {system.args.mode} every {system.args.every:g} s   (log {system.state / 'backend.log'}, "
        f"last report {system.state / 'backend-report.json'})",
        f"  cluster:    {system.cluster_config} ({len(system.cluster.nodes())} nodes); "
        f"{INITIAL_MODEL} deployed on {node}",
        "",
        "Get a prediction through the proxy:",
        f"  {curl}",
        f"  -> {answer}",
        "Ask where a model runs (add -H 'X-Client-Zone: zone-1' -H 'X-Client-Latency: 0.02' to report where you are):",
        f"  curl -s {url}/services/{INITIAL_MODEL}",
        "Statistics (admin token):",
        f"  curl -s -H \"Authorization: Bearer $(cat {token})\" {url}/stats/models",
        "Generate load from several zones and watch the back-end adapt:",
        f"  .venv/bin/python -m backend.loadgen --frontend {url} --zones zone-1,zone-2,zone-3 "
        f"--popularity half_plus_two=0.5,half_plus_three=0.3,digits_logreg=0.2 --rate 5 --duration 60",
        "",
        "Ctrl-C stops everything.",
        "",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/run_system.py", description="Run the whole system until Ctrl-C.")
    p.add_argument("--host", default=os.environ.get("RUN_HOST", "127.0.0.1"), help="front-end address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("RUN_PORT", "5000")), help="front-end port (default 5000)")
    p.add_argument("--state-dir", default=os.environ.get("RUN_STATE_DIR", ".run"),
                   help="state, logs and token (default .run)")
    p.add_argument("--cluster-config", default=os.environ.get("RUN_CLUSTER_CONFIG", "config/cluster.local.yaml"),
                   help="local cluster description (default config/cluster.local.yaml)")
    p.add_argument("--mode", type=int, choices=(1, 2), default=1, help="back-end mode (default 1)")
    p.add_argument("--every", type=float, default=30.0, help="seconds between back-end runs (default 30)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535 or args.every <= 0 or args.workers < 1:
        p.error("--port must be 1..65535, --every > 0 and --workers >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start everything, wait for Ctrl-C or SIGTERM, stop everything."""
    args = parse_args(argv)
    system = System(args)

    def on_signal(signum, frame):
        system.stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        system.lock()
    except StartError as exc:
        print(f"run_system: {exc}", file=sys.stderr)
        return 1
    code = 0
    try:
        system.clean_leftovers()
        system.open_cluster()
        token = system.token()
        system.start_frontend(token)
        node = system.deploy_initial()
        answer = system.check_prediction()
        system.start_backend(token)
        if not system.stop.is_set():
            say(banner(system, node, token, answer))
            code = system.watch()
    except StartError as exc:
        print(f"run_system: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:  # one line, then stop whatever was started
        print(f"run_system: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    finally:
        say("stopping: back-end, front-end, model servers ...")
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        system.shutdown()
        say("stopped.")
    return code


if __name__ == "__main__":
    sys.exit(main())
