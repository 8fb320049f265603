"""The CMS emulator's settings: `CmsSandboxConfig` and the defaults the demo and tests share.

Kept apart from `app.py` so the route modules (`oauth.py`, `fhir.py`) can read the config without
importing the module that imports them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bluebutton.sandbox.cms.faults import Faults

DEFAULT_CLIENT_ID: Final = "bluebutton-sandbox-client"
DEFAULT_CLIENT_SECRET: Final = "bluebutton-sandbox-secret"  # noqa: S105 - public sandbox value
DEFAULT_REDIRECT_URI: Final = "https://localhost:5200/bluebutton/authorize_callback"
DEFAULT_PORT: Final = 5300
ENV_PREFIX: Final = "BLUEBUTTON_SANDBOX_CMS_"
CERTS: Final = Path(__file__).resolve().parents[3] / "local-certs"


@dataclass(frozen=True)
class CmsSandboxConfig:
    """Everything one emulator instance needs; defaults match the real API where it has a value."""

    client_id: str = DEFAULT_CLIENT_ID
    client_secret: str = DEFAULT_CLIENT_SECRET
    redirect_uris: tuple[str, ...] = (DEFAULT_REDIRECT_URI,)
    latency_ms: int = 0  # added to every FHIR response
    claims_override: int | None = None  # every user gets this many EOBs (benchmark)
    faults: Faults = field(default_factory=Faults)  # initial faults; see faults.py
    access_token_seconds: int = 3600  # bb2-api.md §2.5
    weekly_claims: int = 3  # most new claims per user per emulated week (schedule.py); 0: none
    code_seconds: int = 60  # DOT AUTHORIZATION_CODE_EXPIRE_SECONDS (§2.3)
    approval_seconds: int = 600  # AUTHORIZATION_EXPIRATION of the consent page (§2.2)
    cached_users: int = 16  # users whose claim JSON stays in memory (about 10 MB each at most)
    entry_full_url: bool = False  # CMS sends entries without fullUrl; True adds it
    app_name: str = "LinuxForHealth connect Blue Button connector"
    clock: Callable[[], float] = time.time  # injectable for expiry tests
    state_path: Path | None = None  # tokens, grants, clock, added claims kept there (state.py)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # the latency fault's; tests record it

    def __post_init__(self) -> None:
        object.__setattr__(self, "redirect_uris", tuple(self.redirect_uris))
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret must not be empty")
        if not self.redirect_uris:
            raise ValueError("at least one redirect URI must be registered")
        for name in (
            "latency_ms",
            "access_token_seconds",
            "weekly_claims",
            "code_seconds",
            "approval_seconds",
            "cached_users",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.claims_override is not None and not 0 <= self.claims_override <= 100_000:
            raise ValueError("claims_override must be between 0 and 100000")
