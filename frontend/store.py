"""The front-end's SQLite file: request log, counters, per-instance counts, the plan, claims.

Why SQLite in WAL mode: gunicorn runs several worker processes and the statistics must be one
truth for all of them, survive a restart, and cost tens of microseconds per request. WAL lets
readers (the back-end pulling /stats) run while a worker writes; `synchronous=NORMAL` skips the
fsync per commit (a power cut may lose the last commits, never corrupt the file).

Counters (Prometheus) live in their own table and only ever grow, so /metrics is right whichever
worker answers and is unaffected by the request log's retention. Each connection is private to
one OS thread (gthread workers serve requests on several threads; gevent's greenlets share their thread's).
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from cluster.sqlite_wal import enable_wal

__all__ = ["StatsStore", "RequestRecord", "Increment", "label_text"]

log = logging.getLogger("frontend.store")


def _thread_local() -> Any:
    """A per-OS-thread holder, also under gevent (whose patched `threading.local` is per greenlet:
    one SQLite connection per client connection would leak a file per connection). Greenlets of one
    thread may share a connection: none yields inside a statement or a transaction."""
    try:
        from gevent.monkey import get_original
    except ImportError:
        return threading.local()
    return get_original("threading", "local")()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    zone TEXT,
    latency REAL,
    node TEXT,
    endpoint TEXT,
    status INTEGER NOT NULL,
    duration REAL NOT NULL,
    cached INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE TABLE IF NOT EXISTS model_counts (
    model TEXT PRIMARY KEY, count INTEGER NOT NULL, last_requested REAL
);
CREATE TABLE IF NOT EXISTS instance_counts (
    model TEXT NOT NULL, node TEXT NOT NULL, provisioned REAL NOT NULL,
    count INTEGER NOT NULL, last_requested REAL,
    PRIMARY KEY (model, node, provisioned)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (name, labels)
);
CREATE TABLE IF NOT EXISTS plan (
    id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL, received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    model TEXT PRIMARY KEY, node TEXT NOT NULL, claimed REAL NOT NULL
);
"""


def label_text(labels: dict[str, str] | Iterable[tuple[str, str]]) -> str:
    """Render labels in Prometheus syntax, sorted, values escaped: a stable counter key."""
    items = sorted(labels.items() if isinstance(labels, dict) else labels)
    out = []
    for key, value in items:
        value = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
        out.append(f'{key}="{value}"')
    return ",".join(out)


@dataclass(frozen=True)
class RequestRecord:
    """One request that named a model (the row /stats/requests returns)."""

    time: float
    model: str
    kind: str                      # lookup | proxy
    zone: str | None
    latency: float | None
    node: str | None
    endpoint: str | None
    status: int
    duration: float
    cached: bool = False
    provisioned: float | None = None   # Deployment.created of the instance that served it
    known_model: bool = True           # counted per model only when in the catalog


@dataclass(frozen=True)
class Increment:
    name: str
    labels: str                    # label_text(...)
    value: float = 1.0


