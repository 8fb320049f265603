"""`GET /bluebutton/userinfo` against the real processes: the connector reads the emulated CMS's
`/v2/connect/userinfo` with the caller's token (issue 11, the CMS SDK's profile)."""

from __future__ import annotations

from tests.e2e.harness import Harness, diagnostics, outcome

PROFILE_USER = 42
WITHHOLDING_USER = 43


def userinfo(e2e: Harness, token: str) -> tuple[int, dict[str, object] | list[object]]:
    response = e2e.client.get(
        f"{e2e.stack.connector_url}/bluebutton/userinfo", headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code, response.json()


def test_userinfo_is_what_cms_serves_for_the_token(e2e: Harness) -> None:
    tokens = e2e.tokens(PROFILE_USER)
    direct = e2e.client.get(
        f"{e2e.stack.cms_url}/v2/connect/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert direct.status_code == 200
    status, body = userinfo(e2e, tokens["access_token"])
    assert status == 200
    assert body == direct.json()
    assert isinstance(body, dict) and body["patient"] == tokens["patient"] == "-19990000000043"


def test_userinfo_without_the_profile_scope_is_403_saying_why(e2e: Harness) -> None:
    tokens = e2e.tokens(WITHHOLDING_USER, share_demographics=False)
    assert "profile" not in tokens["scope"]
    response = e2e.client.get(
        f"{e2e.stack.connector_url}/bluebutton/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert response.status_code == 403
    assert outcome(response)[0]["code"] == "forbidden"
    assert "`profile` scope" in diagnostics(response)


def test_a_token_replaced_by_a_newer_authorization_is_401_saying_so(e2e: Harness) -> None:
    first = e2e.tokens(PROFILE_USER)
    e2e.tokens(PROFILE_USER)  # the emulator, like CMS, ends the user's earlier tokens
    response = e2e.client.get(
        f"{e2e.stack.connector_url}/bluebutton/userinfo",
        headers={"Authorization": f"Bearer {first['access_token']}"},
    )
    assert response.status_code == 401
    assert "newer authorization of the same beneficiary" in diagnostics(response)
