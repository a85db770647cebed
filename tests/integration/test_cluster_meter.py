"""ProcessMeter and process identity against real processes (no model server needed)."""
from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from cluster.local_proc import ProcessMeter, is_alive, last_log_line, spawn_server, stop_process

BUSY = "import time\nwhile True: pass"
IDLE = "import time\nwhile True: time.sleep(1)"
# A parent that only sleeps while its child burns CPU: the meter must count the whole tree.
PARENT_OF_BUSY = ("import subprocess, sys, time\n"
                  f"subprocess.Popen([sys.executable, '-c', {BUSY!r}])\n"
                  "while True: time.sleep(1)")


@pytest.fixture
def spawn(tmp_path):
    procs = []

    def start(code: str):
        proc = spawn_server(command=[sys.executable, "-c", code], log_path=tmp_path / f"p{len(procs)}.log",
                            cwd=tmp_path, env={})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc, grace=1.0)


def _usage(meter, groups, *, want, attempts=20):
    usage = meter.measure(groups)
    for _ in range(attempts):
        if want(usage):
            break
        time.sleep(0.5)
        usage = meter.measure(groups)
    return usage


def test_busy_tree_uses_more_cpu_than_idle(spawn):
    busy, idle, parent = spawn(BUSY), spawn(IDLE), spawn(PARENT_OF_BUSY)
    meter = ProcessMeter()
    usage = _usage(meter, {"busy": [busy], "idle": [idle], "tree": [parent]},
                   want=lambda u: u["busy"].cpu > 0.4 and u["tree"].cpu > 0.4)
    assert usage["busy"].cpu > 0.4
    assert usage["tree"].cpu > 0.4, "a busy child must be counted for its parent's group"
    assert usage["idle"].cpu < usage["busy"].cpu
    assert usage["idle"].rss > 1000        # KB: a Python interpreter is resident
    assert meter.measure({"none": []})["none"].cpu == 0.0


def test_identity_survives_pid_reuse_and_stop(spawn, tmp_path):
    proc = spawn(IDLE)
    assert is_alive(proc)
    assert not is_alive((proc[0], proc[1] - 100.0)), "a different create_time is a different process"
    assert not is_alive((999_999_999, 0.0))
    stop_process(proc, grace=1.0)
    assert not is_alive(proc)
    stop_process(proc, grace=1.0)          # idempotent


def test_stop_escalates_to_sigkill(spawn):
    stubborn = spawn("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                     "print('ready', flush=True)\nwhile True: time.sleep(1)")
    time.sleep(0.5)                        # let it install the handler
    stop_process(stubborn, grace=0.5)
    assert not is_alive(stubborn)


def test_spawned_process_runs_in_its_own_session(spawn):
    proc = spawn(IDLE)
    assert os.getsid(proc[0]) == proc[0], "servers must not die with the caller's session"
    assert os.getsid(proc[0]) != os.getsid(0)


def test_last_log_line(tmp_path):
    log = tmp_path / "x.log"
    assert last_log_line(log) == ""
    log.write_text("--- header\nfirst\nError: port in use\n\n")
    assert last_log_line(log) == "Error: port in use"
    failed = '{"level": "error", "message": "cannot load x: bad model", "event": "startup_failed"}'
    log.write_text("--- run 1\n" + failed + "\n--- run 2\n"
                   '{"level": "info", "message": "starting"}\n{"level": "error", "message": "Worker failed"}\n')
    assert last_log_line(log) == "Worker failed", "only the latest run counts"
    with open(log, "a") as fh:
        fh.write("--- run 3\n" + failed + "\n" + '{"message": "Reason: Worker failed to boot."}\n')
    assert last_log_line(log) == "cannot load x: bad model"


def test_stop_takes_the_workers_a_dead_leader_left_in_its_group(spawn, tmp_path):
    """A gunicorn master killed with -9 leaves its workers: stopping it still stops its group."""
    marker = tmp_path / "child.pid"
    leader = spawn("import subprocess, sys, time\n"
                   f"child = subprocess.Popen([sys.executable, '-c', {IDLE!r}])\n"
                   f"open({str(marker)!r}, 'w').write(str(child.pid))\n"
                   "while True: time.sleep(1)")
    for _ in range(100):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.1)
    child = psutil.Process(int(marker.read_text()))
    os.kill(leader[0], signal.SIGKILL)
    for _ in range(100):
        if not is_alive(leader):
            break
        time.sleep(0.05)
    assert not is_alive(leader) and child.is_running()
    stop_process(leader, grace=1.0)
    child_gone = not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert child_gone, "the dead leader's worker must be stopped with its group"
