"""Runs of `sync_grant` through a real worker and a real PostgreSQL, against the emulated CMS:
the first run stores everything once, later runs only what is new or changed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import psycopg
import psycopg.sql
import pytest

from bluebutton.fhir.bundles import BundleHeader, connect_size
from bluebutton.sync import grants, ledger
from tests.sync.emulated import Upstreams, drain, open_service, run_once, sync_settings

USER = 2  # BBUser00002: 7 claims, 4 coverages, 1 patient
INVALID_USER = 29900  # 10 claims, 3 of them invalid R4


@pytest.fixture
def upstreams() -> Upstreams:
    return Upstreams()


async def test_first_run_stores_everything_once_and_a_second_run_nothing(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            first = await run_once(service, grant_id)
            assert first["status"] == "succeeded", first
            assert first["resources"]["ExplanationOfBenefit"] == {
                "fetched": 7,
                "new": 7,
                "changed": 0,
                "unchanged": 0,
                "invalid": 0,
            }
            assert first["resources"]["Coverage"]["new"] == 4
            assert first["resources"]["Patient"]["new"] == 1
            ids = upstreams.stored_ids()
            assert len(ids) == 12 == len(set(ids))
            assert sum(b["entry_count"] for b in first["bundles"]) == 12
            records = await ledger.records(service.pool, grant_id)
            assert {r["uuid"] for r in records} == {p["uuid"] for p in upstreams.posts}

            posts_before = len(upstreams.posts)
            second = await run_once(service, grant_id)
            assert second["status"] == "succeeded"
            assert len(upstreams.posts) == posts_before  # nothing POSTed
            assert second["bundles"] == []
            # the incremental pull asked only for what changed since CMS's clock at the first run
            eob = upstreams.requests_to("/v2/fhir/ExplanationOfBenefit")[-1]
            assert eob.url.params["_lastUpdated"].startswith("ge")


async def test_new_claims_are_forwarded_exactly_once_and_a_changed_claim_once(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            await run_once(service, grant_id)
            stored = len(upstreams.stored_ids())

            added = upstreams.dataset.add_claims(USER, 3, datetime.now(UTC))
            run = await run_once(service, grant_id)
            assert run["resources"]["ExplanationOfBenefit"]["new"] == 3
            assert sorted(upstreams.stored_ids()[stored:]) == sorted(added)

            changed = upstreams.dataset.change_claim(USER, None, datetime.now(UTC))
            run = await run_once(service, grant_id)
            eob = run["resources"]["ExplanationOfBenefit"]
            assert (eob["new"], eob["changed"]) == (0, 1)
            assert upstreams.stored_ids()[stored + 3 :] == [changed]
            records = {r["id"]: r for r in await ledger.records(service.pool, grant_id)}
            assert (
                records[changed]["uuid"] == upstreams.posts[-1]["uuid"]
            )  # the ledger points at the new version

            # the same version seen again (the `ge` boundary) is not sent again
            async with service.pool.connection() as connection:
                await ledger.advance(connection, grant_id, {"ExplanationOfBenefit": "2020-01-01"})
            run = await run_once(service, grant_id)
            assert run["resources"]["ExplanationOfBenefit"]["unchanged"] == 10
            assert len(upstreams.stored_ids()) == stored + 4


async def test_invalid_claims_are_quarantined_and_the_valid_ones_stored(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    invalid = upstreams.dataset.invalid_claim_ids(INVALID_USER)
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(INVALID_USER))
            run = await run_once(service, grant_id)
            assert run["status"] == "partial"
            assert run["resources"]["ExplanationOfBenefit"]["invalid"] == 3
            stored = upstreams.stored_ids()
            assert not set(invalid) & set(stored)
            assert len([i for i in stored if "--" in i and not i.startswith("part-")]) == 7
            held = await ledger.quarantined(service.pool, grant_id)
            assert {h["id"] for h in held} == set(invalid)
            paths = {h["id"]: h["issues"][0]["expression"][0] for h in held}
            for eob_id, path in invalid.items():
                assert paths[eob_id].startswith(path), (paths, invalid)
            quoted = [i for i in run["issues"] if "quarantined" in i["diagnostics"]]
            assert len(quoted) >= 3
            described = await service.grant_json(grant_id)
            assert len(described["quarantined"]) == 3

            # a full re-pull validates nothing again: the quarantined versions are known
            async with service.pool.connection() as connection:
                await ledger.advance(connection, grant_id, {"ExplanationOfBenefit": "2020-01-01"})
            posts = len(upstreams.posts)
            run = await run_once(service, grant_id)
            assert run["status"] == "succeeded"
            assert run["resources"]["ExplanationOfBenefit"]["unchanged"] == 10
            assert len(upstreams.posts) == posts


async def test_refresh_rotation_is_persisted_before_use(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    settings = sync_settings(database_url, token_keys)
    with upstreams.router():
        async with open_service(settings) as service:
            tokens = upstreams.authorize(USER)
            grant_id, _ = await service.enrol(tokens)
            async with service.pool.connection() as connection:
                await connection.execute(
                    "UPDATE bluebutton_grants SET access_expires_at = now() + interval '1 minute' "
                    "WHERE id = %s",
                    (grant_id,),
                )
            run = await run_once(service, grant_id)
            assert run["status"] == "succeeded"
            assert len(upstreams.requests_to("/v2/o/token/")) == 1
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.refresh_token_ct is not None
            new_refresh = service.context.cipher.decrypt(grant.refresh_token_ct, grant_id)
            assert new_refresh != tokens.refresh_token
            assert upstreams.tokens.refresh[tokens.refresh_token].revoked
            assert not upstreams.tokens.refresh[new_refresh].revoked
            assert grant.access_expires_at is not None
            assert grant.access_expires_at > datetime.now(UTC) + timedelta(minutes=50)


async def test_an_access_token_refused_mid_run_is_renewed_once(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            upstreams.tokens.expire_access_tokens(USER)  # CMS says expired; our clock does not
            run = await run_once(service, grant_id)
            assert run["status"] == "succeeded"
            assert len(upstreams.requests_to("/v2/o/token/")) == 1


async def test_a_refused_refresh_token_marks_the_grant_revoked(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            upstreams.tokens.revoke_user(USER, None)  # disconnected in Medicare.gov
            run = await run_once(service, grant_id)
            assert run["status"] == "failed"
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None
            assert (grant.state, grant.refresh_token_ct, grant.access_token_ct) == ("revoked", None, None)
            assert any("authorize again" in i["diagnostics"] for i in run["issues"])
            # not retried: no job is left
            async with service.pool.connection() as connection:
                row = await (
                    await connection.execute("SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'")
                ).fetchone()
            assert row == (0,)


async def test_an_ended_data_access_grant_marks_the_grant_expired(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            upstreams.tokens.expire_grants(USER)  # FHIR calls 401, refresh 401 "timed out"
            run = await run_once(service, grant_id)
            assert run["status"] == "failed"
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.state == "expired"

            other, _ = await service.enrol(upstreams.authorize(3))
            async with service.pool.connection() as connection:
                await connection.execute(
                    "UPDATE bluebutton_grants SET access_grant_expiration = now() - interval '1 day' "
                    "WHERE id = %s",
                    (other,),
                )
            requests = len(upstreams.cms_requests)
            run = await run_once(service, other)
            assert run["status"] == "failed"
            assert len(upstreams.cms_requests) == requests  # decided without asking CMS
            assert (await service.grant(other)).state == "expired"


async def test_reauthorizing_renews_the_same_grant(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            first, _ = await service.enrol(upstreams.authorize(USER))
            await drain(service)
            second, _ = await service.enrol(upstreams.authorize(USER))
            await drain(service)
            assert first == second
            assert len(upstreams.stored_ids()) == 12  # the renewed grant stored nothing again


async def test_no_plaintext_token_anywhere_in_the_database(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            tokens = upstreams.authorize(USER)
            grant_id, _ = await service.enrol(tokens)
            upstreams.tokens.expire_access_tokens(USER)
            await run_once(service, grant_id)
            grant = await grants.get(service.pool, grant_id)
            assert grant is not None and grant.refresh_token_ct and grant.access_token_ct
            cipher = service.context.cipher
            secrets = [
                tokens.access_token,
                tokens.refresh_token,
                cipher.decrypt(grant.access_token_ct, grant_id),
                cipher.decrypt(grant.refresh_token_ct, grant_id),
            ]
    with psycopg.connect(database_url) as connection:
        tables = [
            r[0]
            for r in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        ]
        dump = ""
        for table in tables:
            query = psycopg.sql.SQL("SELECT * FROM {}").format(psycopg.sql.Identifier(table))
            for row in connection.execute(query).fetchall():
                dump += repr(row)
    assert "bluebutton_grants" in tables and "procrastinate_jobs" in tables
    for secret in secrets:
        assert secret and secret not in dump
        assert secret.encode().hex() not in dump


async def test_a_withheld_scope_is_recorded_and_the_rest_pulled(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            tokens = upstreams.authorize(
                USER, scopes=("openid", "patient/Coverage.read", "patient/ExplanationOfBenefit.read")
            )
            tokens = dataclasses.replace(
                tokens, scope=[*tokens.scope, "patient/Patient.read"]
            )  # CMS said more
            grant_id, _ = await service.enrol(tokens)
            run = await run_once(service, grant_id)
            assert run["status"] == "succeeded"
            assert "Patient" not in run["resources"]
            assert any("403" in i["diagnostics"] and i["severity"] == "warning" for i in run["issues"])
            assert len(upstreams.stored_ids()) == 11


async def test_an_entry_too_large_for_connect_is_quarantined(
    upstreams: Upstreams, database_url: str, token_keys: str
) -> None:
    settings = sync_settings(database_url, token_keys, lfh_max_bundle_bytes=20_000)
    with upstreams.router():
        async with open_service(settings) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            run = await run_once(service, grant_id)
            held = await ledger.quarantined(service.pool, grant_id)
            assert held and all(h["issues"][0]["code"] == "too-costly" for h in held)
            assert run["status"] == "partial"
            assert len(upstreams.stored_ids()) == 12 - len(held)
            assert all(len(orjson.dumps(p["bundle"])) <= 20_000 for p in upstreams.posts)


class WideClaimCms(Upstreams):
    """CMS sends one claim whose compact JSON fits a connect record but whose record as connect
    stores it does not: its `disposition` is non-ASCII text, which connect writes as 6-byte
    `\\u` escapes (2 bytes each in the compact UTF-8 CMS sends)."""

    WIDE = "\u00e9" * 60_000

    def __init__(self) -> None:
        super().__init__()
        self.wide_id: str | None = None
        self.wide_entry = b""

    async def _cms(self, request: httpx.Request) -> httpx.Response:
        answer = await super()._cms(request)
        if "/ExplanationOfBenefit" not in request.url.path or answer.status_code != 200:
            return answer
        bundle = orjson.loads(answer.content)
        if self.wide_id is None and bundle.get("entry"):
            resource = bundle["entry"][0]["resource"]
            resource["disposition"] = self.WIDE
            self.wide_id = resource["id"]
            self.wide_entry = orjson.dumps(bundle["entry"][0])
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-length"}
        return httpx.Response(200, headers=headers, content=orjson.dumps(bundle))


async def test_an_entry_that_fits_compact_but_not_as_connect_stores_it_is_held_alone(
    database_url: str, token_keys: str
) -> None:
    limit = 300_000
    upstreams = WideClaimCms()
    with upstreams.router():
        async with open_service(
            sync_settings(database_url, token_keys, lfh_max_bundle_bytes=limit)
        ) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            run = await run_once(service, grant_id)
            held = await ledger.quarantined(service.pool, grant_id)
    assert upstreams.wide_id is not None
    wide = upstreams.wide_entry
    # the premise: its compact size alone passes a pre-check by `len`; as connect stores it, not
    assert BundleHeader.fresh(0).overhead() + len(wide) < limit < connect_size(wide)
    assert run["status"] == "partial", run["issues"]
    assert [h["id"] for h in held] == [upstreams.wide_id]
    assert held[0]["issues"][0]["code"] == "too-costly"
    stored = upstreams.stored_ids()
    assert len(stored) == len(set(stored)) == 11 and upstreams.wide_id not in stored
    assert all(connect_size(orjson.dumps(p["bundle"])) <= limit for p in upstreams.posts)


async def test_without_migrations_start_up_names_the_command(database_url: str, token_keys: str) -> None:
    with pytest.raises(RuntimeError, match="python -m bluebutton migrate"):
        async with open_service(sync_settings(database_url, token_keys, database_migrate=False)):
            pass
    async with open_service(sync_settings(database_url, token_keys)):
        pass
    async with open_service(sync_settings(database_url, token_keys, database_migrate=False)) as service:
        assert await grants.due(service.pool, 10) == []
