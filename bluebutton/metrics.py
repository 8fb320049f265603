"""Prometheus metrics: the app's own counters and histograms, and grant keeping read at scrape.

- HTTP: requests by method, route *template* (never the path as sent: it can hold an id) and
  status, counted and timed by the ASGI middleware in `web/http_metrics.py`.
- Upstreams: a transport wrapper on the shared CMS and connect clients counts calls by outcome
  (2xx, 4xx, 429, 5xx, timeout, error) and times them to the response headers; it also counts
  refreshes (POSTs of `grant_type=refresh_token` to CMS's token endpoint) and Bundles POSTed to
  connect. No URL, query, patient id or token is ever a label.
- Grant keeping (grants by state, runs by status and duration, entries, the job queue) is read
  from PostgreSQL at each scrape, so it covers every worker process, not only this one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

QUEUE = "bluebutton-sync"  # shown at zero when no job exists
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "(unmatched)"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RUN_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


class Metrics:
    """One app's registry (several apps in one process, as in tests, never share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "bluebutton_http_requests",
            "HTTP requests answered, by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bluebutton_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream = Counter(
            "bluebutton_upstream_requests",
            "Calls to CMS and connect by outcome: 2xx, 4xx, 429, 5xx, timeout, error",
            ["upstream", "outcome"],
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "bluebutton_upstream_request_duration_seconds",
            "Time to an upstream's response headers, by outcome",
            ["upstream", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.refreshes = Counter(
            "bluebutton_token_refreshes",
            "Access-token refreshes at CMS by outcome: refreshed, rejected (4xx), error",
            ["outcome"],
            registry=self.registry,
        )
        self.bundles = Counter(
            "bluebutton_connect_bundles_posted",
            "Bundles POSTed to connect, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in ("refreshed", "rejected", "error"):
            self.refreshes.labels(outcome)
        for outcome in ("2xx", "4xx", "429", "5xx", "timeout", "error"):
            self.bundles.labels(outcome)

    def measure(self, upstream: str) -> Callable[[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport]:
        """What an upstream client wraps its transport in when it is built, so every call counts."""
        return lambda inner: MeasuredTransport(inner, upstream, self)

    def render(self, database: list[Any] | None = None) -> bytes:
        text = generate_latest(self.registry)
        if database is not None:
            extra = CollectorRegistry(auto_describe=False)
            extra.register(_Fixed(database))
            text += generate_latest(extra)
        return text


def outcome_of(status: int) -> str:
    if status == 429:
        return "429"
    return f"{status // 100}xx" if 200 <= status < 600 else "error"


class MeasuredTransport(httpx.AsyncBaseTransport):
    """A shared client's transport, wrapped when the client is built: every call is counted and
    timed, nothing else changes."""

    def __init__(self, inner: httpx.AsyncBaseTransport, upstream: str, metrics: Metrics) -> None:
        self.inner = inner
        self.upstream = upstream
        self.metrics = metrics

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TimeoutException:
            self._record(request, "timeout", started)
            raise
        except httpx.TransportError:
            self._record(request, "error", started)
            raise
        self._record(request, outcome_of(response.status_code), started)
        return response

    def _record(self, request: httpx.Request, outcome: str, started: float) -> None:
        m = self.metrics
        m.upstream.labels(self.upstream, outcome).inc()
        m.upstream_latency.labels(self.upstream, outcome).observe(time.perf_counter() - started)
        if self.upstream == "cms" and _is_refresh(request):
            m.refreshes.labels(
                "refreshed" if outcome == "2xx" else "rejected" if outcome in ("4xx", "429") else "error"
            ).inc()
        if self.upstream == "connect" and request.method == "POST" and request.url.path.startswith("/fhir"):
            m.bundles.labels(outcome).inc()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _is_refresh(request: httpx.Request) -> bool:
    if request.method != "POST" or not request.url.path.endswith("/o/token/"):
        return False
    try:
        return b"grant_type=refresh_token" in request.content
    except httpx.RequestNotRead:
        return False


class _Fixed(Collector):
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Any:
        return iter(self.families)


_GRANTS = "SELECT state, count(*) FROM bluebutton_grants GROUP BY state"
_RUNS = (
    "SELECT status, count(*), count(finished_at - started_at), "
    "coalesce(sum(extract(epoch FROM finished_at - started_at)), 0)::float8 "
    "FROM bluebutton_runs GROUP BY status"
)
_RUN_BUCKETS = (
    "SELECT r.status, b.le, count(*) FILTER (WHERE extract(epoch FROM r.finished_at - r.started_at) <= b.le) "
    "FROM bluebutton_runs r CROSS JOIN unnest(%s::float8[]) AS b(le) GROUP BY r.status, b.le"
)
_ENTRIES = (
    "SELECT coalesce(sum((c->>'fetched')::bigint), 0), "
    "coalesce(sum((c->>'new')::bigint + (c->>'changed')::bigint), 0), "
    "coalesce(sum((c->>'invalid')::bigint), 0) "
    "FROM bluebutton_runs, jsonb_each(resources) AS t(kind, c)"
)
_FORWARDED = (
    "SELECT coalesce(sum((b->>'entry_count')::bigint), 0) "
    "FROM bluebutton_runs, jsonb_array_elements(bundles) AS b"
)
_DELIVERIES = "SELECT target, status, count(*) FROM bluebutton_event_deliveries GROUP BY target, status"
_JOBS = (
    "SELECT j.queue_name, "
    "count(*) FILTER (WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())), "
    "count(*) FILTER (WHERE j.status = 'todo' AND j.scheduled_at > now()), "
    "count(*) FILTER (WHERE j.status = 'doing'), "
    "coalesce(max(extract(epoch FROM now() - coalesce(j.scheduled_at, e.at))) FILTER ("
    "WHERE j.status = 'todo' AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())), 0)::float8 "
    "FROM procrastinate_jobs j LEFT JOIN LATERAL (SELECT max(at) AS at FROM procrastinate_events "
    "WHERE job_id = j.id AND type = 'deferred') e ON true "
    "WHERE j.status IN ('todo', 'doing') GROUP BY j.queue_name"
)


def database_down() -> list[Any]:
    """What a scrape says while grant keeping's database does not answer."""
    up = GaugeMetricFamily(
        "bluebutton_database_up", "1 when grant keeping's database answered this scrape, else 0"
    )
    up.add_metric([], 0.0)
    return [up]


async def read_database(
    pool: AsyncConnectionPool, states: tuple[str, ...], stalled_seconds: float = 60.0
) -> list[Any]:
    """Grant keeping's figures, read now (a few aggregate queries per scrape)."""
    grants = GaugeMetricFamily("bluebutton_grants", "Stored grants by state", labels=["state"])
    runs = GaugeMetricFamily("bluebutton_runs", "Runs by status (all kept runs)", labels=["status"])
    durations = HistogramMetricFamily(
        "bluebutton_run_duration_seconds", "Duration of finished runs, by status", labels=["status"]
    )
    entries = CounterMetricFamily(
        "bluebutton_sync_entries",
        "Entries of all runs: fetched from CMS, validated (new or changed), invalid, forwarded to connect",
        labels=["stage"],
    )
    waiting = GaugeMetricFamily("bluebutton_jobs_waiting", "Jobs due and not started", labels=["queue"])
    scheduled = GaugeMetricFamily(
        "bluebutton_jobs_scheduled", "Jobs waiting for a later time", labels=["queue"]
    )
    running = GaugeMetricFamily("bluebutton_jobs_running", "Jobs a worker is running", labels=["queue"])
    oldest = GaugeMetricFamily(
        "bluebutton_jobs_oldest_waiting_seconds", "Age of the oldest due job not started", labels=["queue"]
    )
    unknown = GaugeMetricFamily(
        "bluebutton_records_location_unknown",
        "Resources connect stored but answered without a data_record_location (its Kafka-callback race)",
    )
    deliveries = GaugeMetricFamily(
        "bluebutton_event_deliveries",
        "Event deliveries by target (nats, webhook:<hash of the URL>) and status",
        labels=["target", "status"],
    )
    async with pool.connection() as connection:
        delivery_rows = await (await connection.execute(_DELIVERIES)).fetchall()
        by_state: dict[str, int] = dict(await (await connection.execute(_GRANTS)).fetchall())
        run_rows = await (await connection.execute(_RUNS)).fetchall()
        bucket_rows = await (await connection.execute(_RUN_BUCKETS, (list(RUN_BUCKETS),))).fetchall()
        fetched, validated, invalid = (await (await connection.execute(_ENTRIES)).fetchone()) or (0, 0, 0)
        forwarded_row = await (await connection.execute(_FORWARDED)).fetchone()
        job_rows = await (await connection.execute(_JOBS)).fetchall()
        alive_row = await (
            await connection.execute(
                "SELECT count(*) FROM procrastinate_workers "
                "WHERE last_heartbeat > now() - make_interval(secs => %s)",
                (stalled_seconds,),
            )
        ).fetchone()
        unknown_row = await (
            await connection.execute(
                "SELECT count(*) FROM bluebutton_ledger WHERE data_record_location IS NULL"
            )
        ).fetchone()
    unknown.add_metric([], float(unknown_row[0] if unknown_row else 0))
    up = GaugeMetricFamily(
        "bluebutton_database_up", "1 when grant keeping's database answered this scrape, else 0"
    )
    up.add_metric([], 1.0)
    alive = GaugeMetricFamily(
        "bluebutton_sync_workers_alive", "Sync workers (any process) whose heartbeat is fresh"
    )
    alive.add_metric([], float(alive_row[0] if alive_row else 0))
    for state in states:
        grants.add_metric([state], float(by_state.get(state, 0)))
    cumulative: dict[str, dict[float, int]] = {}
    for status, le, count in bucket_rows:
        cumulative.setdefault(status, {})[float(le)] = int(count)
    for status, count, finished, total in run_rows:
        runs.add_metric([status], float(count))
        if finished:
            buckets = [(str(b), float(cumulative.get(status, {}).get(b, 0))) for b in RUN_BUCKETS]
            durations.add_metric([status], [*buckets, ("+Inf", float(finished))], float(total))
    forwarded = forwarded_row[0] if forwarded_row else 0
    for stage, value in (
        ("fetched", fetched),
        ("validated", validated),
        ("invalid", invalid),
        ("forwarded", forwarded),
    ):
        entries.add_metric([stage], float(value))
    for queue, due, later, doing, age in job_rows or [(QUEUE, 0, 0, 0, 0.0)]:
        waiting.add_metric([queue], float(due))
        scheduled.add_metric([queue], float(later))
        running.add_metric([queue], float(doing))
        oldest.add_metric([queue], float(age))
    for target, status, count in delivery_rows:
        deliveries.add_metric([target, status], float(count))
    return [
        up,
        alive,
        grants,
        runs,
        durations,
        entries,
        waiting,
        scheduled,
        running,
        oldest,
        unknown,
        deliveries,
    ]
