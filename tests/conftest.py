"""Shared test machinery: settings, the app behind ASGITransport, one respx router per upstream,
synthetic FHIR R4 resources, CMS search pages, connect envelopes and the real CMS samples.

Every async test runs on one session-wide event loop so that apps without special settings can be
shared (each app owns a process pool); tests that need other settings open their own with
`open_client`.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import respx
from asgi_lifespan import LifespanManager

from bluebutton.app import create_app
from bluebutton.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "bb2-samples"
CERTS = ROOT / "local-certs"

CMS_ORIGIN = "https://cms.test"
FHIR_BASE = f"{CMS_ORIGIN}/v2/fhir/"
LFH_ORIGIN = "https://lfh.test"
SANDBOX_ORIGIN = "https://sandbox.bluebutton.cms.gov"

# RFC 6750 b64token characters only; distinctive so a leak is easy to find.
TOKEN = "bbTok-7Qx9Lr2Vw8Kz4Np6Hs3Jd5Mf1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATIENT_ID = "-20140000008325"

FHIR_JSON = "application/fhir+json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    marker = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if pytest_asyncio.is_async_test(item):
            item.add_marker(marker, append=False)


# --------------------------------------------------------------------------------------- settings


def make_settings(**overrides: Any) -> Settings:
    """Test settings: plain HTTP, mock upstreams, no backoff, two validation workers."""
    values: dict[str, Any] = {
        "tls": False,
        "cms_base_url": CMS_ORIGIN,
        "lfh_url": LFH_ORIGIN,
        "cms_retry_backoff_seconds": 0,
        "validation_workers": 2,
    }
    values.update(overrides)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("BLUEBUTTON_"):
                mp.delenv(name)
        return Settings(_env_file=None, **values)


@pytest.fixture
def settings_factory() -> Callable[..., Settings]:
    return make_settings


@pytest.fixture(autouse=True)
def _no_bluebutton_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's BLUEBUTTON_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.upper().startswith("BLUEBUTTON_"):
            monkeypatch.delenv(name)


# ------------------------------------------------------------------------------------ app, client


@asynccontextmanager
async def open_client(
    settings: Settings, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """`create_app(settings)` with its lifespan running, behind an ASGITransport client."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The app with default test settings, shared by the tests that need nothing special."""
    async with open_client(make_settings()) as c:
        yield c


SMALL_LIMIT = 10_000


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def small_client() -> AsyncIterator[httpx.AsyncClient]:
    """An app whose connect limit is the smallest allowed (10,000 bytes), for splitting tests."""
    async with open_client(make_settings(lfh_max_bundle_bytes=SMALL_LIMIT)) as c:
        yield c


# ---------------------------------------------------------------------------------- respx routers


@pytest.fixture
def cms_mock() -> Iterator[respx.MockRouter]:
    """Blue Button's FHIR API; routes are relative to the FHIR base."""
    with respx.mock(base_url=FHIR_BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def lfh_mock(cms_mock: respx.MockRouter) -> Iterator[respx.MockRouter]:
    """LinuxForHealth connect."""
    with respx.mock(base_url=LFH_ORIGIN, assert_all_called=False) as router:
        yield router


@pytest.fixture
def elsewhere(lfh_mock: respx.MockRouter) -> Iterator[respx.Route]:
    """Catches any request that neither upstream router matched (another host, port or path)."""
    with respx.mock(assert_all_called=False) as router:
        yield router.route(name="elsewhere").respond(200, json=cms_page([]))


class SleepRecorder:
    """Stands in for a module's `asyncio` (and `time`): `sleep` records its delay and moves a
    virtual clock on instead of waiting, so retry schedules are checked without real time."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.now = 1000.0
        self._real_sleep = asyncio.sleep

    async def sleep(self, delay: float, result: Any = None) -> Any:
        self.delays.append(delay)
        self.now += max(delay, 0)
        await self._real_sleep(0)
        return result

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


class _VirtualTime:
    def __init__(self, recorder: SleepRecorder) -> None:
        self._recorder = recorder

    def monotonic(self) -> float:
        return self._recorder.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def cms_sleeps(monkeypatch: pytest.MonkeyPatch) -> SleepRecorder:
    """The CMS client's retry and pacing sleeps, recorded on a virtual clock."""
    import bluebutton.cms

    recorder = SleepRecorder()
    monkeypatch.setattr(bluebutton.cms, "asyncio", recorder)
    monkeypatch.setattr(bluebutton.cms, "time", _VirtualTime(recorder))
    return recorder


@pytest.fixture
def lfh_sleeps(monkeypatch: pytest.MonkeyPatch) -> SleepRecorder:
    """connect's 429 wait (1 s) and connect-retry pauses, recorded instead of waited."""
    import bluebutton.lfh

    recorder = SleepRecorder()
    monkeypatch.setattr(bluebutton.lfh, "asyncio", recorder)
    return recorder


# ------------------------------------------------------------------------ synthetic FHIR resources


def make_patient(patient_id: str = PATIENT_ID, *, family: str = "Doe", given: str = "Jane") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {
            "lastUpdated": "2024-01-02T03:04:05.678-05:00",
            "profile": ["http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Patient"],
        },
        "identifier": [
            {"system": "https://bluebutton.cms.gov/resources/variables/bene_id", "value": patient_id}
        ],
        "name": [{"use": "usual", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1950-04-01",
        "address": [{"state": "MD", "postalCode": "21201"}],
    }


def make_coverage(part: str = "A", patient_id: str = PATIENT_ID) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": f"part-{part.lower()}--{patient_id}",
        "status": "active",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUBSIDIZ"}]
        },
        "subscriberId": "1S00E00AA00",
        "beneficiary": {"reference": f"Patient/{patient_id}"},
        "relationship": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}
            ]
        },
        "period": {"start": "2014-02-06"},
        "payor": [{"identifier": {"value": "Centers for Medicare and Medicaid Services"}}],
        "class": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}
                    ]
                },
                "value": f"Part {part.upper()}",
            }
        ],
    }


