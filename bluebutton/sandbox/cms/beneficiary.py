"""Beneficiary demographics of the CMS emulator: Patient, the four Coverage parts, userinfo.

Deterministic per user number from a random stream separate from the claims', so changing how
claims are drawn never changes a user's name. Shapes follow CMS's v2 samples
(`../shared/bb2-samples/patient_read_v2.json`, `coverage_read_v2.json`, `userinfo_v2.json`): MBI
and bene_id identifiers, CMS variable extensions (race, dual status, buy-in, Part C/D contracts),
an address reduced to state and postal code as BB2 sends it (bb2-api.md §3.1), Coverage ids
`part-a-<patient id>` .. `part-d-<patient id>` with `beneficiary` `Patient/<patient id>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from bluebutton.sandbox.cms.codes import (
    BB_VAR,
    COVERAGE_PROFILE,
    FAMILY_NAMES,
    GIVEN_NAMES,
    MBI_LETTERS,
    MBI_SYSTEM,
    PATIENT_PROFILE,
    STATES,
    bb_coding_extension,
    coding,
    concept,
)
from bluebutton.sandbox.cms.data import LAST_UPDATED_FROM, LAST_UPDATED_SPAN, iso_instant, patient_id, seeded


@dataclass(frozen=True, slots=True)
class Person:
    """Demographics shared by Patient, Coverage and userinfo."""

    user: int
    given: str
    middle: str
    family: str
    gender: str
    birth_date: date
    state: tuple[str, str, str, str]
    postal_code: str
    mbi: str
    last_updated: str
    joined: str


def person(user: int) -> Person:
    rng = seeded(-1 - user)  # a stream of its own: demographics never shift the claims
    given, gender = rng.choice(GIVEN_NAMES)
    state = rng.choice(STATES)
    letters = MBI_LETTERS
    mbi = "".join(
        (
            str(rng.randint(1, 9)),
            "S",
            rng.choice(letters),
            str(rng.randint(0, 9)),
            rng.choice(letters),
            rng.choice(letters),
            str(rng.randint(0, 9)),
            rng.choice(letters),
            rng.choice(letters),
            f"{rng.randint(0, 99):02d}",
        )
    )
    updated = LAST_UPDATED_FROM + timedelta(seconds=rng.randint(0, LAST_UPDATED_SPAN))
    joined = datetime(2019, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 10**8))
    return Person(
        user=user,
        given=given,
        middle=rng.choice("ABCDEFGHJKMNPRSTW"),
        family=rng.choice(FAMILY_NAMES),
        gender=gender,
        birth_date=date(1930, 1, 1) + timedelta(days=rng.randint(0, 365 * 28)),
        state=state,
        postal_code=f"{state[3]}{rng.randint(0, 99):02d}",
        mbi=mbi,
        last_updated=iso_instant(updated),
        joined=joined.strftime("%Y-%m-%dT%H:%M:%S.") + f"{rng.randint(0, 999):03d}Z",
    )


def _monthly(prefix: str, code: str, display: str | None = None) -> list[dict[str, Any]]:
    return [bb_coding_extension(f"{prefix}{month:02d}", code, display) for month in range(1, 13)]


def build_patient(user: int) -> dict[str, Any]:
    p = person(user)
    pid = patient_id(user)
    v2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    return {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"lastUpdated": p.last_updated, "profile": [PATIENT_PROFILE]},
        "extension": [
            bb_coding_extension("race", "1", "White"),
            {"url": BB_VAR + "rfrnc_yr", "valueDate": "2023"},
            *_monthly(
                "dual_",
                "**",
                "Enrolled in Medicare A and/or B, but no Part D enrollment "
                "data for the beneficiary. (This status was indicated as 'XX' for 2006-2009)",
            ),
        ],
        "identifier": [
            {
                "type": concept(coding(v2_0203, "MB", "Member Number")),
                "system": BB_VAR + "bene_id",
                "value": pid,
            },
            {
                "type": concept(coding(v2_0203, "MC", "Patient's Medicare number")),
                "system": MBI_SYSTEM,
                "value": p.mbi,
            },
        ],
        "name": [{"use": "usual", "family": p.family, "given": [p.given, p.middle]}],
        "gender": p.gender,
        "birthDate": p.birth_date.isoformat(),
        "address": [{"state": p.state[0], "postalCode": p.postal_code}],
    }


_PART_NAMES: Final = {"a": "Part A", "b": "Part B", "c": "Part C", "d": "Part D"}


def build_coverages(user: int) -> list[dict[str, Any]]:
    p = person(user)
    pid = patient_id(user)
    since = date(p.birth_date.year + 65, p.birth_date.month, 1).isoformat()
    out = []
    for part, name in _PART_NAMES.items():
        extensions = [
            bb_coding_extension("ms_cd", "10", "Aged without end-stage renal disease (ESRD)"),
            bb_coding_extension("orec", "0", "Old age and survivor's insurance (OASI)"),
            bb_coding_extension("crec", "0", "Old age and survivor's insurance (OASI)"),
            bb_coding_extension("esrd_ind", "0", "the beneficiary does not have ESRD"),
            {"url": BB_VAR + "rfrnc_yr", "valueDate": "2023"},
        ]
        if part in "ab":
            extensions.append(bb_coding_extension(f"{part}_trm_cd", "0", "Not Terminated"))
            extensions += _monthly("buyin", "C", "Part A and Part B state buy-in")
        elif part == "c":
            extensions += _monthly("ptc_cntrct_id_", "H9999")
            extensions += _monthly("ptc_pbp_id_", "001")
        else:
            extensions += _monthly("ptdcntrct", "S9999")
            extensions += _monthly("ptdpbpid", "001")
            extensions += _monthly("rdsind", "N", "No employer subsidization for retirement")
        extensions += _monthly("dual_", "**")
        coverage_class = "http://terminology.hl7.org/CodeSystem/coverage-class"
        out.append(
            {
                "resourceType": "Coverage",
                "id": f"part-{part}-{pid}",
                "meta": {"lastUpdated": p.last_updated, "profile": [COVERAGE_PROFILE]},
                "extension": extensions,
                "status": "active",
                "type": concept(coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "SUBSIDIZ")),
                "subscriberId": p.mbi,
                "beneficiary": {"reference": f"Patient/{pid}"},
                "relationship": concept(
                    coding("http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self")
                ),
                "period": {"start": since},
                "payor": [{"identifier": {"value": "Centers for Medicare and Medicaid Services"}}],
                "class": [
                    {"type": concept(coding(coverage_class, "group", "Group")), "value": "Medicare"},
                    {"type": concept(coding(coverage_class, "plan", "Plan")), "value": name},
                ],
            }
        )
    return out


def userinfo(user: int) -> dict[str, Any]:
    """The `/v2/connect/userinfo` body (bb2-api.md §2.12; shape of bb2-samples/userinfo_v2.json)."""
    p = person(user)
    pid = patient_id(user)
    return {
        "sub": pid,
        "name": f"{p.given} {p.family}",
        "given_name": p.given,
        "family_name": p.family,
        "email": f"{p.given.lower()}.{p.family.lower()}.{user:05d}@example.com",
        "iat": p.joined,
        "patient": pid,
    }
