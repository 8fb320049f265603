"""`pipenv run bench grants` end to end at a toy size, on the test PostgreSQL server: it fills,
lists every grant from 8 clients (the bench asserts each saw them all) and prints its figures.

Timings are printed, never asserted: this checks the benchmark's contract, not the machine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.sync.conftest import database_server  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]


def test_bench_grants_fills_lists_and_prints_its_figures(database_server: str) -> None:  # noqa: F811
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bluebutton.sandbox.tools.bench",
            "grants",
            "--grants",
            "1200",
            "--repeat",
            "2",
            "--database-server",
            database_server,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith("1,200 grants (filled in ")
    for label in ("API first page (100)", "API largest page (1000)", "console first page (50)"):
        assert re.search(rf"{re.escape(label)}\s+\d+\.\d ms median", out), out
    assert "'active': 960, 'failing': 96" in out  # the fill's mix
    assert re.search(r"8 concurrent full listings \(2 pages of 1000\)", out), out
    assert re.search(r"connector RSS: \d+ MB before, \d+ MB peak", out), out
