"""v3 Patient, Coverage, userinfo and the digital insurance card, from the same people as v2.

Shapes from bb2-v3.md: Patient with C4BB 2.2.0 + US Core 7.0.0 profiles, MBI identifiers and no
bene_id, `link` `replaces`/`replaced-by` across merges (§3.2, §3.4, §3.5); Coverage ids
`part-a-<sk>`, `part-b-<sk>`, `part-c-<sk>-<contract>-<pbp>`, `part-d-...` and `dual-<sk>`,
`subscriberId` = MBI (§3.2); the C4DIC card a `collection` Bundle of `urn:uuid` entries with a
random Patient id on every call (§6).
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from bluebutton.sandbox.cms.beneficiary import build_coverages, person
from bluebutton.sandbox.cms.codes import MBI_SYSTEM, PROFILE, coding, concept
from bluebutton.sandbox.cms.v3data import VERSIONED, V3State, v3_patient_id

US_CORE: Final = "http://hl7.org/fhir/us/core/StructureDefinition/"
C4DIC: Final = "http://hl7.org/fhir/us/insurance-card/StructureDefinition/"
_MB: Final = concept(coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MB", "Member Number"))
_PART_IDS: Final = {
    "Part A": "part-a-{sk}",
    "Part B": "part-b-{sk}",
    "Part C": "part-c-{sk}-H9999-001",
    "Part D": "part-d-{sk}-S9999-001",
}
CMS_PHONE: Final = "1-800-633-4227"
_CLASS: Final = "http://terminology.hl7.org/CodeSystem/coverage-class"


def build_patient_v3(user: int, state: V3State) -> dict[str, Any]:
    """The current Patient; after merges it `replaces` each earlier id."""
    p = person(user)
    current = state.current_id(user)
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": current,
        "meta": {
            "lastUpdated": p.last_updated,
            "profile": [PROFILE + "C4BB-Patient" + VERSIONED, US_CORE + "us-core-patient|7.0.0"],
        },
        "identifier": [{"system": MBI_SYSTEM, "type": _MB, "value": p.mbi}],
        "name": [{"family": p.family, "given": [p.given, p.middle]}],
        "gender": p.gender,
        "birthDate": p.birth_date.isoformat(),
        "address": [{"state": p.state[0], "postalCode": p.postal_code}],
    }
    earlier = [v3_patient_id(user, g) for g in range(state.generations.get(user, 0))]
    if earlier:
        patient["link"] = [
            {"other": {"reference": f"Patient/{old}", "display": old}, "type": "replaces"} for old in earlier
        ]
    return patient


def merged_stub(old: str, current: str) -> dict[str, Any]:
    """What a merged-away id reads as (SNAP `PatientReadIT.snap`): a stub pointing at the new id."""
    return {
        "resourceType": "Patient",
        "id": old,
        "link": [{"other": {"reference": f"Patient/{current}", "display": current}, "type": "replaced-by"}],
    }


def build_coverages_v3(user: int, sk: str) -> list[dict[str, Any]]:
    """Parts A-D from the v2 Coverage plus `dual-<sk>`, under v3 ids and profiles."""
    out = []
    for v2 in build_coverages(user):
        plan = next(c["value"] for c in v2["class"] if c["type"]["coding"][0]["code"] == "plan")
        out.append(_coverage(v2, _PART_IDS[plan].format(sk=sk), sk))
    dual = _coverage(build_coverages(user)[0], f"dual-{sk}", sk)
    dual["class"] = [
        {"type": c["type"], "value": "Dual Medicare/Medicaid" if c["value"] == "Part A" else c["value"]}
        for c in dual["class"]
    ]
    return [*out, dual]


def _coverage(v2: dict[str, Any], coverage_id: str, sk: str) -> dict[str, Any]:
    coverage = {k: v for k, v in v2.items() if k != "extension"}
    coverage["id"] = coverage_id
    coverage["meta"] = {
        "lastUpdated": v2["meta"]["lastUpdated"],
        "profile": [PROFILE + "C4BB-Coverage" + VERSIONED, US_CORE + "us-core-coverage|7.0.0"],
    }
    coverage["identifier"] = [{"system": MBI_SYSTEM, "value": v2["subscriberId"]}]
    coverage["beneficiary"] = {"reference": f"Patient/{sk}"}
    return coverage


def userinfo_v3(user: int, sk: str) -> dict[str, Any]:
    """`/v3/connect/userinfo`: `sub` = `patient` = the v3 id (WS `oauth2_profile.py`, §2.1)."""
    p = person(user)
    return {
        "sub": sk,
        "name": f"{p.given} {p.family}",
        "given_name": p.given,
        "family_name": p.family,
        "email": f"{p.given.lower()}.{p.family.lower()}.{user:05d}@example.com",
        "iat": p.joined,
        "patient": sk,
    }


def insurance_card(user: int, sk: str) -> dict[str, Any]:
    """`Patient/$generate-insurance-card`: a fresh Bundle each call, ids random (§6)."""
    p = person(user)
    patient_id, org_id = str(uuid.uuid4()), str(uuid.uuid4())
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": patient_id,
            "meta": {"profile": [C4DIC + "C4DIC-Patient"]},
            "identifier": [{"system": MBI_SYSTEM, "type": _MB, "value": p.mbi}],
            "name": [{"family": p.family, "given": [p.given, p.middle]}],
            "birthDate": p.birth_date.isoformat(),
        },
        {
            "resourceType": "Organization",
            "id": org_id,
            "meta": {"profile": [C4DIC + "C4DIC-Organization"]},
            "name": "Centers for Medicare and Medicaid Services",
            "telecom": [{"system": "phone", "value": CMS_PHONE}],
        },
    ]
    for coverage in build_coverages_v3(user, sk):
        plan = next(c["value"] for c in coverage["class"] if c["type"]["coding"][0]["code"] == "plan")
        resources.append(
            {
                "resourceType": "Coverage",
                "id": str(uuid.uuid4()),
                "meta": {"profile": [C4DIC + "C4DIC-Coverage"]},
                "extension": [
                    {
                        "url": C4DIC + "C4DIC-AdditionalCardInformation-extension",
                        "valueAnnotation": {
                            "text": f"Medicare {plan}. Questions? Call {CMS_PHONE}. / "
                            f"Medicare {plan}. ¿Preguntas? Llame al {CMS_PHONE}."
                        },
                    }
                ],
                "status": "active",
                "subscriberId": p.mbi,
                "beneficiary": {"reference": f"urn:uuid:{patient_id}"},
                "period": coverage["period"],
                "payor": [{"reference": f"urn:uuid:{org_id}"}],
                "class": [{"type": concept(coding(_CLASS, "plan", "Plan")), "value": plan}],
            }
        )
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }
