"""What connect holds for each grant, so nothing is stored twice.

connect stores a new record on every POST and cannot be asked what it has, so the ledger keeps,
per (grant, resource type, resource id), the content hash of the version stored and where connect
stored it. A pulled entry is:

- **new**: no ledger row; **changed**: a row with another hash; both are validated and forwarded;
- **unchanged**: same hash as the ledger (or as its quarantined version): never validated or
  sent again.

The hash is SHA-256 of the resource with sorted keys and without `meta.lastUpdated`, so a version
CMS only re-stamped is still unchanged. Watermarks (the search Bundle's `meta.lastUpdated` of the
first page of the last complete run, CMS's clock) narrow the next pull to `_lastUpdated=ge<it>`;
the `ge` overlap re-fetches the boundary, and the hashes drop it.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool

Kind = Literal["new", "changed", "unchanged"]
LOCATION_UNKNOWN = "location unknown"


@dataclass(frozen=True)
class Entry:
    """One pulled entry: its bytes exactly as CMS sent them, its id and content hash."""

    resource_id: str
    content_hash: bytes
    raw: bytes


class EntryShapeError(ValueError):
    """An entry without a resource object or a string id: it cannot be tracked."""


def content_hash(resource: dict[str, Any]) -> bytes:
    meta = resource.get("meta")
    if isinstance(meta, dict) and "lastUpdated" in meta:
        resource = {**resource, "meta": {k: v for k, v in meta.items() if k != "lastUpdated"}}
    return hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).digest()


def read_entry(raw: bytes) -> Entry:
    entry = orjson.loads(raw)
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict):
        raise EntryShapeError("an entry has no resource")
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        raise EntryShapeError("a resource has no id")
    return Entry(resource_id, content_hash(resource), raw)


async def classify(
    pool: AsyncConnectionPool, grant_id: uuid.UUID, resource_type: str, entries: list[Entry]
) -> list[tuple[Entry, Kind]]:
    """Each entry with its kind against the ledger and the quarantine."""
    ids = [e.resource_id for e in entries]
    async with pool.connection() as connection:
        stored = await (
            await connection.execute(
                "SELECT resource_id, content_hash FROM bluebutton_ledger "
                "WHERE grant_id = %s AND resource_type = %s AND resource_id = ANY(%s)",
                (grant_id, resource_type, ids),
            )
        ).fetchall()
        held = await (
            await connection.execute(
                "SELECT resource_id, content_hash FROM bluebutton_quarantine "
                "WHERE grant_id = %s AND resource_type = %s AND resource_id = ANY(%s)",
                (grant_id, resource_type, ids),
            )
        ).fetchall()
    known = {rid: bytes(h) for rid, h in stored}
    quarantined = {rid: bytes(h) for rid, h in held}
    result: list[tuple[Entry, Kind]] = []
    for entry in entries:
        previous = known.get(entry.resource_id)
        if previous == entry.content_hash or quarantined.get(entry.resource_id) == entry.content_hash:
            result.append((entry, "unchanged"))
        else:
            result.append((entry, "new" if previous is None else "changed"))
    return result


async def record_stored(
    connection: AsyncConnection,
    grant_id: uuid.UUID,
    resource_type: str,
    entries: list[Entry],
    record_uuid: str,
    location: str | None,
    run_id: int,
) -> None:
    """The entries of one Bundle connect stored (`location` None: connect did not say where);
    committed with the run's bundle list."""
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO bluebutton_ledger (grant_id, resource_type, resource_id, content_hash, "
            "record_uuid, data_record_location, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (grant_id, resource_type, resource_id) DO UPDATE SET "
            "content_hash = EXCLUDED.content_hash, record_uuid = EXCLUDED.record_uuid, "
            "data_record_location = EXCLUDED.data_record_location, run_id = EXCLUDED.run_id, "
            "stored_at = now()",
            [
                (grant_id, resource_type, e.resource_id, e.content_hash, record_uuid, location, run_id)
                for e in entries
            ],
        )
        await cursor.execute(
            "DELETE FROM bluebutton_quarantine WHERE grant_id = %s AND resource_type = %s "
            "AND resource_id = ANY(%s)",
            (grant_id, resource_type, [e.resource_id for e in entries]),
        )


