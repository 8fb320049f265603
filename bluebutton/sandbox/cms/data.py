"""Deterministic synthetic users and claim histories for the emulated Blue Button 2.0 API (no data files).

Everything derives from the user number N (0..29999) through `random.Random(N)`, so a user's data
is the same in every process and run. A user's claim list (ids, types, dates) is cheap; claim
bodies are built lazily, page by page, and kept as JSON bytes (a 200-claim user is about 10 MB of
JSON and takes well under a second to build). Patient, Coverage and userinfo: `beneficiary.py`.

Users and ids (bb2-api.md §6):

    login       BBUser00000 .. BBUser29999, password "PW" + the same five digits + "!"
                (BBUser00042 / PW00042!)
    patient id  "-1999" + f"{N + 1:010d}", negative, 14 digits, distinct per user:
                BBUser00000 -> -19990000000001 (CMS's id for that user in its 2021 synthetic
                set), BBUser02001 -> -19990000002002, BBUser29999 -> -19990000030000
    Coverage    "part-a-" + patient id, likewise b, c, d: part-a--19990000000043 (as CMS writes it)
    EOB         "<type>-" + claim id, claim id "-1" + f"{N:05d}" + 8 random digits:
                carrier--10004212345678; the owner is readable from the id

Claims are ordered by type (carrier, dme, hha, hospice, inpatient, outpatient, pde, snf) then by
claim id; the order never changes, so pages fetched by `startIndex` in any order line up.
`meta.lastUpdated` is spread over 2020-02-12 .. 2024-12-31 and service dates over 2015 .. 2023, so
`_lastUpdated` and `service-date` filters select proper subsets. Claims average about 50 KB of
JSON (carrier and DME 13-130 KB, institutional 20-150 KB, Part D events 12 KB).

Documented users (claim counts without `claims_override`):

    BBUser00000   155 claims  (4 pages of 50; like the real BBUser00000)
    BBUser00001     0 claims
    BBUser00002     7 claims
    BBUser00003    52 claims  (6 pages of 10, like CMS's SDK fixtures)
    BBUser00004   200 claims  (the maximum)
    BBUser09001    60 claims  (the first v3 pilot user, the demo's; v3 forms in `v3data.py`)
    BBUser29999   146 claims  (like CMS's sample download for this user)
    any other     0..200, drawn from the seed (`claim_count(N)` tells)

Users whose data is NOT valid R4 (`fhir.resources.R4B`), like real CMS claims (bb2-api.md §7):
BBUser29900 .. BBUser29909 have 10 + 5 * (N - 29900) claims (10, 15, .., 55). Exactly three of
them are invalid, the claims generated first (`invalid_claim_ids(N)` returns their ids):

    a carrier claim without `provider`               -> ExplanationOfBenefit.provider
    an outpatient claim, item[0] lacks productOrService -> ExplanationOfBenefit.item[0].productOrService
    a pde claim, insurance[0] lacks `focal`           -> ExplanationOfBenefit.insurance[0].focal

With `claims_override=K` every user has K claims (the invalid users keep their three defects when
K >= 3; fewer slots keep the first K of them).
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Protocol

import orjson

from bluebutton.sandbox.cms.claims import DEFECTS, build_claim
from bluebutton.sandbox.cms.codes import CLAIM_TYPES

USER_COUNT: Final = 30_000
INVALID_USERS: Final = range(29_900, 29_910)
DOCUMENTED_COUNTS: Final = {0: 155, 1: 0, 2: 7, 3: 52, 4: 200, 9001: 60, 29_999: 146}
MAX_NATURAL_CLAIMS: Final = 200

# Weights of claim types for drawn claims (carrier and Part D dominate real histories).
_KIND_WEIGHTS: Final = {
    "carrier": 38,
    "dme": 6,
    "hha": 3.5,
    "hospice": 3.5,
    "inpatient": 6,
    "outpatient": 15,
    "pde": 25,
    "snf": 3,
}
_INVALID_SLOTS: Final = (("carrier", "provider"), ("outpatient", "productOrService"), ("pde", "focal"))
_STAY_DAYS: Final = {"inpatient": (1, 20), "snf": (5, 60), "hha": (10, 60), "hospice": (10, 90)}
LAST_UPDATED_FROM: Final = datetime(2020, 2, 12, tzinfo=UTC)
LAST_UPDATED_SPAN: Final = int((datetime(2024, 12, 31, tzinfo=UTC) - LAST_UPDATED_FROM).total_seconds())
_SERVICE_FROM: Final = date(2015, 1, 1)
_SERVICE_SPAN_DAYS: Final = (date(2023, 12, 31) - _SERVICE_FROM).days
_USERNAME: Final = re.compile(r"^BBUser(\d{5})$")
_PATIENT_ID: Final = re.compile(r"^-1999(\d{10})$")
_EOB_ID: Final = re.compile(r"^(carrier|dme|hha|hospice|inpatient|outpatient|pde|snf)-(-1(\d{5})\d{8})$")


def username(user: int) -> str:
    return f"BBUser{user:05d}"


def password(user: int) -> str:
    return f"PW{user:05d}!"


def parse_username(name: str) -> int | None:
    """The user number of a sandbox login name, or None."""
    match = _USERNAME.match(name.strip())
    return int(match.group(1)) if match else None


def patient_id(user: int) -> str:
    return f"-1999{user + 1:010d}"


def user_for_patient_id(fhir_id: str) -> int | None:
    match = _PATIENT_ID.match(fhir_id)
    if not match:
        return None
    user = int(match.group(1)) - 1
    return user if 0 <= user < USER_COUNT else None


def user_for_eob_id(eob_id: str) -> int | None:
    """The owner of an EOB id of the emulator's shape, or None for any other id."""
    match = _EOB_ID.match(eob_id)
    return int(match.group(3)) if match else None


