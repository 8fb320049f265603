"""The console's signed session cookie and the CSRF tokens of its forms.

A session is `v1.<session id>.<expires, unix seconds>.<HMAC-SHA256>`; nothing is kept on the server,
so any replica sharing the admin key accepts it. The signing key is derived from the admin key
(HMAC with a fixed label), so changing `BLUEBUTTON_ADMIN_API_KEY` signs every operator out.

CSRF tokens are HMACs of the session id under another label: a form posted from another site has
no way to compute one (SameSite=Strict already keeps the cookie off cross-site requests; the
token is the second lock). Before sign-in the same scheme runs on a short-lived pre-session
cookie, so the sign-in form has a token too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

SESSION_SECONDS = 8 * 3600
SIGN_IN_SECONDS = 600  # how long a rendered sign-in form stays usable
_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Session:
    """A verified cookie: its id (what CSRF tokens are bound to) and when it ends."""

    id: str
    expires: int
    purpose: str


class SessionSigner:
    """Issues and checks cookies and CSRF tokens with a key derived from the admin key."""

    def __init__(self, admin_key: str) -> None:
        self._key = hmac.new(admin_key.encode(), b"bluebutton console session key", hashlib.sha256).digest()

    def _mac(self, label: str, message: str) -> str:
        return _b64(hmac.new(self._key, f"{label}|{message}".encode(), hashlib.sha256).digest())

    def issue(self, purpose: str, now: float, lifetime: int) -> tuple[str, Session]:
        """A new cookie value for `purpose` ("session" or "sign-in"), valid for `lifetime` s."""
        session = Session(secrets.token_urlsafe(18), int(now) + lifetime, purpose)
        body = f"{_VERSION}.{session.id}.{session.expires}"
        return f"{body}.{self._mac(purpose, body)}", session

    def verify(self, purpose: str, value: str | None, now: float) -> Session | None:
        """The session the cookie names, or None: absent, malformed, forged or expired."""
        if not value or len(value) > 200:
            return None
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not parts[2].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3].encode(), self._mac(purpose, body).encode()):
            return None
        expires = int(parts[2])
        if now >= expires:
            return None
        return Session(parts[1], expires, purpose)

    def csrf_token(self, session: Session) -> str:
        return self._mac(f"csrf-{session.purpose}", session.id)

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(str(token).encode(), self.csrf_token(session).encode())


def same_key(offered: str, expected: str) -> bool:
    """The offered admin key against the configured one, in constant time (over digests, so the
    comparison's duration says nothing about the length either)."""
    digest = hashlib.sha256
    return hmac.compare_digest(digest(offered.encode()).digest(), digest(expected.encode()).digest())
