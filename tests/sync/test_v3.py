"""Kept grants on Blue Button v3, against the in-process emulator: the grant's version drives its
searches and refreshes, SAMHSA-withheld claims are not deletions, a merged beneficiary keeps syncing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bluebutton.cms.oauth import TokenSet
from bluebutton.sandbox.cms.tokens import Consent
from bluebutton.sandbox.cms.tokens import Grant as CmsGrant
from bluebutton.sandbox.cms.v3data import v3_forms
from bluebutton.sync import grants
from tests.sync.emulated import CLIENT_ID, SCOPES, Upstreams, open_service, run_once, sync_settings

PILOT = 9001  # 60 claims


def authorize_v3(upstreams: Upstreams, user: int, *, samhsa: bool) -> TokenSet:
    """What the callback gets from CMS v3 after the beneficiary consents (the SAMHSA box as given)."""
    upstreams.tokens.revoke_user(user, CLIENT_ID)
    expiry = datetime.now(UTC) + timedelta(days=396)
    upstreams.tokens.grants[(user, CLIENT_ID)] = CmsGrant(user, CLIENT_ID, expiry.timestamp())
    access, refresh = upstreams.tokens.issue(user, CLIENT_ID, SCOPES, Consent(include_samhsa=samhsa))
    return TokenSet(
        access_token=access.token,
        refresh_token=refresh.token,
        token_type="Bearer",
        expires_in=3600,
        expires_at="",
        scope=list(SCOPES),
        patient=upstreams.cms_app.state.v3.looked_up(user),
        access_grant_expiration=expiry.isoformat(),
        api_version=3,
    )


def samhsa_count(user: int) -> int:
    from bluebutton.sandbox.cms.data import generate_claims

    return sum(1 for c in generate_claims(user) for f in v3_forms(c) if f.samhsa and f.final)


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


async def test_a_v3_grant_syncs_on_v3_and_a_withheld_claim_is_no_deletion(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    withheld = samhsa_count(PILOT)
    assert withheld > 0
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(authorize_v3(upstreams, PILOT, samhsa=False))
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.api_version == 3 and grant.patient == "-30250000009002"
            run = await run_once(service, grant_id)
            assert run["status"] == "succeeded", run
            assert run["resources"]["ExplanationOfBenefit"]["new"] == 60 - withheld
            assert upstreams.requests_to("/v3/fhir/ExplanationOfBenefit")
            assert not upstreams.requests_to("/v2/fhir/ExplanationOfBenefit")
            described = await service.grant_json(grant_id)
            assert described["api_version"] == 3

            posts = len(upstreams.posts)
            again = await run_once(service, grant_id)
            assert again["status"] == "succeeded", again
            assert len(upstreams.posts) == posts  # nothing re-sent, nothing deleted


async def test_a_merged_beneficiary_keeps_syncing(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(authorize_v3(upstreams, PILOT, samhsa=True))
            first = await run_once(service, grant_id)
            assert first["resources"]["ExplanationOfBenefit"]["new"] == 60

            old, new = upstreams.cms_app.state.v3.merge(PILOT)
            upstreams.tokens.expire_access_tokens(PILOT)  # the next run refreshes, and learns the new id
            upstreams.dataset.add_claims(PILOT, 2, datetime.now(UTC) + timedelta(days=3650))
            run = await run_once(service, grant_id)

            assert run["status"] == "succeeded", run
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.patient == new != old
            assert any(new in issue["diagnostics"] for issue in run["issues"]), run["issues"]
            assert run["resources"]["ExplanationOfBenefit"]["new"] == 2  # the ledger was kept