def is_eob_id_shape(eob_id: str) -> bool:
    """Whether the id has CMS's v2 shape `<type>-<number>` (other ids make BFD answer 400)."""
    return re.fullmatch(r"(carrier|dme|hha|hospice|inpatient|outpatient|pde|snf)--?\d+", eob_id) is not None


def seeded(seed: int) -> random.Random:
    """The seeded generator every synthetic value comes from."""
    return random.Random(seed)  # noqa: S311 - reproducible synthetic data, not secrets


def iso_instant(moment: datetime) -> str:
    """A FHIR instant with milliseconds, as CMS writes `meta.lastUpdated`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+00:00"


@dataclass(slots=True)
class Claim:
    """One EOB: what filters and paging need up front, the body built on first use."""

    id: str
    kind: str
    claim_id: str
    patient: str
    start: date
    end: date  # billablePeriod.end; the service date of a Part D event
    last_updated: datetime
    seed: int
    defect: str | None
    _json: bytes | None = field(default=None, repr=False)

    @property
    def built(self) -> bool:
        return self._json is not None

    def json(self) -> bytes:
        """The resource as compact JSON, built once."""
        if self._json is None:
            body = build_claim(
                seeded(self.seed),
                self.kind,
                self.claim_id,
                self.patient,
                self.start,
                self.end,
                iso_instant(self.last_updated),
                self.defect,
            )
            self._json = orjson.dumps(body)
        return self._json

    def resource(self) -> dict[str, Any]:
        """A fresh dict of the resource (callers may change it)."""
        parsed: dict[str, Any] = orjson.loads(self.json())
        return parsed


def _changed_claim(claim: Claim, seed: int, updated: datetime) -> Claim:
    return Claim(
        claim.id,
        claim.kind,
        claim.claim_id,
        claim.patient,
        claim.start,
        claim.end,
        updated,
        seed,
        claim.defect,
    )


def _natural_count(user: int, rng: random.Random) -> int:
    draw = rng.random()  # always drawn, so the claim stream does not depend on the special cases
    if user in DOCUMENTED_COUNTS:
        return DOCUMENTED_COUNTS[user]
    if user in INVALID_USERS:
        return 10 + 5 * (user - INVALID_USERS.start)
    if draw < 0.05:
        return 0
    if draw < 0.25:
        return rng.randint(1, 9)
    if draw < 0.75:
        return rng.randint(10, 80)
    return rng.randint(81, MAX_NATURAL_CLAIMS)


def generate_claims(user: int, claims_override: int | None = None) -> list[Claim]:
    """The user's claims in search order (bodies not built yet)."""
    rng = seeded(user)
    natural = _natural_count(user, rng)
    count = natural if claims_override is None else claims_override
    forced = _INVALID_SLOTS if user in INVALID_USERS else ()
    pid = patient_id(user)
    kinds = list(_KIND_WEIGHTS)
    weights = list(_KIND_WEIGHTS.values())
    suffixes = rng.sample(range(10_000_000, 100_000_000), count)
    claims = []
    for slot, suffix in enumerate(suffixes):
        kind, defect = forced[slot] if slot < len(forced) else (rng.choices(kinds, weights)[0], None)
        start = _SERVICE_FROM + timedelta(days=rng.randint(0, _SERVICE_SPAN_DAYS))
        low, high = _STAY_DAYS.get(kind, (0, 0))
        end = start + timedelta(days=rng.randint(low, high))
        updated = LAST_UPDATED_FROM + timedelta(
            seconds=rng.randint(0, LAST_UPDATED_SPAN), milliseconds=rng.randint(0, 999)
        )
        claim_id = f"-1{user:05d}{suffix:08d}"
        claims.append(
            Claim(f"{kind}-{claim_id}", kind, claim_id, pid, start, end, updated, rng.getrandbits(64), defect)
        )
    claims.sort(key=lambda c: (CLAIM_TYPES.index(c.kind), c.claim_id))
    return claims