async def quarantine(
    pool: AsyncConnectionPool,
    grant_id: uuid.UUID,
    resource_type: str,
    held: list[tuple[Entry, list[dict[str, Any]]]],
    run_id: int,
) -> None:
    if not held:
        return
    async with pool.connection() as connection, connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO bluebutton_quarantine (grant_id, resource_type, resource_id, content_hash, "
            "issues, run_id) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (grant_id, resource_type, resource_id) DO UPDATE SET "
            "content_hash = EXCLUDED.content_hash, issues = EXCLUDED.issues, run_id = EXCLUDED.run_id, "
            "quarantined_at = now()",
            [
                (grant_id, resource_type, e.resource_id, e.content_hash, Jsonb(issues), run_id)
                for e, issues in held
            ],
        )


async def quarantined(pool: AsyncConnectionPool, grant_id: uuid.UUID) -> list[dict[str, Any]]:
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT resource_type, resource_id AS id, issues FROM bluebutton_quarantine "
            "WHERE grant_id = %s ORDER BY resource_type, resource_id",
            (grant_id,),
        )
        return await cursor.fetchall()


async def records(pool: AsyncConnectionPool, grant_id: uuid.UUID) -> list[dict[str, Any]]:
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT resource_type, resource_id AS id, record_uuid AS uuid, data_record_location, stored_at "
            "FROM bluebutton_ledger WHERE grant_id = %s ORDER BY resource_type, resource_id",
            (grant_id,),
        )
        rows = await cursor.fetchall()
    # connect stored these (it gave their uuid) but answered without a location (its race)
    return [
        {
            **row,
            "data_record_location": row["data_record_location"] or LOCATION_UNKNOWN,
            "stored_at": row["stored_at"].isoformat(),
        }
        for row in rows
    ]


async def watermarks(pool: AsyncConnectionPool, grant_id: uuid.UUID) -> dict[str, str]:
    async with pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT resource_type, last_updated FROM bluebutton_watermarks WHERE grant_id = %s",
                (grant_id,),
            )
        ).fetchall()
    return {kind: mark for kind, mark in rows}


async def advance(connection: AsyncConnection, grant_id: uuid.UUID, marks: dict[str, str]) -> None:
    """Move the watermarks, only once a whole run is stored (in the transaction that ends it)."""
    if not marks:
        return
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO bluebutton_watermarks (grant_id, resource_type, last_updated) VALUES (%s, %s, %s) "
            "ON CONFLICT (grant_id, resource_type) DO UPDATE SET last_updated = EXCLUDED.last_updated",
            [(grant_id, kind, mark) for kind, mark in marks.items()],
        )


async def quarantined_of(
    pool: AsyncConnectionPool, grant_ids: list[uuid.UUID]
) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """`quarantined` for a page of grants in one query (every grant named, empty lists too)."""
    held: dict[uuid.UUID, list[dict[str, Any]]] = {grant_id: [] for grant_id in grant_ids}
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        set_json_loads(orjson.loads, cursor)
        await cursor.execute(
            "SELECT grant_id, resource_type, resource_id AS id, issues FROM bluebutton_quarantine "
            "WHERE grant_id = ANY(%s) ORDER BY grant_id, resource_type, resource_id",
            (grant_ids,),
        )
        for row in await cursor.fetchall():
            held[row.pop("grant_id")].append(row)
    return held


async def held_counts(
    pool: AsyncConnectionPool, grant_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    """Per grant, how many resources of each type connect holds (the ledger's rows), in one query."""
    counts: dict[uuid.UUID, dict[str, int]] = {grant_id: {} for grant_id in grant_ids}
    async with pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT grant_id, resource_type, count(*) FROM bluebutton_ledger "
                "WHERE grant_id = ANY(%s) GROUP BY grant_id, resource_type",
                (grant_ids,),
            )
        ).fetchall()
    for grant_id, resource_type, count in rows:
        counts[grant_id][resource_type] = int(count)
    return counts


async def records_page(
    pool: AsyncConnectionPool, grant_id: uuid.UUID, after: tuple[str, str] | None, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` of `records`, after the (resource type, id) `after` (keyset on the primary key)."""
    query = (
        "SELECT resource_type, resource_id AS id, record_uuid AS uuid, "
        "COALESCE(data_record_location, %s) AS data_record_location, stored_at "
        "FROM bluebutton_ledger WHERE grant_id = %s AND (resource_type, resource_id) > (%s, %s) "
        "ORDER BY resource_type, resource_id LIMIT %s"
    )
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(query, (LOCATION_UNKNOWN, grant_id, *(after or ("", "")), limit))
        rows = await cursor.fetchall()
    return [{**row, "stored_at": row["stored_at"].isoformat()} for row in rows]
