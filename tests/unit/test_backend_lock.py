"""The run lock: one holder at a time across processes, released when the holder dies."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from backend.lock import RunLock

HOLD = textwrap.dedent("""
    import sys, time
    from backend.lock import RunLock
    lock = RunLock(sys.argv[1])
    assert lock.acquire()
    print("held", flush=True)
    time.sleep(60)
""")


def test_second_holder_is_refused_in_the_same_process(tmp_path):
    path = tmp_path / "state" / "backend.lock"
    first, second = RunLock(path), RunLock(path)
    assert first.acquire()
    assert not second.acquire()
    assert "pid" in second.holder()
    first.release()
    assert second.acquire()
    second.release()


def test_lock_held_by_another_process_and_freed_when_it_dies(tmp_path):
    path = tmp_path / "backend.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout.readline().strip() == "held"
        lock = RunLock(path)
        assert not lock.acquire()
        assert f"pid {proc.pid}" in lock.holder()
    finally:
        proc.kill()
        proc.wait(timeout=10)
    lock = RunLock(path)
    assert lock.acquire()       # the kernel dropped the dead holder's lock: no stale lock
    lock.release()
