"""`pipenv run bench` end to end at a toy size: it runs, and its last line is machine-readable.

Timings are printed, never asserted: this checks the benchmark's contract, not the machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOY = "--claims 60 --rtt-ms 5 --runs 2 --baseline-runs 1"
LAST_LINE = re.compile(
    r"bench claims=(?P<claims>\d+) rtt_ms=(?P<rtt>\d+) total_s=\d+\.\d{3} baseline_s=\d+\.\d{3} "
    r"ratio=\d+\.\d{2} health_p99_ms=\d+\.\d peak_rss_mb=\d+"
)


def test_bench_prints_its_table_and_a_machine_readable_last_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bluebutton.sandbox.tools.bench", *TOY.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert (match["claims"], match["rtt"]) == ("60", "5")
    table = "\n".join(lines)
    for label in ("connector", "naive", "ratio naive/connector", "/health during pulls", "RSS idle"):
        assert label in table
    connector_row = next(line for line in lines if line.startswith("connector "))
    assert connector_row.split()[1:4] == ["60", "2", "5"]  # claims, pages of 50, RTT


SYNC_TOY = "sync --grants 5 --claims 5 --rtt-ms 5 --new-share 0.4 --new-claims 2 --sample 2"
SYNC_LAST_LINE = re.compile(
    r"bench sync api_version=(?P<version>[23]) grants=(?P<grants>\d+) claims=5 rtt_ms=5 "
    r"first_s=\d+\.\d first_grants_per_min=\d+ "
    r"incremental_s=\d+\.\d incremental_cms_requests=(?P<requests>\d+) incremental_posts=(?P<posts>\d+) "
    r"only_new=(?P<only_new>yes|no) validated_per_core_s=\d+ validated_per_cpu_s=\d+ "
    r"validator_per_cpu_s=\d+ db_mb=\d+\.\d "
    r"resent=(?P<resent>-?\d+) sent_once=(?P<once>yes|no)"
)


@pytest.mark.e2e
@pytest.mark.parametrize("version", ["2", "3"])
def test_bench_sync_runs_both_rounds_through_the_workers_and_sends_only_what_is_new(version: str) -> None:
    """Five grants through two real workers: the incremental round asks CMS three times per grant,
    POSTs once for each grant given new claims (a share of 0.4 of five is every second grant:
    users 0, 2 and 4), and validates nothing it had stored; on either API version."""
    database = os.environ.get("BLUEBUTTON_TEST_DATABASE_URL")
    argv = [*SYNC_TOY.split(), "--api-version", version, *(["--database-url", database] if database else [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLUEBUTTON_")}
    done = subprocess.run(
        [sys.executable, "-m", "bluebutton.sandbox.tools.bench", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    match = SYNC_LAST_LINE.fullmatch(lines[-1])
    assert match, lines[-1]
    assert match["grants"] == "5" and match["version"] == version
    # Patient, Coverage, ExplanationOfBenefit: one page each; v3 also asks for the insurance card
    assert match["requests"] == ("15" if version == "2" else "20")
    assert (match["posts"], match["only_new"], match["resent"], match["once"]) == ("3", "yes", "0", "yes")
    table = "\n".join(lines)
    for label in ("first round:", "incremental round (3 grants", "database size:", "CPU seconds:"):
        assert label in table
    peaks = next(line for line in lines if line.startswith("peak RSS: "))
    assert "worker-1 " in peaks and "worker-2 " in peaks
