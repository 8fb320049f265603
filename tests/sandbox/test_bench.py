"""`pipenv run bench` end to end at a toy size: it runs, and its last line is machine-readable.

Timings are printed, never asserted: this checks the benchmark's contract, not the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOY = "--claims 60 --rtt-ms 5 --runs 2 --baseline-runs 1"
LAST_LINE = re.compile(
    r"bench claims=(?P<claims>\d+) rtt_ms=(?P<rtt>\d+) total_s=\d+\.\d{3} baseline_s=\d+\.\d{3} "
    r"ratio=\d+\.\d{2} health_p99_ms=\d+\.\d peak_rss_mb=\d+"
)


def test_bench_prints_its_table_and_a_machine_readable_last_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bluebutton.sandbox.bench", *TOY.split()],
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
