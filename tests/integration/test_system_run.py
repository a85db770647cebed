"""`make run` end to end: scripts/run_system.py as a subprocess on its own port, state dir and addresses.

Start it, get a real prediction through the proxy with the printed curl's request, kill the
supervisor with SIGKILL (a crash: its children live on) and start it again (it must adopt the
healthy front-end and model servers and replace the back-end), crash it again and delete its
record of children (it must find them by their state directory), then Ctrl-C (SIGINT) and check
that nothing it started is left running. tests/integration/test_system_faults.py has the rest.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
BANNER_END = "Ctrl-C stops everything."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def servers_on(addresses: set[str]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if "modelserver" in cmd and "--host" in cmd:
            i = cmd.index("--host")
            if i + 1 < len(cmd) and cmd[i + 1] in addresses:
                found.append(proc)
    return found


def family(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc] + proc.children(recursive=True)
    except psutil.Error:
        return []


def gone(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.Error:
            pass
    return True


class Run:
    """One scripts/run_system.py process."""

    def __init__(self, argv: list[str], log: Path):
        self.log = log
        self.handle = open(log, "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FRONTEND_", "BACKEND_", "RUN_"))}
        self.proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "run_system.py"), *argv], cwd=REPO,
                                     env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text()

    def wait_banner(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if BANNER_END in text:
                return text
            if self.proc.poll() is not None:
                pytest.fail(f"run_system exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.2)
        pytest.fail(f"run_system did not come up within {timeout:g} s:\n{self.text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.handle.close()


@pytest.fixture
def system_env(tmp_path, built_models):
    prefix = f"127.{random.randint(2, 254)}.{random.randint(2, 254)}"
    nodes = [{"name": "edge-1", "address": f"{prefix}.2", "memory": 250000, "cpu": 2.0, "class": "small"},
             {"name": "edge-2", "address": f"{prefix}.3", "memory": 800000, "cpu": 4.0, "class": "large"}]
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump({"nodes": nodes}))
    state = tmp_path / "state"
    port = free_port()
    runs: list[Run] = []
    seen: list[psutil.Process] = []
    env = {"argv": ["--port", str(port), "--state-dir", str(state), "--cluster-config", str(config), "--every", "2"],
           "port": port, "state": state, "addresses": {n["address"] for n in nodes}, "runs": runs, "seen": seen,
           "tmp": tmp_path}
    yield env
    # Safety net: whatever a failed test left behind is stopped here.
    for run in runs:
        if run.proc.poll() is None:
            run.proc.send_signal(signal.SIGINT)
            try:
                run.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                pass
        run.close()
    leftovers = [p for p in seen + servers_on(env["addresses"]) if not gone([p])]
    for p in leftovers:
        try:
            p.kill()
        except psutil.Error:
            pass


def start(env) -> Run:
    run = Run(env["argv"], env["tmp"] / f"run-{len(env['runs'])}.log")
    env["runs"].append(run)
    return run


def processes_of(env) -> list[psutil.Process]:
    recorded = json.loads((env["state"] / "run.pids").read_text())
    procs = []
    for name, (pid, _) in recorded.items():
        procs += family(pid)
    procs += servers_on(env["addresses"])
    env["seen"].extend(procs)
    return procs


def split_backend(procs: list[psutil.Process]) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(back-end processes, the others), while they all still run."""
    backend = [p for p in procs if "backend" in p.cmdline()]
    return backend, [p for p in procs if p not in backend]


def assert_taken_over(backend: list[psutil.Process], adoptable: list[psutil.Process]) -> None:
    """The back-end of the crashed run was stopped; its front-end and model servers were adopted."""
    assert backend and gone(backend), "the new start did not stop the back-end the crashed one left"
    assert adoptable and not [p.pid for p in adoptable if gone([p])], "healthy processes were not adopted"


def predict(port: int) -> dict:
    answer = requests.post(f"http://127.0.0.1:{port}/services/half_plus_two/v1/models/half_plus_two:predict",
                           data='{"instances": [1.0, 2.0, 5.0]}', timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_run_system_serves_survives_a_crash_and_stops_cleanly(system_env):
    env = system_env
    port = env["port"]
    first = start(env)
    banner = first.wait_banner()
    curl = next(line.strip() for line in banner.splitlines() if line.strip().startswith("curl -s -X POST"))
    assert f"http://127.0.0.1:{port}/services/half_plus_two/v1/models/half_plus_two:predict" in curl
    assert predict(port) == {"predictions": [2.5, 3.0, 4.5]}
    token = (env["state"] / "token").read_text().strip()
    assert len(token) >= 32 and oct((env["state"] / "token").stat().st_mode & 0o777) == "0o600"
    stats = requests.get(f"http://127.0.0.1:{port}/stats/models", headers={"Authorization": f"Bearer {token}"},
                         timeout=10)
    assert stats.status_code == 200
    deadline = time.monotonic() + 30       # the back-end loop has run at least once
    while not (env["state"] / "backend-report.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    report = json.loads((env["state"] / "backend-report.json").read_text())
    assert report["mode"] == 1 and report["exit_code"] == 0, report["errors"]
    before_crash = processes_of(env)
    assert len(before_crash) >= 4          # supervisor, gunicorn master + workers, back-end, model server

    # A crash: the supervisor dies, its children (own sessions) live on.
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    orphans = [p for p in before_crash if p.pid != first.proc.pid]
    assert not gone(orphans)
    backend, adoptable = split_backend(orphans)

    second = start(env)
    second.wait_banner()
    assert_taken_over(backend, adoptable)
    assert predict(port) == {"predictions": [2.5, 3.0, 4.5]}

    # A second crash, and this time the record of its children is lost too.
    before_crash = processes_of(env)
    second.proc.send_signal(signal.SIGKILL)
    second.proc.wait(timeout=10)
    (env["state"] / "run.pids").unlink()
    orphans = [p for p in before_crash if p.pid != second.proc.pid]
    assert not gone(orphans)
    backend, adoptable = split_backend(orphans)
    third = start(env)
    third.wait_banner()
    assert_taken_over(backend, adoptable)
    assert predict(port) == {"predictions": [2.5, 3.0, 4.5]}
    running = processes_of(env)

    third.proc.send_signal(signal.SIGINT)
    assert third.proc.wait(timeout=60) == 0, third.text()
    assert "stopped." in third.text() and "Traceback" not in third.text()
    deadline = time.monotonic() + 10
    while not gone(running) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(running), [p.pid for p in running if not gone([p])]
    assert servers_on(env["addresses"]) == []
    with pytest.raises(requests.ConnectionError):      # nothing listens on the port any more
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    with socket.socket() as s:             # and a new start can bind it (TIME_WAIT allowed, as the supervisor does)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert not (env["state"] / "run.pids").exists()
