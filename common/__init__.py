"""Small helpers every component shares (front-end, back-end, model server, local cluster).

Nothing here knows about models, nodes or requests: `logs` is the one log format, `sqlite_wal`
opens a SQLite file in WAL mode safely when several processes create it at once.
"""
