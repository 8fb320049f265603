"""Kept grants on Blue Button v3, against the in-process emulator: the grant's version drives its
searches and refreshes, SAMHSA-withheld claims are not deletions, a merged beneficiary keeps syncing."""

from __future__ import annotations

import uuid
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
            assert any("42 CFR Part 2" in text for text in described["may_be_withheld"])

            assert run["resources"]["InsuranceCard"]["new"] == 1
            cards = [p["bundle"] for p in upstreams.posts if p["bundle"]["type"] == "collection"]
            assert len(cards) == 1 and cards[0]["entry"][0]["fullUrl"].startswith("urn:uuid:")

            posts = len(upstreams.posts)
            again = await run_once(service, grant_id)
            assert again["status"] == "succeeded", again
            assert again["resources"]["InsuranceCard"] == {
                "fetched": 1,
                "new": 0,
                "changed": 0,
                "unchanged": 1,
                "invalid": 0,
            }  # a fresh card (new random ids) with the same content
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


async def claim_posts(upstreams: Upstreams) -> list[str]:
    return [
        e["resource"]["id"]
        for p in upstreams.posts
        for e in p["bundle"].get("entry", [])
        if e["resource"]["resourceType"] == "ExplanationOfBenefit"
    ]


async def test_a_v2_grant_moved_to_v3_sends_no_claim_the_ledger_proves_held(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            v2_id, _ = await service.enrol(upstreams.authorize(PILOT))
            first = await run_once(service, v2_id)
            assert first["resources"]["ExplanationOfBenefit"]["new"] == 60
            stored_v2 = len(await claim_posts(upstreams))
            assert stored_v2 == 60
            async with service.pool.connection() as connection:  # 3 claims stored before keys were kept
                await connection.execute(
                    "DELETE FROM bluebutton_claim_keys WHERE (grant_id, claim_key) IN "
                    "(SELECT grant_id, claim_key FROM bluebutton_claim_keys WHERE grant_id = %s LIMIT 3)",
                    (v2_id,),
                )

            # The beneficiary consents on v3 (CMS deletes the app's v2 tokens for them, §2.5).
            v3_id, _ = await service.enrol(authorize_v3(upstreams, PILOT, samhsa=True))
            run = await run_once(service, v3_id)

            assert run["status"] == "succeeded", run
            eob = run["resources"]["ExplanationOfBenefit"]
            assert eob["fetched"] == 60
            assert eob["held_under_v2"] == 57 and eob["possibly_held_under_v2"] == 3 and eob["new"] == 3
            assert len(await claim_posts(upstreams)) == stored_v2 + 3
            v2 = await grants.get(service.pool, v2_id)
            assert v2 is not None and v2.state == "migrated" and v2.refresh_token_ct is None
            assert any(str(v2_id) in issue["diagnostics"] for issue in run["issues"])
            async with service.pool.connection() as connection:  # the v3 ledger holds all 60
                row = await (
                    await connection.execute(
                        "SELECT count(*) FROM bluebutton_ledger WHERE grant_id = %s "
                        "AND resource_type = 'ExplanationOfBenefit'",
                        (v3_id,),
                    )
                ).fetchone()
            assert row is not None and row[0] == 60

            again = await run_once(service, v3_id)  # and the next run has nothing to send
            assert again["status"] == "succeeded" and len(await claim_posts(upstreams)) == stored_v2 + 3


async def test_keys_agree_across_versions_for_every_claim() -> None:
    from bluebutton.sandbox.cms.data import generate_claims
    from bluebutton.sandbox.cms.v3data import v3_eob
    from bluebutton.sync.crossversion import claim_key

    for claim in generate_claims(PILOT):
        v2 = claim.resource()
        for form in v3_forms(claim):
            v3 = v3_eob(claim.resource(), form, "-30250000009002")
            assert claim_key(v2) is not None and claim_key(v2) == claim_key(v3)
            assert v2["id"] != v3["id"]


def test_the_card_hash_ignores_what_cms_makes_up_on_each_call() -> None:
    from bluebutton.sandbox.cms.v3resources import insurance_card
    from bluebutton.sync.card import card_hash

    first, second = insurance_card(PILOT, "-30250000009002"), insurance_card(PILOT, "-30250000009002")
    assert first["entry"][0]["fullUrl"] != second["entry"][0]["fullUrl"]
    assert card_hash(first) == card_hash(second)
    other = insurance_card(9002, "-30250000009003")
    assert card_hash(other) != card_hash(first)


async def test_not_final_claims_never_count_twice(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    from bluebutton.sandbox.cms.data import generate_claims

    shared = sum(1 for c in generate_claims(PILOT) for f in v3_forms(c) if not f.final)
    assert shared > 0
    settings = sync_settings(database_url, token_keys, cms_include_not_final=True)
    with upstreams.router():
        async with open_service(settings) as service:
            grant_id, _ = await service.enrol(authorize_v3(upstreams, PILOT, samhsa=True))
            run = await run_once(service, grant_id)
    assert run["status"] == "succeeded", run
    eob = run["resources"]["ExplanationOfBenefit"]
    assert eob["fetched"] == 60 + shared
    assert (eob["new"], eob["unchanged"]) == (60, shared)  # each claim once: its final version
    sent = await claim_posts(upstreams)
    assert len(sent) == len(set(sent)) == 60
    assert "_source=NCH%2CDDPS%2CFISS%2CMCS%2CVMS" in str(
        upstreams.requests_to("/v3/fhir/ExplanationOfBenefit")[0].url
    )


@pytest.mark.parametrize(
    ("version", "scopes", "expected"),
    [
        pytest.param(2, [], False, id="v2-never"),
        pytest.param(3, [], True, id="v3-all-scopes"),
        pytest.param(3, ["patient/Patient.r", "patient/Coverage.s"], True, id="read-and-search"),
        pytest.param(3, ["patient/Patient.s", "patient/Coverage.rs"], False, id="no-patient-read"),
        pytest.param(3, ["patient/Patient.read", "patient/Coverage.r"], False, id="no-coverage-search"),
    ],
)
def test_the_card_is_asked_for_only_with_its_scopes(version: int, scopes: list[str], expected: bool) -> None:
    from bluebutton.sync.card import wanted

    grant = grants.Grant(
        id=uuid.uuid4(),
        patient="-1",
        api_version=version,
        state="active",
        scopes=scopes,
        access_grant_expiration=None,
        access_token_ct=None,
        refresh_token_ct=None,
        access_expires_at=None,
        created_at=datetime.now(UTC),
        next_sync_at=None,
        consecutive_failures=0,
    )
    assert wanted(grant) is expected


@pytest.mark.parametrize(
    "eob",
    [
        pytest.param({}, id="no-type"),
        pytest.param(
            {
                "type": {
                    "coding": [
                        {"system": "https://bluebutton.cms.gov/fhir/CodeSystem/EOB-TYPE", "code": "CARRIER"}
                    ]
                }
            },
            id="no-control-number",
        ),
        pytest.param(
            {
                "type": {
                    "coding": [
                        {"system": "https://bluebutton.cms.gov/fhir/CodeSystem/EOB-TYPE", "code": "PDE"}
                    ]
                }
            },
            id="part-d-without-rx",
        ),
    ],
)
def test_a_claim_without_its_whole_key_has_none(eob: dict[str, object]) -> None:
    from bluebutton.sync.crossversion import claim_key

    assert claim_key(eob) is None
