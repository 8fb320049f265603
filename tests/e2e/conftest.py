"""One running stack for the whole e2e session: emulated CMS, emulated connect and the connector as
real processes on loopback ports, HTTPS verified against `local-certs/ca.pem`.

The processes' logs (and connect's SQLite file) live in one temporary folder, named at the end of the
run and, with the tail of each log, in the report of every failed test.

connect starts with its rate limit off: whether a one-second window fills depends on this machine's
speed, so the test of connect's 429 makes connect refuse a given number of POSTs instead
(`throttle_next`). The connector's CMS retry backoff is 0.05 s instead of 0.5 s so the suite stays
fast; everything else is the connector's default configuration.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from bluebutton.sandbox.tools.stack import Stack, StackConfig
from tests.e2e.harness import Harness, running_stack

HERE = Path(__file__).resolve().parent
LOG_DIR = pytest.StashKey[Path]()
LOG_TAIL_LINES = 40

CONNECTOR_ENV = {"BLUEBUTTON_CMS_RETRY_BACKOFF_SECONDS": "0.05"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


def _log_tails(log_dir: Path) -> str:
    parts = [f"process logs: {log_dir}"]
    for log in sorted(log_dir.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        parts.append(f"--- {log.name} (last {len(lines)} lines) ---")
        parts += lines
    return "\n".join(parts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    log_dir = item.config.stash.get(LOG_DIR, None)
    if report.failed and log_dir is not None and HERE in item.path.parents:
        report.sections.append(("e2e stack logs", _log_tails(log_dir)))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    log_dir = config.stash.get(LOG_DIR, None)
    if log_dir is not None:
        terminalreporter.write_line(f"e2e stack process logs: {log_dir}")


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("e2e-stack")
    request.config.stash[LOG_DIR] = log_dir
    config = StackConfig(
        connect_db=log_dir / "connect.sqlite3",
        connect_args=["--rate-limit", "0"],
        connector_env=CONNECTOR_ENV,
        log_dir=log_dir,
    )
    with running_stack(config, lambda: f"\n{_log_tails(log_dir)}") as running:
        yield running


@pytest.fixture(scope="session")
def e2e(stack: Stack) -> Iterator[Harness]:
    harness = Harness(stack)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def healthy(e2e: Harness) -> Iterator[Harness]:
    """Both emulators without faults before the test, and again after it whatever happened."""
    e2e.cms_faults()
    e2e.connect_faults()
    try:
        yield e2e
    finally:
        e2e.cms_faults()
        e2e.connect_faults()
