"""AES-256-GCM for tokens at rest: the grant id binds a ciphertext to its row; keys rotate."""

from __future__ import annotations

import base64
import uuid

import pytest

from bluebutton.sync.crypto import TokenCipher, TokenKeyError, new_key

GRANT = uuid.uuid4()


def test_round_trip_and_fresh_nonces() -> None:
    cipher = TokenCipher.from_setting(new_key())
    first, second = cipher.encrypt("secret-token", GRANT), cipher.encrypt("secret-token", GRANT)
    assert first != second  # a fresh nonce each time
    assert b"secret-token" not in first
    assert cipher.decrypt(first, GRANT) == cipher.decrypt(second, GRANT) == "secret-token"


def test_a_ciphertext_moved_to_another_grant_does_not_decrypt() -> None:
    cipher = TokenCipher.from_setting(new_key())
    blob = cipher.encrypt("secret-token", GRANT)
    with pytest.raises(TokenKeyError, match="authentication"):
        cipher.decrypt(blob, uuid.uuid4())


@pytest.mark.parametrize("position", [1, 6, 20, -1], ids=["key-id", "nonce", "body", "tag"])
def test_an_altered_ciphertext_does_not_decrypt(position: int) -> None:
    cipher = TokenCipher.from_setting(new_key())
    blob = bytearray(cipher.encrypt("secret-token", GRANT))
    blob[position] ^= 1
    with pytest.raises(TokenKeyError):
        cipher.decrypt(bytes(blob), GRANT)


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old, new = new_key(), new_key()
    before = TokenCipher.from_setting(old)
    blob = before.encrypt("secret-token", GRANT)
    after = TokenCipher.from_setting(f"{new}, {old}")
    assert after.decrypt(blob, GRANT) == "secret-token"
    assert not after.is_current(blob)
    assert after.is_current(after.encrypt("x", GRANT))
    with pytest.raises(TokenKeyError, match="not in BLUEBUTTON_TOKEN_KEYS"):
        TokenCipher.from_setting(new).decrypt(blob, GRANT)


def test_bad_keys_and_blobs_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenCipher([b"short"])
    with pytest.raises(TokenKeyError, match="format"):
        TokenCipher.from_setting(new_key()).decrypt(b"\x02" + bytes(40), GRANT)
    assert len(base64.b64decode(new_key())) == 32
