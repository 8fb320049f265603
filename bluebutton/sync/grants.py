"""The grants table: enrol a beneficiary, read and replace tokens, move a grant between states.

A grant is one beneficiary's authorization for one CMS API version. Re-authorizing reuses it (same
id, same ledger, so nothing already in connect is stored again) with the new tokens.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from bluebutton.cms.oauth import TokenSet
from bluebutton.events import outbox
from bluebutton.sync.crypto import TokenCipher

GrantState = Literal["active", "failing", "expired", "revoked", "disconnected", "migrated"]
_SELECT = (
    "SELECT id, patient, api_version, state, scopes, access_grant_expiration, access_token_ct, "
    "refresh_token_ct, access_expires_at, created_at, next_sync_at, consecutive_failures "
    "FROM bluebutton_grants "
)
_SELECT_ONE = _SELECT + "WHERE id = %s"
_SELECT_LOCKED = _SELECT + "WHERE id = %s FOR UPDATE"
SYNCING: tuple[GrantState, ...] = ("active", "failing")
STATES: tuple[GrantState, ...] = ("active", "failing", "expired", "revoked", "disconnected", "migrated")


@dataclass(frozen=True)
class Grant:
    id: uuid.UUID
    patient: str
    api_version: int
    state: GrantState
    scopes: list[str]
    access_grant_expiration: datetime | None
    access_token_ct: bytes | None
    refresh_token_ct: bytes | None
    access_expires_at: datetime | None
    created_at: datetime
    next_sync_at: datetime | None
    consecutive_failures: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Grant:
        return cls(**row)


def parse_instant(value: str | None) -> datetime | None:
    """CMS's `access_grant_expiration` (ISO 8601, blank for research apps) as an aware datetime."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _expiry(tokens: TokenSet) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=tokens.expires_in)


async def enrol(
    pool: AsyncConnectionPool, cipher: TokenCipher, tokens: TokenSet, api_version: int, patient: str
) -> uuid.UUID:
    """Store (or renew) the beneficiary's grant with these tokens; returns its id."""
    async with pool.connection() as connection, connection.transaction():
        found = await (
            await connection.execute(
                "SELECT id FROM bluebutton_grants WHERE patient = %s AND api_version = %s FOR UPDATE",
                (patient, api_version),
            )
        ).fetchone()
        grant_id = found[0] if found else uuid.uuid4()
        values = (
            list(tokens.scope),
            parse_instant(tokens.access_grant_expiration),
            cipher.encrypt(tokens.access_token, grant_id),
            cipher.encrypt(tokens.refresh_token, grant_id) if tokens.refresh_token else None,
            _expiry(tokens),
        )
        if found:
            await connection.execute(
                "UPDATE bluebutton_grants SET state = 'active', scopes = %s, access_grant_expiration = %s, "
                "access_token_ct = %s, refresh_token_ct = %s, access_expires_at = %s, "
                "consecutive_failures = 0, updated_at = now() WHERE id = %s",
                (*values, grant_id),
            )
        else:
            await connection.execute(
                "INSERT INTO bluebutton_grants (id, patient, api_version, state, scopes, "
                "access_grant_expiration, access_token_ct, refresh_token_ct, access_expires_at) "
                "VALUES (%s, %s, %s, 'active', %s, %s, %s, %s, %s)",
                (grant_id, patient, api_version, *values),
            )
        reason = "re-authorized: the grant is renewed with new tokens" if found else None
        await outbox.emit(connection, "grant.created", grant_id, patient, reason=reason)
    return grant_id


async def get(pool: AsyncConnectionPool, grant_id: uuid.UUID) -> Grant | None:
    async with pool.connection() as connection:
        return await get_with(connection, grant_id)


async def get_with(connection: AsyncConnection, grant_id: uuid.UUID, *, lock: bool = False) -> Grant | None:
    async with connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(_SELECT_LOCKED if lock else _SELECT_ONE, (grant_id,))
        row = await cursor.fetchone()
    return Grant.from_row(row) if row else None


