"""Switching a SQLite file to WAL safely when several processes open it at once."""

from __future__ import annotations

import sqlite3
import time


def enable_wal(conn: sqlite3.Connection, *, timeout: float = 10.0) -> None:
    """Put the database in WAL mode, retrying while another process holds the lock.

    SQLite does not call the busy handler for a journal-mode change, so two gunicorn workers
    (or cluster processes) creating the same new file together can get "database is locked"
    at once, whatever busy_timeout says.
    """
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
