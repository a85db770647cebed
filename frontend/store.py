"""The front-end's SQLite file: request log, counters, per-instance counts, the plan, claims.

Why SQLite in WAL mode: gunicorn runs several worker processes and the statistics must be one
truth for all of them, survive a restart, and cost tens of microseconds per request. WAL lets
readers (the back-end pulling /stats) run while a worker writes; `synchronous=NORMAL` skips the
fsync per commit (a power cut may lose the last commits, never corrupt the file).

Counters (Prometheus) live in their own table and only ever grow, so /metrics is right whichever
worker answers and is unaffected by the request log's retention.

Aggregates (read by GET /stats/summary) are kept at write time, in the same transaction as the
request rows, so a collection reads O(groups x buckets) rows instead of every request:
`agg_requests` has one row per (10 s bucket, model, zone, node, kind) with the count, 2xx count,
client-latency count/sum, served-duration count/sum and last request time; `agg_durations` one
row per (60 s bucket, model, node, kind, duration bin) with the count and sum of the durations of
2xx answers not served from the prediction cache; `agg_rtt` one row per (10 s bucket, client zone,
reported node) with the count, sum and sum of squares of the network round trips clients reported
(X-Client-RTT / X-Client-RTT-Node: the back-end's RTT table is built from them); `agg_arrivals` one
row per (whole unix second, catalog model) with the requests of that second (the variance of these
per-second counts is the arrivals' burstiness the back-end's queueing model needs); `agg_pace` one row
per (10 s bucket, model, node) with the count and sum of the back-to-back paces (seconds of a node's
work per answer) reported for it and the same of its idle-start ones (the time of a request that found
the node idle: `idle_count`, `idle_sum`), so the back-end plans with the measured figures instead of
the profile's. The bins are fixed and log-spaced (16 per octave from 1 us): a quantile is reported
as the mean of the bin holding it, within 4.5 % (2**(1/16) - 1) of the exact value. The histogram leaves the client zone
out (a model server's time does not depend on it) and uses coarser buckets: its row count, not the
request rate, is what a summary costs. Pruning drops whole buckets (and seconds) older than the retention.

What a dying worker loses: each worker buffers its records for `flush_interval` seconds (default
0.05) and writes them in one transaction. A graceful exit (SIGTERM, SIGINT/SIGQUIT, the arbiter's
timeout abort, `max_requests` recycling: gunicorn's `worker_exit` hook, and an `atexit` hook as a
second line) writes the buffer, and a record arriving after `close()` is written at once, so nothing
answered is lost. A SIGKILL (or OOM kill, power cut) loses that worker's records not yet committed:
the requests it answered during the last `flush_interval` plus the time of its last write or two
(about 0.05 s + a few ms at the default: ~50 rows at 1,000 req/s per worker), and never more than
what arrives in that time, however large `max_buffer`; rows of other workers are unaffected. Each connection is private to
one OS thread (gthread workers serve requests on several threads; gevent's greenlets share their thread's).
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import sqlite3
import threading
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from common.sqlite_wal import enable_wal

__all__ = ["StatsStore", "RequestRecord", "Increment", "label_text", "BUCKET_SECONDS", "HISTOGRAM_SECONDS",
           "BINS_PER_OCTAVE",
           "DURATION_MIN", "DURATION_BINS", "RELATIVE_ERROR", "duration_bin", "bin_quantile"]

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
    cached INTEGER NOT NULL DEFAULT 0,
    rtt REAL,
    rtt_node TEXT
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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY, value TEXT NOT NULL
);
"""

