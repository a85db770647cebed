"""The front-end's SQLite file: request log, counters, per-instance counts, the plan, claims.

Why SQLite in WAL mode: gunicorn runs several worker processes and the statistics must be one
truth for all of them, survive a restart, and cost tens of microseconds per request. WAL lets
readers (the back-end pulling /stats) run while a worker writes; `synchronous=NORMAL` skips the
fsync per commit (a power cut may lose the last commits, never corrupt the file).

Counters (Prometheus) live in their own table and only ever grow, so /metrics is right whichever
worker answers and is unaffected by the request log's retention. Each connection is private to
one thread (gthread workers serve requests on several threads).
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

__all__ = ["StatsStore", "RequestRecord", "Increment", "label_text"]

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

    def __init__(self, path: str | Path, *, busy_timeout: float = 10.0):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
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
        """Close every connection this store opened (call once the app stops)."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    # -- writes ------------------------------------------------------------------------------
    def record(self, *, request: RequestRecord | None, increments: list[Increment]) -> None:
        """Write one request's row, its per-model/instance counts and counter increments at once."""
        conn = self._conn()
        with self._write(conn):
            if request is not None:
                r = request
                conn.execute(
                    "INSERT INTO requests (time, model, kind, zone, latency, node, endpoint, status, duration, cached)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.time, r.model, r.kind, r.zone, r.latency, r.node, r.endpoint, r.status, r.duration,
                     int(r.cached)))
                if r.known_model:
                    conn.execute(
                        "INSERT INTO model_counts (model, count, last_requested) VALUES (?, 1, ?)"
                        " ON CONFLICT (model) DO UPDATE SET count = count + 1,"
                        " last_requested = max(coalesce(last_requested, 0), excluded.last_requested)",
                        (r.model, r.time))
                    if r.node is not None and r.provisioned is not None:
                        conn.execute(
                            "INSERT INTO instance_counts (model, node, provisioned, count, last_requested)"
                            " VALUES (?, ?, ?, 1, ?) ON CONFLICT (model, node, provisioned) DO UPDATE SET"
                            " count = count + 1,"
                            " last_requested = max(coalesce(last_requested, 0), excluded.last_requested)",
                            (r.model, r.node, r.provisioned, r.time))
            for inc in increments:
                conn.execute(
                    "INSERT INTO counters (name, labels, value) VALUES (?, ?, ?)"
                    " ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
                    (inc.name, inc.labels, inc.value))

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
        """Return request rows with time >= since (and id > after_id), oldest first."""
        sql = ("SELECT id, time, model, kind, zone, latency, node, endpoint, status, duration, cached"
               " FROM requests WHERE 1=1")
        args: list[Any] = []
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        if after_id is not None:
            sql += " AND id > ?"
            args.append(after_id)
        sql += " ORDER BY time, id LIMIT ?"
        args.append(limit)
        rows = self._conn().execute(sql, args).fetchall()
        return [{"id": i, "time": t, "model": m, "kind": k, "zone": z, "latency": lat, "node": n,
                 "endpoint": e, "status": s, "duration": d, "cached": bool(c)}
                for i, t, m, k, z, lat, n, e, s, d, c in rows]

    def model_counts(self) -> dict[str, tuple[int, float | None]]:
        """Return model -> (requests ever, last requested time)."""
        rows = self._conn().execute("SELECT model, count, last_requested FROM model_counts").fetchall()
        return {m: (c, t) for m, c, t in rows}

    def instance_counts(self) -> dict[tuple[str, str, float], tuple[int, float | None]]:
        """Return (model, node, provisioned) -> (requests served, last requested time)."""
        rows = self._conn().execute(
            "SELECT model, node, provisioned, count, last_requested FROM instance_counts").fetchall()
        return {(m, n, p): (c, t) for m, n, p, c, t in rows}

    def counters(self) -> list[tuple[str, str, float]]:
        """Return every counter as (name, labels text, value)."""
        return self._conn().execute("SELECT name, labels, value FROM counters ORDER BY name, labels").fetchall()

    def request_rows(self) -> int:
        """Return how many request rows are stored."""
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


def now() -> float:
    """Return the wall-clock time stored in rows (unix seconds)."""
    return time.time()
