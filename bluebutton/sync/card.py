"""The digital insurance card of a kept v3 grant: pulled with the claims, stored once per content.

`GET /v3/fhir/Patient/$generate-insurance-card` (CARIN C4DIC, bb2-v3.md §6) answers a `collection`
Bundle generated afresh on every call: a random Patient id, random entry ids and `urn:uuid`
fullUrls. The card goes to connect as that Bundle and into the ledger as one resource
(`InsuranceCard/insurance-card`) whose content hash leaves those out, so it is sent again only when
what the card says changes. Asked for only on v3 with a Patient read and a Coverage search scope
(WS `HasDigitalInsuranceCardScope`); CMS's 403 or 404 is noted, not a failure.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bluebutton.errors import CmsForbiddenError, CmsNotFoundError, CmsUnauthorizedError, Issue
from bluebutton.sync import ledger
from bluebutton.sync.context import SyncContext
from bluebutton.sync.grants import Grant
from bluebutton.sync.ledger import Entry

CARD = "InsuranceCard"  # its resource type in the ledger and the run's counts
CARD_ID = "insurance-card"
OPERATION = "Patient/$generate-insurance-card"
_READ = ("read", "rs", "r")
_SEARCH = ("read", "rs", "s")


def wanted(grant: Grant) -> bool:
    if grant.api_version != 3:
        return False
    scopes = set(grant.scopes)
    return not scopes or (
        any(f"patient/Patient.{a}" in scopes for a in _READ)
        and any(f"patient/Coverage.{a}" in scopes for a in _SEARCH)
    )


def card_hash(bundle: dict[str, Any]) -> bytes:
    """SHA-256 of the card without what CMS makes up on each call: the Bundle's id and meta, each
    entry's resource id and fullUrl, and references to them (numbered in entry order instead)."""
    entries = [e for e in bundle.get("entry") or [] if isinstance(e, dict)]
    names: dict[str, str] = {}
    for number, entry in enumerate(entries):
        resource = entry.get("resource") or {}
        for key in (entry.get("fullUrl"), resource.get("id")):
            if isinstance(key, str) and key:
                names[key.removeprefix("urn:uuid:")] = f"#{number}"
    pattern = (
        re.compile("|".join(re.escape(k) for k in sorted(names, key=len, reverse=True))) if names else None
    )
    stable = []
    for entry in entries:
        resource = {k: v for k, v in (entry.get("resource") or {}).items() if k not in ("id", "meta")}
        text = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS).decode()
        stable.append(pattern.sub(lambda m: names[m.group(0)], text) if pattern else text)
    return hashlib.sha256("\n".join(stable).encode()).digest()


async def pull(
    ctx: SyncContext,
    grant: Grant,
    tokens: Any,
    run_id: int,
    report: Any,
    send: Callable[[bytes, list[Entry]], Awaitable[None]],
) -> None:
    """Fetch the card, and store it if its content is new to the ledger. `tokens` and `report` are
    the run's (`runner._Tokens`, `runner.Report`); `send` stores a Bundle as the runner stores any."""
    url = ctx.cms.base(3).join(OPERATION)
    while True:
        token = tokens.current
        try:
            page = await ctx.cms.get_page(url, None, token)
            break
        except CmsUnauthorizedError:
            await tokens.renew_after(token)
        except (CmsForbiddenError, CmsNotFoundError) as e:
            report.issues.append(
                Issue(
                    f"{CARD}: Blue Button answered {e.upstream_status}; no card this run",
                    "forbidden",
                    "warning",
                ).as_fhir()
            )
            return
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [orjson.loads(e) for e in page.entries],
    }
    body = orjson.dumps(bundle)
    counts = report.counts(CARD)
    counts["fetched"] = 1
    entry = Entry(CARD_ID, card_hash(bundle), body)
    [(_, verdict)] = await ledger.classify(ctx.pool, grant.id, CARD, [entry])
    counts[verdict] += 1
    if verdict == "unchanged":
        return
    problems = await ctx.validator.validate(list(page.entries))
    if problems:
        issues = [
            Issue(f"{CARD} {path}: {message}", "structure", "error", (path,)).as_fhir()
            for *_, path, message in problems
        ]
        counts["invalid"] += 1
        report.invalid += 1
        await ledger.quarantine(ctx.pool, grant.id, CARD, [(entry, issues)], run_id)
        report.issues.append(Issue(f"{CARD} quarantined: not valid R4", "structure").as_fhir())
        return
    await send(body, [entry])  # the runner's: connect, then the ledger, as for any Bundle
