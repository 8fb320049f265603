"""`pipenv run bench`: time a whole pull through the real processes, against the naive way.

Starts the emulated CMS (with added latency and a fixed claim count), the emulated connect (no
validation, no rate limit: we time the connector, not connect) and the connector; authorizes a
user; pulls once with `return_cms` to size the Bundle; runs the pull several times while polling
`/health`; then runs the naive pull in the same run (sequential `next` with `_count=10`, one-Bundle
validation, sequential POSTs) and prints both. The connector's RSS is read from /proc: its peak
over all pulls against its idle RSS before the first."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
from fhir.resources.R4B.bundle import Bundle

from bluebutton.fhir.bundles import BundleHeader, split_entries
from bluebutton.sandbox.tools.bench.procfs import children, status_kb
from bluebutton.sandbox.tools.login import token_set
from bluebutton.sandbox.tools.stack import Stack, StackConfig, ca_context, running_stack

USER = 0  # BBUser00000; --claims makes every user have the same number of claims


@dataclass
class Run:
    total: float
    fetch: float
    validate: float
    forward: float
    pages: int


def _server_timing(header: str) -> dict[str, float]:
    timings = {}
    for part in header.split(","):
        name, _, value = part.strip().partition(";dur=")
        if value:
            timings[name] = float(value) / 1000
    return timings


class HealthProbe(threading.Thread):
    """Polls `/health` every few milliseconds and records each latency."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.latencies: list[float] = []
        self.running = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(verify=ca_context(), timeout=10.0) as client:
            client.get(self.url)
            while not self.done.is_set():
                if not self.running.wait(0.05):
                    continue
                started = time.perf_counter()
                client.get(self.url).raise_for_status()
                self.latencies.append(time.perf_counter() - started)
                time.sleep(0.01)


def worker_rss_mb(connector: int) -> tuple[int, float, float]:
    """The validation pool: (workers, the forkserver's RSS = a fresh worker's, largest peak), MB."""
    servers = children(connector)
    workers = [w for server in servers for w in children(server)]
    if not servers or not workers:
        return 0, 0.0, 0.0
    fresh = max(status_kb(server, "VmRSS") for server in servers) / 1024
    return len(workers), fresh, max(status_kb(w, "VmHWM") for w in workers) / 1024


def connector_pull(stack: Stack, token: str, client: httpx.Client, pages_per: int) -> Run:
    started = time.perf_counter()
    response = client.get(
        f"{stack.connector_url}/bluebutton/fhir",
        params={"resource_type": "ExplanationOfBenefit"},
        headers={"Authorization": f"Bearer {token}"},
    )
    total = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"pull failed: HTTP {response.status_code} {response.text[:500]}")
    timings = _server_timing(response.headers.get("server-timing", ""))
    return Run(total, timings["fetch"], timings["validate"], timings["forward"], pages_per)


def naive_pull(stack: Stack, token: str, client: httpx.Client, limit: int) -> tuple[Run, list[bytes]]:
    """What a client of the official SDK does: follow `next` 10 at a time, validate one Bundle."""
    started = time.perf_counter()
    url: str | None = f"{stack.cms_url}/v2/fhir/ExplanationOfBenefit?_count=10"
    entries: list[dict[str, object]] = []
    pages = 0
    while url:
        page = client.get(url, headers={"Authorization": f"Bearer {token}"}).json()
        pages += 1
        entries += page.get("entry", [])
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    fetched = time.perf_counter()
    merged = {**BundleHeader.fresh(len(entries)).as_dict(), "entry": entries}
    Bundle.model_validate(merged)
    validated = time.perf_counter()
    entry_bytes = [orjson.dumps(e) for e in entries]
    for piece in split_entries(entry_bytes, limit, BundleHeader.fresh(len(entries))):
        client.post(
            f"{stack.connect_url}/fhir/Bundle",
            content=piece.body,
            headers={"Content-Type": "application/fhir+json"},
        ).raise_for_status()
    done = time.perf_counter()
    return Run(done - started, fetched - started, validated - fetched, done - validated, pages), entry_bytes


