"""Tokens at rest: AES-256-GCM with the grant id as associated data, under a list of keys.

`BLUEBUTTON_TOKEN_KEYS` is a comma list of base64 32-byte keys: the first encrypts, all decrypt,
so a key is rotated by putting a new one first, running `rotate-keys`, then dropping the old one.
A ciphertext is `version (1) || key id (4) || nonce (12) || ciphertext+tag`; the key id (a digest
prefix of the key, not the key) picks the key, and the grant id as associated data makes a
ciphertext copied onto another grant's row fail to decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"
NONCE_BYTES = 12
KEY_ID_BYTES = 4
HEADER_BYTES = 1 + KEY_ID_BYTES + NONCE_BYTES


class TokenKeyError(Exception):
    """A stored token cannot be decrypted with the configured keys (or was tampered with)."""


def new_key() -> str:
    """A fresh key for `BLUEBUTTON_TOKEN_KEYS`, base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(b"bluebutton-token-key" + key).digest()[:KEY_ID_BYTES]


class TokenCipher:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys or any(len(k) != 32 for k in keys):
            raise ValueError("token keys must be 32 bytes each, at least one")
        self._keys = {key_id(k): AESGCM(k) for k in keys}
        self._current = key_id(keys[0])

    @classmethod
    def from_setting(cls, text: str) -> TokenCipher:
        return cls(
            [base64.b64decode(part.strip(), validate=True) for part in text.split(",") if part.strip()]
        )

    def encrypt(self, plaintext: str, grant_id: uuid.UUID) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, plaintext.encode("utf-8"), grant_id.bytes)
        return VERSION + self._current + nonce + sealed

    def decrypt(self, blob: bytes, grant_id: uuid.UUID) -> str:
        if len(blob) <= HEADER_BYTES or blob[:1] != VERSION:
            raise TokenKeyError("a stored token has an unknown format")
        cipher = self._keys.get(blob[1 : 1 + KEY_ID_BYTES])
        if cipher is None:
            raise TokenKeyError(
                "a stored token was encrypted with a key that is not in BLUEBUTTON_TOKEN_KEYS"
            )
        nonce = blob[1 + KEY_ID_BYTES : HEADER_BYTES]
        try:
            return cipher.decrypt(nonce, blob[HEADER_BYTES:], grant_id.bytes).decode("utf-8")
        except InvalidTag as e:
            raise TokenKeyError("a stored token failed authentication (wrong grant or altered)") from e

    def is_current(self, blob: bytes) -> bool:
        """Whether the blob is already under the first (encrypting) key."""
        return blob[1 : 1 + KEY_ID_BYTES] == self._current