@dataclass(frozen=True)
class SealedTokens:
    """A refreshed token set, encrypted for its grant: what is written (and what the journal
    keeps while the database is away)."""

    access_token_ct: bytes
    refresh_token_ct: bytes | None
    access_expires_at: datetime
    access_grant_expiration: datetime | None


def seal_tokens(cipher: TokenCipher, grant_id: uuid.UUID, tokens: TokenSet) -> SealedTokens:
    return SealedTokens(
        cipher.encrypt(tokens.access_token, grant_id),
        cipher.encrypt(tokens.refresh_token, grant_id) if tokens.refresh_token else None,
        _expiry(tokens),
        parse_instant(tokens.access_grant_expiration),
    )


async def store_sealed(connection: AsyncConnection, grant_id: uuid.UUID, sealed: SealedTokens) -> None:
    """Persist a refreshed token set (committed before the new access token is used)."""
    await connection.execute(
        "UPDATE bluebutton_grants SET access_token_ct = %s, "
        "refresh_token_ct = COALESCE(%s, refresh_token_ct), access_expires_at = %s, "
        "access_grant_expiration = COALESCE(%s, access_grant_expiration), updated_at = now() "
        "WHERE id = %s",
        (
            sealed.access_token_ct,
            sealed.refresh_token_ct,
            sealed.access_expires_at,
            sealed.access_grant_expiration,
            grant_id,
        ),
    )


async def store_tokens(
    pool: AsyncConnectionPool, cipher: TokenCipher, grant_id: uuid.UUID, tokens: TokenSet
) -> None:
    async with pool.connection() as connection:
        await store_sealed(connection, grant_id, seal_tokens(cipher, grant_id, tokens))


_ENDED: dict[str, tuple[outbox.EventType, str]] = {
    "expired": ("grant.expired", "the data-access grant has ended; the beneficiary must authorize again"),
    "revoked": (
        "grant.revoked",
        "Blue Button refused the refresh token (the beneficiary disconnected the app); they must "
        "authorize again",
    ),
    "disconnected": ("grant.disconnected", "disconnected by the operator; the tokens were revoked at CMS"),
}


async def end(pool: AsyncConnectionPool, grant_id: uuid.UUID, state: GrantState) -> None:
    """A grant that will not sync again: its tokens are erased (and its event recorded, once)."""
    async with pool.connection() as connection, connection.transaction():
        await end_with(connection, grant_id, state)


async def end_with(connection: AsyncConnection, grant_id: uuid.UUID, state: GrantState) -> None:
    before = await (
        await connection.execute(
            "SELECT state, patient FROM bluebutton_grants WHERE id = %s FOR UPDATE", (grant_id,)
        )
    ).fetchone()
    await connection.execute(
        "UPDATE bluebutton_grants SET state = %s, access_token_ct = NULL, refresh_token_ct = NULL, "
        "access_expires_at = NULL, next_sync_at = NULL, updated_at = now() WHERE id = %s",
        (state, grant_id),
    )
    if before is not None and before[0] != state and state in _ENDED:
        event_type, reason = _ENDED[state]
        await outbox.emit(connection, event_type, grant_id, before[1], reason=reason)


async def succeeded(connection: AsyncConnection, grant_id: uuid.UUID, next_sync_at: datetime) -> None:
    """A run ended well: the next one is due an interval after its end."""
    await connection.execute(
        "UPDATE bluebutton_grants SET state = 'active', consecutive_failures = 0, next_sync_at = %s, "
        "updated_at = now() WHERE id = %s AND state IN ('active', 'failing')",
        (next_sync_at, grant_id),
    )


