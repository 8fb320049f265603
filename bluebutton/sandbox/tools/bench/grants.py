"""`pipenv run bench grants`: the operator listings at 10,000 and 100,000 grants.

For each size: a fresh database, the connector started on it (its migrations applied, no worker),
then grants filled in by bulk SQL (`fill`: a few statements over `generate_series`, seconds for
100,000 grants, their runs, ledger rows and some quarantine), then timed through HTTPS as an
operator meets them: a page of `GET /bluebutton/grants` at the start, in the middle (by cursor),
filtered by state and by patient; the largest page; the console's grant list signed in; and the
connector's RSS (from /proc) while 8 clients at once walk the whole list, page by page.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bluebutton.sandbox.tools.bench.procfs import status_kb
from bluebutton.sandbox.tools.bench.sync import fresh_database
from bluebutton.sandbox.tools.stack import StackConfig, ca_context, running_stack
from bluebutton.sync.crypto import new_key
from bluebutton.sync.keyset import encode

ADMIN_KEY = "bench-operator-key-0123456789-abcdefghijkl"
CONSOLE = "/bluebutton/console"
LISTERS = 8
PAGE = 100  # the API's default page
BIG_PAGE = 1000  # its largest

# Grants one a minute into the past; states as a long-running deployment has them (80 % active,
# 8 % failing, 5 % expired, 5 % revoked, 2 % disconnected); two runs each (the first full copy, the
# last incremental, failed for failing grants), 10 ledger rows (a Patient, 4 Coverage, 5 claims),
# and 2 quarantined claims for 1 grant in 100.
FILL = [
    """
    INSERT INTO bluebutton_grants (id, patient, api_version, state, scopes, access_grant_expiration,
        created_at, updated_at, next_sync_at, consecutive_failures)
    SELECT md5('grant' || i)::uuid, '-' || (10000000000000 + i)::text, 2,
        CASE WHEN i %% 100 < 80 THEN 'active' WHEN i %% 100 < 88 THEN 'failing'
             WHEN i %% 100 < 93 THEN 'expired' WHEN i %% 100 < 98 THEN 'revoked' ELSE 'disconnected' END,
        ARRAY['patient/ExplanationOfBenefit.read', 'patient/Coverage.read', 'patient/Patient.read',
            'profile'],
        now() + make_interval(days => 5 + i %% 390),
        now() - make_interval(mins => %(n)s - i), now(),
        CASE WHEN i %% 100 < 88 THEN now() + make_interval(mins => i %% 1440) END,
        CASE WHEN i %% 100 BETWEEN 80 AND 87 THEN 1 + i %% 5 ELSE 0 END
    FROM generate_series(1, %(n)s) AS i
    """,
    """
    INSERT INTO bluebutton_runs (grant_id, status, queued_at, started_at, finished_at, resources, bundles)
    SELECT id, 'succeeded', created_at, created_at, created_at + interval '20 seconds',
        '{"Patient": {"fetched": 1, "new": 1, "changed": 0, "unchanged": 0, "invalid": 0},
          "Coverage": {"fetched": 4, "new": 4, "changed": 0, "unchanged": 0, "invalid": 0},
          "ExplanationOfBenefit": {"fetched": 5, "new": 5, "changed": 0, "unchanged": 0, "invalid": 0}}',
        jsonb_build_array(jsonb_build_object('uuid', md5(id::text || 'b'), 'data_record_location',
            'FHIR-R4_BUNDLE:0:' || md5(id::text), 'entry_count', 10, 'resource_type', 'Bundle'))
    FROM bluebutton_grants
    """,
    """
    INSERT INTO bluebutton_runs (grant_id, status, queued_at, started_at, finished_at, resources, issues)
    SELECT id, CASE WHEN state = 'failing' THEN 'failed' ELSE 'succeeded' END,
        now() - interval '1 hour', now() - interval '1 hour', now() - interval '59 minutes',
        '{"ExplanationOfBenefit": {"fetched": 2, "new": 0, "changed": 0, "unchanged": 2, "invalid": 0}}',
        CASE WHEN state = 'failing' THEN '[{"severity": "error", "code": "transient", "diagnostics":
            "Blue Button answered 503 (Service Unavailable) after 3 attempts; retried later"}]'::jsonb
        ELSE '[]'::jsonb END
    FROM bluebutton_grants
    """,
    """
    INSERT INTO bluebutton_ledger (grant_id, resource_type, resource_id, content_hash, record_uuid,
        data_record_location, stored_at)
    SELECT g.id, t.kind, t.kind || g.patient || '-' || t.k, decode(md5(g.id::text || t.kind || t.k), 'hex'),
        md5(g.id::text || t.k)::uuid::text, 'FHIR-R4_BUNDLE:0:' || md5(g.id::text), g.created_at
    FROM bluebutton_grants g CROSS JOIN (
        SELECT 'Patient' AS kind, 1 AS k
        UNION ALL SELECT 'Coverage', k FROM generate_series(1, 4) AS k
        UNION ALL SELECT 'ExplanationOfBenefit', k FROM generate_series(1, 5) AS k
    ) AS t
    """,
    """
    INSERT INTO bluebutton_quarantine (grant_id, resource_type, resource_id, content_hash, issues)
    SELECT g.id, 'ExplanationOfBenefit', 'carrier-q' || k || g.patient, decode(md5(g.id::text || k), 'hex'),
        '[{"severity": "error", "code": "structure", "expression": ["ExplanationOfBenefit.status"],
           "diagnostics": "ExplanationOfBenefit.status: field required"}]'
    FROM bluebutton_grants g CROSS JOIN generate_series(1, 2) AS k
    WHERE get_byte(decode(md5(g.id::text), 'hex'), 0) < 3
    """,
]


def fill(conninfo: str, grants: int) -> None:
    """`grants` grants with their runs, ledger and quarantine, in one transaction, then ANALYZE."""
    with psycopg.connect(conninfo) as connection:
        with connection.transaction():
            for statement in FILL:
                connection.execute(statement.encode(), {"n": grants})
        connection.execute(b"ANALYZE")


@dataclass
class Timing:
    label: str
    seconds: list[float]
    bytes: int

    def line(self) -> str:
        median = statistics.median(self.seconds) * 1000
        worst = max(self.seconds) * 1000
        return f"  {self.label:<44} {median:8.1f} ms median {worst:8.1f} ms max {self.bytes / 1000:9.1f} kB"


class _SignInForm(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__()
        self.csrf = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("name") == "csrf":
            self.csrf = str(values.get("value") or "")


async def _time(
    label: str, call: Callable[[], Awaitable[httpx.Response]], repeat: int
) -> tuple[Timing, httpx.Response]:
    seconds: list[float] = []
    answer: httpx.Response | None = None
    for _ in range(repeat):
        started = time.perf_counter()
        answer = await call()
        seconds.append(time.perf_counter() - started)
        assert answer.status_code == 200, (label, answer.status_code, answer.text[:300])
    assert answer is not None
    return Timing(label, seconds, len(answer.content)), answer


def _rss_kb(pid: int) -> int:
    return status_kb(pid, "VmRSS")


class RssSampler(threading.Thread):
    """The connector's RSS every 20 ms; `peak` is the largest seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, _rss_kb(self.pid))