def claim_count(user: int, claims_override: int | None = None) -> int:
    """How many EOBs the user has (what a search reports as `total` without filters)."""
    if claims_override is not None:
        return claims_override
    return _natural_count(user, seeded(user))


def invalid_claim_ids(user: int, claims_override: int | None = None) -> dict[str, str]:
    """EOB id -> the FHIR path that makes it fail R4 validation (empty for valid users)."""
    return {c.id: DEFECTS[c.defect] for c in generate_claims(user, claims_override) if c.defect}


def new_claim(user: int, serial: int, now: datetime, taken: set[str]) -> Claim:
    """A claim CMS processed just now (admin `add_claims`): the same shapes, `meta.lastUpdated` = now."""
    rng = seeded(user * 1_000_003 + 7919 * serial + 1)
    kind = rng.choices(list(_KIND_WEIGHTS), list(_KIND_WEIGHTS.values()))[0]
    while True:
        claim_id = f"-1{user:05d}{rng.randint(10_000_000, 99_999_999):08d}"
        if f"{kind}-{claim_id}" not in taken:
            break
    end = now.date() - timedelta(days=rng.randint(7, 60))
    low, high = _STAY_DAYS.get(kind, (0, 0))
    start = end - timedelta(days=rng.randint(low, high))
    return Claim(
        f"{kind}-{claim_id}", kind, claim_id, patient_id(user), start, end, now, rng.getrandbits(64), None
    )


class Schedule(Protocol):
    """When new claims arrive over emulated time (`schedule.ClaimSchedule`)."""

    def weeks(self, now: float) -> int: ...
    def total(self, user: int, weeks: int) -> int: ...
    def claims(self, user: int, weeks: int, taken: set[str]) -> list[Claim]: ...


