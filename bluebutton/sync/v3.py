"""What keeping a grant on Blue Button v3 needs beyond v2: following a merged beneficiary.

CMS merges beneficiary records; on v3 the old patient id then answers a stub Patient
`link[type=replaced-by]` and an empty claim search, and the next token response names the new id
(BFD `EobHandler`, SNAP `PatientReadIT.snap`; bb2-v3.md §3.2: "use the `patient` of the latest token
response"). The grant follows it: same grant, same ledger, new patient id; the run says so.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from bluebutton.errors import Issue


async def follow_merge(pool: AsyncConnectionPool, grant_id: uuid.UUID, old: str, new: str) -> dict[str, Any]:
    """Point the grant at the beneficiary's new patient id; the run's note saying what happened."""
    try:
        async with pool.connection() as connection:
            await connection.execute(
                "UPDATE bluebutton_grants SET patient = %s, updated_at = now() "
                "WHERE id = %s AND patient = %s",
                (new, grant_id, old),
            )
    except errors.UniqueViolation:
        return Issue(
            f"Blue Button now names this beneficiary {new} (a merged record), but another grant of "
            "this API version already holds that id; this grant keeps its old id. Disconnect one of "
            "them.",
            "conflict",
            "warning",
        ).as_fhir()
    return Issue(
        f"Blue Button merged the beneficiary's record: patient {old} is now {new}; the grant follows "
        "the new id and keeps what it stored.",
        "informational",
        "information",
    ).as_fhir()
