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

import asyncio
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg

from bluebutton.cms.client import CmsClient
from bluebutton.fhir.validator import Validator
from bluebutton.resources import Overrides, open_resources
from bluebutton.sandbox.tools.bench.enrol import enrol_all
from bluebutton.sandbox.tools.bench.options import Options, parse
from bluebutton.sandbox.tools.bench.procfs import peak_rss_mb
from bluebutton.sandbox.tools.bench.report import report
from bluebutton.sandbox.tools.bench.rounds import (
    WORKERS,
    add_new_claims,
    run_round,
    scalar,
    until,
    workers_up,
)
from bluebutton.sandbox.tools.bench.speed import validator_speed
from bluebutton.sandbox.tools.stack import Stack, StackConfig, ca_context, running_stack
from bluebutton.settings import Settings
from bluebutton.sync.crypto import new_key
from bluebutton.sync.database import _start_embedded, _stop_embedded
from bluebutton.sync.service import SyncService, open_sync

NEVER = "0 0 1 1 *"  # the sweep's cron in the workers: once a year, so only the rounds run
# Worker settings the bench passes on from its environment (to try other sizes).
TUNABLE = ("BLUEBUTTON_DATABASE_POOL_SIZE", "BLUEBUTTON_CMS_FETCH_CONCURRENCY")


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
    # A validator never started: this process validates nothing in the rounds.
    overrides = Overrides(validator=Validator(1))
    async with (
        open_resources(settings, overrides) as resources,
        open_sync(resources, worker=False) as service,
    ):
        yield service, resources.cms


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
        await until(
            lambda: workers_up(service),
            "two workers to start",
            seconds=300.0,
        )
        ids = [e.grant_id for e in enrolled]
        first = await run_round(service, admin, stack, ids)
        changed_users = [e.user for e in enrolled[:: max(1, round(1 / options.new_share))]]
        await add_new_claims(admin, stack.cms_url, changed_users, options.new_claims)
        changed = {e.grant_id for e in enrolled if e.user in set(changed_users)}
        second = await run_round(service, admin, stack, ids)
        database_bytes = await scalar(service, "SELECT pg_database_size(current_database())")
        ledger_rows = await scalar(service, "SELECT count(*) FROM bluebutton_ledger")
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


def worker_validation_mode(stack: Stack, name: str) -> str:
    """What the worker's validation pool ran: its log names a fallback to the unpatched library."""
    assert stack.log_dir is not None
    log = (stack.log_dir / f"{name}.log").read_text(errors="replace")
    return "standard" if "validation speedups off" in log else "fast"


def main(argv: list[str] | None = None) -> int:
    options = parse(argv, __doc__ or "")
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
