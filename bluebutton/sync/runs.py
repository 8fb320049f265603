"""The runs table: one row per attempt of `sync_grant`, queued → running → succeeded|partial|failed.

A deferred job waits under one `queued` run (found by its job id); the attempt that starts takes
that row, and a retried attempt opens a new one, so each attempt's outcome stays in the audit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import orjson
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool

from bluebutton.events import outbox

RunStatus = Literal["queued", "running", "succeeded", "partial", "failed"]

_SELECT = (
    "SELECT id, grant_id, status, queued_at, started_at, finished_at, resources, bundles, issues "
    "FROM bluebutton_runs "
)
_ONE = _SELECT + "WHERE id = %s"
_OF_GRANT = _SELECT + "WHERE grant_id = %s ORDER BY id DESC LIMIT %s"
_LATEST = (
    "SELECT DISTINCT ON (grant_id) id, grant_id, status, queued_at, started_at, finished_at, "
    "resources, bundles, issues FROM bluebutton_runs WHERE grant_id = ANY(%s) ORDER BY grant_id, id DESC"
)


async def queue(connection: AsyncConnection, grant_id: uuid.UUID, job_id: int) -> int | None:
    """The queued run of a job still waiting (created now if needed); None once the job started.

    The job row is locked while the run is written, so a worker cannot start it in between
    (procrastinate fetches with SKIP LOCKED and simply takes it a moment later).
    """
    waiting = await (
        await connection.execute(
            "SELECT 1 FROM procrastinate_jobs WHERE id = %s AND status = 'todo' FOR UPDATE", (job_id,)
        )
    ).fetchone()
    if waiting is None:
        return None
    await connection.execute(
        "INSERT INTO bluebutton_runs (grant_id, job_id, status) VALUES (%s, %s, 'queued') "
        "ON CONFLICT (job_id) WHERE status = 'queued' DO NOTHING",
        (grant_id, job_id),
    )
    row = await (
        await connection.execute(
            "SELECT id FROM bluebutton_runs WHERE job_id = %s AND status = 'queued'", (job_id,)
        )
    ).fetchone()
    return int(row[0]) if row else None


async def latest_of_job(connection: AsyncConnection, job_id: int) -> int | None:
    row = await (
        await connection.execute("SELECT max(id) FROM bluebutton_runs WHERE job_id = %s", (job_id,))
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


async def start(pool: AsyncConnectionPool, grant_id: uuid.UUID, job_id: int) -> int:
    """Mark the job's run running; close any earlier run of the grant a killed worker left open.

    Only one run of a grant executes at a time (the job lock), so a `running` row seen here
    belongs to a worker that died.
    """
    async with pool.connection() as connection, connection.transaction():
        stopped = "the worker running this run stopped (killed or lost); the job was recovered and run again"
        closed = await (
            await connection.execute(
                "UPDATE bluebutton_runs SET status = 'failed', finished_at = now(), issues = issues || %s "
                "WHERE grant_id = %s AND status = 'running' RETURNING id",
                (Jsonb([{"severity": "error", "code": "incomplete", "diagnostics": stopped}]), grant_id),
            )
        ).fetchall()
        for (closed_id,) in closed:
            await _emit_finished(connection, closed_id, "failed", None, stopped)
        row = await (
            await connection.execute(
                "UPDATE bluebutton_runs SET status = 'running', started_at = now() "
                "WHERE job_id = %s AND status = 'queued' RETURNING id",
                (job_id,),
            )
        ).fetchone()
        if row is None:
            row = await (
                await connection.execute(
                    "INSERT INTO bluebutton_runs (grant_id, job_id, status, started_at) "
                    "VALUES (%s, %s, 'running', now()) RETURNING id",
                    (grant_id, job_id),
                )
            ).fetchone()
        assert row is not None
        return int(row[0])


async def add_bundle(connection: AsyncConnection, run_id: int, bundle: dict[str, Any]) -> None:
    await connection.execute(
        "UPDATE bluebutton_runs SET bundles = bundles || %s WHERE id = %s", (Jsonb([bundle]), run_id)
    )


async def finish(
    pool: AsyncConnectionPool,
    run_id: int,
    status: RunStatus,
    resources: dict[str, dict[str, int]],
    issues: list[dict[str, Any]],
) -> None:
    async with pool.connection() as connection, connection.transaction():
        await connection.execute(
            "UPDATE bluebutton_runs SET status = %s, finished_at = now(), resources = %s, "
            "issues = issues || %s WHERE id = %s",
            (status, Jsonb(resources), Jsonb(issues), run_id),
        )
        errors = [i["diagnostics"] for i in issues if i.get("severity") in ("error", "fatal")]
        reason = errors[0] if status == "failed" and errors else None
        await _emit_finished(connection, run_id, status, resources, reason)


async def _emit_finished(
    connection: AsyncConnection,
    run_id: int,
    status: RunStatus,
    resources: dict[str, dict[str, int]] | None,
    reason: str | None,
) -> None:
    """`run.<status>` in the transaction that finished the run (issue texts carry no payload)."""
    if status not in ("succeeded", "partial", "failed"):
        return
    row = await (
        await connection.execute(
            "SELECT r.grant_id, g.patient, r.resources FROM bluebutton_runs r "
            "JOIN bluebutton_grants g ON g.id = r.grant_id WHERE r.id = %s",
            (run_id,),
        )
    ).fetchone()
    if row is None:
        return
    counts = resources if resources is not None else row[2]
    event_type: outbox.EventType = f"run.{status}"  # type: ignore[assignment]
    await outbox.emit(connection, event_type, row[0], row[1], run_id=run_id, counts=counts, reason=reason)


async def get(pool: AsyncConnectionPool, run_id: int) -> dict[str, Any] | None:
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_ONE, (run_id,))
        return await cursor.fetchone()


async def of_grant(pool: AsyncConnectionPool, grant_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_OF_GRANT, (grant_id, limit))
        return await cursor.fetchall()


async def last_finished(
    pool: AsyncConnectionPool, grant_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, Any]]:
    """The newest run of each grant (any status), for the grant listing."""
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        fast_json(cursor)
        await cursor.execute(_LATEST, (grant_ids,))
        return {row["grant_id"]: row for row in await cursor.fetchall()}


def as_json(row: dict[str, Any]) -> dict[str, Any]:
    def instant(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": row["id"],
        "grant_id": str(row["grant_id"]),
        "status": row["status"],
        "queued_at": instant(row["queued_at"]),
        "started_at": instant(row["started_at"]),
        "finished_at": instant(row["finished_at"]),
        "resources": row["resources"],
        "bundles": row["bundles"],
        "issues": row["issues"],
    }


def fast_json(cursor: AsyncCursor[Any]) -> None:
    """jsonb columns read with orjson on this cursor: a page of 1,000 grants holds 2,000 of them,
    and the standard json module took a quarter of the page's time."""
    set_json_loads(orjson.loads, cursor)


