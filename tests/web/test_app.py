"""The app factory's lifespan: a start-up that fails halfway closes what it had opened."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from asgi_lifespan import LifespanManager

import bluebutton.resources
from bluebutton.cms.client import CmsClient
from bluebutton.connect.client import ConnectClient
from bluebutton.settings import Settings
from bluebutton.web.app import create_app
from tests.factories import make_settings


class StartFailed(Exception):
    pass


class FailingValidator:
    """A validator whose pool cannot start: the last resource the lifespan opens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def __aenter__(self) -> FailingValidator:
        raise StartFailed("no worker could start")

    async def __aexit__(self, *exc: object) -> None:
        raise AssertionError("never entered, so never left")


async def test_a_failed_start_closes_what_it_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[CmsClient | ConnectClient] = []

    def recording(create: Any) -> Any:
        def wrapper(settings: Settings, context: ssl.SSLContext, **options: Any) -> Any:
            client = create(settings, context, **options)
            opened.append(client)
            return client

        return wrapper

    monkeypatch.setattr(CmsClient, "create", recording(CmsClient.create))
    monkeypatch.setattr(ConnectClient, "create", recording(ConnectClient.create))
    monkeypatch.setattr(bluebutton.resources, "Validator", FailingValidator)
    app = create_app(make_settings())
    with pytest.raises(StartFailed):
        async with LifespanManager(app):
            pass  # pragma: no cover - the start fails
    assert [type(c).__name__ for c in opened] == ["CmsClient", "ConnectClient"]
    assert all(client._client.is_closed for client in opened)
