"""cluster.local_proc.stop_process with real processes: a back-end's model servers outlive it."""
import subprocess
import sys
import time

import psutil

from cluster.local_proc import stop_process

# A parent (its own session, as the supervisor starts the back-end) with two children: one in its
# session (a solver child) and one in a session of its own (a model server the back-end deployed).
PARENT = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
same = subprocess.Popen(sleeper)
own = subprocess.Popen(sleeper, start_new_session=True)
print(same.pid, own.pid, flush=True)
time.sleep(60)
"""


def _family():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    same, own = (psutil.Process(int(pid)) for pid in parent.stdout.readline().split())
    return parent, same, own


def _gone(proc: psutil.Process, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_own_session_only_spares_the_descendants_in_sessions_of_their_own():
    parent, same, own = _family()
    try:
        stop_process((parent.pid, psutil.Process(parent.pid).create_time()), grace=2.0, own_session_only=True)
        parent.wait(timeout=10)
        assert _gone(same) and not _gone(own, timeout=0.5)
    finally:
        own.kill()


def test_by_default_every_descendant_is_stopped():
    parent, same, own = _family()
    stop_process((parent.pid, psutil.Process(parent.pid).create_time()), grace=2.0)
    parent.wait(timeout=10)
    assert _gone(same) and _gone(own)