def connect_validation_seconds(entry_bytes: list[bytes], limit: int) -> float:
    """What connect itself spends validating the same pieces (fhir.resources R4B here)."""
    started = time.perf_counter()
    for piece in split_entries(entry_bytes, limit, BundleHeader.fresh(len(entry_bytes))):
        Bundle.model_validate_json(piece.body)
    return time.perf_counter() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bluebutton.sandbox.tools.bench", description=__doc__)
    parser.add_argument("--claims", type=int, default=150)
    parser.add_argument("--rtt-ms", type=int, default=100, help="latency the emulated CMS adds")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline-runs", type=int, default=2)
    parser.add_argument("--limit", type=int, default=600_000, help="BLUEBUTTON_LFH_MAX_BUNDLE_BYTES")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bluebutton-bench-") as tmp:
        config = StackConfig(
            cms_args=["--latency-ms", str(args.rtt_ms), "--claims", str(args.claims)],
            connect_args=["--no-validate", "--rate-limit", "0"],
            connector_env={"BLUEBUTTON_LFH_MAX_BUNDLE_BYTES": str(args.limit)},
            log_dir=Path(tmp),
        )
        with running_stack(config) as stack:
            pid = stack.processes["connector"].pid
            token = token_set(stack.connector_url, USER)["access_token"]
            idle_kb = status_kb(pid, "VmRSS")
            probe = HealthProbe(f"{stack.connector_url}/health")
            probe.start()
            with httpx.Client(verify=ca_context(), timeout=300.0) as client:
                merged = client.get(
                    f"{stack.connector_url}/bluebutton/fhir",
                    params={"resource_type": "ExplanationOfBenefit", "return_cms": "true"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                bundle_bytes = len(merged.content)
                pages = -(-args.claims // 50)
                time.sleep(0.5)
                warm_kb = status_kb(pid, "VmRSS")  # what the process keeps between pulls
                probe.running.set()
                runs = [connector_pull(stack, token, client, pages) for _ in range(args.runs)]
                probe.running.clear()
                peak_kb = status_kb(pid, "VmHWM")
                workers = worker_rss_mb(pid)
                baseline: list[Run] = []
                entry_bytes: list[bytes] = []
                for _ in range(args.baseline_runs):
                    run, entry_bytes = naive_pull(stack, token, client, args.limit)
                    baseline.append(run)
            probe.done.set()
            probe.join()
    connect_seconds = connect_validation_seconds(entry_bytes, args.limit)

    def row(label: str, rs: list[Run]) -> str:
        def med(name: str) -> float:
            return float(statistics.median(getattr(r, name) for r in rs))

        return (
            f"{label:<10}{args.claims:>7}{rs[0].pages:>6}{args.rtt_ms:>8}"
            f"{med('fetch'):>9.3f}{med('validate'):>11.3f}{med('forward'):>10.3f}{med('total'):>9.3f}"
        )

    total = statistics.median(r.total for r in runs)
    base = statistics.median(r.total for r in baseline)
    p50, p99 = _pct(probe.latencies, 0.5) * 1000, _pct(probe.latencies, 0.99) * 1000
    peak_mb = peak_kb / 1024  # over every pull, against the RSS before the first one
    growth = (peak_kb - idle_kb) * 1024
    print(
        f"{'':<10}{'claims':>7}{'pages':>6}{'rtt_ms':>8}{'fetch_s':>9}{'validate_s':>11}"
        f"{'forward_s':>10}{'total_s':>9}"
    )
    print(row("connector", runs))
    print(row("naive", baseline))
    print(f"ratio naive/connector: {base / total:.2f}  (medians of {len(runs)} and {len(baseline)} runs)")
    print(f"/health during pulls: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(probe.latencies)} probes)")
    print(
        f"bundle JSON {bundle_bytes / 1e6:.2f} MB; connector RSS idle {idle_kb / 1024:.0f} MB, peak "
        f"{peak_mb:.0f} MB over all pulls (+{growth / max(bundle_bytes, 1):.1f}x the bundle); "
        f"idle after the first pull {warm_kb / 1024:.0f} MB"
    )
    print(
        f"validation workers: {workers[0]}, each {workers[1]:.0f} MB when fresh (the forkserver's "
        f"size, mostly shared), largest peak {workers[2]:.0f} MB"
    )
    print(
        f"connect-side validation of the same Bundles (not in the totals): {connect_seconds:.2f} s "
        "with fhir.resources R4B 8.3 (connect 0.42.0 uses 6.4.0: about 3.6 s for 150 claims)"
    )
    print(
        f"bench claims={args.claims} rtt_ms={args.rtt_ms} total_s={total:.3f} baseline_s={base:.3f} "
        f"ratio={base / total:.2f} health_p99_ms={p99:.1f} peak_rss_mb={peak_mb:.0f}"
    )
    return 0
