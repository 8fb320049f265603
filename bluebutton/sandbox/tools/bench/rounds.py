"""`bench sync`'s rounds: a run of every grant through the workers, measured from the database,
the emulated CMS's request counts and the emulated connect's records."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bluebutton.sandbox.tools.bench.procfs import cpu_seconds, cpu_used
from bluebutton.sandbox.tools.stack import Stack
from bluebutton.sync.runner import RESOURCE_TYPES
from bluebutton.sync.runs import SYNC_TASK as TASK
from bluebutton.sync.service import SyncService

WORKERS = ("worker-1", "worker-2")
WAIT_SECONDS = 3600.0


@dataclass
class Round:
    """One round of runs, measured from the database, the emulated CMS and the emulated connect."""

    seconds: float
    deferred_seconds: float  # until every run was queued (workers start on the first at once)
    grants: int
    statuses: Counter[str]
    resources: dict[str, Counter[str]]
    cms_requests: dict[str, int]
    posts: int
    bundles: int
    entries_sent: int
    grants_posting: set[uuid.UUID]
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (own, children) s

    def validation_cpu(self) -> float:
        """CPU seconds of the workers' validation processes (their pool's children)."""
        return sum(children for name, (_own, children) in self.cpu.items() if name in WORKERS)

    def validated(self, kinds: tuple[str, ...] = RESOURCE_TYPES) -> int:
        return sum(self.resources[k]["new"] + self.resources[k]["changed"] for k in kinds)


async def scalar(service: SyncService, query: str, params: tuple[Any, ...] = ()) -> Any:
    async with service.pool.connection() as connection:
        row = await (await connection.execute(query, params)).fetchone()
    return row[0] if row else None


async def until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench sync: gave up waiting for {what}")
        await asyncio.sleep(0.2)


async def workers_up(service: SyncService) -> bool:
    count = await scalar(service, "SELECT count(*) FROM procrastinate_workers")
    return bool(count is not None and count >= len(WORKERS))


async def run_round(
    service: SyncService, admin: httpx.AsyncClient, stack: Stack, ids: list[uuid.UUID]
) -> Round:
    """A run of every grant through the workers; waits until no sync job is left."""
    (await admin.delete(f"{stack.cms_url}/_sandbox/requests")).raise_for_status()
    cpu_before = cpu_seconds(stack)
    records_before = (await admin.get(f"{stack.connect_control_url}/_sandbox/records")).json()["count"]
    started = await scalar(service, "SELECT clock_timestamp()")
    first_run = await scalar(service, "SELECT coalesce(max(id), 0) FROM bluebutton_runs")
    gate = asyncio.Semaphore(8)

    async def defer(grant_id: uuid.UUID) -> int:
        async with gate:
            return await service.jobs.request_run(grant_id)

    await asyncio.gather(*(defer(g) for g in ids))
    deferred = await scalar(service, "SELECT clock_timestamp()")

    async def no_job_left() -> bool:
        left = await scalar(
            service,
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s AND status IN ('todo', 'doing')",
            (TASK,),
        )
        return bool(left == 0)

    await until(no_job_left, "the round's runs")
    cpu = cpu_used(cpu_before, cpu_seconds(stack))
    async with service.pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT grant_id, status, finished_at, resources, bundles FROM bluebutton_runs WHERE id > %s",
                (first_run,),
            )
        ).fetchall()
    cms_requests = (await admin.get(f"{stack.cms_url}/_sandbox/requests")).json()
    records_after = (await admin.get(f"{stack.connect_control_url}/_sandbox/records")).json()["count"]
    resources: dict[str, Counter[str]] = {k: Counter() for k in RESOURCE_TYPES}
    for row in rows:
        for kind, counts in (row[3] or {}).items():
            resources.setdefault(kind, Counter()).update(counts)
    finished = max(r[2] for r in rows if r[2] is not None)
    return Round(
        seconds=(finished - started).total_seconds(),
        deferred_seconds=(deferred - started).total_seconds(),
        grants=len({r[0] for r in rows}),
        statuses=Counter(r[1] for r in rows),
        resources=resources,
        cms_requests=cms_requests,
        posts=records_after - records_before,
        bundles=sum(len(r[4] or []) for r in rows),
        entries_sent=sum(b["entry_count"] for r in rows for b in r[4] or []),
        grants_posting={r[0] for r in rows if r[4]},
        cpu=cpu,
    )


async def add_new_claims(admin: httpx.AsyncClient, cms_url: str, users: list[int], count: int) -> None:
    for user in users:
        answer = await admin.post(f"{cms_url}/_sandbox/add_claims", json={"user": user, "count": count})
        answer.raise_for_status()
