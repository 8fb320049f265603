"""`Idempotency-Key` on `GET /bluebutton/fhir` (draft-ietf-httpapi-idempotency-key-header): a retry
never stores a beneficiary's claims twice.

The first request with a key runs the pull; what came of it is kept for
`BLUEBUTTON_IDEMPOTENCY_TTL_SECONDS` (24 h):

- a 200 is replayed as it was (status, headers, body); nothing is sent to connect again;
- some Bundles stored, then a failure (connect, the deadline, the caller leaving): a retry pulls
  again and sends only the entries connect has not stored;
- nothing stored: the key is forgotten, so a retry runs afresh (it cannot duplicate anything).

A repeat while the first still runs is 409; the key with another token or query is 422.

The store sees hashes and a blob sealed with AES-GCM under a key derived from the caller's token
(HMAC, apart from the token's stored SHA-256): the answer and connect's envelopes carry FHIR
payload, and only a caller holding the token can open them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bluebutton.connect.client import StoredRecord
from bluebutton.errors import (
    IdempotencyConflictError,
    IdempotencyKeyError,
    IdempotencyKeyReusedError,
    IdempotencyStoreError,
)
from bluebutton.pull.idempotency_store import IdempotencyRecord, IdempotencyStore
from bluebutton.pull.pipeline import Answer, Transfer
from bluebutton.pull.progress import Progress, StoredPiece
from bluebutton.pull.query import FhirQuery

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"[A-Za-z0-9._:~+/=-]{1,255}")
_LEASE_MARGIN_SECONDS = 30  # past the pull's deadline, a run still marked running is dead
_RETRY_AFTER_SECONDS = 10

HEADER_DOC = (
    "Makes the request safe to retry: 1-255 characters of letters, digits and `-_.:~+/=` (a UUID "
    "is the usual choice), optionally as a quoted string. The first request with a key runs; a "
    "repeat while it runs is 409; after a 200, the same answer is replayed (with "
    "`Idempotent-Replayed: true`) and nothing is sent to connect again; after a failure that left "
    "some Bundles stored, only the entries not stored yet are sent; after a failure that stored "
    "nothing, the key is free again. The same key with another query or token is 422. Kept 24 h."
)


def parse_key(value: str) -> str:
    """The key, or a 400 saying what a key may be (the value itself is not echoed)."""
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':  # the draft's sf-string form
        text = text[1:-1]
    if not _KEY.fullmatch(text):
        raise IdempotencyKeyError(
            f"The {HEADER} header ({len(text)} characters) is not a valid key: use 1-255 "
            "characters of letters, digits and - _ . : ~ + / = (e.g. a UUID), optionally in "
            "double quotes, and the same key for every retry of one request."
        )
    return text


def hash_token(token: str) -> str:
    return hashlib.sha256(b"bluebutton idempotency token\0" + token.encode()).hexdigest()


def hash_query(query: FhirQuery) -> str:
    """The query's meaning, not its spelling: repeated parameters and claim types in any order."""
    values: dict[str, Any] = query.model_dump(mode="json")
    for name, value in values.items():
        if isinstance(value, list):
            values[name] = sorted(map(str, value))
        elif name == "type" and isinstance(value, str):
            values[name] = ",".join(sorted(set(value.split(","))))
    return hashlib.sha256(orjson.dumps(values, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Seal:
    """AES-GCM under a key only the caller's token yields, bound to the Idempotency-Key."""

    def __init__(self, token: str, key: str) -> None:
        secret = hmac.new(token.encode(), b"bluebutton idempotency seal\0" + key.encode(), hashlib.sha256)
        self._aead = AESGCM(secret.digest())
        self._bound = key.encode()

    def close(self, value: dict[str, Any]) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, orjson.dumps(value), self._bound)

    def open(self, sealed: bytes) -> dict[str, Any]:
        try:
            value: dict[str, Any] = orjson.loads(self._aead.decrypt(sealed[:12], sealed[12:], self._bound))
        except (InvalidTag, ValueError) as e:
            raise IdempotencyStoreError(
                f"The record of this {HEADER} cannot be opened; use a new key for a new request"
            ) from e
        return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def progress_value(progress: Progress) -> dict[str, Any]:
    return {
        "stored": [
            {
                "first_entry": piece.first_entry,
                "entry_count": piece.entry_count,
                "uuid": piece.record.uuid,
                "location": piece.record.location,
                "envelope": _b64(piece.record.envelope),
            }
            for piece in progress.stored
        ],
        "digests": sorted(progress.digests),
    }


def restore_progress(value: dict[str, Any]) -> Progress:
    stored = [
        StoredPiece(
            item["first_entry"],
            item["entry_count"],
            StoredRecord(item["uuid"], item["location"], base64.b64decode(item["envelope"])),
        )
        for item in value["stored"]
    ]
    return Progress(stored=stored, digests=set(value["digests"]))


class IdempotentTransfer:
    """The transfer behind an `Idempotency-Key`; without a key, the transfer as it is."""

    def __init__(
        self,
        transfer: Transfer,
        store: IdempotencyStore,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.transfer = transfer
        self.store = store
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    async def __call__(
        self,
        key: str | None,
        query: FhirQuery,
        token: str,
        caller_gone: Callable[[], Awaitable[object]] | None = None,
    ) -> Answer:
        if key is None:
            return await self.transfer(query, token, caller_gone=caller_gone)
        key = parse_key(key)
        seal = Seal(token, key)
        lease = int(self._clock() + self.transfer.pull_timeout + _LEASE_MARGIN_SECONDS)
        running = IdempotencyRecord("running", hash_token(token), hash_query(query), lease)
        claimed, previous = await self.store.claim(key, running, self.ttl_seconds)
        if not claimed:
            assert previous is not None
            return self._not_run(previous, running, seal)
        progress = Progress()
        if previous is not None and previous.sealed:
            progress = restore_progress(seal.open(previous.sealed))
        try:
            answer = await self.transfer(query, token, progress, caller_gone)
        except BaseException:
            await self._keep_failure(key, running, progress, seal)
            raise
        body = b"".join(answer.parts)
        done = {"headers": answer.headers, "media_type": answer.media_type, "body": _b64(body)}
        await self._finish(
            key, IdempotencyRecord("done", running.token_hash, running.query_hash, 0, seal.close(done))
        )
        return Answer([body], len(body), answer.media_type, answer.headers)

    def _not_run(self, previous: IdempotencyRecord, running: IdempotencyRecord, seal: Seal) -> Answer:
        if previous.token_hash != running.token_hash:
            raise IdempotencyKeyReusedError(
                f"This {HEADER} was first used with another access token. A key names one "
                "request: send a new key (e.g. a new UUID) with a new request."
            )
        if previous.query_hash != running.query_hash:
            raise IdempotencyKeyReusedError(
                f"This {HEADER} was first used with other query parameters. A key names one "
                "request: repeat that request unchanged, or send a new key with a new one."
            )
        if previous.state != "done":
            raise IdempotencyConflictError(
                f"The first request with this {HEADER} is still running (at most "
                f"BLUEBUTTON_PULL_TIMEOUT_SECONDS={self.transfer.pull_timeout:g} s). Retry with "
                "the same key when it has finished: you get its answer, nothing is sent twice.",
                headers={"Retry-After": str(_RETRY_AFTER_SECONDS)},
            )
        done = seal.open(previous.sealed)
        body = base64.b64decode(done["body"])
        return Answer([body], len(body), done["media_type"], {**done["headers"], REPLAYED_HEADER: "true"})

    async def _keep_failure(
        self, key: str, running: IdempotencyRecord, progress: Progress, seal: Seal
    ) -> None:
        """Keep what is stored, for the retry; with nothing stored, free the key."""
        try:
            if progress.stored:
                partial = IdempotencyRecord(
                    "partial", running.token_hash, running.query_hash, 0, seal.close(progress_value(progress))
                )
                await self.store.finish(key, partial, self.ttl_seconds)
            else:
                await self.store.release(key)
        except IdempotencyStoreError:
            logger.warning("could not record a failed pull's progress under its Idempotency-Key")

    async def _finish(self, key: str, record: IdempotencyRecord) -> None:
        try:
            await self.store.finish(key, record, self.ttl_seconds)
        except IdempotencyStoreError:
            # The data is in connect: answer it; a retry with this key would run again.
            logger.warning("could not record a finished pull under its Idempotency-Key")
