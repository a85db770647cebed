"""Model-server processes of the local cluster: start, identify, probe, stop and measure them.

Why a module of its own: every question the local cluster answers about a process goes through
the (pid, create_time) pair recorded in its SQLite state, because the process that asks (a
front-end worker, the cron back-end, the CLI) is rarely the one that started the server. A pid
alone is not an identity after a crash or a reboot (pids are reused); the pair is.
"""
from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["ProcessId", "spawn_server", "is_alive", "stop_process", "probe_ready", "port_in_use",
           "last_log_line", "ProcessMeter", "Usage"]

ProcessId = tuple[int, float]      # (pid, create_time): stable identity across processes
_CREATE_TIME_SLACK = 0.05          # seconds; psutil derives create_time from boot time + ticks

# Servers this process started. Kept so they can be reaped: a server killed by another process
# (the CLI, a test) stays a zombie until its parent waits for it.
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()


def _reap() -> None:
    with _children_lock:
        for pid, popen in list(_children.items()):
            if popen.poll() is not None:
                del _children[pid]


def spawn_server(*, command: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> ProcessId:
    """Start a detached process (own session, so it outlives the caller) logging to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log.flush()
        popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=cwd, env=env, start_new_session=True, close_fds=True)
    with _children_lock:
        _children[popen.pid] = popen
    try:
        create_time = psutil.Process(popen.pid).create_time()
    except psutil.Error:
        create_time = 0.0     # already gone: is_alive() reports it dead and the caller cleans up
    return popen.pid, create_time


def is_alive(proc: ProcessId) -> bool:
    """Tell whether the process still runs and is the one recorded (not a reused pid, not a zombie)."""
    pid, create_time = proc
    if pid is None or pid <= 0:
        return False
    with _children_lock:
        popen = _children.get(pid)
    if popen is not None and popen.poll() is not None:
        with _children_lock:
            _children.pop(pid, None)
        return False
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            if abs(p.create_time() - create_time) > _CREATE_TIME_SLACK:
                return False
            return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


_PROC_CHILDREN = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()


def _child_pids(pid: int) -> list[int]:
    # Linux lists each thread's children in /proc: a few small reads instead of psutil's scan of
    # every process on the machine, which matters when nodes() is polled every second.
    children: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                children.extend(int(c) for c in fh.read().split())
    except (OSError, ValueError):
        pass
    return children


def _descendants(pid: int) -> list[psutil.Process]:
    """Return the process's descendants (its model-server workers)."""
    if not _PROC_CHILDREN:
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            return []
    found: list[psutil.Process] = []
    queue = _child_pids(pid)
    while queue and len(found) < 1000:
        child = queue.pop()
        try:
            found.append(psutil.Process(child))
        except psutil.Error:
            continue
        queue.extend(_child_pids(child))
    return found


def stop_process(proc: ProcessId, *, grace: float = 5.0, own_session_only: bool = False) -> None:
    """Send SIGTERM to the process, its process group and its descendants, then SIGKILL after
    `grace` seconds. The one process-stop helper (the local cluster, `make run`'s supervisor).
    `own_session_only`: spare the descendants that run in a session of their own (the model
    servers a back-end started: they belong to the cluster, not to the process that started them).

    A leader that already died (a gunicorn master killed with -9) may leave its workers in its
    group: the group is still stopped. Linux does not reuse a pid while a group of that id exists,
    so signalling it is safe once the pid is known not to belong to a newer process."""
    pid = proc[0]
    if not is_alive(proc):
        _reap()
        if pid and pid > 0 and not _reused(proc) and _group_alive(pid):
            _stop_family([], pid, grace)
        return
    try:
        leader = psutil.Process(pid)
    except psutil.Error:
        return
    # Servers run in their own session, so their process group also holds a worker forked after
    # this snapshot (a server stopped while still starting up), which the list alone would orphan.
    try:
        group = pid if os.getpgid(pid) == pid else None
    except OSError:
        group = None
    family = _descendants(pid)
    if own_session_only:
        session = _session(pid)
        family = [p for p in family if _session(p.pid) == session]
    _stop_family([leader] + family, group, grace)


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _reused(proc: ProcessId) -> bool:
    """Tell whether the pid now belongs to another process than the one recorded."""
    try:
        return abs(psutil.Process(proc[0]).create_time() - proc[1]) > _CREATE_TIME_SLACK
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _stop_family(family: list[psutil.Process], group: int | None, grace: float) -> None:
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)       # psutil checks the pid was not reused meanwhile
        except psutil.Error:
            pass
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    remaining = family
    while (remaining or _group_alive(group)) and time.monotonic() < deadline:
        time.sleep(0.05)
        _reap()
        remaining = [p for p in remaining if _running(p)]
    for p in remaining:
        try:
            p.kill()
        except psutil.Error:
            pass
    _signal_group(group, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while (remaining or _group_alive(group)) and time.monotonic() < deadline:
        time.sleep(0.05)
        _reap()
        remaining = [p for p in remaining if _running(p)]


def stop_group(proc: subprocess.Popen, *, grace: float = 15.0) -> None:
    """SIGTERM the process group `proc` leads, SIGKILL what is left after `grace` s, reap `proc`.

    For children started with start_new_session=True, so their own children (gunicorn workers,
    model servers) go with them."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)          # whatever of the group is left
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(group: int | None, sig: int) -> None:
    if group is not None:
        try:
            os.killpg(group, sig)
        except OSError:
            pass


def _group_alive(group: int | None) -> bool:
    """Tell whether a live (non-zombie) process is left in the process group."""
    if group is None:
        return False
    try:
        os.killpg(group, 0)
    except OSError:
        return False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def probe_ready(address: str, port: int, model: str, *, timeout: float = 1.0) -> bool:
    """Return True when the model server answers GET /v1/models/<model> with 200."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", f"/v1/models/{model}")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def port_in_use(address: str, port: int) -> bool:
    """Tell whether something already listens on address:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect((address, port))
            return True
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH):
                return False
            return isinstance(exc, socket.timeout)


def last_log_line(path: Path, *, limit: int = 400) -> str:
    """Return the log's last line, or the server's own start-up error when it logged one.

    The model server logs JSON lines; its `"event": "startup_failed"` line says why better than
    gunicorn's closing "Worker failed to boot", so it wins. JSON lines are shown as their message.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 32768))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("--- ")]
    lines = [line for line in lines[starts[-1] + 1 if starts else 0:] if line]   # this run only
    if not lines:
        return ""
    last = lines[-1]
    for line in reversed(lines):
        record = _json_record(line)
        if record is not None and record.get("event") == "startup_failed":
            last = line
            break
    record = _json_record(last)
    if record is not None and isinstance(record.get("message"), str):
        last = record["message"]
    return " ".join(last.split())[:limit]