async def page_of_grant(
    pool: AsyncConnectionPool, grant_id: uuid.UUID, before: int | None, limit: int
) -> list[dict[str, Any]]:
    """Up to `limit` runs of the grant, newest first, older than run `before` (keyset paging)."""
    query = _SELECT + "WHERE grant_id = %s AND id < %s ORDER BY id DESC LIMIT %s"
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        fast_json(cursor)
        await cursor.execute(query, (grant_id, before if before is not None else 2**63 - 1, limit))
        return await cursor.fetchall()


async def count_of_grant(pool: AsyncConnectionPool, grant_id: uuid.UUID) -> int:
    async with pool.connection() as connection:
        row = await (
            await connection.execute("SELECT count(*) FROM bluebutton_runs WHERE grant_id = %s", (grant_id,))
        ).fetchone()
    return int(row[0]) if row else 0


async def outcomes(pool: AsyncConnectionPool, grant_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """Per grant, in one query: when its last successful run ended (`last_succeeded_at`) and the
    issues of its last failed run (`last_failure`: when, and the issues), for a page of grants."""
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        fast_json(cursor)
        await cursor.execute(
            "SELECT g.id, "
            "(SELECT r.finished_at FROM bluebutton_runs r WHERE r.grant_id = g.id "
            " AND r.status IN ('succeeded', 'partial') ORDER BY r.id DESC LIMIT 1) AS last_succeeded_at, "
            "f.finished_at AS last_failed_at, f.issues AS last_failure_issues "
            "FROM unnest(%s::uuid[]) AS g(id) LEFT JOIN LATERAL (SELECT r.finished_at, r.issues "
            " FROM bluebutton_runs r WHERE r.grant_id = g.id AND r.status = 'failed' "
            " ORDER BY r.id DESC LIMIT 1) f ON true",
            (grant_ids,),
        )
        return {row.pop("id"): row for row in await cursor.fetchall()}


async def history(pool: AsyncConnectionPool, grant_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
    """The grant's last `limit` ended runs, oldest first, with the claims each stored new (for the
    console's chart: just the numbers, not the runs' Bundles and issues)."""
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            "SELECT id, status, finished_at, "
            "COALESCE((resources -> 'ExplanationOfBenefit' ->> 'new')::int, 0) AS new_claims "
            "FROM bluebutton_runs WHERE grant_id = %s AND finished_at IS NOT NULL "
            "ORDER BY id DESC LIMIT %s",
            (grant_id, limit),
        )
        return list(reversed(await cursor.fetchall()))
