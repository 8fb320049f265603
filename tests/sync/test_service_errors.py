"""`SyncService`'s refusals and its disconnect of a grant whose tokens are partly unusable or gone,
against the in-process emulator and a real PostgreSQL."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bluebutton.sync import grants
from bluebutton.sync.errors import GrantNotSyncingError
from tests.sync.emulated import Upstreams, open_service, sync_settings

USER = 2
REVOKE = "/v2/o/revoke_token/"


async def test_a_token_response_without_a_patient_is_refused(database_url: str, token_keys: str) -> None:
    upstreams = Upstreams()
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            with pytest.raises(GrantNotSyncingError, match="names no patient"):
                await service.enrol(replace(upstreams.authorize(USER), patient=None))
            async with service.pool.connection() as connection:
                row = await (await connection.execute("SELECT count(*) FROM bluebutton_grants")).fetchone()
    assert row == (0,)


async def test_disconnect_skips_an_undecryptable_token_and_an_ended_grant_does_not_sync(
    database_url: str, token_keys: str
) -> None:
    upstreams = Upstreams()
    with upstreams.router():
        async with open_service(sync_settings(database_url, token_keys)) as service:
            grant_id, _ = await service.enrol(upstreams.authorize(USER))
            async with service.pool.connection() as connection:  # an access token no key opens
                await connection.execute(
                    "UPDATE bluebutton_grants SET access_token_ct = %s WHERE id = %s",
                    (b"\x00not-a-sealed-token", grant_id),
                )

            await service.disconnect(grant_id)  # the refresh token is revoked, the other skipped
            revokes = [r for r in upstreams.cms_requests if r.url.path == REVOKE]
            assert len(revokes) == 1
            ended = await grants.get(service.pool, grant_id)
            assert ended is not None and ended.state == "disconnected"
            assert ended.access_token_ct is None and ended.refresh_token_ct is None

            await service.disconnect(grant_id)  # no token left: nothing to revoke, still disconnected
            assert len([r for r in upstreams.cms_requests if r.url.path == REVOKE]) == 1

            with pytest.raises(GrantNotSyncingError, match="is disconnected"):
                await service.sync_now(grant_id)
