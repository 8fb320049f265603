"""Moving a kept grant from Blue Button v2 to v3 without storing its claims twice.

v3 ids are not v2 ids (bb2-v3.md §3.2: Patient from another key, EOB ids `CLM_UNIQ_ID` without a
type prefix), so a ledger keyed by resource id would take every claim for new. A consent on v3 also
deletes the app's v2 tokens for that person (WS `form_valid`, §2.5). So:

- **The same person** is known by MBI, `Coverage.subscriberId` on both versions (§3.4), read once
  per grant by a run and kept as an HMAC (`beneficiary_key`), never by patient id.
- **A v3 grant whose person has a v2 grant** takes over: the v2 grant ends `migrated`, the v3
  grant remembers it (`migrated_from`).
- **The same claim** is known by its cross-version key (§3.3, "inferred, untested by CMS"): for Part
  A/B claims the claim type, the claim control number (v2 `carr_clm_cntl_num` / `fi_doc_clm_cntl_num`,
  v3 `CLM-CNTL-NUM`, DD3 row 63) and the billing period; for Part D the prescription number (v2
  `rx_srvc_rfrnc_num`, v3 `CLM_LINE_RX_NUM`, DD3 row 58), service date, NDC and fill number. Every
  claim a grant stores (or finds unchanged) has its key's HMAC recorded beside the ledger.
- **A v3 run** treats a new claim whose key the v2 grant recorded as held (a ledger row pointing at
  the v2 record; nothing sent), and counts it `held_under_v2`; a new claim it cannot prove is stored
  and counted `possibly_held_under_v2`, for an operator to see.
- Within one grant, a final claim whose key matches a not-final (shared-system) claim already stored
  replaces it: counted `changed`, not `new` (§4: `_source`, `Final-Action`).

A grant's first run after this feature reads every claim (no watermark), so claims stored before
it get their keys too. Rotating `BLUEBUTTON_TOKEN_KEYS` changes the HMAC key: claims then stored
again are counted as possibly held, never lost.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import uuid
from typing import Any

import orjson
from psycopg import AsyncConnection

from bluebutton.errors import Issue
from bluebutton.sync.context import SyncContext
from bluebutton.sync.ledger import Entry, Kind

EOB = "ExplanationOfBenefit"
MBI = "http://hl7.org/fhir/sid/us-mbi"
_CONTROL_V2 = ("/carr_clm_cntl_num", "/fi_doc_clm_cntl_num")
_CONTROL_V3 = "https://bluebutton.cms.gov/identifiers/CLM-CNTL-NUM"
_EOB_TYPES = ("/eob-type", "/EOB-TYPE")  # v2 resources/codesystem/eob-type, v3 fhir/CodeSystem/EOB-TYPE


def hmac_key(token_keys: str) -> bytes:
    """The key the digests are made with: derived from the first `BLUEBUTTON_TOKEN_KEYS` key."""
    first = base64.b64decode(token_keys.split(",")[0].strip())
    return hashlib.sha256(b"bluebutton cross-version keys\0" + first).digest()


def digest(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _codings(concept: Any) -> list[dict[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def _claim_type(eob: dict[str, Any]) -> str | None:
    for coding in _codings(eob.get("type")):
        if str(coding.get("system", "")).endswith(_EOB_TYPES) and isinstance(coding.get("code"), str):
            return str(coding["code"]).lower()
    return None


def _supporting(eob: dict[str, Any], code: str) -> dict[str, Any] | None:
    for info in eob.get("supportingInfo") or []:
        if isinstance(info, dict) and any(c.get("code") == code for c in _codings(info.get("category"))):
            return info
    return None


def _rx_number(eob: dict[str, Any]) -> str | None:
    for identifier in eob.get("identifier") or []:
        if isinstance(identifier, dict) and str(identifier.get("system", "")).endswith("/rx_srvc_rfrnc_num"):
            return str(identifier.get("value"))
    info = _supporting(eob, "CLM_LINE_RX_NUM")
    return str(info["valueString"]) if info and "valueString" in info else None


def _control_number(eob: dict[str, Any]) -> str | None:
    for identifier in eob.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == _CONTROL_V3:
            return str(identifier.get("value"))
    for extension in eob.get("extension") or []:
        if isinstance(extension, dict) and str(extension.get("url", "")).endswith(_CONTROL_V2):
            value = (extension.get("valueIdentifier") or {}).get("value")
            return str(value) if value is not None else None
    return None


def claim_key(eob: dict[str, Any]) -> str | None:
    """The claim's cross-version key as text, or None when the claim does not carry all of it."""
    kind = _claim_type(eob)
    if kind is None:
        return None
    if kind == "pde":
        item = (eob.get("item") or [{}])[0]
        ndc = next(
            (c.get("code") for c in _codings(item.get("productOrService")) if "ndc" in str(c.get("system"))),
            None,
        )
        fill = _supporting(eob, "refillnum")
        parts = [
            _rx_number(eob),
            item.get("servicedDate"),
            ndc,
            (fill or {}).get("valueQuantity", {}).get("value"),
        ]
    else:
        period = eob.get("billablePeriod") or {}
        parts = [_control_number(eob), period.get("start"), period.get("end")]
    if any(part is None for part in parts):
        return None
    return "|".join([kind, *map(str, parts)])


