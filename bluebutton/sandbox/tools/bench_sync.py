"""`pipenv run bench sync`: grant keeping at scale, through real processes and a real PostgreSQL.

Starts the emulated CMS (`--claims` per user, `--rtt-ms` added to every FHIR request) and the
emulated connect (no validation, no rate limit: we time the workers, not connect), a fresh
database (a new one on `BLUEBUTTON_DATABASE_URL`'s server, or an embedded server in a temporary
directory), and two `python -m bluebutton worker` processes. Enrolment is fast but real: each
beneficiary logs in and consents on the emulator's own forms, the code is exchanged by the
product's OAuth client, and the grant is stored by the product's grant store with encrypted
tokens; no browser and no connector callback. Every run then goes through the workers:

1. first round: a run of every grant (everything is new);
2. incremental round: 10 % of the beneficiaries get 2 new claims, then a run of every grant.

Each round is timed from the first `sync_grant` deferred to the last run finished (the database's
clock), and measured from outside: CMS requests from the emulator's own counts, connect POSTs
from connect's stored records. Then the database's size, each process's peak RSS, and the
validator's own speed on the claims of a sample of the same beneficiaries, in one worker process.
The periodic sweep is turned off in the workers, so only the rounds run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import psycopg

from bluebutton.cms.client import CmsClient
from bluebutton.cms.oauth import OAuthClient, new_pending_authorization
from bluebutton.connect.client import ConnectClient
from bluebutton.fhir.validator import Validator
from bluebutton.outbound import build_ssl_context
from bluebutton.pull.query import PAGE_SIZE
from bluebutton.sandbox.tools.stack import Stack, StackConfig, ca_context, running_stack
from bluebutton.settings import Settings
from bluebutton.sync import grants
from bluebutton.sync.crypto import new_key
from bluebutton.sync.database import _start_embedded, _stop_embedded
from bluebutton.sync.jobs import TASK
from bluebutton.sync.runner import RESOURCE_TYPES
from bluebutton.sync.service import SyncService, open_sync

WORKERS = ("worker-1", "worker-2")
NEVER = "0 0 1 1 *"  # the sweep's cron in the workers: once a year, so only the rounds run
ENROL_CONCURRENCY = 16
WAIT_SECONDS = 3600.0
TICKS = os.sysconf("SC_CLK_TCK")
# Worker settings the bench passes on from its environment (to try other sizes).
TUNABLE = ("BLUEBUTTON_DATABASE_POOL_SIZE", "BLUEBUTTON_CMS_FETCH_CONCURRENCY")
_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


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


@dataclass
class Enrolled:
    grant_id: uuid.UUID
    user: int
    access_token: str = field(repr=False)  # kept in memory for the validator sample, never printed


# ------------------------------------------------------------------------------ processes


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += [int(child), *_descendants(int(child))]
    return found


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat


def cpu_seconds(stack: Stack) -> dict[str, tuple[float, float]]:
    """Per process of the stack: (its own CPU seconds, its live children's)."""
    return {
        name: (_cpu_seconds(p.pid), sum(_cpu_seconds(c) for c in _descendants(p.pid)))
        for name, p in stack.processes.items()
    }


def cpu_used(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    return {
        name: (own - before.get(name, (0.0, 0.0))[0], children - before.get(name, (0.0, 0.0))[1])
        for name, (own, children) in after.items()
    }


def peak_rss_mb(stack: Stack) -> dict[str, float]:
    """Each process's peak RSS (VmHWM), its children (validation pool, forkserver) listed apart."""
    peaks: dict[str, float] = {}
    for name, process in stack.processes.items():
        peaks[name] = _status_kb(process.pid, "VmHWM") / 1024
        children = _descendants(process.pid)
        if children:
            peaks[f"{name} children ({len(children)})"] = max(_status_kb(c, "VmHWM") for c in children) / 1024
    peaks["bench (this process)"] = _status_kb(os.getpid(), "VmHWM") / 1024
    return peaks


# ------------------------------------------------------------------------------ database


@contextmanager
def fresh_database(server: str | None, keep: bool) -> Iterator[str]:
    """A new database on `server` (dropped afterwards unless `keep`), or on an embedded server in
    a temporary directory when `server` is None or `embedded`."""
    directory: Path | None = None
    if server in (None, "", "embedded"):
        directory = Path(tempfile.mkdtemp(prefix="bluebutton-bench-pg-"))
        server = _start_embedded(directory / "data")
    assert server is not None
    name = f"bluebutton_bench_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        if not keep:
            with psycopg.connect(server, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        if directory is not None:
            _stop_embedded(directory / "data")


async def _scalar(service: SyncService, query: str, params: tuple[Any, ...] = ()) -> Any:
    async with service.pool.connection() as connection:
        row = await (await connection.execute(query, params)).fetchone()
    return row[0] if row else None


async def _until(check: Callable[[], Awaitable[bool]], what: str, seconds: float = WAIT_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench sync: gave up waiting for {what}")
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------ enrolment


def _form_action(page: httpx.Response) -> str:
    match = _ACTION.search(page.text)
    if match is None:
        raise SystemExit(f"bench sync: no form on {page.url} (HTTP {page.status_code})")
    return str(page.url.join(unescape(match[1])))


async def _consent(
    browser: httpx.AsyncClient, oauth: OAuthClient, user: int, version: int = 2
) -> tuple[str, str]:
    """Log `BBUser<user>` in on the emulator's forms and consent (on v3, SAMHSA data shared too);
    (code, PKCE verifier)."""
    pending = new_pending_authorization(sync=True, version=version)
    start = await browser.get(oauth.authorization_url(pending), follow_redirects=True)
    consent = await browser.post(
        _form_action(start),
        data={"username": f"BBUser{user:05d}", "password": f"PW{user:05d}!"},
        follow_redirects=True,
    )
    decision = {"share_demographics": "yes", "allow": "true", "share_samhsa_data": ["False", "True"]}
    redirect = await browser.post(_form_action(consent), data=decision)
    query = parse_qs(urlsplit(redirect.headers.get("location", "")).query)
    if "code" not in query or query.get("state") != [pending.state]:
        raise SystemExit(f"bench sync: consent for user {user} did not redirect with a code")
    return query["code"][0], pending.verifier


async def enrol_all(service: SyncService, cms_url: str, users: range) -> list[Enrolled]:
    """Tokens issued by the emulator, stored by the product's grant store (no run deferred)."""
    ctx = service.context
    gate = asyncio.Semaphore(ENROL_CONCURRENCY)

    async def one(browser: httpx.AsyncClient, user: int) -> Enrolled:
        async with gate:
            code, verifier = await _consent(browser, ctx.oauth, user, ctx.settings.cms_api_version)
            tokens = await ctx.oauth.exchange_code(code, verifier)
            assert tokens.patient is not None
            grant_id = await grants.enrol(
                ctx.pool, ctx.cipher, tokens, ctx.settings.cms_api_version, tokens.patient
            )
            return Enrolled(grant_id, user, tokens.access_token)

    async with httpx.AsyncClient(base_url=cms_url, verify=ca_context(), timeout=60.0) as browser:
        return list(await asyncio.gather(*(one(browser, u) for u in users)))


# ------------------------------------------------------------------------------ rounds


async def run_round(
    service: SyncService, admin: httpx.AsyncClient, stack: Stack, ids: list[uuid.UUID]
) -> Round:
    """A run of every grant through the workers; waits until no sync job is left."""
    (await admin.delete(f"{stack.cms_url}/_sandbox/requests")).raise_for_status()
    cpu_before = cpu_seconds(stack)
    records_before = (await admin.get(f"{stack.connect_control_url}/_sandbox/records")).json()["count"]
    started = await _scalar(service, "SELECT clock_timestamp()")
    first_run = await _scalar(service, "SELECT coalesce(max(id), 0) FROM bluebutton_runs")
    gate = asyncio.Semaphore(8)

    async def defer(grant_id: uuid.UUID) -> int:
        async with gate:
            return await service.jobs.request_run(grant_id)

    await asyncio.gather(*(defer(g) for g in ids))
    deferred = await _scalar(service, "SELECT clock_timestamp()")

    async def no_job_left() -> bool:
        left = await _scalar(
            service,
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s AND status IN ('todo', 'doing')",
            (TASK,),
        )
        return bool(left == 0)

    await _until(no_job_left, "the round's runs")
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


# ------------------------------------------------------------------------------ validator


@dataclass
class Speed:
    entries: int
    claims: int
    seconds: float  # wall
    cpu_seconds: float  # of the validation process: what it costs whatever else the machine runs
    mode: str  # "fast" with the validation patches, "standard" without


async def validator_speed(settings: Settings, cms: CmsClient, sample: list[Enrolled]) -> Speed:
    """One validation process (the workers' own `Validator`) validating the sample's resources
    type by type, as a run hands them over."""
    batches: list[list[bytes]] = []
    for enrolled in sample:
        for kind in RESOURCE_TYPES:
            entries: list[bytes] = []
            params = [("_count", str(PAGE_SIZE))]
            async for page in cms.iter_pages(kind, params, enrolled.access_token):
                entries += page.entries
            batches.append(entries)
    async with Validator(1, fast=settings.fast_validation) as validator:
        for batch in batches[: len(RESOURCE_TYPES)]:  # warm: a model's first use builds it
            await validator.validate(batch)
        pool = _descendants(os.getpid())
        cpu = sum(_cpu_seconds(p) for p in pool)
        started = time.perf_counter()
        for batch in batches:
            await validator.validate(batch)
        seconds = time.perf_counter() - started
        cpu = sum(_cpu_seconds(p) for p in pool) - cpu
        mode = validator.mode
    claims = sum(len(b) for i, b in enumerate(batches) if RESOURCE_TYPES[i % 3] == "ExplanationOfBenefit")
    return Speed(sum(len(b) for b in batches), claims, seconds, cpu, mode)


# ------------------------------------------------------------------------------ the bench


@dataclass
class Options:
    grants: int
    claims: int
    rtt_ms: int
    new_share: float
    new_claims: int
    concurrency: int
    sample: int
    database_url: str | None
    keep_database: bool
    api_version: int = 2


def worker_env(stack: Stack, database_url: str, token_keys: str, concurrency: int) -> dict[str, str]:
    return {
        **stack.commands["connector"][1],
        "BLUEBUTTON_DATABASE_URL": database_url,
        "BLUEBUTTON_TOKEN_KEYS": token_keys,
        "BLUEBUTTON_DATABASE_MIGRATE": "false",
        "BLUEBUTTON_SYNC_CONCURRENCY": str(concurrency),
        "BLUEBUTTON_SYNC_SWEEP_CRON": NEVER,
        "BLUEBUTTON_VALIDATION_WORKERS": "1",  # two workers, two cores
        **{k: v for k, v in os.environ.items() if k in TUNABLE},
    }


def bench_settings(env: dict[str, str]) -> Settings:
    """The workers' settings for this process, read from `env` alone (not our environment)."""
    fields: dict[str, Any] = {
        k.removeprefix("BLUEBUTTON_").lower(): v for k, v in env.items() if k.startswith("BLUEBUTTON_")
    }
    fields["database_migrate"] = "true"  # this process migrates before the workers start
    return Settings(_env_file=None, **fields)


@asynccontextmanager
async def open_bench_service(settings: Settings) -> AsyncIterator[tuple[SyncService, CmsClient]]:
    """The product's grant keeping without a worker: migrations, the grant store, deferring runs."""
    context = build_ssl_context(settings)
    async with contextlib.AsyncExitStack() as stack:
        cms = await stack.enter_async_context(CmsClient.create(settings, context))
        connect = await stack.enter_async_context(ConnectClient.create(settings, context))
        validator = Validator(1)  # never entered: this process validates nothing in the rounds
        oauth = OAuthClient(settings, cms.http)
        service = await stack.enter_async_context(
            open_sync(settings, cms, oauth, connect, validator, worker=False)
        )
        yield service, cms


async def measure(stack: Stack, options: Options, database_url: str) -> dict[str, Any]:
    keys = new_key()
    env = worker_env(stack, database_url, keys, options.concurrency)
    env["BLUEBUTTON_CMS_API_VERSION"] = str(options.api_version)
    settings = bench_settings(env)
    async with (
        open_bench_service(settings) as (service, cms),
        httpx.AsyncClient(verify=ca_context(), timeout=60.0) as admin,
    ):
        for name in WORKERS:
            stack.launch(name, ["-m", "bluebutton", "worker"], env)
        if options.api_version == 3:  # CMS's sandbox has five v3 users; the emulator can have all
            (await admin.put(f"{stack.cms_url}/_sandbox/v3", json={"all_users": True})).raise_for_status()
        started = time.perf_counter()
        enrolled = await enrol_all(service, stack.cms_url, range(options.grants))
        enrol_seconds = time.perf_counter() - started
        await _until(
            lambda: _workers_up(service),
            "two workers to start",
            seconds=300.0,
        )
        ids = [e.grant_id for e in enrolled]
        first = await run_round(service, admin, stack, ids)
        changed_users = [e.user for e in enrolled[:: max(1, round(1 / options.new_share))]]
        await add_new_claims(admin, stack.cms_url, changed_users, options.new_claims)
        changed = {e.grant_id for e in enrolled if e.user in set(changed_users)}
        second = await run_round(service, admin, stack, ids)
        database_bytes = await _scalar(service, "SELECT pg_database_size(current_database())")
        ledger_rows = await _scalar(service, "SELECT count(*) FROM bluebutton_ledger")
        rss = peak_rss_mb(stack)
        modes = [worker_validation_mode(stack, name) for name in WORKERS]
        for name in WORKERS:  # the validator sample below must not share the cores
            stack.processes[name].terminate()
        for name in WORKERS:
            stack.processes[name].wait(timeout=60)
        speed = await validator_speed(settings, cms, enrolled[: options.sample])
    return {
        "enrol_seconds": enrol_seconds,
        "first": first,
        "second": second,
        "changed": changed,
        "database_bytes": int(database_bytes),
        "ledger_rows": int(ledger_rows),
        "rss": rss,
        "speed": speed,
        "worker_modes": modes,
    }


async def _workers_up(service: SyncService) -> bool:
    count = await _scalar(service, "SELECT count(*) FROM procrastinate_workers")
    return bool(count is not None and count >= len(WORKERS))


def worker_validation_mode(stack: Stack, name: str) -> str:
    """What the worker's validation pool ran: its log names a fallback to the unpatched library."""
    assert stack.log_dir is not None
    log = (stack.log_dir / f"{name}.log").read_text(errors="replace")
    return "standard" if "validation speedups off" in log else "fast"


def _cpu(r: Round) -> str:
    return ", ".join(
        f"{name} {own:.0f}" + (f" + {children:.0f} in its children" if children >= 0.5 else "")
        for name, (own, children) in r.cpu.items()
    )


def _types(r: Round, key: str) -> str:
    return ", ".join(f"{k} {r.resources[k][key]}" for k in RESOURCE_TYPES)


def report(options: Options, found: dict[str, Any]) -> list[str]:
    first: Round = found["first"]
    second: Round = found["second"]
    changed: set[uuid.UUID] = found["changed"]
    speed: Speed = found["speed"]
    cores = os.cpu_count() or 1
    n = options.grants
    first_rate = first.validated() / first.seconds / cores
    in_pool = first.validated() / max(first.validation_cpu(), 1e-9)
    own_rate = speed.entries / max(speed.cpu_seconds, 1e-9)
    sent = first.entries_sent + second.entries_sent
    once = "yes" if sent == found["ledger_rows"] else "no"
    first_claims = first.validated(("ExplanationOfBenefit",))
    requests_2 = sum(second.cms_requests[k] for k in RESOURCE_TYPES)
    requests_1 = sum(first.cms_requests[k] for k in RESOURCE_TYPES)
    only_new = second.grants_posting == changed
    resent = second.validated() - len(changed) * options.new_claims
    lines = [
        f"bench sync: {n} grants x {options.claims} claims on Blue Button v{options.api_version}, "
        f"{options.rtt_ms} ms added per CMS request, "
        f"2 worker processes x {options.concurrency} concurrent grants, {cores} cores",
        f"enrolment (emulator login + consent, code exchange, grant store): {found['enrol_seconds']:.1f} s",
        f"first round: {first.seconds:.1f} s, {n / first.seconds * 60:.0f} grants/min (all queued after "
        f"{first.deferred_seconds:.1f} s); runs "
        f"{dict(first.statuses)}; new: {_types(first, 'new')}",
        f"  CMS requests {requests_1} ({requests_1 / n:.2f} per grant; token {first.cms_requests['token']}); "
        f"connect POSTs {first.posts} (Bundles recorded {first.bundles})",
        f"  validated {first.validated()} resources ({first_claims} claims, validation "
        f"{'/'.join(sorted(set(found['worker_modes'])))}): {first_rate:.0f} per second "
        f"per core (wall time x {cores} cores), {in_pool:.0f} per CPU second of the validation "
        f"processes; the validator alone on {speed.entries} of the same resources ({speed.claims} "
        f"claims, {options.sample} grants, validation {speed.mode}): {own_rate:.0f} per CPU second "
        f"({speed.entries / speed.seconds:.0f} per wall second); ratios {first_rate / own_rate:.2f} "
        f"and {in_pool / own_rate:.2f}",
        f"  CPU seconds: {_cpu(first)} (PostgreSQL's not counted)",
        f"incremental round ({len(changed)} grants got {options.new_claims} new claims each): "
        f"{second.seconds:.1f} s, {n / second.seconds * 60:.0f} grants/min (all queued after "
        f"{second.deferred_seconds:.1f} s); runs {dict(second.statuses)}",
        f"  CMS requests {requests_2} ({requests_2 / n:.2f} per grant; Patient "
        f"{second.cms_requests['Patient']}, Coverage {second.cms_requests['Coverage']}, "
        f"ExplanationOfBenefit {second.cms_requests['ExplanationOfBenefit']}, token "
        f"{second.cms_requests['token']}); CPU seconds: {_cpu(second)}",
        f"  connect POSTs {second.posts} from {len(second.grants_posting)} grants (only the grants "
        f"with new claims: {'yes' if only_new else 'NO'}); fetched: {_types(second, 'fetched')}; "
        f"validated {second.validated()} (new {second.resources['ExplanationOfBenefit']['new']}, "
        f"changed {second.validated() - sum(second.resources[k]['new'] for k in RESOURCE_TYPES)})",
        f"  unchanged resources validated or sent again: {resent}; resources sent to connect in both "
        f"rounds {sent}, ledger rows {found['ledger_rows']} (each sent once: "
        f"{once})",
        f"database size: {found['database_bytes'] / 1e6:.1f} MB",
        "peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in found["rss"].items()),
        f"bench sync api_version={options.api_version} grants={n} claims={options.claims} "
        f"rtt_ms={options.rtt_ms} "
        f"first_s={first.seconds:.1f} first_grants_per_min={n / first.seconds * 60:.0f} "
        f"incremental_s={second.seconds:.1f} incremental_cms_requests={requests_2} "
        f"incremental_posts={second.posts} only_new={'yes' if only_new else 'no'} "
        f"validated_per_core_s={first_rate:.0f} validated_per_cpu_s={in_pool:.0f} "
        f"validator_per_cpu_s={own_rate:.0f} "
        f"db_mb={found['database_bytes'] / 1e6:.1f} resent={resent} sent_once={once}",
    ]
    return lines


def parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bluebutton.sandbox.tools.bench sync", description=__doc__
    )
    parser.add_argument("--grants", type=int, default=1000)
    parser.add_argument("--claims", type=int, default=20, help="claims per beneficiary")
    parser.add_argument("--rtt-ms", type=int, default=100, help="latency the emulated CMS adds")
    parser.add_argument("--new-share", type=float, default=0.1, help="share of grants given new claims")
    parser.add_argument("--new-claims", type=int, default=2, help="new claims each of those gets")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="BLUEBUTTON_SYNC_CONCURRENCY of each worker"
    )
    parser.add_argument("--sample", type=int, default=50, help="grants whose claims time the validator")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BLUEBUTTON_DATABASE_URL"),
        help="a PostgreSQL server to create a fresh database on (default: BLUEBUTTON_DATABASE_URL, "
        "else an embedded server in a temporary directory)",
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database")
    parser.add_argument(
        "--api-version",
        type=int,
        choices=(2, 3),
        default=2,
        help="the Blue Button API version the grants use",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.grants <= 30_000:
        parser.error("--grants must be 1..30000 (the emulator's users)")
    if not 0 < args.new_share <= 1:
        parser.error("--new-share must be in (0, 1]")
    return Options(
        args.grants,
        args.claims,
        args.rtt_ms,
        args.new_share,
        args.new_claims,
        args.concurrency,
        max(1, min(args.sample, args.grants)),
        args.database_url,
        args.keep_database,
        args.api_version,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    with tempfile.TemporaryDirectory(prefix="bluebutton-bench-sync-") as tmp:
        config = StackConfig(
            cms_args=["--latency-ms", str(options.rtt_ms), "--claims", str(options.claims)],
            connect_args=["--no-validate", "--rate-limit", "0"],
            connect_db=Path(tmp) / "connect.sqlite3",
            log_dir=Path(tmp),
        )
        with (
            fresh_database(options.database_url, options.keep_database) as database_url,
            running_stack(config) as stack,
        ):
            found = asyncio.run(measure(stack, options, database_url))
    for line in report(options, found):
        print(line)
    return 0