def _json_record(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@dataclass(frozen=True)
class Usage:
    """Measured use of a group of processes: CPU in cores, resident memory in KB."""

    cpu: float
    rss: int


class ProcessMeter:
    """Measure CPU (cores) and RSS (KB) of process trees from cpu_times deltas between calls.

    Each call compares a process's CPU time with the previous call's sample, so a caller polling
    every second sees load within about a second. A process seen for the first time is sampled
    over a short window (one sleep for all of them) so the first answer is a rate, not a lifetime
    average. Calls closer together than `min_window` reuse the last rate rather than divide by
    a tiny interval.
    """

    def __init__(self, *, min_window: float = 0.3, first_window: float = 0.15, tree_ttl: float = 1.0):
        self.min_window = min_window
        self.first_window = first_window
        self.tree_ttl = tree_ttl
        self._lock = threading.Lock()
        self._procs: dict[ProcessId, psutil.Process] = {}
        self._samples: dict[ProcessId, tuple[float, float]] = {}   # id -> (cpu seconds, time)
        self._rates: dict[ProcessId, float] = {}
        self._trees: dict[ProcessId, tuple[float, list[ProcessId]]] = {}  # top -> (when, members)

    def measure(self, groups: dict[str, list[ProcessId]]) -> dict[str, Usage]:
        """Return the usage of each named group of top-level processes (their trees included)."""
        with self._lock:
            now = time.time()
            members: dict[str, list[ProcessId]] = {name: [] for name in groups}
            for name, tops in groups.items():
                for top in tops:
                    members[name].extend(self._tree(top, now))
            seen = {m for ms in members.values() for m in ms}
            readings = {m: self._read(m) for m in seen}
            fresh = [m for m, r in readings.items() if r is not None and m not in self._samples]
            if fresh:
                first = {m: (readings[m][0], now) for m in fresh}
                time.sleep(self.first_window)
                now = time.time()
                for m in fresh:
                    readings[m] = self._read(m)
                    if readings[m] is not None:
                        self._samples[m] = first[m]
            result: dict[str, Usage] = {}
            for name, ms in members.items():
                cpu = 0.0
                rss = 0
                for m in ms:
                    reading = readings.get(m)
                    if reading is None:
                        continue
                    cpu += self._rate(m, reading[0], now)
                    rss += reading[1]
                result[name] = Usage(cpu=round(cpu, 3), rss=rss // 1024)
            for table in (self._procs, self._samples, self._rates):
                for key in [k for k in table if k not in seen]:
                    del table[key]
            for key in [k for k in self._trees if k[0] not in {m[0] for m in seen}]:
                del self._trees[key]
            return result

    def _tree(self, top: ProcessId, now: float) -> list[ProcessId]:
        cached = self._trees.get(top)
        if cached is not None and now - cached[0] < self.tree_ttl:
            return cached[1]
        tree = [top]
        for child in _descendants(top[0]):
            try:
                tree.append((child.pid, child.create_time()))
                self._procs.setdefault(tree[-1], child)
            except psutil.Error:
                pass
        self._trees[top] = (now, tree)
        return tree

    def _read(self, key: ProcessId) -> tuple[float, int] | None:
        proc = self._procs.get(key)
        try:
            if proc is None:
                proc = psutil.Process(key[0])
                if abs(proc.create_time() - key[1]) > _CREATE_TIME_SLACK:
                    return None
                self._procs[key] = proc
            with proc.oneshot():
                times = proc.cpu_times()
                rss = proc.memory_info().rss
            return times.user + times.system, rss
        except psutil.Error:
            self._procs.pop(key, None)
            return None

    def _rate(self, key: ProcessId, cpu: float, now: float) -> float:
        previous = self._samples.get(key)
        if previous is None:
            self._samples[key] = (cpu, now)
            return 0.0
        elapsed = now - previous[1]
        if elapsed < self.min_window:
            return self._rates.get(key, 0.0)
        rate = max(0.0, (cpu - previous[0]) / elapsed)
        self._samples[key] = (cpu, now)
        self._rates[key] = rate
        return rate


def python_command(*, host: str, port: int, model: str, base_path: Path) -> list[str]:
    """Return the model-server command line (TF Serving's flag names)."""
    return [sys.executable, "-m", "modelserver", "--host", host, "--rest_api_port", str(port),
            "--model_name", model, "--model_base_path", str(base_path)]
