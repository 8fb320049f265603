"""The runs table: one row per run, queued → running → succeeded|partial|failed.

A run is written before its job and the job carries only the run's id (`request`); a grant has at
most one open run. A retry after a transient failure is a new run (`attempt` + 1), so each
attempt's outcome stays in the audit.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
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


QUEUE = "bluebutton-sync"
SYNC_TASK = "sync:run_sync"  # the namespaced name of `jobs.run_sync` (checked there)
OPEN = ("queued", "running")
_DEFER = (
    "SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW(%s, %s, 0, %s, NULL, %s, %s)"
    "::procrastinate_job_to_defer_v1]))[1]"
)


async def request(
    connection: AsyncConnection, grant_id: uuid.UUID, *, attempt: int = 1, delay: float = 0.0
) -> tuple[int, bool]:
    """The grant's open run, or a new queued run and its job; (run id, whether it is new).

    The run row comes first and its job (argument: the run id; lock: the grant, so two runs of
    a grant never overlap: refresh tokens are single-use) is deferred in the same transaction,
    so neither exists without the other. The partial unique index on open runs makes concurrent
    requests wait for each other: any number of them make one run. A waiting run asked for
    again is brought forward (a retry scheduled later runs now).
    """
    for _ in range(10):  # the open run can finish between the two statements: ask again
        row = await (
            await connection.execute(
                "INSERT INTO bluebutton_runs (grant_id, status, attempt) VALUES (%s, 'queued', %s) "
                "ON CONFLICT (grant_id) WHERE status IN ('queued', 'running') DO NOTHING RETURNING id",
                (grant_id, attempt),
            )
        ).fetchone()
        if row is not None:
            run_id = int(row[0])
            at = datetime.now(UTC) + timedelta(seconds=delay) if delay > 0 else None
            job = await (
                await connection.execute(
                    _DEFER, (QUEUE, SYNC_TASK, str(grant_id), Jsonb({"run_id": run_id}), at)
                )
            ).fetchone()
            assert job is not None
            await connection.execute("UPDATE bluebutton_runs SET job_id = %s WHERE id = %s", (job[0], run_id))
            return run_id, True
        found = await (
            await connection.execute(
                "SELECT id, status, job_id FROM bluebutton_runs "
                "WHERE grant_id = %s AND status IN ('queued', 'running')",
                (grant_id,),
            )
        ).fetchone()
        if found is not None:
            if found[1] == "queued" and delay <= 0 and found[2] is not None:
                await connection.execute(
                    "UPDATE procrastinate_jobs SET scheduled_at = NULL "
                    "WHERE id = %s AND status = 'todo' AND scheduled_at > now()",
                    (found[2],),
                )
            return int(found[0]), False
    raise RuntimeError(f"grant {grant_id}: no run could be queued")


async def start(connection: AsyncConnection, run_id: int, job_id: int) -> uuid.UUID | None:
    """Mark the queued run running; its grant, or None if the run is not this job's to start
    (already closed: recovered after an outage, or a job run twice)."""
    row = await (
        await connection.execute(
            "UPDATE bluebutton_runs SET status = 'running', started_at = now() "
            "WHERE id = %s AND status = 'queued' AND job_id = %s RETURNING grant_id",
            (run_id, job_id),
        )
    ).fetchone()
    return row[0] if row else None


async def close_unfinished(connection: AsyncConnection, run_id: int, reason: str) -> uuid.UUID | None:
    """End a run that cannot finish (its worker stopped, the database went) as `failed` with
    `reason`; its grant, or None if it had already ended."""
    row = await (
        await connection.execute(
            "UPDATE bluebutton_runs SET status = 'failed', finished_at = now(), issues = issues || %s "
            "WHERE id = %s AND status IN ('queued', 'running') RETURNING grant_id",
            (Jsonb([{"severity": "error", "code": "incomplete", "diagnostics": reason}]), run_id),
        )
    ).fetchone()
    if row is None:
        return None
    await _emit_finished(connection, run_id, "failed", None, reason)
    return uuid.UUID(str(row[0]))


_ORPHANS = (
    "SELECT r.id, r.status, j.status::text FROM bluebutton_runs r "
    "LEFT JOIN procrastinate_jobs j ON j.id = r.job_id "
    "LEFT JOIN procrastinate_workers w ON w.id = j.worker_id "
    "WHERE r.status IN ('queued', 'running') AND (j.id IS NULL OR j.status NOT IN ('todo', 'doing') "
    "OR (j.status = 'doing' AND (w.id IS NULL "
    "OR w.last_heartbeat < now() - make_interval(secs => %s))))"
)


async def orphans(connection: AsyncConnection, stalled_seconds: float) -> list[tuple[int, str, str | None]]:
    """Open runs without a live job behind them: (run id, run status, job status or None). A job
    is live while `todo`, or `doing` under a worker whose heartbeat is fresh."""
    rows = await (await connection.execute(_ORPHANS, (stalled_seconds,))).fetchall()
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


async def add_issue(connection: AsyncConnection, run_id: int, issue: dict[str, Any]) -> None:
    await connection.execute(
        "UPDATE bluebutton_runs SET issues = issues || %s WHERE id = %s", (Jsonb([issue]), run_id)
    )


async def oldest_queued_seconds(connection: AsyncConnection) -> float | None:
    """How long the oldest run due now has waited for a worker (None: none waits)."""
    row = await (
        await connection.execute(
            "SELECT extract(epoch FROM now() - min(r.queued_at)) FROM bluebutton_runs r "
            "LEFT JOIN procrastinate_jobs j ON j.id = r.job_id WHERE r.status = 'queued' "
            "AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())"
        )
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


async def add_bundle(connection: AsyncConnection, run_id: int, bundle: dict[str, Any]) -> None:
    await connection.execute(
        "UPDATE bluebutton_runs SET bundles = bundles || %s WHERE id = %s", (Jsonb([bundle]), run_id)
    )


async def finish(
    connection: AsyncConnection,
    run_id: int,
    status: RunStatus,
    resources: dict[str, dict[str, int]],
    issues: list[dict[str, Any]],
) -> bool:
    """Close the run (in the caller's transaction) with its event; False if it was closed already
    (recovered meanwhile: its end was written by whoever recovered it)."""
    closed = await connection.execute(
        "UPDATE bluebutton_runs SET status = %s, finished_at = now(), resources = %s, "
        "issues = issues || %s WHERE id = %s AND status IN ('queued', 'running')",
        (status, Jsonb(resources), Jsonb(issues), run_id),
    )
    if closed.rowcount == 0:
        return False
    errors = [i["diagnostics"] for i in issues if i.get("severity") in ("error", "fatal")]
    reason = errors[0] if status == "failed" and errors else None
    await _emit_finished(connection, run_id, status, resources, reason)
    return True


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