class StatsStore:
    """Thread-safe access to the front-end database (one connection per thread)."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0, flush_interval: float = 0.0,
                 max_buffer: int = 2000):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.flush_interval = flush_interval     # seconds; 0 writes every record at once
        self.max_buffer = max_buffer             # records that trigger an early flush
        self._buffer: list[tuple[RequestRecord | None, list[Increment]]] = []
        self._buffer_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._flusher_pid = 0
        self._flush_stop = threading.Event()
        self._flush_wake = threading.Event()
        self._local = _thread_local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        enable_wal(conn, timeout=self.busy_timeout)
        with self._write(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    class _write:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): take the write lock up front."""

        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, exc, tb) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def close(self) -> None:
        """Flush the buffer, stop the writer and close every connection (call once the app stops)."""
        self._flush_stop.set()
        self._flush_wake.set()
        flusher = self._flusher
        if flusher is not None and flusher.is_alive() and flusher is not threading.current_thread():
            flusher.join(timeout=5)
        try:
            self.flush()
        except Exception:
            log.exception("final stats flush failed", extra={"event": "stats_flush_failed"})
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = _thread_local()

    # -- writes ------------------------------------------------------------------------------
    def record(self, *, request: RequestRecord | None, increments: list[Increment]) -> None:
        """Record one request's row, its per-model/instance counts and counter increments.

        With a flush interval the record joins this process's buffer, written by a background
        thread in one transaction per interval; without one it is written at once."""
        if self.flush_interval <= 0:
            self._write_batch([(request, increments)])
            return
        with self._buffer_lock:
            self._buffer.append((request, increments))
            pending = len(self._buffer)
        self._ensure_flusher()
        if pending >= self.max_buffer:
            self._flush_wake.set()

    def flush(self) -> None:
        """Write everything buffered by this process now."""
        with self._flush_lock:
            with self._buffer_lock:
                batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:
                self._write_batch(batch)
            except sqlite3.Error as exc:
                with self._buffer_lock:
                    if len(self._buffer) + len(batch) <= self.max_buffer * 100:
                        self._buffer[:0] = batch          # keep them for the next attempt
                        kept = "kept for the next attempt"
                    else:
                        kept = "dropped"
                log.warning("could not write request statistics", extra={
                    "event": "stats_write_failed", "error": str(exc), "records": len(batch), "outcome": kept})

    def _ensure_flusher(self) -> None:
        thread = self._flusher
        if thread is not None and thread.is_alive() and self._flusher_pid == os.getpid():
            return
        with self._lock:
            if self._flusher is not None and self._flusher.is_alive() and self._flusher_pid == os.getpid():
                return
            self._flusher_pid = os.getpid()
            self._flush_stop = threading.Event()
            self._flush_wake = threading.Event()
            self._flusher = threading.Thread(target=self._flush_loop, name="frontend-stats-writer", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._flush_stop.is_set():
            self._flush_wake.wait(self.flush_interval)
            self._flush_wake.clear()
            try:
                self.flush()
            except Exception:
                log.exception("stats writer failed", extra={"event": "stats_writer_failed"})

    def _write_batch(self, batch: list[tuple[RequestRecord | None, list[Increment]]]) -> None:
        """Write a batch in one transaction, summing counts so each key is written once."""
        rows: list[tuple] = []
        models: dict[str, list] = {}
        instances: dict[tuple, list] = {}
        counters: dict[tuple[str, str], float] = {}
        for r, increments in batch:
            if r is not None:
                rows.append((r.time, r.model, r.kind, r.zone, r.latency, r.node, r.endpoint, r.status,
                             r.duration, int(r.cached)))
                if r.known_model:
                    m = models.setdefault(r.model, [0, r.time])
                    m[0] += 1
                    m[1] = max(m[1], r.time)
                    if r.node is not None and r.provisioned is not None:
                        i = instances.setdefault((r.model, r.node, r.provisioned), [0, r.time])
                        i[0] += 1
                        i[1] = max(i[1], r.time)
            for inc in increments:
                key = (inc.name, inc.labels)
                counters[key] = counters.get(key, 0.0) + inc.value
        conn = self._conn()
        with self._write(conn):
            if rows:
                conn.executemany(
                    "INSERT INTO requests (time, model, kind, zone, latency, node, endpoint, status, duration, cached)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            if models:
                conn.executemany(
                    "INSERT INTO model_counts (model, count, last_requested) VALUES (?, ?, ?)"
                    " ON CONFLICT (model) DO UPDATE SET count = count + excluded.count,"
                    " last_requested = max(coalesce(last_requested, 0), excluded.last_requested)",
                    [(m, c, t) for m, (c, t) in models.items()])
            if instances:
                conn.executemany(
                    "INSERT INTO instance_counts (model, node, provisioned, count, last_requested)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, node, provisioned) DO UPDATE SET"
                    " count = count + excluded.count,"
                    " last_requested = max(coalesce(last_requested, 0), excluded.last_requested)",
                    [(m, n, p, c, t) for (m, n, p), (c, t) in instances.items()])
            if counters:
                conn.executemany(
                    "INSERT INTO counters (name, labels, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
                    [(n, l, v) for (n, l), v in counters.items()])

    def increment(self, name: str, labels: dict[str, str], value: float = 1.0) -> None:
        """Add `value` to one counter."""
        self.record(request=None, increments=[Increment(name, label_text(labels), value)])

    def prune(self, *, older_than: float) -> int:
        """Delete request rows older than `older_than` (unix time); return how many went."""
        conn = self._conn()
        with self._write(conn):
            cur = conn.execute("DELETE FROM requests WHERE time < ?", (older_than,))
            return cur.rowcount

    # -- reads -------------------------------------------------------------------------------
    def requests(self, *, since: float | None = None, limit: int = 1000, after_id: int | None = None) -> list[dict]:
        """Return request rows with time >= since (and id > after_id) in the order they were stored."""
        self.flush()
        sql = ("SELECT id, time, model, kind, zone, latency, node, endpoint, status, duration, cached"
               " FROM requests WHERE 1=1")
        args: list[Any] = []
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        if after_id is not None:
            sql += " AND id > ?"
            args.append(after_id)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        rows = self._conn().execute(sql, args).fetchall()
        return [{"id": i, "time": t, "model": m, "kind": k, "zone": z, "latency": lat, "node": n,
                 "endpoint": e, "status": s, "duration": d, "cached": bool(c)}
                for i, t, m, k, z, lat, n, e, s, d, c in rows]

    def model_counts(self) -> dict[str, tuple[int, float | None]]:
        """Return model -> (requests ever, last requested time)."""
        self.flush()
        rows = self._conn().execute("SELECT model, count, last_requested FROM model_counts").fetchall()
        return {m: (c, t) for m, c, t in rows}

    def instance_counts(self) -> dict[tuple[str, str, float], tuple[int, float | None]]:
        """Return (model, node, provisioned) -> (requests served, last requested time)."""
        self.flush()
        rows = self._conn().execute(
            "SELECT model, node, provisioned, count, last_requested FROM instance_counts").fetchall()
        return {(m, n, p): (c, t) for m, n, p, c, t in rows}

    def counters(self) -> list[tuple[str, str, float]]:
        """Return every counter as (name, labels text, value)."""
        self.flush()
        return self._conn().execute("SELECT name, labels, value FROM counters ORDER BY name, labels").fetchall()

    def request_rows(self) -> int:
        """Return how many request rows are stored."""
        self.flush()
        return self._conn().execute("SELECT count(*) FROM requests").fetchone()[0]

    # -- plan --------------------------------------------------------------------------------
    def put_plan(self, plan: dict, *, received: float) -> None:
        """Store `plan` as the latest one."""
        conn = self._conn()
        with self._write(conn):
            conn.execute("INSERT INTO plan (id, body, received) VALUES (1, ?, ?)"
                         " ON CONFLICT (id) DO UPDATE SET body = excluded.body, received = excluded.received",
                         (json.dumps(plan, sort_keys=True), received))

    def get_plan(self) -> tuple[dict, float] | None:
        """Return (plan, received time) or None when no plan was ever stored."""
        row = self._conn().execute("SELECT body, received FROM plan WHERE id = 1").fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def plan_received(self) -> float | None:
        """Return when the stored plan arrived (cheap change detection)."""
        row = self._conn().execute("SELECT received FROM plan WHERE id = 1").fetchone()
        return row[0] if row else None

    # -- on-demand provisioning claims (one attempt per model across all workers) -------------
    def claim(self, model: str, node: str, *, now: float, ttl: float) -> bool:
        """Claim provisioning `model`; False when another unexpired claim holds it."""
        conn = self._conn()
        with self._write(conn):
            row = conn.execute("SELECT claimed FROM claims WHERE model = ?", (model,)).fetchone()
            if row and row[0] > now - ttl:
                return False
            conn.execute("INSERT INTO claims (model, node, claimed) VALUES (?, ?, ?)"
                         " ON CONFLICT (model) DO UPDATE SET node = excluded.node, claimed = excluded.claimed",
                         (model, node, now))
            return True

    def release(self, model: str) -> None:
        """Drop the provisioning claim on `model`."""
        conn = self._conn()
        with self._write(conn):
            conn.execute("DELETE FROM claims WHERE model = ?", (model,))

    def claims(self) -> dict[str, tuple[str, float]]:
        """Return model -> (node, claimed time) for every claim."""
        return {m: (n, t) for m, n, t in self._conn().execute("SELECT model, node, claimed FROM claims")}
