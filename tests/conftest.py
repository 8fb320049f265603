"""Fixtures only: the shared apps, one respx router per upstream, the virtual clocks, connect's
fake, and the real CMS samples. Test data is in `factories.py`, fakes in `fakes.py`, the running
app in `running.py`.

Every async test runs on one session-wide event loop so that apps without special settings can be
shared (each app owns a process pool); tests that need other settings open their own with
`open_client`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import respx

import bluebutton.pull.pipeline
from bluebutton.settings import Settings
from tests import processes
from tests.factories import CONNECT_ORIGIN, FHIR_BASE, SAMPLES_DIR, SMALL_LIMIT, cms_page, make_settings
from tests.fakes import Connect, Deadlines, SleepRecorder
from tests.running import CMS_TIME, CONNECT_TIME, open_client


def pytest_sessionstart(session: pytest.Session) -> None:
    processes.mark_session()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No process a test started may outlive the session: wait a little for stragglers (a
    killed service's helpers end on their own, promptly), then fail the run and end the rest."""
    left = processes.wait_gone(processes.leftovers(), seconds=30)
    if not left:
        return
    listing = "\n".join(f"  {pid}: {processes.command(pid)}" for pid in left)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    session.config.get_terminal_writer().line(
        f"\n{len(left)} process(es) started by the tests were still running (now killed):\n{listing}",
        red=True,
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    marker = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if pytest_asyncio.is_async_test(item):
            item.add_marker(marker, append=False)


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    return make_settings


@pytest.fixture(autouse=True)
def _no_bluebutton_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's BLUEBUTTON_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.upper().startswith("BLUEBUTTON_"):
            monkeypatch.delenv(name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app with default test settings, shared by the tests that need nothing special."""
    async with open_client(make_settings()) as c:
        yield c


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def small_client() -> AsyncIterator[httpx.AsyncClient]:
    """An app whose connect limit is the smallest allowed (10,000 bytes), for splitting tests."""
    async with open_client(make_settings(lfh_max_bundle_bytes=SMALL_LIMIT)) as c:
        yield c


@pytest.fixture
def cms_mock() -> Iterator[respx.MockRouter]:
    """Blue Button's FHIR API; routes are relative to the FHIR base."""
    with respx.mock(base_url=FHIR_BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def connect_mock(cms_mock: respx.MockRouter) -> Iterator[respx.MockRouter]:
    """LinuxForHealth connect."""
    with respx.mock(base_url=CONNECT_ORIGIN, assert_all_called=False) as router:
        yield router


@pytest.fixture
def elsewhere(connect_mock: respx.MockRouter) -> Iterator[respx.Route]:
    """Catches any request that neither upstream router matched (another host, port or path)."""
    with respx.mock(assert_all_called=False) as router:
        yield router.route(name="elsewhere").respond(200, json=cms_page([]))


@pytest.fixture
def cms_sleeps() -> SleepRecorder:
    """The CMS client's retry and pacing sleeps, recorded on a virtual clock."""
    return CMS_TIME.reset()


@pytest.fixture
def connect_sleeps() -> SleepRecorder:
    """connect's 429 wait (1 s) and connect-retry pauses, recorded instead of waited."""
    return CONNECT_TIME.reset()


@pytest.fixture
def connect(connect_mock: respx.MockRouter) -> Connect:
    return Connect(connect_mock)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    if not SAMPLES_DIR.is_dir():
        pytest.skip(
            f"the real CMS samples are not here: {SAMPLES_DIR} is absent (a fresh clone has no ../shared)"
        )
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def load_sample(samples_dir: Path) -> Callable[[str], dict[str, Any]]:
    cache: dict[str, bytes] = {}

    def load(name: str) -> dict[str, Any]:
        path = samples_dir / name
        if not path.is_file():
            pytest.skip(f"sample {name} is missing from {samples_dir}")
        if name not in cache:
            cache[name] = path.read_bytes()
        return copy.deepcopy(orjson.loads(cache[name]))

    return load


@pytest.fixture
def deadlines(monkeypatch: pytest.MonkeyPatch) -> Deadlines:
    """The pull's deadline, made to pass when the test says (`pass_now`)."""
    recorder = Deadlines()
    monkeypatch.setattr(bluebutton.pull.pipeline, "deadline", recorder)
    return recorder