def _mbi(raw_entries: list[bytes]) -> str | None:
    for raw in raw_entries:
        resource = orjson.loads(raw).get("resource", {})
        if isinstance(resource.get("subscriberId"), str) and resource["subscriberId"]:
            return str(resource["subscriberId"])
        for identifier in resource.get("identifier") or []:
            if isinstance(identifier, dict) and identifier.get("system") == MBI:
                return str(identifier.get("value"))
    return None


class Lineage:
    """A run's view of the grant between versions. The person is read from the run's own Coverage
    pull (no extra CMS call); the EOB pull, running at the same time, waits for it only when the
    grant's person is not known yet."""

    def __init__(self, grant_id: uuid.UUID, version: int, known: bool, predecessor: uuid.UUID | None) -> None:
        self.grant_id = grant_id
        self.version = version
        self.known = known  # False: this run reads every claim (no watermark) and the person
        self._predecessor: asyncio.Future[uuid.UUID | None] = asyncio.get_running_loop().create_future()
        if known:
            self._predecessor.set_result(predecessor)
        self._fallback = predecessor

    @classmethod
    async def load(cls, pool: Any, grant_id: uuid.UUID, version: int, scopes: list[str]) -> Lineage:
        async with pool.connection() as connection:
            row = await (
                await connection.execute(
                    "SELECT beneficiary_key, migrated_from FROM bluebutton_grants WHERE id = %s", (grant_id,)
                )
            ).fetchone()
        coverage = not scopes or any(s.startswith("patient/Coverage.") for s in scopes)
        known = row is None or row[0] is not None or not coverage  # without Coverage: never known
        return cls(grant_id, version, known, row[1] if row else None)

    async def predecessor(self) -> uuid.UUID | None:
        return await asyncio.shield(self._predecessor)

    def unread(self) -> None:
        """The Coverage pull ended without the person (refused): nothing to take over this run."""
        if not self._predecessor.done():
            self._predecessor.set_result(self._fallback)

    async def read_coverage(self, ctx: SyncContext, raw_entries: list[bytes]) -> list[dict[str, Any]]:
        """Learn the person from the Coverage pull; on v3, take over their v2 grant. Notes for the run."""
        if self._predecessor.done():
            return []
        mbi = _mbi(raw_entries)
        if mbi is None:
            self.unread()
            return []
        try:
            found, notes = await _take_over(ctx, self.grant_id, self.version, mbi)
        except BaseException:
            self.unread()
            raise
        self._predecessor.set_result(found or self._fallback)
        return notes


async def _take_over(
    ctx: SyncContext, grant_id: uuid.UUID, version: int, mbi: str
) -> tuple[uuid.UUID | None, list[dict[str, Any]]]:
    key = digest(hmac_key(_token_keys(ctx)), "mbi|" + mbi)
    notes: list[dict[str, Any]] = []
    predecessor = None
    async with ctx.pool.connection() as connection, connection.transaction():
        if version == 3:
            found = await (
                await connection.execute(
                    "SELECT id, patient FROM bluebutton_grants "
                    "WHERE beneficiary_key = %s AND api_version = 2 AND state <> 'migrated' AND id <> %s "
                    "ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
                    (key, grant_id),
                )
            ).fetchone()
            if found is not None:
                predecessor = found[0]
                await connection.execute(
                    "UPDATE bluebutton_grants SET state = 'migrated', access_token_ct = NULL, "
                    "refresh_token_ct = NULL, access_expires_at = NULL, next_sync_at = NULL, "
                    "updated_at = now() WHERE id = %s",
                    (predecessor,),
                )
                notes.append(
                    Issue(
                        f"The beneficiary consented on Blue Button v3: this grant takes over their v2 "
                        f"grant {predecessor} (patient {found[1]}, now migrated); claims the v2 grant "
                        "stored are not sent again.",
                        "informational",
                        "information",
                    ).as_fhir()
                )
        await connection.execute(
            "UPDATE bluebutton_grants SET beneficiary_key = %s, migrated_from = COALESCE(migrated_from, %s) "
            "WHERE id = %s",
            (key, predecessor, grant_id),
        )
    return predecessor, notes


def _token_keys(ctx: SyncContext) -> str:
    keys = ctx.settings.token_keys
    assert keys is not None  # grant keeping refuses to start without them (settings)
    return keys.get_secret_value()


def _keys_of(entries: list[Entry], key: bytes) -> dict[str, bytes]:
    """resource id -> HMAC of its claim key, for the entries that carry one."""
    found = {}
    for entry in entries:
        text = claim_key(orjson.loads(entry.raw).get("resource", {}))
        if text is not None:
            found[entry.resource_id] = digest(key, "claim|" + text)
    return found


