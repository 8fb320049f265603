"""The CMS emulator in-process behind respx (its real search, paging, OAuth and admin logic, no
socket), a recording stand-in for connect, and grant-keeping settings for them."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import respx

from bluebutton.cms.oauth import TokenSet
from bluebutton.commands import open_standalone
from bluebutton.sandbox.cms.app import create_cms_app
from bluebutton.sandbox.cms.config import CmsSandboxConfig
from bluebutton.sandbox.cms.data import patient_id
from bluebutton.sandbox.cms.tokens import Grant as CmsGrant
from bluebutton.settings import Settings
from bluebutton.sync.service import SyncService
from tests.factories import make_settings
from tests.sync.conftest import ADMIN_KEY

CMS = "https://cms.test"
LFH = "https://lfh.test"
CLIENT_ID = "sync-test-client"
CLIENT_SECRET = "sync-test-secret"
SCOPES = (
    "openid",
    "profile",
    "patient/Patient.read",
    "patient/Coverage.read",
    "patient/ExplanationOfBenefit.read",
)
_HOP_HEADERS = {"content-encoding", "content-length", "transfer-encoding"}


def sync_settings(database_url: str, token_keys: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "cms_base_url": CMS,
        "lfh_url": LFH,
        "cms_client_id": CLIENT_ID,
        "cms_client_secret": CLIENT_SECRET,
        "database_url": database_url,
        "token_keys": token_keys,
        "admin_api_key": ADMIN_KEY,
        "sync_worker": "off",
        "sync_retry_attempts": 0,
        "sync_retry_wait_seconds": 0,
        "database_pool_size": 6,
    }
    values.update(overrides)
    return make_settings(**values)


class Upstreams:
    """The emulated CMS and a connect that stores every POST (and says where)."""

    def __init__(self) -> None:
        self.cms_app = create_cms_app(
            CmsSandboxConfig(
                client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=("https://x.test/cb",)
            )
        )
        self.tokens = self.cms_app.state.tokens
        self.dataset = self.cms_app.state.dataset
        self.posts: list[dict[str, Any]] = []
        self.cms_requests: list[httpx.Request] = []
        self._offsets = itertools.count()
        self.code_answer: TokenSet | None = None  # what a code exchange returns (no login form here)

    def router(self) -> respx.MockRouter:
        router = respx.mock(assert_all_mocked=True, assert_all_called=False)
        router.route(host="cms.test").mock(side_effect=self._cms)
        router.post(f"{LFH}/fhir/Bundle").mock(side_effect=self._connect)
        return router

    async def _cms(self, request: httpx.Request) -> httpx.Response:
        self.cms_requests.append(request)
        if self.code_answer is not None and b"grant_type=authorization_code" in request.content:
            body = {**self.code_answer.as_dict(), "scope": " ".join(self.code_answer.scope)}
            return httpx.Response(200, json=body)
        transport = httpx.ASGITransport(app=self.cms_app)
        async with httpx.AsyncClient(transport=transport, base_url=CMS) as client:
            answer = await client.request(
                request.method, request.url, headers=request.headers, content=request.content
            )
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
        return httpx.Response(answer.status_code, headers=headers, content=answer.content)

    def _connect(self, request: httpx.Request) -> httpx.Response:
        bundle = orjson.loads(request.content)
        offset = next(self._offsets)
        record = {
            "uuid": str(uuid.uuid4()),
            "data_record_location": f"FHIR-R4_BUNDLE:0:{offset}",
            "status": "success",
        }
        self.posts.append({"bundle": bundle, **record})
        return httpx.Response(200, json=record)

    def stored_ids(self) -> list[str]:
        return [e["resource"]["id"] for p in self.posts for e in p["bundle"].get("entry", [])]

    def requests_to(self, path: str) -> list[httpx.Request]:
        return [r for r in self.cms_requests if r.url.path == path]

    def authorize(self, user: int, scopes: tuple[str, ...] = SCOPES) -> TokenSet:
        """What the callback gets from CMS after the beneficiary consents."""
        self.tokens.revoke_user(user, CLIENT_ID)
        expiry = datetime.now(UTC) + timedelta(days=396)
        self.tokens.grants[(user, CLIENT_ID)] = CmsGrant(user, CLIENT_ID, expiry.timestamp())
        access, refresh = self.tokens.issue(user, CLIENT_ID, scopes)
        return TokenSet(
            access_token=access.token,
            refresh_token=refresh.token,
            token_type="Bearer",
            expires_in=3600,
            expires_at="",
            scope=list(scopes),
            patient=patient_id(user),
            access_grant_expiration=expiry.isoformat(),
        )


@asynccontextmanager
async def open_service(settings: Settings) -> AsyncIterator[SyncService]:
    async with open_standalone(settings, worker=False) as service:
        yield service


_RUNNABLE = (
    "SELECT count(*) FROM procrastinate_jobs j WHERE j.status = 'todo' "
    "AND (j.scheduled_at IS NULL OR j.scheduled_at <= now()) AND NOT EXISTS ("
    "SELECT 1 FROM procrastinate_jobs d WHERE d.status = 'doing' AND d.lock = j.lock)"
)


async def drain(service: SyncService) -> None:
    """Run a real worker until no job is left that could run now (jobs queue jobs: a sync run
    defers its events' delivery, which a worker started with `wait=False` does not fetch)."""
    for _ in range(20):
        await service.jobs.run_worker(install_signal_handlers=False, wait=False)
        async with service.pool.connection() as connection:
            row = await (await connection.execute(_RUNNABLE)).fetchone()
        if row is None or row[0] == 0:
            return


async def run_once(service: SyncService, grant_id: uuid.UUID) -> dict[str, Any]:
    from bluebutton.sync import runs

    run_id = await service.jobs.request_run(grant_id)
    await drain(service)
    row = await runs.get(service.pool, run_id)
    assert row is not None
    return runs.as_json(row)