def eob_id(number: int, claim_type: str = "carrier") -> str:
    return f"{claim_type}--{10_000_000_000 + number}"


def make_eob(
    number: int = 1,
    *,
    patient_id: str = PATIENT_ID,
    claim_type: str = "carrier",
    items: int = 1,
    pad: int = 0,
    note: str | None = None,
) -> dict[str, Any]:
    """A valid R4 ExplanationOfBenefit; `items` and `pad` (bytes of note text) set its size."""
    resource: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit",
        "id": eob_id(number, claim_type),
        "meta": {"lastUpdated": "2024-01-02T03:04:05.678-05:00"},
        "identifier": [
            {"system": "https://bluebutton.cms.gov/resources/variables/clm_id", "value": str(number)}
        ],
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "https://bluebutton.cms.gov/resources/codesystem/eob-type",
                    "code": claim_type.upper(),
                },
                {"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"},
            ]
        },
        "use": "claim",
        "patient": {"reference": f"Patient/{patient_id}"},
        "billablePeriod": {"start": "2023-03-01", "end": "2023-03-01"},
        "created": "2024-01-02T03:04:05-05:00",
        "insurer": {"identifier": {"value": "CMS"}},
        "provider": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999999"}},
        "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/part-b--{patient_id}"}}],
        "item": [
            {
                "sequence": i + 1,
                "productOrService": {
                    "coding": [
                        {
                            "system": "https://bluebutton.cms.gov/resources/codesystem/hcpcs",
                            "code": f"{99200 + i}",
                        }
                    ]
                },
                "servicedDate": "2023-03-01",
                "adjudication": [
                    {
                        "category": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/adjudication",
                                    "code": "submitted",
                                }
                            ]
                        },
                        "amount": {"value": 125.5 + i, "currency": "USD"},
                    }
                ],
            }
            for i in range(items)
        ],
        "payment": {"amount": {"value": 100.25, "currency": "USD"}},
    }
    if pad or note is not None:
        resource["processNote"] = [{"number": 1, "type": "display", "text": (note or "") + "x" * pad}]
    return resource


def entry_for(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"{FHIR_BASE}{resource['resourceType']}/{resource['id']}", "resource": resource}


def compact(value: Any) -> bytes:
    return orjson.dumps(value)


def eob_with_entry_size(number: int, size: int, **kwargs: Any) -> dict[str, Any]:
    """An EOB whose search entry is exactly `size` bytes of compact JSON."""
    resource = make_eob(number, pad=1, **kwargs)
    measured = len(compact(entry_for(resource)))
    if measured > size:
        raise ValueError(f"an entry is at least {measured} bytes")
    return make_eob(number, pad=1 + size - measured, **kwargs)


def make_resources(resource_type: str, count: int) -> list[dict[str, Any]]:
    """`count` distinct valid resources of one type."""
    if resource_type == "Patient":
        return [make_patient(f"-2014000000{n:04d}") for n in range(count)]
    if resource_type == "Coverage":
        return [make_coverage(f"{chr(ord('a') + n % 26)}{n}") for n in range(count)]
    return [make_eob(n) for n in range(count)]


# ------------------------------------------------------------------------------------- CMS pages


def page_url(resource_type: str, start: int, count: int = 50, origin: str = CMS_ORIGIN) -> str:
    return (
        f"{origin}/v2/fhir/{resource_type}?_format=application%2Fjson%2Bfhir"
        f"&startIndex={start}&_count={count}&patient={PATIENT_ID}"
    )


def cms_page(
    resources: list[dict[str, Any]],
    *,
    links: list[dict[str, str]] | None = None,
    total: int | None = None,
    self_url: str | None = None,
    next_url: str | None = None,
) -> dict[str, Any]:
    """One CMS searchset page holding `resources`, with `self` and (optionally) `next` links."""
    page: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": "2024-05-06T07:08:09.123-04:00"},
        "type": "searchset",
    }
    if total is not None:
        page["total"] = total
    if links is None:
        links = [{"relation": "self", "url": self_url or page_url("ExplanationOfBenefit", 0)}]
        if next_url is not None:
            links.append({"relation": "next", "url": next_url})
    page["link"] = links
    page["entry"] = [entry_for(r) for r in resources]
    return page