def _not_final(entries: list[Entry]) -> set[str]:
    """Ids of v3 claims tagged `Final-Action|NotFinalAction` (shared-system claims, §3.1)."""
    found = set()
    for entry in entries:
        meta = orjson.loads(entry.raw).get("resource", {}).get("meta") or {}
        tags = meta.get("tag") if isinstance(meta, dict) else None
        if any(isinstance(t, dict) and t.get("code") == "NotFinalAction" for t in tags or []):
            found.add(entry.resource_id)
    return found


async def settle(
    ctx: SyncContext,
    grant_id: uuid.UUID,
    classified: list[tuple[Entry, Kind]],
    lineage: Lineage,
    counts: dict[str, int],
    run_id: int,
) -> list[tuple[Entry, Kind]]:
    """The run's EOB verdicts after the cross-version keys: new claims proven held under the v2
    grant are recorded as held (not sent); a final claim replacing a stored not-final one is
    `changed`; a not-final claim whose final version is stored or comes in this run is not sent
    (counted `unchanged`); keys of unchanged claims are recorded (the ledger proves them stored)."""
    predecessor = await lineage.predecessor()
    key = hmac_key(_token_keys(ctx))
    keys = _keys_of([e for e, _ in classified], key)
    not_final = _not_final([e for e, _ in classified])
    unchanged = [
        (e.resource_id, keys[e.resource_id])
        for e, kind in classified
        if kind == "unchanged" and e.resource_id in keys
    ]
    fresh = {
        e.resource_id: keys[e.resource_id]
        for e, kind in classified
        if kind == "new" and e.resource_id in keys
    }
    async with ctx.pool.connection() as connection, connection.transaction():
        await _record(connection, grant_id, unchanged)
        own = await _lookup(connection, grant_id, list(fresh.values()))
        held: dict[bytes, tuple[str, str]] = {}
        if predecessor is not None:
            rows = await (
                await connection.execute(
                    "SELECT k.claim_key, l.record_uuid, l.data_record_location FROM bluebutton_claim_keys k "
                    "JOIN bluebutton_ledger l ON l.grant_id = k.grant_id AND l.resource_type = %s "
                    "AND l.resource_id = k.resource_id WHERE k.grant_id = %s AND k.claim_key = ANY(%s)",
                    (EOB, predecessor, list(fresh.values())),
                )
            ).fetchall()
            held = {bytes(k): (uuid_, location) for k, uuid_, location in rows}
        finals = {d for rid, d in fresh.items() if rid not in not_final}
        settled: list[tuple[Entry, Kind]] = []
        proven: list[Entry] = []
        for entry, kind in classified:
            digest_ = fresh.get(entry.resource_id)
            if (
                kind == "new"
                and entry.resource_id in not_final
                and digest_ is not None
                and (digest_ in finals or (digest_ in own and own[digest_] not in not_final))
            ):
                settled.append((entry, "unchanged"))  # its final version is (being) stored
                continue
            if kind == "new" and digest_ is not None and digest_ in own and own[digest_] != entry.resource_id:
                settled.append((entry, "changed"))
            elif kind == "new" and digest_ is not None and digest_ in held:
                counts["held_under_v2"] = counts.get("held_under_v2", 0) + 1
                proven.append(entry)
                record_uuid, location = held[digest_]
                await connection.execute(
                    "INSERT INTO bluebutton_ledger (grant_id, resource_type, resource_id, content_hash, "
                    "record_uuid, data_record_location, run_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (grant_id, EOB, entry.resource_id, entry.content_hash, record_uuid, location, run_id),
                )
            else:
                if kind == "new" and predecessor is not None:
                    counts["possibly_held_under_v2"] = counts.get("possibly_held_under_v2", 0) + 1
                settled.append((entry, kind))
        await _record(connection, grant_id, [(e.resource_id, fresh[e.resource_id]) for e in proven])
    return settled


async def _lookup(connection: AsyncConnection, grant_id: uuid.UUID, digests: list[bytes]) -> dict[bytes, str]:
    rows = await (
        await connection.execute(
            "SELECT claim_key, resource_id FROM bluebutton_claim_keys "
            "WHERE grant_id = %s AND claim_key = ANY(%s)",
            (grant_id, digests),
        )
    ).fetchall()
    return {bytes(k): rid for k, rid in rows}


async def _record(connection: AsyncConnection, grant_id: uuid.UUID, pairs: list[tuple[str, bytes]]) -> None:
    if not pairs:
        return
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO bluebutton_claim_keys (grant_id, claim_key, resource_id) VALUES (%s, %s, %s) "
            "ON CONFLICT (grant_id, claim_key) DO UPDATE SET resource_id = EXCLUDED.resource_id",
            [(grant_id, k, rid) for rid, k in pairs],
        )


async def record_stored(
    connection: AsyncConnection, ctx: SyncContext, grant_id: uuid.UUID, entries: list[Entry]
) -> None:
    """Keys of the EOBs one Bundle stored, in the transaction that records them in the ledger."""
    keys = _keys_of(entries, hmac_key(_token_keys(ctx)))
    await _record(connection, grant_id, list(keys.items()))