async def failed(connection: AsyncConnection, grant_id: uuid.UUID, delay_for: Any) -> int:
    """Count a failure, set `failing` and the next attempt `delay_for(failures)` seconds after the
    run's end."""
    row = await (
        await connection.execute(
            "UPDATE bluebutton_grants SET state = 'failing', "
            "consecutive_failures = consecutive_failures + 1, "
            "updated_at = now() WHERE id = %s AND state IN ('active', 'failing') "
            "RETURNING consecutive_failures",
            (grant_id,),
        )
    ).fetchone()
    if row is None:
        return 0
    await connection.execute(
        "UPDATE bluebutton_grants SET next_sync_at = now() + make_interval(secs => %s) WHERE id = %s",
        (float(delay_for(row[0])), grant_id),
    )
    return int(row[0])


async def due(pool: AsyncConnectionPool, limit: int) -> list[uuid.UUID]:
    async with pool.connection() as connection:
        rows = await (
            await connection.execute(
                "SELECT g.id FROM bluebutton_grants g WHERE g.state IN ('active', 'failing') "
                "AND g.next_sync_at <= now() AND NOT EXISTS (SELECT 1 FROM bluebutton_runs r "
                "WHERE r.grant_id = g.id AND r.status IN ('queued', 'running')) "
                "ORDER BY g.next_sync_at LIMIT %s",
                (limit,),
            )
        ).fetchall()
    return [row[0] for row in rows]


async def rotate_keys(pool: AsyncConnectionPool, cipher: TokenCipher) -> int:
    """Re-encrypt every stored token under the first key; returns how many grants changed."""
    changed = 0
    async with pool.connection() as connection, connection.transaction():
        rows = await (
            await connection.execute(
                "SELECT id, access_token_ct, refresh_token_ct FROM bluebutton_grants "
                "WHERE access_token_ct IS NOT NULL OR refresh_token_ct IS NOT NULL FOR UPDATE"
            )
        ).fetchall()
        for grant_id, access, refresh in rows:
            blobs = [b for b in (access, refresh) if b is not None]
            if all(cipher.is_current(b) for b in blobs):
                continue
            new = [
                cipher.encrypt(cipher.decrypt(b, grant_id), grant_id) if b else None
                for b in (access, refresh)
            ]
            await connection.execute(
                "UPDATE bluebutton_grants SET access_token_ct = %s, refresh_token_ct = %s WHERE id = %s",
                (*new, grant_id),
            )
            changed += 1
    return changed


def _patient_prefix(patient: str) -> str:
    """A LIKE pattern matching ids that start with `patient` (its wildcards taken literally)."""
    return patient.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


async def page(
    pool: AsyncConnectionPool,
    *,
    state: GrantState | None,
    patient: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Grant]:
    """Up to `limit` grants in enrolment order after the grant `after` names (keyset paging: the
    listing indexes of migration 0003 serve any depth in one range scan)."""
    clauses, params = _filters(state, patient)
    if after is not None:
        clauses.append("(created_at, id) > (%s, %s)")
        params.extend(after)
    where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
    async with pool.connection() as connection, connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(
            (_SELECT + where + "ORDER BY created_at, id LIMIT %s").encode(), (*params, limit)
        )
        return [Grant.from_row(row) for row in await cursor.fetchall()]


def _filters(state: GrantState | None, patient: str | None) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if state is not None:
        clauses.append("state = %s")
        params.append(state)
    if patient:
        clauses.append("patient LIKE %s")
        params.append(_patient_prefix(patient))
    return clauses, params


async def count_by_state(pool: AsyncConnectionPool, patient: str | None) -> dict[GrantState, int]:
    """How many grants are in each state (every state named, zeros too), within a patient search."""
    clauses, params = _filters(None, patient)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    async with pool.connection() as connection:
        rows = await (
            await connection.execute(
                # static clauses only (_filters); values travel as parameters
                f"SELECT state, count(*) FROM bluebutton_grants{where} GROUP BY state".encode(),  # noqa: S608
                params,
            )
        ).fetchall()
    found = {state: int(count) for state, count in rows}
    return {state: found.get(state, 0) for state in STATES}


def ended_reason(state: GrantState) -> str | None:
    """Why a grant in an ended state will not sync again (as its event says); None otherwise."""
    ended = _ENDED.get(state)
    return ended[1] if ended else None