# Aggregates of the request rows for /stats/summary ('' stands for a missing zone or node: a zone
# hint is never empty and node names are not). Created, and filled from the existing rows, once.
_AGG_SCHEMA = ["""
CREATE TABLE agg_requests (
    bucket INTEGER NOT NULL, model TEXT NOT NULL, zone TEXT NOT NULL, node TEXT NOT NULL, kind TEXT NOT NULL,
    count INTEGER NOT NULL, ok INTEGER NOT NULL, latency_count INTEGER NOT NULL, latency_sum REAL NOT NULL,
    duration_count INTEGER NOT NULL, duration_sum REAL NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (bucket, model, zone, node, kind)
) WITHOUT ROWID""", """
CREATE TABLE agg_durations (
    bucket INTEGER NOT NULL, model TEXT NOT NULL, node TEXT NOT NULL, kind TEXT NOT NULL, bin INTEGER NOT NULL,
    count INTEGER NOT NULL, sum REAL NOT NULL,
    PRIMARY KEY (bucket, model, node, kind, bin)
) WITHOUT ROWID""", "DROP TABLE IF EXISTS request_buckets"]      # an earlier draft's table
# Client round-trip reports per (10 s bucket, zone, reported node); created (and filled from the rows,
# which hold reports only once a database has the rtt columns) when missing.
_RTT_SCHEMA = """
CREATE TABLE agg_rtt (
    bucket INTEGER NOT NULL, zone TEXT NOT NULL, node TEXT NOT NULL,
    count INTEGER NOT NULL, sum REAL NOT NULL, sumsq REAL NOT NULL,
    PRIMARY KEY (bucket, zone, node)
) WITHOUT ROWID"""
_RTT_UPSERT = (
    "INSERT INTO agg_rtt (bucket, zone, node, count, sum, sumsq) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (bucket, zone, node) DO UPDATE SET count = count + excluded.count, sum = sum + excluded.sum,"
    " sumsq = sumsq + excluded.sumsq")
# Requests per (whole unix second, catalog model): GET /stats/summary's `arrivals` (per-second count
# and sum of squares, whence the index of dispersion). Created (and filled from the rows) when missing.
_ARRIVALS_SCHEMA = """
CREATE TABLE agg_arrivals (
    second INTEGER NOT NULL, model TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (second, model)
) WITHOUT ROWID"""
_ARRIVALS_UPSERT = ("INSERT INTO agg_arrivals (second, model, count) VALUES (?, ?, ?)"
                    " ON CONFLICT (second, model) DO UPDATE SET count = count + excluded.count")
# Pace reports per (10 s bucket, model, node): GET /stats/summary's `pace` (back to back: count, sum)
# and `pace_idle` (idle start: idle_count, idle_sum). Created when missing; the rows never held the
# reports, so there is nothing to fill it from.
_PACE_SCHEMA = """
CREATE TABLE IF NOT EXISTS agg_pace (
    bucket INTEGER NOT NULL, model TEXT NOT NULL, node TEXT NOT NULL,
    count INTEGER NOT NULL, sum REAL NOT NULL,
    idle_count INTEGER NOT NULL DEFAULT 0, idle_sum REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, model, node)
) WITHOUT ROWID"""
_PACE_UPSERT = ("INSERT INTO agg_pace (bucket, model, node, count, sum, idle_count, idle_sum)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, model, node) DO UPDATE SET"
                " count = count + excluded.count, sum = sum + excluded.sum,"
                " idle_count = idle_count + excluded.idle_count, idle_sum = idle_sum + excluded.idle_sum")
# Columns added to a table after its first release: added to an older database at start-up.
_ADDED_COLUMNS = (("rtt", "REAL"), ("rtt_node", "TEXT"))
_ADDED_PACE_COLUMNS = (("idle_count", "INTEGER NOT NULL DEFAULT 0"), ("idle_sum", "REAL NOT NULL DEFAULT 0"))
_AGG_UPSERT = (
    "INSERT INTO agg_requests (bucket, model, zone, node, kind, count, ok, latency_count, latency_sum,"
    " duration_count, duration_sum, last) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (bucket, model, zone, node, kind) DO UPDATE SET count = count + excluded.count,"
    " ok = ok + excluded.ok, latency_count = latency_count + excluded.latency_count,"
    " latency_sum = latency_sum + excluded.latency_sum, duration_count = duration_count + excluded.duration_count,"
    " duration_sum = duration_sum + excluded.duration_sum, last = max(last, excluded.last)")
