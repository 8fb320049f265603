"""Signed webhook POSTs (Standard Webhooks headers) with one shared, TLS-verifying client.

A 2xx ends a delivery; anything else, or no answer, is a failed attempt that the delivery job
retries. The receiver's body is never read into logs or errors: only its status is kept.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time

import httpx

from bluebutton.events.signing import secret_key, sign
from bluebutton.outbound.client import USER_AGENT
from bluebutton.settings import Settings


class WebhookFailedError(Exception):
    """One failed attempt (status or transport error, never the receiver's body)."""


def target_of(url: str) -> str:
    """The delivery's target name: no URL in job arguments or rows (it may carry a secret)."""
    return "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]


class _HideTargets(logging.Filter):
    """httpx logs each request's URL at INFO; a webhook URL often carries a secret in its path."""

    def __init__(self, urls: dict[str, str]) -> None:
        super().__init__()
        self.names = {str(httpx.URL(url)): target for target, url in urls.items()}

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.names.get(str(arg), arg) if isinstance(arg, httpx.URL) else arg for arg in record.args
            )
        return True


class WebhookSender:
    def __init__(self, settings: Settings, context: ssl.SSLContext) -> None:
        assert settings.webhook_secret is not None
        self._key = secret_key(settings.webhook_secret.get_secret_value())
        self.urls = {target_of(u): u for u in settings.webhook_targets}
        self._hide = _HideTargets(self.urls)
        logging.getLogger("httpx").addFilter(self._hide)
        self._http = httpx.AsyncClient(
            verify=context,
            timeout=httpx.Timeout(settings.webhook_timeout_seconds, connect=5.0),
            limits=httpx.Limits(max_connections=20),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )

    def headers(self, event_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = int(time.time()) if timestamp is None else timestamp
        return {
            "Content-Type": "application/json",
            "Webhook-Id": event_id,
            "Webhook-Timestamp": str(stamp),
            "Webhook-Signature": sign(self._key, event_id, stamp, body),
        }

    async def post(self, target: str, event_id: str, body: bytes) -> int:
        """POST once; returns the 2xx status, raises `WebhookFailedError` otherwise."""
        url = self.urls[target]
        try:
            response = await self._http.post(url, content=body, headers=self.headers(event_id, body))
            await response.aclose()
        except httpx.TimeoutException as e:
            raise WebhookFailedError(f"no answer in time ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise WebhookFailedError(f"no answer ({type(e).__name__})") from e
        if not 200 <= response.status_code < 300:
            raise WebhookFailedError(f"HTTP {response.status_code}")
        return response.status_code

    async def aclose(self) -> None:
        await self._http.aclose()
        logging.getLogger("httpx").removeFilter(self._hide)
