"""The Standard Webhooks signature, against the example in the scheme's specification."""

from __future__ import annotations

import pytest

from bluebutton.events.signing import secret_key, sign, verify

SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_specification_example_signs_alike() -> None:
    assert sign(secret_key(SPEC_SECRET), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


@pytest.mark.parametrize(
    ("event_id", "timestamp", "body"),
    [
        pytest.param("msg_other", SPEC_TIMESTAMP, SPEC_BODY, id="id"),
        pytest.param(SPEC_ID, SPEC_TIMESTAMP + 1, SPEC_BODY, id="timestamp"),
        pytest.param(SPEC_ID, SPEC_TIMESTAMP, b'{"test": 2432232315}', id="body"),
    ],
)
def test_any_changed_part_fails_verification(event_id: str, timestamp: int, body: bytes) -> None:
    key = secret_key(SPEC_SECRET)
    assert not verify(key, event_id, timestamp, body, SPEC_SIGNATURE)
    assert verify(key, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY, f"v1,bm90LWl0 {SPEC_SIGNATURE}")


def test_a_plain_secret_is_its_bytes_and_a_bad_whsec_is_refused() -> None:
    assert secret_key("plain-secret") == b"plain-secret"
    with pytest.raises(ValueError, match="base64"):
        secret_key("whsec_not base64!")


async def test_the_documented_receiver_verifies_what_the_sender_signs() -> None:
    import re
    import time

    from bluebutton.events.webhooks import WebhookSender
    from bluebutton.outbound.tls import build_ssl_context
    from tests.events.events import SECRET
    from tests.factories import ROOT, make_settings

    section = (ROOT / "docs" / "events-and-metrics.md").read_text().split("## Events", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code.group(1), namespace)  # noqa: S102 - our own docs' example
    receive = namespace["verify"]
    assert callable(receive)

    settings = make_settings(webhook_urls="https://hooks.example.com/in", webhook_secret=SECRET)
    sender = WebhookSender(settings, build_ssl_context(settings))
    body = b'{"id":"e1","type":"grant.created"}'
    headers = {k.lower(): v for k, v in sender.headers("e1", body).items()}
    assert receive(SECRET, headers, body) == {"id": "e1", "type": "grant.created"}
    with pytest.raises(ValueError, match="bad signature"):
        receive(SECRET, headers, body.replace(b"e1", b"e2"))
    stale = {k.lower(): v for k, v in sender.headers("e1", body, int(time.time()) - 3600).items()}
    await sender.aclose()
    with pytest.raises(ValueError, match="stale"):
        receive(SECRET, stale, body)