async def walk(client: httpx.AsyncClient, url: str) -> tuple[int, int]:
    """Every grant, page after page of the largest size; (grants, pages)."""
    seen = pages = 0
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": BIG_PAGE} | ({"cursor": cursor} if cursor else {})
        answer = await client.get(f"{url}/bluebutton/grants", params=params)
        assert answer.status_code == 200, answer.text[:300]
        body = answer.json()
        seen += len(body["grants"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages


def _middle_cursor(conninfo: str, grants: int) -> str:
    with psycopg.connect(conninfo) as connection:
        row = connection.execute(
            b"SELECT created_at, id FROM bluebutton_grants ORDER BY created_at, id OFFSET %s LIMIT 1",
            (grants // 2,),
        ).fetchone()
    assert row is not None
    return encode(row[0].isoformat(), str(row[1]))


async def measure(url: str, pid: int, conninfo: str, grants: int, repeat: int) -> list[str]:
    lines: list[str] = []
    middle = _middle_cursor(conninfo, grants)
    headers = {"X-API-Key": ADMIN_KEY}
    async with httpx.AsyncClient(verify=ca_context(), timeout=600.0, headers=headers) as client:
        api = f"{url}/bluebutton/grants"
        cases: list[tuple[str, dict[str, Any], int]] = [
            (f"API first page ({PAGE})", {}, repeat),
            (f"API page in the middle ({PAGE}, by cursor)", {"cursor": middle}, repeat),
            (f"API state=failing ({PAGE})", {"state": "failing"}, repeat),
            ("API patient search (prefix, 1 match)", {"patient": f"-{10000000000000 + grants // 3}"}, repeat),
            (f"API largest page ({BIG_PAGE})", {"limit": BIG_PAGE}, max(3, repeat // 4)),
        ]
        for label, params, times in cases:
            timing, answer = await _time(label, partial(client.get, api, params=params), times)
            lines.append(timing.line())
            if "counts" in answer.json() and label.startswith("API first"):
                lines.append(f"  (counts by state: {answer.json()['counts']})")
        # The console: sign in like a browser, then its grant list (50 a page).
        form = await client.get(f"{url}{CONSOLE}")
        signed = await client.post(
            f"{url}{CONSOLE}/sign-in", data={"csrf": _SignInForm(form.text).csrf, "key": ADMIN_KEY}
        )
        assert signed.status_code == 303, signed.text[:300]
        for label, params in (
            ("console first page (50)", {}),
            ("console page in the middle", {"cursor": middle}),
        ):
            timing, answer = await _time(label, partial(client.get, f"{url}{CONSOLE}", params=params), repeat)
            assert 'class="grant"' in answer.text
            lines.append(timing.line())

    idle = _rss_kb(pid)
    sampler = RssSampler(pid)
    sampler.start()
    started = time.perf_counter()

    async def one_lister() -> tuple[int, int, float]:
        async with httpx.AsyncClient(verify=ca_context(), timeout=600.0, headers=headers) as own:
            begun = time.perf_counter()
            seen, pages = await walk(own, url)
            return seen, pages, time.perf_counter() - begun

    walks = await asyncio.gather(*(one_lister() for _ in range(LISTERS)))
    elapsed = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    assert all(seen == grants for seen, _, _ in walks), walks
    each = sorted(w[2] for w in walks)
    lines.append(
        f"  {LISTERS} concurrent full listings ({walks[0][1]} pages of {BIG_PAGE}): "
        f"{each[0]:.1f}-{each[-1]:.1f} s each, {elapsed:.1f} s in all"
    )
    lines.append(
        f"  connector RSS: {idle / 1024:.0f} MB before, {sampler.peak / 1024:.0f} MB peak during them"
    )
    return lines


def bench_size(grants: int, server: str | None, repeat: int) -> list[str]:
    with (
        fresh_database(server, keep=False) as conninfo,
        tempfile.TemporaryDirectory(prefix="bb-bench-") as tmp,
    ):
        env = {
            "BLUEBUTTON_DATABASE_URL": conninfo,
            "BLUEBUTTON_TOKEN_KEYS": new_key(),
            "BLUEBUTTON_ADMIN_API_KEY": ADMIN_KEY,
            "BLUEBUTTON_SYNC_WORKER": "off",
            "BLUEBUTTON_VALIDATION_WORKERS": "1",
        }
        config = StackConfig(connector_env=env, log_dir=Path(tmp))
        with running_stack(config) as stack:
            started = time.perf_counter()
            fill(conninfo, grants)
            filled = time.perf_counter() - started
            pid = stack.processes["connector"].pid
            lines = [f"{grants:,} grants (filled in {filled:.1f} s by bulk SQL)"]
            lines += asyncio.run(measure(stack.connector_url, pid, conninfo, grants, repeat))
            # Other work on the machine moves every figure: say how loaded it was.
            lines.append(f"  load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench grants", description=__doc__)
    parser.add_argument("--grants", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=20, help="requests per timed case")
    parser.add_argument(
        "--database-server",
        default=os.environ.get("BLUEBUTTON_BENCH_DATABASE_SERVER"),
        help="a PostgreSQL server URL to create the bench database on (default: an embedded server)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for size in args.grants:
        for line in bench_size(size, args.database_server, args.repeat):
            print(line, flush=True)
    return 0