def cms_pages(
    resource_type: str,
    resources: list[dict[str, Any]],
    *,
    per_page: int = 50,
    with_total: bool = True,
) -> list[dict[str, Any]]:
    """A whole CMS search: pages of `per_page` with first/next/previous/last/self links by index."""
    chunks = [resources[i : i + per_page] for i in range(0, len(resources), per_page)] or [[]]
    last_start = (len(chunks) - 1) * per_page
    pages = []
    for n, chunk in enumerate(chunks):
        start = n * per_page
        links = [{"relation": "first", "url": page_url(resource_type, 0, per_page)}]
        if n + 1 < len(chunks):
            links.append({"relation": "next", "url": page_url(resource_type, start + per_page, per_page)})
        if n > 0:
            links.append({"relation": "previous", "url": page_url(resource_type, start - per_page, per_page)})
        links.append({"relation": "last", "url": page_url(resource_type, last_start, per_page)})
        links.append({"relation": "self", "url": page_url(resource_type, start, per_page)})
        pages.append(cms_page(chunk, links=links, total=len(resources) if with_total else None))
    return pages


def fhir_response(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


def _start_index(page: dict[str, Any]) -> int:
    for link in page.get("link", []):
        if link.get("relation") == "self":
            return int(httpx.URL(link["url"]).params.get("startIndex", "0"))
    return 0


def serve_pages(router: respx.MockRouter, resource_type: str, pages: list[dict[str, Any]]) -> respx.Route:
    """Serve a search: the page whose `self` link has the request's `startIndex` (0 if absent)."""
    by_start = {_start_index(page): page for page in pages}
    if len(by_start) != len(pages):
        by_start = {n: page for n, page in enumerate(pages)}

    def answer(request: httpx.Request) -> httpx.Response:
        start = int(request.url.params.get("startIndex", "0"))
        if start not in by_start:
            return fhir_response({"detail": "Not found."}, 404)
        return fhir_response(by_start[start])

    return router.get(resource_type, name=f"search {resource_type}").mock(side_effect=answer)


# --------------------------------------------------------------------------------------- connect


def envelope_for(number: int, body: bytes) -> dict[str, Any]:
    """connect 0.42.0's storage envelope for the `number`-th stored record."""
    return {
        "uuid": f"5b1c3f4e-0000-4000-8000-{number:012d}",
        "lfh_id": "connect-test",
        "operation": "POST",
        "creation_date": "2024-05-06T07:08:09+00:00",
        "store_date": "2024-05-06T07:08:09+00:00",
        "consuming_endpoint_url": "/fhir/Bundle",
        # connect sends the whole Bundle back base64-encoded; a digest keeps test output short
        "data": base64.b64encode(hashlib.sha256(body).digest()).decode(),
        "data_format": "FHIR-R4",
        "status": "success",
        "data_record_location": f"FHIR-R4:0:{number}",
        "target_endpoint_urls": [],
        "ipfs_uri": None,
        "elapsed_storage_time": 0.012,
        "transmit_date": None,
        "elapsed_transmit_time": None,
        "elapsed_total_time": 0.034,
        "transmission_attributes": {"content-type": FHIR_JSON},
    }


def record_uuid(number: int) -> str:
    return f"5b1c3f4e-0000-4000-8000-{number:012d}"


def record_location(number: int) -> str:
    return f"FHIR-R4:0:{number}"


class Connect:
    """A connect mock that stores every POST (numbered from 1) unless told otherwise."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.stored: list[bytes] = []
        self.envelopes: list[bytes] = []
        self.script: list[Any] = []  # per-call overrides: an httpx.Response, an exception, or None
        self.route = router.post("/fhir/Bundle", name="connect").mock(side_effect=self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.script:
            action = self.script.pop(0)
            if isinstance(action, BaseException) or (
                isinstance(action, type) and issubclass(action, BaseException)
            ):
                raise action
            if action is not None:
                assert isinstance(action, httpx.Response)
                return action
        self.stored.append(request.content)
        envelope = orjson.dumps(envelope_for(len(self.stored), request.content))
        self.envelopes.append(envelope)
        return httpx.Response(200, content=envelope, headers={"Content-Type": "application/json"})

    @property
    def posted(self) -> list[dict[str, Any]]:
        """Every Bundle POSTed (stored or not), parsed."""
        return [orjson.loads(call.request.content) for call in self.route.calls]

    @property
    def stored_bundles(self) -> list[dict[str, Any]]:
        return [orjson.loads(body) for body in self.stored]


@pytest.fixture
def connect(lfh_mock: respx.MockRouter) -> Connect:
    return Connect(lfh_mock)


# ----------------------------------------------------------------------------------------- samples


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


def outcome_issues(response: httpx.Response) -> list[dict[str, Any]]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"], body
    return list(body["issue"])


def diagnostics(response: httpx.Response) -> str:
    return "\n".join(issue.get("diagnostics", "") for issue in outcome_issues(response))
