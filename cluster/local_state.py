"""The local cluster's shared state: one SQLite file (WAL) that every process opens.

Why SQLite: the front-end's gunicorn workers, the cron back-end and the CLI are separate
processes that must agree on which model servers run where. WAL lets readers proceed while a
writer holds the lock; `BEGIN IMMEDIATE` makes check-then-act sequences (is it deployed? is there
room?) atomic across processes, so two concurrent deploys of one pair start a single server.
A connection is opened per operation, which keeps the store safe to use from any thread.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .port import ClusterUnavailable
from common.sqlite_wal import enable_wal

__all__ = ["InstanceRow", "StateStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    model       TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    address     TEXT    NOT NULL,
    port        INTEGER NOT NULL,
    memory      INTEGER NOT NULL,            -- KB, declared by the catalog at deploy time
    pid         INTEGER,                     -- NULL while its node is down
    create_time REAL,                        -- psutil create_time of pid (identity across reuse)
    ready       INTEGER NOT NULL DEFAULT 0,  -- answered its readiness check; -1: terminating (draining)
    created     REAL    NOT NULL,            -- unix time the instance was first deployed
    log         TEXT    NOT NULL,
    PRIMARY KEY (model, node)
);
CREATE TABLE IF NOT EXISTS failures (       -- instances whose process failed (pid NULL), and why
    model  TEXT NOT NULL,
    node   TEXT NOT NULL,
    reason TEXT NOT NULL,                    -- e.g. killed by its node's memory limit (OOM)
    since  REAL NOT NULL,
    PRIMARY KEY (model, node)
);
CREATE TABLE IF NOT EXISTS down_nodes (
    node  TEXT PRIMARY KEY,
    since REAL NOT NULL
);
"""


@dataclass(frozen=True)
class InstanceRow:
    """One recorded model instance."""

    model: str
    node: str
    address: str
    port: int
    memory: int
    pid: int | None
    create_time: float | None
    ready: bool
    created: float
    log: str
    reason: str | None = None       # set when the instance failed (its process is gone, pid NULL)
    terminating: bool = False       # being removed: out of dispatch, still running (and holding memory)

    @property
    def proc(self) -> tuple[int, float] | None:
        if self.pid is None or self.create_time is None:
            return None
        return self.pid, self.create_time

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"


class StateStore:
    """Rows of running instances and down nodes in one SQLite file."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                enable_wal(conn, timeout=self.busy_timeout)
                conn.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ClusterUnavailable(f"{self.path}: cannot open the cluster state: {exc}") from exc

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Open a connection for reads (autocommit; WAL gives each statement a consistent view)."""
        try:
            with self._connect() as conn:
                yield conn
        except sqlite3.Error as exc:
            raise ClusterUnavailable(f"{self.path}: cluster state unavailable: {exc}") from exc

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Open a BEGIN IMMEDIATE transaction: one writer across every process at a time."""
        try:
            with self._connect() as conn:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise ClusterUnavailable(f"{self.path}: cluster state unavailable: {exc}") from exc

    # Queries: take a connection so callers can compose them inside one transaction.

    @staticmethod
    def instances(conn: sqlite3.Connection, *, node: str | None = None) -> list[InstanceRow]:
        sql = ("SELECT i.model, i.node, address, port, memory, pid, create_time, ready, created, log, "
               "CASE WHEN pid IS NULL THEN f.reason END "
               "FROM instances i LEFT JOIN failures f ON f.model = i.model AND f.node = i.node")
        rows = conn.execute(sql + (" WHERE i.node = ?" if node else "") + " ORDER BY i.node, i.model",
                            (node,) if node else ()).fetchall()
        return [InstanceRow(model=r[0], node=r[1], address=r[2], port=r[3], memory=r[4], pid=r[5],
                            create_time=r[6], ready=r[7] > 0, created=r[8], log=r[9], reason=r[10],
                            terminating=r[7] < 0)
                for r in rows]

    @staticmethod
    def instance(conn: sqlite3.Connection, model: str, node: str) -> InstanceRow | None:
        for row in StateStore.instances(conn, node=node):
            if row.model == model:
                return row
        return None

    @staticmethod
    def down_nodes(conn: sqlite3.Connection) -> set[str]:
        return {r[0] for r in conn.execute("SELECT node FROM down_nodes")}

    @staticmethod
    def insert(conn: sqlite3.Connection, row: InstanceRow) -> None:
        conn.execute("DELETE FROM failures WHERE model = ? AND node = ?", (row.model, row.node))
        conn.execute("INSERT INTO instances (model, node, address, port, memory, pid, create_time, "
                     "ready, created, log) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (row.model, row.node, row.address, row.port, row.memory, row.pid,
                      row.create_time, int(row.ready), row.created, row.log))

    @staticmethod
    def delete(conn: sqlite3.Connection, model: str, node: str, *,
               proc: tuple[int, float] | None = None) -> bool:
        """Delete a row; with `proc`, only while it still records that process."""
        if proc is None:
            cur = conn.execute("DELETE FROM instances WHERE model = ? AND node = ?", (model, node))
        else:
            cur = conn.execute("DELETE FROM instances WHERE model = ? AND node = ? AND pid = ? "
                               "AND create_time = ?", (model, node, proc[0], proc[1]))
        if cur.rowcount > 0:
            conn.execute("DELETE FROM failures WHERE model = ? AND node = ?", (model, node))
        return cur.rowcount > 0

    @staticmethod
    def set_process(conn: sqlite3.Connection, model: str, node: str,
                    proc: tuple[int, float] | None) -> None:
        conn.execute("UPDATE instances SET pid = ?, create_time = ?, ready = 0 "
                     "WHERE model = ? AND node = ?",
                     (proc[0] if proc else None, proc[1] if proc else None, model, node))
        conn.execute("DELETE FROM failures WHERE model = ? AND node = ?", (model, node))

    @staticmethod
    def set_failed(conn: sqlite3.Connection, model: str, node: str, proc: tuple[int, float],
                   reason: str) -> bool:
        """Record that the instance's process `proc` failed: keep the row, not ready, with `reason`."""
        cur = conn.execute("UPDATE instances SET pid = NULL, create_time = NULL, ready = 0 "
                           "WHERE model = ? AND node = ? AND pid = ? AND create_time = ?",
                           (model, node, proc[0], proc[1]))
        if cur.rowcount > 0:
            conn.execute("INSERT OR REPLACE INTO failures (model, node, reason, since) VALUES (?, ?, ?, ?)",
                         (model, node, reason, time.time()))
        return cur.rowcount > 0

    @staticmethod
    def mark_ready(conn: sqlite3.Connection, model: str, node: str, proc: tuple[int, float]) -> None:
        conn.execute("UPDATE instances SET ready = 1 WHERE model = ? AND node = ? AND pid = ? "
                     "AND create_time = ? AND ready >= 0", (model, node, proc[0], proc[1]))

    @staticmethod
    def set_terminating(conn: sqlite3.Connection, model: str, node: str) -> None:
        """Take the instance out of dispatch (not ready) while it drains; its row and memory stay."""
        conn.execute("UPDATE instances SET ready = -1 WHERE model = ? AND node = ?", (model, node))

    @staticmethod
    def set_down(conn: sqlite3.Connection, node: str, down: bool) -> None:
        if down:
            conn.execute("INSERT OR IGNORE INTO down_nodes (node, since) VALUES (?, ?)", (node, time.time()))
        else:
            conn.execute("DELETE FROM down_nodes WHERE node = ?", (node,))

    @staticmethod
    def clear(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM instances")
        conn.execute("DELETE FROM failures")
        conn.execute("DELETE FROM down_nodes")
