"""`bench sync`'s enrolment: each beneficiary logs in and consents on the emulator's own forms,
the product's OAuth client exchanges the code, the product's grant store keeps the tokens."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from html import unescape
from urllib.parse import parse_qs, urlsplit

import httpx

from bluebutton.cms.oauth import OAuthClient, new_pending_authorization
from bluebutton.sandbox.tools.stack import ca_context
from bluebutton.sync import grants
from bluebutton.sync.service import SyncService

ENROL_CONCURRENCY = 16
_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


@dataclass
class Enrolled:
    grant_id: uuid.UUID
    user: int
    access_token: str = field(repr=False)  # kept in memory for the validator sample, never printed


def _form_action(page: httpx.Response) -> str:
    match = _ACTION.search(page.text)
    if match is None:
        raise SystemExit(f"bench sync: no form on {page.url} (HTTP {page.status_code})")
    return str(page.url.join(unescape(match[1])))


async def _consent(
    browser: httpx.AsyncClient, oauth: OAuthClient, user: int, version: int = 2
) -> tuple[str, str]:
    """Log `BBUser<user>` in on the emulator's forms and consent; (code, PKCE verifier)."""
    pending = new_pending_authorization(sync=True, version=version)
    start = await browser.get(oauth.authorization_url(pending), follow_redirects=True)
    consent = await browser.post(
        _form_action(start),
        data={"username": f"BBUser{user:05d}", "password": f"PW{user:05d}!"},
        follow_redirects=True,
    )
    # On v3, substance-use (SAMHSA) data shared too, so both versions hold the same claims.
    decision = {"share_demographics": "yes", "allow": "true", "share_samhsa_data": ["False", "True"]}
    redirect = await browser.post(_form_action(consent), data=decision)
    query = parse_qs(urlsplit(redirect.headers.get("location", "")).query)
    if "code" not in query or query.get("state") != [pending.state]:
        raise SystemExit(f"bench sync: consent for user {user} did not redirect with a code")
    return query["code"][0], pending.verifier


async def enrol_all(service: SyncService, cms_url: str, users: range) -> list[Enrolled]:
    """Tokens issued by the emulator, stored by the product's grant store (no run deferred)."""
    ctx = service.context
    gate = asyncio.Semaphore(ENROL_CONCURRENCY)

    async def one(browser: httpx.AsyncClient, user: int) -> Enrolled:
        async with gate:
            code, verifier = await _consent(browser, ctx.oauth, user, ctx.settings.cms_api_version)
            tokens = await ctx.oauth.exchange_code(code, verifier)
            assert tokens.patient is not None
            grant_id = await grants.enrol(
                ctx.pool, ctx.cipher, tokens, ctx.settings.cms_api_version, tokens.patient
            )
            return Enrolled(grant_id, user, tokens.access_token)

    async with httpx.AsyncClient(base_url=cms_url, verify=ca_context(), timeout=60.0) as browser:
        return list(await asyncio.gather(*(one(browser, u) for u in users)))