class CmsDataset:
    """Per-user claim lists for one emulator, the most recently used `cached_users` kept.

    Claims added or changed through the admin API (CMS processing claims over time) are kept
    apart from the cache, so they survive its evictions for the emulator's lifetime. With a
    `schedule`, each emulated week (on `clock`) brings its batch of new claims too.
    """

    def __init__(
        self,
        claims_override: int | None = None,
        cached_users: int = 16,
        schedule: Schedule | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.claims_override = claims_override
        self.schedule = schedule
        self._clock = clock
        self._cached_users = cached_users
        self._claims: OrderedDict[int, tuple[int, list[Claim]]] = OrderedDict()
        self._added: dict[int, list[Claim]] = {}
        self._changed: dict[int, dict[str, tuple[int, datetime]]] = {}

    def _weeks(self) -> int:
        if self.schedule is None or self._clock is None:
            return 0
        return self.schedule.weeks(self._clock())

    def claims(self, user: int) -> list[Claim]:
        weeks = self._weeks()
        cached = self._claims.get(user)
        if cached is not None and cached[0] == weeks:
            self._claims.move_to_end(user)
            return cached[1]
        found = generate_claims(user, self.claims_override)
        added = self._added.get(user, [])
        if weeks and self.schedule is not None:
            taken = {c.id for c in found} | {c.id for c in added}
            found += self.schedule.claims(user, weeks, taken)
        changed = self._changed.get(user, {})
        for index, claim in enumerate(found):
            if claim.id in changed:
                seed, updated = changed[claim.id]
                found[index] = _changed_claim(claim, seed, updated)
        found = sorted(found + added, key=lambda c: (CLAIM_TYPES.index(c.kind), c.claim_id))
        self._claims[user] = (weeks, found)
        self._claims.move_to_end(user)
        while len(self._claims) > self._cached_users:
            self._claims.popitem(last=False)
        return found

    def add_claims(self, user: int, count: int, now: datetime) -> list[str]:
        """`count` new claims for the user, last updated `now`; returns their ids."""
        added = self._added.setdefault(user, [])
        taken = {c.id for c in self.claims(user)}
        fresh = []
        for _ in range(count):
            claim = new_claim(user, len(added), now, taken)
            taken.add(claim.id)
            added.append(claim)
            fresh.append(claim)
        self._claims.pop(user, None)
        return [c.id for c in fresh]

    def change_claim(self, user: int, eob_id: str | None, now: datetime) -> str | None:
        """Give one claim (the first, unless named) new content and `meta.lastUpdated` = now."""
        claims = self.claims(user)
        target = next((c for c in claims if eob_id in (None, c.id)), None)
        if target is None:
            return None
        seed = target.seed + 1
        added = self._added.get(user, [])
        for index, claim in enumerate(added):
            if claim.id == target.id:
                added[index] = _changed_claim(claim, seed, now)
                break
        else:
            self._changed.setdefault(user, {})[target.id] = (seed, now)
        self._claims.pop(user, None)
        return target.id

    def kept(self) -> dict[str, Any]:
        """The claims added or changed through the admin API, as JSON-ready data (`state.py`)."""
        return {
            "added": {
                str(user): [
                    [
                        c.id,
                        c.kind,
                        c.claim_id,
                        c.patient,
                        c.start.isoformat(),
                        c.end.isoformat(),
                        c.last_updated.isoformat(),
                        c.seed,
                        c.defect,
                    ]
                    for c in claims
                ]
                for user, claims in self._added.items()
            },
            "changed": {
                str(user): {
                    eob_id: [seed, updated.isoformat()] for eob_id, (seed, updated) in changes.items()
                }
                for user, changes in self._changed.items()
            },
        }

    def restore_kept(self, kept: dict[str, Any]) -> None:
        """Put back what `kept` returned (a restarted emulator); raises KeyError/TypeError/ValueError."""
        added = {
            int(user): [
                Claim(
                    eob_id,
                    kind,
                    claim_id,
                    patient,
                    date.fromisoformat(start),
                    date.fromisoformat(end),
                    datetime.fromisoformat(updated),
                    int(seed),
                    defect,
                )
                for eob_id, kind, claim_id, patient, start, end, updated, seed, defect in claims
            ]
            for user, claims in kept["added"].items()
        }
        changed = {
            int(user): {
                eob_id: (int(seed), datetime.fromisoformat(updated))
                for eob_id, (seed, updated) in ids.items()
            }
            for user, ids in kept["changed"].items()
        }
        self._added, self._changed = added, changed
        self._claims.clear()

    def claim(self, user: int, eob_id: str) -> Claim | None:
        return next((c for c in self.claims(user) if c.id == eob_id), None)

    def claim_count(self, user: int) -> int:
        scheduled = self.schedule.total(user, self._weeks()) if self.schedule is not None else 0
        return claim_count(user, self.claims_override) + len(self._added.get(user, [])) + scheduled

    def invalid_claim_ids(self, user: int) -> dict[str, str]:
        return invalid_claim_ids(user, self.claims_override)
