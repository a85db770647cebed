"""`make run`: the whole system on this machine, in the foreground, until Ctrl-C.

Starts the embedded local cluster (config/cluster.local.yaml, state in .run/cluster.db), the
front-end under gunicorn on 127.0.0.1:5000 and the back-end every 30 s (Mode 1), deploys one
model so the printed `curl` answers at once, and stops everything on Ctrl-C or SIGTERM: the
back-end loop, gunicorn, and every model server. State, logs and the admin token live in the
state directory (.run/, git-ignored; the token in .run/token).

A crash must never take dispatch down (issue 11), so only Ctrl-C, SIGTERM or SIGHUP of the
supervisor stops everything:

* A child that exits (a crash, `kill -9`) is restarted with exponential back-off: 1 s, doubling
  up to 60 s, back to 1 s once it has run 60 s. The front-end and model servers keep serving
  while the back-end is down; a restarted front-end gets the same listening socket (the
  supervisor holds it, so connections wait in its backlog meanwhile instead of being refused:
  measured, answers up to 2.8 s late, the new master serving 1.9-3.3 s after the kill), and the
  dead master's orphaned workers exit within a second (gunicorn's gevent worker checks its
  parent every second and then exits at once, dropping what it serves at that moment; what is
  left gets SIGTERM at the restart and SIGKILL 10 s later). Each exit is one line on the console
  and in the child's log, with its exit status ("signal 9 (SIGKILL)", "status 1"), and a
  restarted front-end gets a second line once it answers.
* A supervisor that itself crashed (kill -9, a closed terminal) leaves its children running, in
  their own sessions. The next start **adopts** what is healthy instead of stopping it:
  - model servers recorded in the cluster state whose process is alive (same pid and start
    time), whose command line is that row's `python -m modelserver --host ADDRESS
    --rest_api_port PORT --model_name MODEL`, and that answer GET /v1/models/MODEL with 200
    (within 1 s, one retry); the others are stopped (SIGTERM, SIGKILL after 2 s: a hung one
    costs the start ~4 s) and their rows deleted, and unrecorded model servers on the cluster's
    addresses are killed, as before;
  - the front-end, when it uses this state directory, was started with exactly the settings
    this start would give it (workers, cluster, database, token file, policy, cost map), owns
    the listening socket of --host:--port and answers /healthz. Why adopt it rather than
    restart it: a fresh gunicorn needs 0.6-1.1 s to boot and the old one 1.3 s to stop
    gracefully, and between the two nobody listens (connections refused); adopted, it never
    stops serving, so a prediction succeeds as soon as the new supervisor runs (measured: the
    new supervisor's ready line 0.6-1.5 s after its start, no client request lost). The price: it
    is not our child, so it is watched by polling, its exit status is unknown when it dies,
    and its socket went with it, so the supervisor binds the port again, trying every 10 ms
    from the death until the dead master's workers have let it go (what they were serving and
    what was queued on their socket is lost, at most 3 requests under one client thread;
    after that, connections wait in the new backlog).
    Code or settings changed since? Stop with Ctrl-C and start again: that is a clean start.
  - the back-end is always stopped (SIGTERM, SIGKILL after 0.5 s, in the background while the
    rest starts) and started afresh: it does not serve anything, a run killed half-way is safe
    (its lock is an flock, cluster changes are SQLite transactions, a server it was starting is
    cleaned or redone; tests/integration/test_system_faults.py kills one mid-apply), and a
    fresh one gets this start's flags.
  Leftovers are found through .run/run.pids (each child's pid and start time) and, when that
  record is lost, through their state directory (command line and environment). A lock on
  .run/run.lock keeps two supervisors from sharing one state directory.

    .venv/bin/python scripts/run_system.py [--port 5000] [--state-dir .run] [--mode 1] [--every 30]
                                           [--backend-args='--wait-ready --solver highs']
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402

from cluster.local_proc import stop_process  # noqa: E402

INITIAL_MODEL = "half_plus_two"
EXAMPLE_BODY = '{"instances": [1.0, 2.0, 5.0]}'
LABELS = {"frontend": "front-end", "backend": "back-end"}

BACKOFF_FIRST = 1.0      # seconds before the first restart of a child that exited
BACKOFF_MAX = 60.0       # the delay doubles with each further exit, up to this
HEALTHY_AFTER = 60.0     # a child that ran this long before it exited starts again from BACKOFF_FIRST
REMNANT_GRACE = 10.0     # seconds a dead front-end's workers get to finish, after SIGTERM, before SIGKILL
WATCH_INTERVAL = 0.2     # seconds between two looks at the children


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


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop_tree(proc: psutil.Process, *, grace: float, own_session_only: bool = False) -> None:
    """SIGTERM the process, its group and descendants; SIGKILL what stays (cluster.local_proc's stop).
    `own_session_only`: not the descendants in sessions of their own (a back-end's model servers)."""
    try:
        identity = (proc.pid, proc.create_time())
    except psutil.Error:
        return
    stop_process(identity, grace=grace, own_session_only=own_session_only)


def _wait_gone(procs: list[psutil.Process], *, timeout: float) -> list[psutil.Process]:
    """Wait until the processes have exited; return those still running. A zombie counts as gone:
    a process of a crashed run is not our child, and whoever reaps it may take a second."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    return alive


def _group(pgid: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of a process group."""
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info.get("status") != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for p in procs:
        try:
            p.send_signal(sig)         # psutil checks the pid was not reused meanwhile
        except psutil.Error:
            pass


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


def _listeners(host: str, port: int) -> set[int]:
    """Every pid holding a listening socket on host:port (gunicorn's master and its workers)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            and c.laddr.ip in (host, "0.0.0.0", "::") and c.pid}


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


def _status(code) -> str:
    """Describe an exit status the way the console shows it."""
    if isinstance(code, int) and code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    if isinstance(code, int):
        return f"status {code}"
    return "an unknown status (adopted from an earlier run: not our child)"


def _server_command_matches(cmd: list[str], *, address: str, port: int, model: str) -> bool:
    """Tell whether a command line is the model server a cluster-state row records."""
    def value(flag: str) -> str | None:
        return cmd[cmd.index(flag) + 1] if flag in cmd and cmd.index(flag) + 1 < len(cmd) else None
    return ("modelserver" in cmd and value("--host") == address and value("--rest_api_port") == str(port)
            and value("--model_name") == model)


class _Adopted:
    """A child of a crashed supervisor, watched through psutil: Popen's poll/wait, no exit status."""

    def __init__(self, proc: psutil.Process):
        self.proc = proc
        self.pid = proc.pid
        self.returncode: str | None = None

    def poll(self):
        if self.returncode is None and not _running(self.proc):
            self.returncode = "unknown"
        return self.returncode

    def wait(self, timeout: float | None = None):
        if _wait_gone([self.proc], timeout=float("inf") if timeout is None else timeout):
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
        self.returncode = "unknown"
        return self.returncode


@dataclass
class _Watch:
    """What the supervisor knows about one child between restarts."""

    started: float = 0.0             # monotonic time of the last start
    delay: float = BACKOFF_FIRST     # back-off before the next restart
    restarts: int = 0
    died: float | None = None        # monotonic time it was seen dead
    due: float | None = None         # restart at this monotonic time (None: running)
    remnant: list[psutil.Process] | None = None   # what the dead one left (a front-end's workers)
    remnant_kill: float | None = None
    serving_check: bool = False      # front-end restarted: say when it answers again
    bind_failed: bool = False


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
        self.catalog = default_catalog(args.catalog)
        self.url = f"http://{args.host}:{args.port}"
        self.pids_file = self.state / "run.pids"
        self.children: dict[str, subprocess.Popen | _Adopted] = {}
        self.watches: dict[str, _Watch] = {name: _Watch() for name in LABELS}
        self.cluster = None
        self.sock: socket.socket | None = None
        self.token_path: Path | None = None
        self.adopted_servers: list = []
        self._stopping: threading.Thread | None = None     # stops an old back-end (take_over)
        self._sock_lock = threading.Lock()
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

    def token(self) -> Path:
        path = self.state / "token"
        if not path.exists() or not path.read_text().strip():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        self.token_path = path
        return path

    def take_over(self) -> None:
        """Deal with what a crashed earlier run left: adopt a healthy front-end, stop the rest.

        Its model servers are adopted or cleaned later, by open_cluster()."""
        try:
            recorded = json.loads(self.pids_file.read_text())
        except (OSError, ValueError):
            recorded = {}
        found: dict[int, tuple[str, psutil.Process]] = {}
        for name, entry in recorded.items():
            proc = _alive(entry) if name in LABELS else None
            if proc is not None:
                found[proc.pid] = (name, proc)
        for proc in self._ours_by_state():      # run.pids lost or never written: find them by their state
            cmd = proc.info.get("cmdline") or []
            found.setdefault(proc.pid, ("backend" if "backend" in cmd else "frontend", proc))
        adopted = None
        for name, proc in found.values():
            if name == "frontend" and adopted is None and self._adoptable_frontend(proc):
                adopted = proc
        stops, backends = [], []
        for name, proc in found.values():
            if proc is adopted:
                continue
            say(f"stopping the {LABELS[name]} left by an earlier run (pid {proc.pid})")
            (backends if name == "backend" else stops).append(proc)
        accounted = {p.pid for p in stops + backends + ([adopted] if adopted is not None else [])}
        accounted |= {c.pid for p in stops + ([adopted] if adopted is not None else []) for c in _children_of(p)}
        holder = _listener(self.args.host, self.args.port)
        if holder is not None and holder.pid not in accounted and _ours(holder):
            say(f"stopping an orphaned front-end holding port {self.args.port} (pid {holder.pid})")
            stops.append(holder)
        # An old back-end may be half-way through a run (SIGTERM lets it finish, which can take a
        # while): it serves nothing, so it is stopped in the background, SIGKILL after 0.5 s, and
        # waited for only before the new one starts. Its cluster changes are transactions, so
        # adoption may proceed meanwhile. The model servers it started are its children but run in
        # sessions of their own: they are the cluster's, judged by adopt_servers, not stopped with it.
        if backends:
            self._stopping = threading.Thread(target=lambda: [_stop_tree(p, grace=0.5, own_session_only=True)
                                                              for p in backends],
                                              name="stop-old-backend", daemon=True)
            self._stopping.start()
        if stops:
            with ThreadPoolExecutor(max_workers=len(stops)) as pool:
                list(pool.map(lambda proc: _stop_tree(proc, grace=10.0), stops))
        self.pids_file.unlink(missing_ok=True)
        if adopted is not None:
            say(f"adopting the front-end left by an earlier run (pid {adopted.pid}): it keeps serving {self.url}")
            self.children["frontend"] = _Adopted(adopted)
            self.watches["frontend"].started = time.monotonic()
            self._record()

    def _adoptable_frontend(self, proc: psutil.Process) -> bool:
        """A front-end of a crashed run that serves our port with the settings we would give it."""
        try:
            cmd = proc.cmdline()
            env = proc.environ()
            if os.getsid(proc.pid) != proc.pid or "gunicorn" not in cmd or "frontend:create_app()" not in cmd:
                return False
            family = {proc.pid} | {c.pid for c in proc.children(recursive=True)}
        except (psutil.Error, OSError):
            return False
        wanted = {k: v for k, v in self._frontend_env().items() if k.startswith("FRONTEND_")}
        if any(env.get(k) != v for k, v in wanted.items()):
            return False
        listening = _listeners(self.args.host, self.args.port)
        if not listening or not listening <= family:
            return False
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

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

    def _kill_orphan_servers(self, keep: set[int] = frozenset()) -> None:
        """Stop model servers bound to this cluster's addresses that no state file accounts for."""
        addresses = self._addresses()
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if "modelserver" in cmd and "--host" in cmd and proc.pid not in keep:
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
        catalog = load_catalog(self.catalog)
        missing = [s.name for s in catalog if not any((models_dir / s.model_file).glob("*/model.onnx"))]
        if missing:
            say(f"building the shipped models into {models_dir} ...")
            subprocess.run([sys.executable, "-m", "modelserver.build_models", "--out", str(models_dir)],
                           cwd=REPO_ROOT, check=True)
        self.cluster = LocalCluster(self.cluster_config, state_path=self.state / "cluster.db",
                                    models_dir=models_dir, catalog_path=self.catalog)
        self.adopt_servers()

    def adopt_servers(self) -> None:
        """Keep the model servers of a crashed run that are healthy; stop and forget the others."""
        from cluster.local_proc import is_alive, probe_ready

        store = self.cluster.store
        with store.read() as conn:
            rows = store.instances(conn)

        def healthy(row) -> bool:
            if row.proc is None or not is_alive(row.proc):
                return False
            try:
                cmd = psutil.Process(row.pid).cmdline()
            except psutil.Error:
                return False
            if not _server_command_matches(cmd, address=row.address, port=row.port, model=row.model):
                return False
            for attempt in range(2):       # a busy machine may be slow to answer once
                if probe_ready(row.address, row.port, row.model, timeout=1.0):
                    return is_alive(row.proc)
                time.sleep(0.2)
            return False

        verdicts = []
        if rows:
            with ThreadPoolExecutor(max_workers=min(16, len(rows))) as pool:
                verdicts = list(pool.map(healthy, rows))
        keep = [row for row, ok in zip(rows, verdicts) if ok]
        drop = [row for row, ok in zip(rows, verdicts) if not ok]
        with store.write() as conn:
            for row in drop:         # unless someone (an adopted front-end) replaced it meanwhile
                current = store.instance(conn, row.model, row.node)
                if current is not None and current.proc == row.proc:
                    store.delete(conn, row.model, row.node)
            for row in keep:
                store.mark_ready(conn, row.model, row.node, row.proc)
            for node in store.down_nodes(conn):
                store.set_down(conn, node, False)
        stale = [row for row in drop if row.proc is not None]
        limits = getattr(self.cluster, "limits", None)       # the nodes' cgroups, when enforced

        def clean(row) -> None:
            stop_process(row.proc, grace=2.0)
            if limits is not None:
                limits.release(row.node, row.model, row.pid)
        if stale:
            with ThreadPoolExecutor(max_workers=min(16, len(stale))) as pool:
                list(pool.map(clean, stale))
        if rows:
            say(f"model servers left by an earlier run: {len(keep)} healthy, adopted"
                + (f" ({', '.join(f'{r.model} on {r.node}' for r in keep)})" if keep else "")
                + f"; {len(drop)} stale or unhealthy, cleaned")
        self.adopted_servers = keep
        # Unrecorded servers on our addresses are killed; recorded ones (the adopted, and any an
        # adopted front-end started meanwhile) and their workers are kept.
        with store.read() as conn:
            recorded = [row.pid for row in store.instances(conn) if row.pid is not None]
        spared: set[int] = set()
        for pid in recorded:
            try:
                proc = psutil.Process(pid)
                spared |= {pid} | {c.pid for c in proc.children(recursive=True)}
            except psutil.Error:
                continue
        self._kill_orphan_servers(keep=spared)

    def _spawn(self, name: str, command: list[str], *, env: dict[str, str], log: str, pass_fds=()) -> None:
        with open(self.state / log, "ab") as handle:
            handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            handle.flush()
            proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=handle,
                                    stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)
        self.children[name] = proc
        self.watches[name].started = time.monotonic()
        self._record()

    def _note(self, name: str, text: str) -> None:
        """Append one supervisor line to a child's log."""
        try:
            with open(self.state / f"{name}.log", "a") as handle:
                handle.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} run_system: {text}\n")
        except OSError:
            pass

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

    def _frontend_env(self) -> dict[str, str]:
        env = self._env()
        env.update({
            "FRONTEND_WORKERS": str(self.args.workers),
            "FRONTEND_CLUSTER": "local",
            "FRONTEND_CLUSTER_SETTINGS": json.dumps({"config_path": str(self.cluster_config),
                                                     "state_path": str(self.state / "cluster.db"),
                                                     "catalog_path": str(self.catalog)}),
            "FRONTEND_DATABASE": str(self.state / "frontend.db"),
            "FRONTEND_TOKEN_FILE": str(self.state / "token"),
            "FRONTEND_POLICY": "plan",
            "FRONTEND_ALTO_COST_MAP": str(Path(self.args.alto).resolve()) if self.args.alto else "",
        })
        for item in self.args.frontend_setting:
            key, _, value = item.partition("=")
            env[f"FRONTEND_{key.strip().replace('-', '_').upper()}"] = value
        return env

    def _spawn_frontend(self) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        os.set_inheritable(fd, True)
        self._spawn("frontend", [sys.executable, "-m", "gunicorn", "-c", str(REPO_ROOT / "frontend" / "gunicorn.conf.py"),
                                 "--bind", f"fd://{fd}", "frontend:create_app()"],
                    env=self._frontend_env(), log="frontend.log", pass_fds=(fd,))

    def start_frontend(self, token: Path) -> None:
        if "frontend" in self.children:          # adopted from a crashed run: it already serves
            return
        try:
            self.sock = _bind(self.args.host, self.args.port)
        except OSError as exc:
            holder = _listener(self.args.host, self.args.port)
            who = f" by pid {holder.pid} ({holder.name()})" if holder is not None else ""
            raise StartError(f"cannot listen on {self.args.host}:{self.args.port}: {exc.strerror}{who}; "
                             f"choose another with --port") from None
        self._spawn_frontend()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.children["frontend"].poll() is not None:
                raise StartError(f"the front-end exited during start-up; see {self.state / 'frontend.log'}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise StartError(f"the front-end did not answer within 60 s; see {self.state / 'frontend.log'}")

    def deploy_initial(self) -> str:
        ready = [d for d in self.cluster.deployments() if d.model == self.args.initial_model and d.ready]
        if ready:                  # adopted from a crashed run: the front-end already knows it
            return ready[0].node
        nodes = sorted(self.cluster.nodes(), key=lambda n: -n.memory_available)
        node = nodes[0].name
        self.cluster.deploy(self.args.initial_model, node, wait=True, timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                listing = requests.get(f"{self.url}/services", timeout=5).json()
                if any(s.get("model") == self.args.initial_model for s in listing.get("services", [])):
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.1)
        # One worker has seen it; every worker refreshes its view of the cluster within
        # FRONTEND_REFRESH_INTERVAL (1 s), so after that the printed curl works whichever answers.
        time.sleep(1.5)
        return node

    def example_body(self) -> str:
        from backend.loadgen import example_body
        return EXAMPLE_BODY if self.args.initial_model == INITIAL_MODEL else json.dumps(
            example_body(self.args.initial_model))

    def check_prediction(self) -> str:
        """Send the banner's request once; return the answer (proof the whole path works)."""
        model = self.args.initial_model
        url = f"{self.url}/services/{model}/v1/models/{model}:predict"
        deadline = time.monotonic() + 30
        last = ""
        while time.monotonic() < deadline:
            try:
                answer = requests.post(url, data=self.example_body(), timeout=10)
                if answer.status_code == 200:
                    return answer.text.strip()
                last = f"{answer.status_code} {answer.text.strip()}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise StartError(f"the example prediction does not work ({last}); see {self.state / 'frontend.log'}")

    def start_backend(self, token: Path | None = None) -> None:
        a = self.args
        if self._stopping is not None:
            self._stopping.join()
            self._stopping = None
        token = token or self.token_path or self.state / "token"
        command = [sys.executable, "-m", "backend", "--mode", str(a.mode), "--frontend", self.url,
                   "--token-file", str(token), "--every", str(a.every),
                   "--cluster-config", str(self.cluster_config), "--cluster-state", str(self.state / "cluster.db"),
                   "--catalog", str(self.catalog), "--lock", str(self.state / "backend.lock"), "--report", str(self.state / "backend-report.json"),
                   "--alto", str(Path(a.alto).resolve()) if a.alto else "",
                   *shlex.split(a.backend_args or "")]
        self._spawn("backend", command, env=self._env(), log="backend.log")

    # -- watch and restart ----------------------------------------------------------------------
    def watch(self) -> int:
        """Restart whichever child exits, with back-off, until Ctrl-C or SIGTERM (then return 0)."""
        while not self.stop.wait(WATCH_INTERVAL):
            for name in LABELS:
                if self.stop.is_set():
                    break
                try:
                    self._supervise(name, time.monotonic())
                except Exception as exc:  # the supervisor must outlive its own mistakes too
                    say(f"run_system: supervising the {LABELS[name]}: {type(exc).__name__}: {exc}")
        return 0

    def _supervise(self, name: str, now: float) -> None:
        watch = self.watches[name]
        proc = self.children.get(name)
        if watch.remnant is not None and watch.remnant_kill is not None and now >= watch.remnant_kill:
            _signal_all(watch.remnant, signal.SIGKILL)
            watch.remnant = watch.remnant_kill = None
        if watch.due is None:
            if proc is not None and proc.poll() is not None:
                self._exited(name, proc, now)
            elif watch.serving_check:
                self._check_serving(watch, now)
            return
        if now >= watch.due:
            self._restart(name, watch, now)

    def _rebind(self) -> bool:
        """Listen on the port again after an adopted front-end died (its socket went with it)."""
        with self._sock_lock:
            if self.sock is not None:
                return True
            try:
                self.sock = _bind(self.args.host, self.args.port)
                return True
            except OSError:
                return False

    def _rebind_soon(self) -> None:
        """Try to listen every 10 ms until the dead front-end's workers let the port go, so new
        connections are refused for 10 ms at most, then wait in our backlog."""
        def loop() -> None:
            deadline = time.monotonic() + 30
            while not self._rebind() and not self.stop.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
        threading.Thread(target=loop, name="rebind", daemon=True).start()

    def _exited(self, name: str, proc, now: float) -> None:
        watch = self.watches[name]
        ran = now - watch.started
        if name == "backend" and proc.poll() == 2:
            # Exit 2 is the back-end refusing its command line: a restart would refuse it again.
            line = (f"the back-end (pid {proc.pid}) refused its arguments (exit 2; see "
                    f"{self.state / 'backend.log'}); not restarting it, dispatch goes on")
            say(f"run_system: {line}")
            self._note(name, line)
            del self.children[name]
            self._record()
            return
        if ran >= HEALTHY_AFTER:
            watch.delay = BACKOFF_FIRST
        delay = watch.delay
        watch.delay = min(delay * 2, BACKOFF_MAX)
        watch.restarts += 1
        watch.died, watch.due, watch.serving_check = now, now + delay, False
        if watch.remnant is not None:     # what an earlier death left has had its SIGTERM
            _signal_all(watch.remnant, signal.SIGKILL)
        # It led its own session: its group holds what it left. Kept as psutil.Process objects,
        # which refuse to signal a reused pid.
        watch.remnant, watch.remnant_kill = _group(proc.pid) or None, None
        if name == "frontend" and self.sock is None:
            self._rebind_soon()
        line = (f"the {LABELS[name]} (pid {proc.pid}) exited with {_status(proc.poll())} after {ran:.1f} s; "
                f"restarting it in {delay:g} s (restart {watch.restarts}; log {self.state / (name + '.log')})")
        say(f"run_system: {line}")
        self._note(name, line)
        self._record()

    def _restart(self, name: str, watch: _Watch, now: float) -> None:
        if watch.remnant is not None and watch.remnant_kill is None:
            # A dead front-end's workers notice their master is gone and finish on their own;
            # SIGTERM is the reminder, SIGKILL follows REMNANT_GRACE later.
            left = [p for p in watch.remnant if _running(p)]
            if left:
                _signal_all(left, signal.SIGTERM)
                watch.remnant_kill = now + REMNANT_GRACE
            else:
                watch.remnant = None
        if name == "frontend":
            if self.sock is None and not self._rebind():   # an adopted front-end's workers hold it
                if not watch.bind_failed:
                    say(f"run_system: cannot listen on {self.args.host}:{self.args.port} yet; "
                        f"retrying until the dead front-end's workers let it go")
                watch.bind_failed = True
                watch.due = now + WATCH_INTERVAL
                return
            watch.bind_failed = False
            self._spawn_frontend()
            watch.serving_check = True
        else:
            self.start_backend()
        watch.due = None
        self._note(name, f"restarted the {LABELS[name]} (pid {self.children[name].pid}, restart {watch.restarts})")

    def _check_serving(self, watch: _Watch, now: float) -> None:
        """Say once when a restarted front-end answers (not while the dead one's workers still could)."""
        if watch.remnant is not None:
            if any(_running(p) for p in watch.remnant):
                return
            watch.remnant = watch.remnant_kill = None
        try:
            if requests.get(f"{self.url}/healthz", timeout=0.5).status_code != 200:
                return
        except requests.RequestException:
            return
        watch.serving_check = False
        since = f", {now - watch.died:.1f} s after the old one exited" if watch.died is not None else ""
        say(f"run_system: the front-end is serving again (pid {self.children['frontend'].pid}){since}")

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
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for watch in self.watches.values():      # workers of a front-end that died and were not done yet
            if watch.remnant is not None:
                _signal_all(watch.remnant, signal.SIGKILL)
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


def _children_of(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def default_catalog(chosen: str | os.PathLike = "") -> Path:
    """The catalog the whole system uses: `chosen`, else this host's measured copy, else the shipped one.

    `make setup` profiles the models on this host into build/models.yaml (cluster/profile.py); the
    shipped config/models.yaml holds the reference machine's figures."""
    if chosen:
        path = Path(chosen).expanduser()
        return path if path.is_absolute() else (Path.cwd() / path).resolve()
    from cluster.catalog import host_catalog

    return host_catalog()


def catalog_note(path: Path) -> str:
    """Where the catalog's figures come from, from its `measured:` notes."""
    try:
        models = (yaml.safe_load(path.read_text()) or {}).get("models") or []
    except (OSError, yaml.YAMLError):
        return "unreadable"
    notes = {(m["measured"].get("host"), m["measured"].get("date")) for m in models
             if isinstance(m, dict) and isinstance(m.get("measured"), dict)}
    if not notes:
        return "declared figures, not measured"
    return "measured on " + ", ".join(f"{host} {date}" for host, date in sorted(notes, key=str))


def banner(system: System, node: str | None, token: Path, answer: str | None) -> str:
    url = system.url
    model = system.args.initial_model or INITIAL_MODEL
    curl = (f"curl -s -X POST {url}/services/{model}/v1/models/{model}:predict "
            f"-d '{system.example_body() if system.args.initial_model else EXAMPLE_BODY}'")
    backend = ("none (--no-backend: nothing re-plans)" if system.args.no_backend else
               f"Mode {system.args.mode} every {system.args.every:g} s   (log {system.state / 'backend.log'}, "
               f"last report {system.state / 'backend-report.json'})")
    limits = getattr(system.cluster, "limits_status", "unknown")
    return "\n".join([
        "",
        f"The system is running (state, logs and token in {system.state}).",
        f"  front-end:  {url}   (gunicorn, {system.args.workers} workers; log {system.state / 'frontend.log'})",
        f"  back-end:   {backend}",
        f"  cluster:    {system.cluster_config} ({len(system.cluster.nodes())} nodes); "
        + (f"{model} deployed on {node}" if node else "nothing deployed yet"),
        f"  node limits: {limits}",
        f"  catalog:    {system.catalog} ({catalog_note(system.catalog)})",
        "",
        "Get a prediction through the proxy" + ("" if answer else " (the first call provisions the model: "
                                                "503 with Retry-After until it is ready)") + ":",
        f"  {curl}",
        *([f"  -> {answer}"] if answer else []),
        "Ask where a model runs (add -H 'X-Client-Zone: zone-1' to say where you are):",
        f"  curl -s {url}/services/{model}",
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
    p.add_argument("--catalog", default=os.environ.get("RUN_CATALOG", ""), metavar="FILE",
                   help="model catalog for every component (default: build/models.yaml, this host's figures "
                        "measured by `make setup`, else config/models.yaml)")
    p.add_argument("--mode", type=int, choices=(1, 2), default=1, help="back-end mode (default 1)")
    p.add_argument("--every", type=float, default=30.0, help="seconds between back-end runs (default 30)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    p.add_argument("--backend-args", default="", metavar="'FLAGS'",
                   help="more flags for `python -m backend`, one string, e.g. --backend-args='--wait-ready'")
    p.add_argument("--no-backend", action="store_true", help="run no back-end (nothing re-plans)")
    p.add_argument("--frontend-setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a front-end setting (frontend/config.py), e.g. policy=nearest; repeatable")
    p.add_argument("--alto", default=str(REPO_ROOT / "config" / "alto-costmap.json"), metavar="FILE",
                   help="ALTO cost map the front-end and back-end are told (default config/alto-costmap.json)")
    p.add_argument("--initial-model", default=INITIAL_MODEL, metavar="NAME",
                   help=f"model deployed at start and used for the example prediction (default {INITIAL_MODEL}; "
                        "'' for none)")
    args = p.parse_args(argv)
    for item in args.frontend_setting:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip() or not key.replace("_", "").replace("-", "").isalnum():
            p.error(f"--frontend-setting: expected KEY=VALUE, got {item!r}")
    if args.alto and not Path(args.alto).is_file():
        p.error(f"--alto: {args.alto} is not a file")
    if args.catalog and not Path(args.catalog).is_file():
        p.error(f"--catalog: {args.catalog} is not a file")
    if not 1 <= args.port <= 65535 or args.every <= 0 or args.workers < 1:
        p.error("--port must be 1..65535, --every > 0 and --workers >= 1")
    try:
        shlex.split(args.backend_args)
    except ValueError as exc:
        p.error(f"--backend-args: {exc}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start (or take over) everything, restart what exits, stop everything on Ctrl-C or SIGTERM."""
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
        token = system.token()
        system.take_over()
        system.open_cluster()
        system.start_frontend(token)
        node = answer = None
        if args.initial_model:
            node = system.deploy_initial()
            answer = system.check_prediction()
        if not args.no_backend:
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
