"""The connect emulator's record log: SQLite standing in for connect's Kafka topic.

connect 0.42.0 writes every accepted record to Kafka topic `FHIR-R4`, partition 0, and reports
`FHIR-R4:0:<offset>`; `GET /data` reads a record back by that offset (lfh-connect.md §1, §3).
This module keeps the same promises with the stdlib `sqlite3`: offsets start at 0, only grow, are
never reused (not even after `clear()`, like a topic whose old segments were deleted), and survive
restarts because they come from an `AUTOINCREMENT` key.

The methods are synchronous and short; the app runs them in a worker thread so the event loop never
waits on the disk. One connection, guarded by a lock, is shared by those threads.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TOPIC = "FHIR-R4"
PARTITION = 0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- Kafka offset + 1 (SQLite's sequence starts at 1)
    uuid TEXT NOT NULL,
    record BLOB NOT NULL                   -- the envelope exactly as stored, JSON bytes
);
CREATE TABLE IF NOT EXISTS entries (      -- `Type/id` of each stored entry, for duplicate counts
    record_id INTEGER NOT NULL,
    reference TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_reference ON entries (reference)
"""


@dataclass(frozen=True, slots=True)
class RecordSummary:
    offset: int
    uuid: str
    bytes: int


class RecordStore:
    """Append-only log of stored envelopes, opened on first use and closed by `close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        # Caller holds the lock. Opening lazily lets the app work with or without a lifespan.
        if self._conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # WAL without fsync: like Kafka, which leaves flushing to the OS, a record survives a
            # restart of the emulator (not a power cut); with fsync, every fifth 1 MB record paid
            # for a 10-15 ms checkpoint.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=OFF")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def append(self, record_uuid: str, record: bytes, references: Sequence[str] = ()) -> int:
        """Store one record and the `Type/id` of its entries; return its offset."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                cursor = conn.execute(
                    "INSERT INTO records (uuid, record) VALUES (?, ?)", (record_uuid, record)
                )
                record_id = cursor.lastrowid
                assert record_id is not None
                conn.executemany(
                    "INSERT INTO entries (record_id, reference) VALUES (?, ?)",
                    [(record_id, reference) for reference in references],
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return record_id - 1

    def entry_counts(self) -> dict[str, int]:
        """How many stored records hold each `Type/id`."""
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT reference, count(*) FROM entries GROUP BY reference ORDER BY reference")
                .fetchall()
            )
        return {reference: count for reference, count in rows}

    def get(self, offset: int) -> bytes | None:
        with self._lock:
            row = (
                self._connection()
                .execute("SELECT record FROM records WHERE id = ?", (offset + 1,))
                .fetchone()
            )
        return None if row is None else bytes(row[0])

    def summaries(self) -> list[RecordSummary]:
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT id - 1, uuid, length(record) FROM records ORDER BY id")
                .fetchall()
            )
        return [RecordSummary(offset=o, uuid=u, bytes=n) for o, u, n in rows]

    def clear(self) -> int:
        """Delete every record; the offset sequence carries on. Returns how many were deleted."""
        with self._lock:
            conn = self._connection()
            conn.execute("DELETE FROM entries")
            return conn.execute("DELETE FROM records").rowcount

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