_BINS_UPSERT = (
    "INSERT INTO agg_durations (bucket, model, node, kind, bin, count, sum) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (bucket, model, node, kind, bin) DO UPDATE SET count = count + excluded.count,"
    " sum = sum + excluded.sum")

BUCKET_SECONDS = 10                 # width of one agg_requests time bucket
HISTOGRAM_SECONDS = 60              # width of one agg_durations time bucket
BINS_PER_OCTAVE = 16                # duration histogram resolution
DURATION_MIN = 1e-6                 # seconds: bin 0 holds everything up to DURATION_MIN * 2**(1/16)
DURATION_BINS = 16 * 30             # up to ~1e-6 * 2**30 s = 1,074 s; longer lands in the last bin
RELATIVE_ERROR = 2 ** (1 / BINS_PER_OCTAVE) - 1     # a quantile's bin mean is within this of the exact value


def duration_bin(duration: float) -> int:
    """Return the histogram bin of a duration in seconds (0 .. DURATION_BINS - 1)."""
    if not duration > DURATION_MIN:             # also NaN
        return 0
    return min(DURATION_BINS - 1, int(math.log2(duration / DURATION_MIN) * BINS_PER_OCTAVE))


def bin_quantile(bins: list[tuple[int, int, float]], q: float) -> float | None:
    """Return quantile q of a histogram given as (bin, count, sum of durations) entries.

    Ranks as `statistics.median` for q = 0.5 (mean of the two middle values of an even count) and
    nearest-rank otherwise; each value is its bin's mean, so the error stays within one bin
    (RELATIVE_ERROR) and is zero when a bin holds equal values."""
    entries = sorted((b, c, s) for b, c, s in bins if c > 0)
    n = sum(c for _, c, _ in entries)
    if n == 0:
        return None
    if q == 0.5:
        ranks = [(n - 1) // 2, n // 2]
    else:
        ranks = [min(n - 1, max(0, math.ceil(q * n) - 1))]
    values = []
    for rank in ranks:
        seen = 0
        for _, count, total in entries:
            seen += count
            if rank < seen:
                values.append(total / count)
                break
    return sum(values) / len(values)


def _add_columns(conn: sqlite3.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> None:
    """Add to `table` those of `columns` it lacks (a database from before them)."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for column, kind in columns:
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


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
    rtt: float | None = None           # the client's X-Client-RTT report (network round trip, s)
    rtt_node: str | None = None        # ... and the node it measured (X-Client-RTT-Node)
    # (model, node, seconds per answer, idle start?) pace reports it carried: a client's echoes and the
    # proxied answer's own (idle: the node's time for a request that found it idle, else back to back)
    paces: tuple[tuple[str, str, float, bool], ...] = ()


@dataclass(frozen=True)
class Increment:
    name: str
    labels: str                    # label_text(...)
    value: float = 1.0


def _off_the_event_loop(fn):
    """Run `fn` in a native thread of gevent's pool when gevent has patched threading (SQLite then
    works without holding the GIL, and the worker's greenlets keep answering); else call it here."""
    try:
        from gevent import get_hub
        from gevent.monkey import is_module_patched
    except ImportError:
        return fn()
    if not is_module_patched("threading"):
        return fn()
    return get_hub().threadpool.apply(fn)


def _summary_rows(conn: sqlite3.Connection, first: int, first_hist: int,
                  seconds: tuple[int, int]) -> tuple[list, list, list, list, tuple, list]:
    """The aggregate rows of GET /stats/summary from the given first buckets on, and the arrivals
    of the whole seconds in [seconds[0], seconds[1]) per model and all together."""
    return (conn.execute(
        "SELECT model, zone, node, kind, sum(count), sum(ok), sum(latency_count), sum(latency_sum),"
        " sum(duration_count), sum(duration_sum), max(last) FROM agg_requests WHERE bucket >= ?"
        " GROUP BY model, zone, node, kind ORDER BY model, zone, node, kind", (first,)).fetchall(),
        conn.execute(
        "SELECT model, node, kind, bin, sum(count), sum(sum) FROM agg_durations WHERE bucket >= ?"
        " GROUP BY model, node, kind, bin ORDER BY model, node, kind, bin", (first_hist,)).fetchall(),
        conn.execute(
        "SELECT zone, node, bucket, count, sum, sumsq FROM agg_rtt WHERE bucket >= ?"
        " ORDER BY zone, node, bucket", (first,)).fetchall(),
        conn.execute(
        "SELECT model, sum(count), sum(count * count) FROM agg_arrivals WHERE second >= ? AND second < ?"
        " GROUP BY model ORDER BY model", seconds).fetchall(),
        conn.execute(
        "SELECT sum(c), sum(c * c) FROM (SELECT sum(count) AS c FROM agg_arrivals WHERE second >= ? AND second < ?"
        " GROUP BY second)", seconds).fetchone(),
        conn.execute(
        "SELECT model, node, sum(count), sum(sum), sum(idle_count), sum(idle_sum) FROM agg_pace WHERE bucket >= ?"
        " GROUP BY model, node ORDER BY model, node", (first,)).fetchall())


class _Aggregates:
    """The agg_requests, agg_durations, agg_rtt, agg_arrivals and agg_pace increments of a batch of records."""

    def __init__(self) -> None:
        self.groups: dict[tuple, list] = {}
        self.bins: dict[tuple, list] = {}
        self.rtts: dict[tuple, list] = {}
        self.arrivals: dict[tuple[int, str], int] = {}
        self.paces: dict[tuple[int, str, str], list] = {}

    def add_arrival(self, t: float, model: str) -> None:
        key = (math.floor(t), model)
        self.arrivals[key] = self.arrivals.get(key, 0) + 1

    def add_pace(self, t: float, model: str, node: str, seconds: float, idle: bool) -> None:
        key = (math.floor(t / BUCKET_SECONDS), model, node)
        acc = self.paces.get(key)
        if acc is None:
            acc = self.paces[key] = [0, 0.0, 0, 0.0]     # count, sum, idle_count, idle_sum
        at = 2 if idle else 0
        acc[at] += 1
        acc[at + 1] += seconds

    def add_rtt(self, t: float, zone: str | None, node: str | None, rtt: float | None) -> None:
        if rtt is None or node is None:
            return
        key = (math.floor(t / BUCKET_SECONDS), zone or "", node)
        acc = self.rtts.get(key)
        if acc is None:
            acc = self.rtts[key] = [0, 0.0, 0.0]
        acc[0] += 1
        acc[1] += rtt
        acc[2] += rtt * rtt

    def add(self, t: float, model: str, kind: str, zone: str | None, latency: float | None, node: str | None,
            status: int, duration: float | None, cached: bool) -> None:
        ok = 200 <= status < 300
        served = ok and not cached and duration is not None
        key = (math.floor(t / BUCKET_SECONDS), model, zone or "", node or "", kind)
        agg = self.groups.get(key)
        if agg is None:
            agg = self.groups[key] = [0, 0, 0, 0.0, 0, 0.0, t]
        agg[0] += 1
        agg[1] += ok
        if latency is not None:
            agg[2] += 1
            agg[3] += latency
        if served:
            agg[4] += 1
            agg[5] += duration
            hkey = (math.floor(t / HISTOGRAM_SECONDS), model, node or "", kind, duration_bin(duration))
            b = self.bins.get(hkey)
            if b is None:
                b = self.bins[hkey] = [0, 0.0]
            b[0] += 1
            b[1] += duration
        if t > agg[6]:
            agg[6] = t

    def write(self, conn: sqlite3.Connection) -> None:
        if self.groups:
            conn.executemany(_AGG_UPSERT, [(*key, *agg) for key, agg in self.groups.items()])
        if self.bins:
            conn.executemany(_BINS_UPSERT, [(*key, *agg) for key, agg in self.bins.items()])
        if self.rtts:
            conn.executemany(_RTT_UPSERT, [(*key, *agg) for key, agg in self.rtts.items()])
        if self.arrivals:
            conn.executemany(_ARRIVALS_UPSERT, [(*key, count) for key, count in self.arrivals.items()])
        if self.paces:
            conn.executemany(_PACE_UPSERT, [(*key, *acc) for key, acc in self.paces.items()])


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
            _add_columns(conn, "requests", _ADDED_COLUMNS)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'agg_requests'").fetchone() is None:
                for statement in _AGG_SCHEMA:
                    conn.execute(statement)
                self._backfill_aggregates(conn)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'agg_rtt'").fetchone() is None:
                conn.execute(_RTT_SCHEMA)
                self._backfill_rtt(conn)
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'agg_arrivals'").fetchone() is None:
                conn.execute(_ARRIVALS_SCHEMA)
                self._backfill_arrivals(conn)
            conn.execute(_PACE_SCHEMA)
            _add_columns(conn, "agg_pace", _ADDED_PACE_COLUMNS)
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', ?)", (uuid.uuid4().hex,))
        # Names this database, not the process: the back-end counts two replicas answering from the
        # same file (a shared volume) once.
        self.store_id: str = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()[0]
        self._closed = False
        ref = weakref.ref(self)
        atexit.register(lambda: (store := ref()) is not None and store._flush_at_exit())

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
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
        """Flush the buffer, stop the writer and close every connection (call once the app stops).

        A record arriving afterwards (a request still finishing on another thread) is written at
        once instead of being buffered for a writer that no longer runs."""
        self._closed = True
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
        if self.flush_interval <= 0 or self._closed:
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

    def _flush_at_exit(self) -> None:
        """Interpreter exit (a worker leaving without `close()`): write what is still buffered."""
        if self._buffer and self._flusher_pid in (0, os.getpid()):
            try:
                self.flush()
            except Exception:
                log.exception("stats flush at exit failed", extra={"event": "stats_flush_failed"})

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
        aggregates = _Aggregates()
        for r, increments in batch:
            if r is not None:
                rows.append((r.time, r.model, r.kind, r.zone, r.latency, r.node, r.endpoint, r.status,
                             r.duration, int(r.cached), r.rtt, r.rtt_node))
                aggregates.add(r.time, r.model, r.kind, r.zone, r.latency, r.node, r.status, r.duration, r.cached)
                aggregates.add_rtt(r.time, r.zone, r.rtt_node, r.rtt)
                for model, node, seconds, idle in r.paces:
                    aggregates.add_pace(r.time, model, node, seconds, idle)
                if r.known_model:
                    aggregates.add_arrival(r.time, r.model)
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
                    "INSERT INTO requests (time, model, kind, zone, latency, node, endpoint, status, duration, cached,"
                    " rtt, rtt_node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                aggregates.write(conn)
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
        """Delete request rows older than `older_than` (unix time), and the aggregate buckets that
        end before it; return how many rows went."""
        conn = self._conn()
        with self._write(conn):
            cur = conn.execute("DELETE FROM requests WHERE time < ?", (older_than,))
            conn.execute("DELETE FROM agg_requests WHERE bucket < ?", (math.floor(older_than / BUCKET_SECONDS),))
            conn.execute("DELETE FROM agg_durations WHERE bucket < ?", (math.floor(older_than / HISTOGRAM_SECONDS),))
            conn.execute("DELETE FROM agg_rtt WHERE bucket < ?", (math.floor(older_than / BUCKET_SECONDS),))
            conn.execute("DELETE FROM agg_arrivals WHERE second < ?", (math.floor(older_than),))
            conn.execute("DELETE FROM agg_pace WHERE bucket < ?", (math.floor(older_than / BUCKET_SECONDS),))
            return cur.rowcount

    def _backfill_aggregates(self, conn: sqlite3.Connection) -> None:
        """Aggregate the rows a database from before the summary table holds (once, at creation)."""
        last_id = 0
        while True:
            rows = conn.execute("SELECT id, time, model, kind, zone, latency, node, status, duration, cached"
                                " FROM requests WHERE id > ? ORDER BY id LIMIT 50000", (last_id,)).fetchall()
            if not rows:
                return
            aggregates = _Aggregates()
            for _, t, model, kind, zone, latency, node, status, duration, cached in rows:
                aggregates.add(t, model, kind, zone, latency, node, status, duration, bool(cached))
            aggregates.write(conn)
            last_id = rows[-1][0]

    def _backfill_rtt(self, conn: sqlite3.Connection) -> None:
        """Aggregate the round-trip reports already in the rows (once, when agg_rtt is created)."""
        aggregates = _Aggregates()
        for t, zone, node, rtt in conn.execute(
                "SELECT time, zone, rtt_node, rtt FROM requests WHERE rtt IS NOT NULL AND rtt_node IS NOT NULL"):
            aggregates.add_rtt(t, zone, node, rtt)
        aggregates.write(conn)

    def _backfill_arrivals(self, conn: sqlite3.Connection) -> None:
        """Count the stored rows per second (once, when agg_arrivals is created). A row does not say
        whether its model was in the catalog: the names model_counts holds (it counts catalog models
        only) stand for it. One pass over the rows the retention keeps, as for agg_rtt."""
        aggregates = _Aggregates()
        for t, model in conn.execute(
                "SELECT time, model FROM requests WHERE model IN (SELECT model FROM model_counts)"):
            aggregates.add_arrival(t, model)
        aggregates.write(conn)

    # -- reads -------------------------------------------------------------------------------
    def requests(self, *, since: float | None = None, limit: int = 1000, after_id: int | None = None) -> list[dict]:
        """Return request rows with time >= since (and id > after_id) in the order they were stored."""
        self.flush()
        sql = ("SELECT id, time, model, kind, zone, latency, node, endpoint, status, duration, cached, rtt, rtt_node"
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
                 "endpoint": e, "status": s, "duration": d, "cached": bool(c), "rtt": rtt, "rtt_node": rtt_node}
                for i, t, m, k, z, lat, n, e, s, d, c, rtt, rtt_node in rows]

    def summary(self, *, window: float, now: float) -> dict:
        """Aggregate the requests of the buckets overlapping [now - window, now] (GET /stats/summary).

        `groups`, per (model, zone, node, kind): count, 2xx count, client latency count and mean
        (requests that reported one), count and mean duration of 2xx answers not from the
        prediction cache, last request. `durations`, per (model, node, kind): those durations'
        p50, p95 and histogram (60 s buckets). `models`: count, 2xx count, last request. `rtt`, per
        (client zone, reported node): the count, mean and standard deviation of the round trips clients
        reported and the 10 s buckets as [bucket start, count, sum of seconds], oldest first.
        `arrivals`: over the n whole seconds in [floor(now - window), floor(now)) (the current second
        is still filling), per catalog model the requests and the sum over those seconds of the
        squared requests per second: the back-end's index of dispersion (variance / mean of the
        per-second counts) without a row per second in the answer; `total` the same of all those
        models' requests together, whose index exceeds the models' count-weighted mean when their
        bursts come together (it is their mean when they are independent). `pace`, per (model, node): the
        count and sum of seconds of the back-to-back paces reported for it (proxied answers, clients'
        echoes), over the same buckets as `groups`; `pace_idle` the same of its idle-start ones
        (`pace-idle`, X-Client-Pace-Idle). Each lists only the pairs with a report of its kind."""
        self.flush()
        first = max(0, math.floor((now - window) / BUCKET_SECONDS))
        first_hist = max(0, math.floor((now - window) / HISTOGRAM_SECONDS))
        seconds = (math.floor(now - window), math.floor(now))

        def read() -> tuple[list, list, list, list, tuple, list]:
            # A connection of its own, closed after: gevent's pool threads come and go (an idle one
            # exits after 5 s), and a per-thread connection would be left open by each (a
            # 10-minute soak showed the front-end's descriptors growing by ~4 a minute).
            conn = self._connect()
            try:
                return _summary_rows(conn, first, first_hist, seconds)
            finally:
                conn.close()

        rows, bins, rtt_rows, arrival_rows, (together, together_sumsq), pace_rows = _off_the_event_loop(read)
        groups = []
        models: dict[str, dict] = {}
        for model, zone, node, kind, count, ok, lat_n, lat_sum, dur_n, dur_sum, last in rows:
            groups.append({
                "model": model, "zone": zone or None, "node": node or None, "kind": kind, "count": count, "ok": ok,
                "latency_count": lat_n, "latency_mean": lat_sum / lat_n if lat_n else None,
                "duration_count": dur_n, "duration_mean": dur_sum / dur_n if dur_n else None,
                "last_request": last})
            m = models.get(model)
            if m is None:
                m = models[model] = {"model": model, "count": 0, "ok": 0, "last_request": last}
            m["count"] += count
            m["ok"] += ok
            m["last_request"] = max(m["last_request"], last)
        hists: dict[tuple[str, str, str], list] = {}
        for model, node, kind, b, count, total in bins:
            hists.setdefault((model, node, kind), []).append((b, count, total))
        durations = []
        for (model, node, kind), entries in hists.items():
            n = sum(c for _, c, _ in entries)
            durations.append({
                "model": model, "node": node or None, "kind": kind, "count": n,
                "mean": sum(t for _, _, t in entries) / n, "p50": bin_quantile(entries, 0.5),
                "p95": bin_quantile(entries, 0.95), "bins": [{"bin": b, "count": c, "sum": t} for b, c, t in entries]})
        pairs: dict[tuple[str, str], list] = {}
        for zone, node, bucket, count, total, squares in rtt_rows:
            acc = pairs.setdefault((zone, node), [0, 0.0, 0.0, []])
            acc[0] += count
            acc[1] += total
            acc[2] += squares
            acc[3].append([float(bucket * BUCKET_SECONDS), count, total])
        rtt = []
        for (zone, node), (n, total, squares, buckets) in pairs.items():
            mean = total / n
            rtt.append({"zone": zone or None, "node": node, "count": n, "mean": mean,
                        "stddev": math.sqrt(max(0.0, squares / n - mean * mean)), "buckets": buckets})
        return {"window": window, "since": float(first * BUCKET_SECONDS), "until": now, "store": self.store_id,
                "bucket_seconds": BUCKET_SECONDS,
                "histogram": {"since": float(first_hist * HISTOGRAM_SECONDS), "bucket_seconds": HISTOGRAM_SECONDS,
                              "min": DURATION_MIN, "bins_per_octave": BINS_PER_OCTAVE, "bins": DURATION_BINS,
                              "relative_error": RELATIVE_ERROR},
                "groups": groups, "durations": durations, "models": sorted(models.values(), key=lambda m: m["model"]),
                "rtt": rtt,
                "arrivals": {"since": seconds[0], "seconds": seconds[1] - seconds[0],
                             "models": [{"model": m, "count": c, "sumsq": q} for m, c, q in arrival_rows],
                             "total": {"count": together or 0, "sumsq": together_sumsq or 0}},
                "pace": [{"model": m, "node": n, "count": c, "sum": total}
                         for m, n, c, total, _, _ in pace_rows if c > 0],
                "pace_idle": [{"model": m, "node": n, "count": c, "sum": total}
                              for m, n, _, _, c, total in pace_rows if c > 0]}

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
