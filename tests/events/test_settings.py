"""Event settings refuse unsafe targets at start-up, naming the variable."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bluebutton.settings import describe_error
from tests.factories import make_settings

SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        pytest.param("http://hooks.example.com/in", "over HTTPS", id="plain-http-remote"),
        pytest.param("https://ok.example.com/a, http://10.0.0.7/b", "over HTTPS", id="one-of-two"),
        pytest.param("ftp://hooks.example.com/in", "not an absolute http(s) URL", id="scheme"),
        pytest.param("/relative", "not an absolute http(s) URL", id="relative"),
    ],
)
def test_webhook_targets_must_be_https_unless_loopback(urls: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(webhook_urls=urls, webhook_secret=SECRET)
    text = describe_error(caught.value)
    assert "BLUEBUTTON_WEBHOOK_URLS" in text and message in text


def test_loopback_http_and_remote_https_are_accepted() -> None:
    settings = make_settings(
        webhook_urls="https://hooks.example.com/in, http://127.0.0.1:9000/x,http://[::1]:8/y,http://localhost/z",
        webhook_secret=SECRET,
    )
    assert settings.webhook_targets == [
        "https://hooks.example.com/in",
        "http://127.0.0.1:9000/x",
        "http://[::1]:8/y",
        "http://localhost/z",
    ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"webhook_urls": "https://h.example.com/"}, "BLUEBUTTON_WEBHOOK_SECRET: required", id="no-secret"
        ),
        pytest.param({"webhook_secret": "short"}, "at least 24 bytes", id="short-secret"),
        pytest.param(
            {"nats_url": "http://127.0.0.1:4222"}, "BLUEBUTTON_NATS_URL: use nats://", id="nats-scheme"
        ),
    ],
)
def test_other_event_settings_are_checked(values: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_settings(**values)
    assert message in describe_error(caught.value)
