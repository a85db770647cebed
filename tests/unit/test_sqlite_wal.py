"""enable_wal: processes creating one database together all get it in WAL mode."""

import multiprocessing
import sqlite3

import pytest

from cluster.local_state import StateStore
from frontend.store import StatsStore


def _open(kind, path, start):
    start.wait()
    try:
        (StatsStore if kind == "frontend" else StateStore)(path)
        return "ok"
    except Exception as exc:  # reported back to the test
        return repr(exc)


@pytest.mark.parametrize("kind", ["frontend", "cluster"])
def test_many_processes_create_the_same_new_file(tmp_path, kind):
    # Gunicorn workers starting together on a fresh database (once failed CI with "database is locked").
    ctx = multiprocessing.get_context("fork")
    with ctx.Manager() as manager, ctx.Pool(6) as pool:
        for trial in range(20):
            start = manager.Event()
            path = tmp_path / f"{kind}-{trial}.db"
            results = [pool.apply_async(_open, (kind, path, start)) for _ in range(6)]
            start.set()
            assert [r.get(timeout=60) for r in results] == ["ok"] * 6
            assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
