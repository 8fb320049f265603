"""The console's cookie and CSRF tokens: only what this key signed, for this purpose, in time."""

from __future__ import annotations

import pytest

from bluebutton.web.console.session import SESSION_SECONDS, SessionSigner, same_key
from tests.sync.conftest import ADMIN_KEY

NOW = 1_800_000_000.0


@pytest.fixture
def signer() -> SessionSigner:
    return SessionSigner(ADMIN_KEY)


def test_a_cookie_verifies_until_it_expires(signer: SessionSigner) -> None:
    value, session = signer.issue("session", NOW, SESSION_SECONDS)
    assert signer.verify("session", value, NOW) == session
    assert signer.verify("session", value, NOW + SESSION_SECONDS - 1) == session
    assert signer.verify("session", value, NOW + SESSION_SECONDS) is None


@pytest.mark.parametrize("part", [0, 1, 2, 3], ids=["version", "id", "expiry", "signature"])
def test_changing_any_part_of_the_cookie_voids_it(signer: SessionSigner, part: int) -> None:
    value, _ = signer.issue("session", NOW, SESSION_SECONDS)
    parts = value.split(".")
    last = "y" if parts[part].endswith("x") else "x"
    parts[part] = "9" * len(parts[part]) if part == 2 else parts[part][:-1] + last
    assert signer.verify("session", ".".join(parts), NOW) is None


@pytest.mark.parametrize("value", ["", "v1", "v1.a.b.c", "v1.a.1.c.d", "x" * 500, None])
def test_malformed_cookies_are_refused(signer: SessionSigner, value: str | None) -> None:
    assert signer.verify("session", value, NOW) is None


def test_a_sign_in_form_cookie_is_no_session(signer: SessionSigner) -> None:
    value, pre = signer.issue("sign-in", NOW, 600)
    assert signer.verify("sign-in", value, NOW) == pre
    assert signer.verify("session", value, NOW) is None


def test_another_admin_key_signs_every_operator_out(signer: SessionSigner) -> None:
    value, _ = signer.issue("session", NOW, SESSION_SECONDS)
    assert SessionSigner(ADMIN_KEY + "-rotated").verify("session", value, NOW) is None


def test_a_csrf_token_belongs_to_one_session(signer: SessionSigner) -> None:
    _, first = signer.issue("session", NOW, SESSION_SECONDS)
    _, second = signer.issue("session", NOW, SESSION_SECONDS)
    _, pre = signer.issue("sign-in", NOW, 600)
    token = signer.csrf_token(first)
    assert signer.csrf_ok(first, token)
    assert not signer.csrf_ok(second, token)
    assert not signer.csrf_ok(first, None) and not signer.csrf_ok(first, "")
    assert signer.csrf_token(pre) != signer.csrf_token(first)


def test_the_admin_key_comparison() -> None:
    assert same_key(ADMIN_KEY, ADMIN_KEY)
    assert not same_key(ADMIN_KEY[:-1], ADMIN_KEY) and not same_key("", ADMIN_KEY)
