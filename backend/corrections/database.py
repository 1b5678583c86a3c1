"""The correction log's SQLite file: schema, per-thread connections, WAL and transactions.

Storage (schema version ``SCHEMA_VERSION``, in table ``schema_version``):

- ``corrections``: one row per record, ``UNIQUE (annotation_id, revision)``; ``final_level`` / ``final_iou``
  (the highest chain level seen and its IoU) are kept beside the row so ``min_correction`` is a SQL filter.
- ``correction_levels``: one row per (record, level) with ``label``, ``height``, ``width``, ``accepted``,
  ``predicted`` (mask blobs, NULL when absent), ``predicted_score`` and ``iou``.
- ``deleted_annotations``: tombstones, so a revision that arrives after its deletion is stored deleted.

Durability and concurrency: WAL journal, ``synchronous=FULL``, one connection per thread (and per process:
a connection is never used across ``fork``), ``busy_timeout``, and every write is one ``BEGIN IMMEDIATE``
transaction, so a record and its levels are committed together or not at all. In WAL mode ``NORMAL``
would already survive ``kill -9`` (a committed transaction is in the WAL file, which the OS keeps), but it
may lose the last commits on power loss or an OS crash; those are corrections Label Studio was told we
stored and will not send again, and webhooks come at human pace, so one fsync per commit (``FULL``) is
cheap insurance.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from backend.corrections.records import CorrectionError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE corrections (
        id INTEGER PRIMARY KEY,
        project_id INTEGER,
        task_id INTEGER NOT NULL,
        annotation_id INTEGER NOT NULL,
        revision TEXT NOT NULL,
        action TEXT NOT NULL,
        annotator TEXT,
        annotation_created_at TEXT,
        received_at TEXT NOT NULL,
        query TEXT,
        image_ref TEXT,
        image_sha256 TEXT,
        prediction_id INTEGER,
        model_version TEXT,
        final_level INTEGER,
        final_iou REAL,
        deleted_at TEXT,
        UNIQUE (annotation_id, revision)
    )""",
    """CREATE TABLE correction_levels (
        record_id INTEGER NOT NULL REFERENCES corrections (id),
        level INTEGER NOT NULL,
        label TEXT NOT NULL,
        height INTEGER NOT NULL,
        width INTEGER NOT NULL,
        accepted BLOB,
        predicted BLOB,
        predicted_score REAL,
        iou REAL,
        PRIMARY KEY (record_id, level)
    )""",
    "CREATE TABLE deleted_annotations (annotation_id INTEGER PRIMARY KEY, deleted_at TEXT NOT NULL)",
    "CREATE INDEX corrections_project_revision ON corrections (project_id, revision)",
)
RECORD_COLUMNS = (
    "id, project_id, task_id, annotation_id, revision, action, annotator, annotation_created_at, "
    "received_at, query, image_ref, image_sha256, prediction_id, model_version, final_level, final_iou, "
    "deleted_at"
)
LEVEL_COLUMNS = "record_id, level, label, height, width, accepted, predicted, predicted_score, iou"


class CorrectionDatabase:
    """One SQLite correction file: opens (and on first use creates) it, hands out per-thread connections
    and transactions. ``CorrectionStore`` builds the correction log on it; safe to share between threads
    and processes."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT_S) -> None:
        """Open (and on first use create) the database at ``path``; its folder is created if missing.

        Raises:
            CorrectionError: the file is not a correction store, was written by a newer schema version,
                or the file system refuses WAL mode.
        """
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        with self._write() as conn:
            self._ensure_schema(conn)

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection (a new one in a new thread or after ``fork``)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        if self._pid != os.getpid():  # forked: the parent's connections are not ours to use or close
            with self._lock:
                self._pid, self._connections = os.getpid(), []
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            mode = self._enable_wal(conn)
            if str(mode).lower() != "wal":
                raise CorrectionError(f"{self.path}: the file system refused WAL mode (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise CorrectionError(f"{self.path}: not a usable SQLite correction store ({exc})") from exc
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._connections.append(conn)
        return conn

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        """Switch to WAL (a no-op once the file is WAL); returns the journal mode now in force.

        Switching a new file needs an exclusive lock, and SQLite answers "database is locked" at once
        (without its busy handler) while another process is creating the same file: retry until
        ``busy_timeout``.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front (no lock upgrade, no deadlock)."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot across several queries."""
        conn = self._connect()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" not in tables:
            if tables:
                raise CorrectionError(
                    f"{self.path}: an SQLite file with other tables, not a correction store"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            logger.info("created correction store %s (schema version %d)", self.path, SCHEMA_VERSION)
            return
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = row[0] if row else None
        if version != SCHEMA_VERSION:
            raise CorrectionError(
                f"{self.path}: schema version {version}, this code reads version {SCHEMA_VERSION}"
                + (
                    " (written by a newer backend)"
                    if isinstance(version, int) and version > SCHEMA_VERSION
                    else ""
                )
            )

    def close(self) -> None:
        """Close every connection this process opened. Call it when no other thread uses the store."""
        with self._lock:
            connections, self._connections = self._connections, []
            mine = self._pid == os.getpid()
        for conn in connections if mine else []:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
