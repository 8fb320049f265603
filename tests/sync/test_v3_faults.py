"""What goes wrong around a kept v3 grant, against the in-process emulator: CMS refuses the
insurance card (the run goes on without it), CMS answers a card that is not valid R4 (quarantined,
never sent), and a merged beneficiary's new id is already held by another grant."""

from __future__ import annotations

from dataclasses import replace

import httpx
import orjson

from bluebutton.sync import grants, v3
from bluebutton.sync.card import CARD, CARD_ID
from tests.sync.emulated import SCOPES, Upstreams, open_service, run_once, sync_settings
from tests.sync.test_v3 import PILOT, authorize_v3

CARD_PATH = "/v3/fhir/Patient/$generate-insurance-card"


class BrokenCardUpstreams(Upstreams):
    """The emulator, except that its insurance card carries an element R4 does not define."""

    async def _cms(self, request: httpx.Request) -> httpx.Response:
        answer = await super()._cms(request)
        if request.url.path != CARD_PATH or answer.status_code != 200:
            return answer
        card = orjson.loads(answer.content)
        card["entry"][0]["resource"]["notAnR4Element"] = True
        return httpx.Response(200, headers=answer.headers, content=orjson.dumps(card))


def cards_sent(upstreams: Upstreams) -> list[dict[str, object]]:
    return [p["bundle"] for p in upstreams.posts if p["bundle"]["type"] == "collection"]


async def test_a_card_cms_refuses_is_an_issue_and_the_run_goes_on(database_url: str, token_keys: str) -> None:
    upstreams = Upstreams()
    without_coverage = tuple(s for s in SCOPES if not s.startswith("patient/Coverage."))
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            tokens = authorize_v3(upstreams, PILOT, samhsa=True)
            # CMS's token lacks the Coverage scope, but its response named none: every type is tried.
            upstreams.tokens.revoke_user(PILOT, "sync-test-client")
            access, refresh = upstreams.tokens.issue(PILOT, "sync-test-client", without_coverage)
            tokens = replace(tokens, access_token=access.token, refresh_token=refresh.token, scope=[])
            grant_id, _ = await service.enrol(tokens)
            run = await run_once(service, grant_id)

    assert upstreams.requests_to(CARD_PATH)
    assert run["status"] == "succeeded", run
    assert run["resources"]["ExplanationOfBenefit"]["new"] == 60
    assert any(
        i["diagnostics"] == f"{CARD}: Blue Button answered 403; no card this run" for i in run["issues"]
    ), run["issues"]
    assert CARD not in run["resources"] or run["resources"][CARD]["fetched"] == 0
    assert cards_sent(upstreams) == []


async def test_a_card_that_is_not_r4_is_quarantined_never_sent(database_url: str, token_keys: str) -> None:
    upstreams = BrokenCardUpstreams()
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(authorize_v3(upstreams, PILOT, samhsa=True))
            run = await run_once(service, grant_id)
            async with service.pool.connection() as connection:
                row = await (
                    await connection.execute(
                        "SELECT issues FROM bluebutton_quarantine WHERE grant_id = %s "
                        "AND resource_type = %s AND resource_id = %s",
                        (grant_id, CARD, CARD_ID),
                    )
                ).fetchone()

    assert run["resources"][CARD]["invalid"] == 1, run
    assert any(i["diagnostics"] == f"{CARD} quarantined: not valid R4" for i in run["issues"]), run["issues"]
    assert row is not None and any("notAnR4Element" in i["diagnostics"] for i in row[0]), row
    assert cards_sent(upstreams) == []
    assert run["resources"]["ExplanationOfBenefit"]["new"] == 60  # the claims went on


async def test_a_merge_onto_an_id_another_grant_holds_keeps_the_old_id(
    database_url: str, token_keys: str
) -> None:
    upstreams = Upstreams()
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            first_id, _ = await service.enrol(authorize_v3(upstreams, PILOT, samhsa=True))
            second_id, _ = await service.enrol(authorize_v3(upstreams, 9002, samhsa=True))
            first, second = (
                await grants.get(service.pool, first_id),
                await grants.get(service.pool, second_id),
            )
            assert first is not None and second is not None and first.patient != second.patient

            note = await v3.follow_merge(service.pool, first_id, first.patient, second.patient)

            after = await grants.get(service.pool, first_id)
    assert note["code"] == "conflict" and second.patient in note["diagnostics"]
    assert after is not None and after.patient == first.patient
