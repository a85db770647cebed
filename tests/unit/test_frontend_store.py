"""The statistics database on a real SQLite file: rows, counts per instance, counters, plan, claims."""
import multiprocessing
import sqlite3

from frontend.store import Increment, RequestRecord, StatsStore, label_text


def rec(t, model="m", node="n-a", status=200, provisioned=10.0, known=True, zone=None):
    return RequestRecord(time=t, model=model, kind="lookup", zone=zone, latency=0.01, node=node,
                         endpoint="127.0.0.1:1", status=status, duration=0.001, provisioned=provisioned,
                         known_model=known)


def test_rows_counts_and_wal(tmp_path):
    store = StatsStore(tmp_path / "fe.db")
    store.record(request=rec(100.0, zone="z1"), increments=[Increment("c_total", label_text({"a": "1"}))])
    store.record(request=rec(101.0), increments=[Increment("c_total", label_text({"a": "1"}), 2)])
    store.record(request=rec(102.0, provisioned=50.0), increments=[])          # a newer instance
    store.record(request=rec(103.0, node=None, status=503, provisioned=None), increments=[])
    store.record(request=rec(104.0, model="ghost", known=False, status=404), increments=[])
    rows = store.requests()
    assert [r["time"] for r in rows] == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert rows[0]["zone"] == "z1" and rows[0]["latency"] == 0.01 and rows[3]["node"] is None
    assert [r["time"] for r in store.requests(since=102.0, limit=2)] == [102.0, 103.0]
    assert [r["time"] for r in store.requests(after_id=rows[3]["id"])] == [104.0]
    assert store.model_counts() == {"m": (4, 103.0)}
    assert store.instance_counts() == {("m", "n-a", 10.0): (2, 101.0), ("m", "n-a", 50.0): (1, 102.0)}
    assert store.counters() == [("c_total", 'a="1"', 3.0)]
    mode = sqlite3.connect(tmp_path / "fe.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.prune(older_than=102.0) == 2
    assert store.request_rows() == 3
    assert store.model_counts()["m"][0] == 4          # counts do not shrink with retention
    store.close()
    again = StatsStore(tmp_path / "fe.db")             # kept across a restart
    assert again.request_rows() == 3 and again.counters() == [("c_total", 'a="1"', 3.0)]
    again.close()


def test_plan_round_trip(tmp_path):
    store = StatsStore(tmp_path / "fe.db")
    assert store.get_plan() is None and store.plan_received() is None
    store.put_plan({"created": 1, "mode": 1, "solver": "s", "weights": {}}, received=5.0)
    store.put_plan({"created": 2, "mode": 2, "solver": "s", "weights": {"m": {}}}, received=6.0)
    assert store.get_plan() == ({"created": 2, "mode": 2, "solver": "s", "weights": {"m": {}}}, 6.0)
    store.close()


def test_claims_dedupe_and_expire(tmp_path):
    store = StatsStore(tmp_path / "fe.db")
    assert store.claim("m", "n-a", now=100.0, ttl=10.0)
    assert not store.claim("m", "n-b", now=105.0, ttl=10.0)
    assert store.claim("m", "n-b", now=111.0, ttl=10.0)          # expired claim is taken over
    assert store.claims() == {"m": ("n-b", 111.0)}
    store.release("m")
    assert store.claim("m", "n-a", now=112.0, ttl=10.0)
    store.close()


def _hammer(path: str, n: int) -> None:
    store = StatsStore(path)
    for i in range(n):
        store.record(request=rec(float(i)), increments=[Increment("c_total", "")])
    store.close()


def test_counters_are_exact_with_concurrent_processes(tmp_path):
    path = str(tmp_path / "fe.db")
    StatsStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, 200)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    store = StatsStore(path)
    assert store.counters() == [("c_total", "", 600.0)]
    assert store.request_rows() == 600 and store.model_counts()["m"][0] == 600
    store.close()
