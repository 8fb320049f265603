"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.

A secret written `whsec_<base64>` (the scheme's own format, as its libraries generate) is the
decoded bytes; any other secret is its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "whsec_"


def secret_key(secret: str) -> bytes:
    if secret.startswith(PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(PREFIX), validate=True)
        except binascii.Error as e:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from e
    return secret.encode()


def sign(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()


def verify(key: bytes, event_id: str, timestamp: int, body: bytes, header: str) -> bool:
    """True when any of the space-separated signatures in `header` matches (constant time)."""
    expected = sign(key, event_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in header.split())
