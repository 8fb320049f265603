"""Builds one synthetic v2 ExplanationOfBenefit (CARIN Blue Button shape) from a seeded random source.

`build_claim` is pure: the same `random.Random` state and arguments give the same dict. It mirrors
what CMS sends (see `../shared/bb2-samples/`): CMS variables as extensions and second codings under
`https://bluebutton.cms.client.gov/resources/...`, a C4BB coding first, many line adjudications, and sizes
in the real range (a few KB for a drug event, tens of KB for carrier and institutional claims).

Resources are valid R4 (`fhir.resources.R4B`) unless a `defect` is asked for; the defects are the
ways real CMS data broke strict validators (bb2-api.md §7, CMSgov/beneficiary-fhir-data#804):

    "provider"          the claim has no `provider`              -> ExplanationOfBenefit.provider
    "productOrService"  the first item has no `productOrService` -> item[0].productOrService
    "focal"             the first insurance has no `focal`       -> insurance[0].focal
"""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any, Final

from bluebutton.sandbox.cms.codes import (
    BB_VAR,
    BENEFIT_SYSTEM,
    C4BB,
    C4BB_ADJ_DISC,
    C4BB_DIAG,
    C4BB_ID_TYPE,
    C4BB_INFO,
    C4BB_ROLE,
    CLAIM_TYPE_INFO,
    DRGS,
    DRUGS,
    EOB_TYPE_SYSTEM,
    HCPCS_DME,
    HCPCS_PROFESSIONAL,
    HCPCS_SYSTEM,
    HL7_ADJ,
    HL7_CLAIM_TYPE,
    HL7_DIAG_TYPE,
    HL7_INFO,
    ICD10,
    ICD10_CM,
    ICD10_DIAGNOSES,
    ICD10_PCS,
    INFO_SYSTEM,
    INSTITUTIONAL_BENEFITS,
    INSTITUTIONAL_LINE_ADJUDICATIONS,
    NDC,
    NPI,
    PDE_ADJUDICATIONS,
    PLACES_OF_SERVICE,
    PROCEDURES,
    PROFESSIONAL_BENEFITS,
    PROFESSIONAL_LINE_ADJUDICATIONS,
    PROFILE,
    REVENUE_CENTERS,
    SPECIALTIES,
    STATES,
    adjudication_category,
    bb_coding_extension,
    bb_identifier_extension,
    coding,
    concept,
)

DEFECTS: Final = {
    "provider": "ExplanationOfBenefit.provider",
    "productOrService": "ExplanationOfBenefit.item[0].productOrService",
    "focal": "ExplanationOfBenefit.insurance[0].focal",
}

_NPI_TYPE: Final = concept(coding(C4BB_ID_TYPE, "npi", "National Provider Identifier"))
_UC_TYPE: Final = concept(coding(C4BB_ID_TYPE, "uc", "Unique Claim ID"))
_CLAIM_GROUP: Final = "https://bluebutton.cms.client.gov/resources/identifier/claim-group"
_DENIAL: Final = concept(coding(C4BB_ADJ_DISC, "denialreason", "Denial Reason"))
_MEDICAL_CARE: Final = concept(
    coding("http://terminology.hl7.org/CodeSystem/ex-benefitcategory", "1", "Medical Care")
)
_TOTAL_CHARGE: Final = adjudication_category(
    HL7_ADJ, "submitted", "Submitted Amount", "clm_tot_chrg_amt", "Claim Total Charge Amount"
)
_RECEIVED: Final = concept(
    coding(C4BB_INFO, "clmrecvddate", "Claim Received Date"),
    coding(INFO_SYSTEM, BB_VAR + "nch_wkly_proc_dt", "NCH Weekly Claim Processing Date"),
)
_PRINCIPAL: Final = [concept(coding(HL7_DIAG_TYPE, "principal", "Principal Diagnosis"))]
_SECONDARY: Final = [concept(coding(C4BB_DIAG, "secondary", "Secondary"))]
_OTHER_DIAG: Final = [concept(coding(C4BB_DIAG, "other", "Other"))]
_ROLES: Final = {
    code: concept(coding(C4BB_ROLE, code, display))
    for code, display in (
        ("referring", "Referring"),
        ("performing", "Performing provider"),
        ("attending", "Attending"),
        ("operating", "Operating"),
        ("otheroperating", "Other Operating"),
        ("rendering", "Rendering provider"),
        ("prescribing", "Prescribing provider"),
    )
}
_PRIMARY_ROLE: Final = concept(
    coding("http://terminology.hl7.org/CodeSystem/claimcareteamrole", "primary", "Primary provider")
)
_SERVICE_TYPES: Final = (
    ("1", "Medical care"),
    ("5", "Diagnostic laboratory"),
    ("4", "Diagnostic radiology"),
    ("2", "Surgery"),
)


def money(value: float) -> dict[str, Any]:
    return {"value": round(value, 2), "currency": "USD"}


def _npi(rng: random.Random) -> str:
    return str(rng.randint(1_000_000_000, 1_999_999_999))


def _info(variable: str, label: str) -> dict[str, Any]:
    return concept(coding(HL7_INFO, "info", "Information"), coding(INFO_SYSTEM, BB_VAR + variable, label))


def _diagnoses(rng: random.Random, count: int, institutional: bool) -> list[dict[str, Any]]:
    picks = rng.sample(ICD10_DIAGNOSES, min(count, len(ICD10_DIAGNOSES)))
    out = []
    for seq, (code, display) in enumerate(picks, start=1):
        entry: dict[str, Any] = {
            "sequence": seq,
            "diagnosisCodeableConcept": concept(
                coding(ICD10_CM, code, display), coding(ICD10, code, display)
            ),
            "type": _PRINCIPAL if seq == 1 else (_OTHER_DIAG if institutional else _SECONDARY),
        }
        if institutional:
            entry["onAdmission"] = concept(coding(BB_VAR + "clm_poa_ind_sw" + str(seq), "Y"))
        out.append(entry)
    return out


def _header(
    rng: random.Random,
    kind: str,
    claim_id: str,
    patient_id: str,
    start: date,
    end: date,
    last_updated: str,
    extensions: list[dict[str, Any]],
) -> dict[str, Any]:
    nch_code, nch_display, claim_type, profile, _part = CLAIM_TYPE_INFO[kind]
    type_codings = [
        coding(EOB_TYPE_SYSTEM, kind.upper()),
        coding(HL7_CLAIM_TYPE, claim_type, claim_type.capitalize()),
    ]
    if nch_code is not None:
        type_codings.insert(0, coding(BB_VAR + "nch_clm_type_cd", nch_code, nch_display))
    eob: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit",
        "id": f"{kind}-{claim_id}",
        "meta": {"lastUpdated": last_updated, "profile": [PROFILE + profile]},
        "extension": extensions,
        "identifier": [
            {
                "type": _UC_TYPE,
                "system": BB_VAR + ("pde_id" if kind == "pde" else "clm_id"),
                "value": claim_id,
            },
            {"type": _UC_TYPE, "system": _CLAIM_GROUP, "value": str(-rng.randint(10**8, 10**10))},
        ],
        "status": "active",
        "type": {"coding": type_codings},
    }
    if claim_type == "institutional":
        sub = "inpatient" if kind in ("inpatient", "snf", "hospice") else "outpatient"
        eob["subType"] = concept(
            coding(C4BB + "CodeSystem/C4BBInstitutionalClaimSubType", sub, sub.capitalize())
        )
    eob["use"] = "claim"
    eob["patient"] = {"reference": f"Patient/{patient_id}"}
    if kind != "pde":  # CMS sends no billablePeriod on Part D events, only item.servicedDate
        eob["billablePeriod"] = {"start": start.isoformat(), "end": end.isoformat()}
    eob["created"] = last_updated
    eob["insurer"] = {"identifier": {"value": "CMS"}}
    return eob


def _finish(
    eob: dict[str, Any],
    kind: str,
    patient_id: str,
    items: list[dict[str, Any]],
    charged: float,
    paid: float,
    benefits: tuple[tuple[str, str], ...],
    rng: random.Random,
) -> None:
    part = CLAIM_TYPE_INFO[kind][4]
    eob["insurance"] = [{"focal": True, "coverage": {"reference": f"Coverage/part-{part}-{patient_id}"}}]
    eob["item"] = items
    eob["total"] = [{"category": _TOTAL_CHARGE, "amount": money(charged)}]
    eob["payment"] = {"amount": money(paid)}
    if benefits:
        financial = [
            {
                "type": concept(coding(BENEFIT_SYSTEM, BB_VAR + var, label)),
                "usedMoney": money(rng.choice((0.0, paid, charged - paid))),
            }
            for var, label in benefits
        ]
        eob["benefitBalance"] = [{"category": _MEDICAL_CARE, "financial": financial}]


def _professional(
    rng: random.Random, kind: str, claim_id: str, patient_id: str, start: date, end: date, last_updated: str
) -> dict[str, Any]:
    dme = kind == "dme"
    extensions = [
        bb_coding_extension(
            "nch_near_line_rec_ident_cd",
            "M" if dme else "O",
            "Part B DMEPOS claim record (processed by DME Regional Carrier)"
            if dme
            else "Part B physician/supplier claim record (processed by local "
            "carriers; can include DMEPOS services)",
        ),
        bb_identifier_extension("carr_num", f"{rng.randint(500, 19999):05d}"),
        bb_identifier_extension("carr_clm_cntl_num", str(-rng.randint(10**8, 10**9))),
        bb_coding_extension("carr_clm_pmt_dnl_cd", "1", "Physician/supplier"),
        bb_coding_extension("asgmntcd", "A", "Assigned claim"),
        bb_coding_extension(
            "carr_clm_entry_cd",
            "1",
            "Original debit; void of original debit (If CLM_DISP_CD = 3, code 1 means voided original debit)",
        ),
    ]
    eob = _header(rng, kind, claim_id, patient_id, start, end, last_updated, extensions)
    billing_npi = _npi(rng)
    eob["provider"] = {"identifier": {"system": BB_VAR + "carr_clm_blg_npi_num", "value": billing_npi}}
    referring = _npi(rng)
    eob["referral"] = {"identifier": {"type": _NPI_TYPE, "value": referring}}
    eob["outcome"] = "complete"
    eob["disposition"] = "1"
    specialty = rng.choice(SPECIALTIES)
    eob["careTeam"] = [
        {
            "sequence": 1,
            "provider": {"identifier": {"type": _NPI_TYPE, "value": referring}},
            "role": _ROLES["referring"],
        },
        {
            "extension": [
                bb_coding_extension("carr_line_prvdr_type_cd", "0"),
                bb_coding_extension("prtcptng_ind_cd", "1", "Participating"),
            ],
            "sequence": 2,
            "provider": {"identifier": {"type": _NPI_TYPE, "value": _npi(rng)}},
            "responsible": True,
            "role": _ROLES["performing"],
            "qualification": concept(coding(BB_VAR + "prvdr_spclty", *specialty)),
        },
        {
            "sequence": 3,
            "provider": {"identifier": {"type": _NPI_TYPE, "value": billing_npi}},
            "role": _PRIMARY_ROLE,
        },
    ]
    eob["supportingInfo"] = [
        {
            "sequence": 1,
            "category": _RECEIVED,
            "timingDate": (end + timedelta(days=rng.randint(2, 20))).isoformat(),
        },
    ]
    diagnoses = _diagnoses(rng, rng.randint(1, 8), institutional=False)
    eob["diagnosis"] = diagnoses
    state_code, postal, state_name, zip_prefix = rng.choice(STATES)
    location = {
        "extension": [
            bb_coding_extension("prvdr_state_cd", postal),
            bb_coding_extension("prvdr_zip", f"{zip_prefix}{rng.randint(0, 999999):06d}"),
            bb_coding_extension("carr_line_prcng_lclty_cd", state_code, state_name),
        ],
        "coding": [coding(BB_VAR + "line_place_of_srvc_cd", *rng.choice(PLACES_OF_SERVICE))],
    }
    items: list[dict[str, Any]] = []
    charged = paid = 0.0
    codes = HCPCS_DME if dme else HCPCS_PROFESSIONAL
    period = {"start": start.isoformat(), "end": end.isoformat()}
    for seq in range(1, int(rng.triangular(1, 25, 4)) + 1):
        submitted = rng.uniform(15, 900)
        allowed = submitted * rng.uniform(0.5, 1.0)
        benefit = allowed * 0.8
        coins = allowed - benefit
        charged += submitted
        paid += benefit
        service = rng.choice(_SERVICE_TYPES)
        amounts = (benefit, 0.0, benefit, 0.0, 0.0, coins, submitted, allowed)
        adjudication: list[dict[str, Any]] = [
            {
                "category": _DENIAL,
                "reason": concept(coding(BB_VAR + "carr_line_rdcd_pmt_phys_astn_c", "0", "N/A")),
            },
        ]
        adjudication.extend(
            {"category": cat, "amount": money(amount)}
            for cat, amount in zip(PROFESSIONAL_LINE_ADJUDICATIONS, amounts, strict=True)
        )
        items.append(
            {
                "extension": [
                    {"url": BB_VAR + "carr_line_mtus_cnt", "valueQuantity": {"value": rng.randint(1, 40)}},
                    bb_coding_extension("line_prcsg_ind_cd", "A", "Allowed"),
                    bb_coding_extension("carr_line_mtus_cd", "3", "Services"),
                ],
                "sequence": seq,
                "careTeamSequence": [2, 3],
                "diagnosisSequence": [rng.randint(1, len(diagnoses))],
                "category": concept(coding(BB_VAR + "line_cms_type_srvc_cd", *service)),
                "productOrService": concept(coding(HCPCS_SYSTEM, rng.choice(codes)[0])),
                "servicedPeriod": period,
                "locationCodeableConcept": location,
                "quantity": {"value": rng.randint(1, 4)},
                "adjudication": adjudication,
            }
        )
    _finish(eob, kind, patient_id, items, charged, paid, PROFESSIONAL_BENEFITS, rng)
    return eob


def _institutional(
    rng: random.Random, kind: str, claim_id: str, patient_id: str, start: date, end: date, last_updated: str
) -> dict[str, Any]:
    inpatient = kind in ("inpatient", "snf", "hospice")
    extensions = [
        bb_coding_extension(
            "nch_near_line_rec_ident_cd",
            "V" if inpatient else "W",
            "Part A institutional claim record (inpatient [IP], skilled nursing "
            "facility [SNF], hospice [HOS], or home health agency [HHA])"
            if inpatient
            else "Part B institutional claim record (outpatient [HOP], HHA)",
        ),
        bb_identifier_extension("fi_doc_clm_cntl_num", str(-rng.randint(10**8, 10**9))),
        bb_coding_extension("clm_srvc_clsfctn_type_cd", str(rng.randint(1, 3))),
        bb_identifier_extension("fi_num", f"{rng.randint(1000, 99999):05d}"),
        {
            "url": BB_VAR + "fi_clm_proc_dt",
            "valueDate": (end + timedelta(days=rng.randint(5, 30))).isoformat(),
        },
    ]
    eob = _header(rng, kind, claim_id, patient_id, start, end, last_updated, extensions)
    eob["provider"] = {
        "identifier": {"system": BB_VAR + "prvdr_num", "value": f"{rng.randint(10000, 999999):06d}"}
    }
    eob["facility"] = {"extension": [bb_coding_extension("clm_fac_type_cd", "1", "Hospital")]}
    eob["outcome"] = "complete"
    team = [(1, "attending"), (2, "operating"), (3, "otheroperating"), (4, "rendering")]
    eob["careTeam"] = [
        {
            "sequence": seq,
            "provider": {"identifier": {"type": _NPI_TYPE, "value": _npi(rng)}},
            "role": _ROLES[role],
        }
        for seq, role in team[: rng.randint(2, 4)]
    ]
    info: list[dict[str, Any]] = [
        {"category": _RECEIVED, "timingDate": (end + timedelta(days=rng.randint(2, 20))).isoformat()},
        {
            "category": _info("clm_mco_pd_sw", "Claim MCO Paid Switch"),
            "code": concept(
                coding(BB_VAR + "clm_mco_pd_sw", "0", "No managed care organization (MCO) payment")
            ),
        },
        {
            "category": concept(coding(C4BB_INFO, "typeofbill", "Type of Bill")),
            "code": concept(coding(BB_VAR + "clm_freq_cd", "1", "Admit thru discharge claim")),
        },
        {
            "category": concept(coding(C4BB_INFO, "discharge-status", "Discharge Status")),
            "code": concept(coding(BB_VAR + "ptnt_dschrg_stus_cd", "1")),
        },
        {
            "category": _info("nch_prmry_pyr_cd", "NCH Primary Payer Code (if not Medicare)"),
            "code": concept(
                coding(
                    BB_VAR + "nch_prmry_pyr_cd",
                    "A",
                    "Employer group health plan (EGHP) insurance for an aged beneficiary",
                )
            ),
        },
    ]
    if inpatient:
        info.append(
            {
                "category": concept(coding(C4BB_INFO, "admissionperiod", "Admission Period")),
                "timingPeriod": {"start": start.isoformat(), "end": end.isoformat()},
            }
        )
        info.append(
            {
                "category": concept(coding(C4BB_INFO, "pointoforigin", "Point Of Origin")),
                "code": concept(coding(BB_VAR + "clm_src_ip_admsn_cd", "1")),
            }
        )
    if kind == "inpatient":
        drg = rng.choice(DRGS)
        info.append(
            {
                "category": _info("clm_drg_cd", "Claim Diagnosis Related Group Code"),
                "code": concept(
                    coding(
                        "https://www.cms.gov/Medicare/Medicare-Fee-for-Service"
                        "-Payment/AcuteInpatientPPS/MS-DRG-Classifications"
                        "-and-Software",
                        drg[0],
                        drg[1],
                    )
                ),
            }
        )
    eob["supportingInfo"] = [{"sequence": seq, **entry} for seq, entry in enumerate(info, 1)]
    diagnoses = _diagnoses(rng, rng.randint(3, 25) if inpatient else rng.randint(1, 10), institutional=True)
    eob["diagnosis"] = diagnoses
    if kind == "inpatient":
        eob["procedure"] = [
            {
                "sequence": seq,
                "date": f"{start.isoformat()}T00:00:00+00:00",
                "procedureCodeableConcept": concept(coding(ICD10_PCS, code, display)),
            }
            for seq, (code, display) in enumerate(rng.sample(PROCEDURES, rng.randint(1, 3)), 1)
        ]
    state = {"state": rng.choice(STATES)[0]}
    items: list[dict[str, Any]] = []
    charged = paid = 0.0
    days = max((end - start).days, 0)
    for seq in range(1, int(rng.triangular(2, 30, 7)) + 1):
        rate = rng.uniform(20, 2500)
        units = rng.randint(1, 5)
        total = rate * units
        payment = total * rng.uniform(0.3, 0.8)
        charged += total
        paid += payment
        amounts = (rate, total, 0.0, 0.0, 0.0, total * 0.2, payment, 0.0, total * 0.2, payment)
        revenue_code, revenue_display = rng.choice(REVENUE_CENTERS)
        items.append(
            {
                "extension": [{"url": BB_VAR + "rev_cntr_unit_cnt", "valueQuantity": {"value": units}}],
                "sequence": seq,
                "careTeamSequence": [1],
                "revenue": {
                    "extension": [bb_coding_extension("rev_cntr_stus_ind_cd", "A")],
                    "coding": [coding(BB_VAR + "rev_cntr", revenue_code, revenue_display)],
                },
                "productOrService": concept(coding(HCPCS_SYSTEM, rng.choice(HCPCS_PROFESSIONAL)[0])),
                "servicedDate": (start + timedelta(days=rng.randint(0, days))).isoformat(),
                "locationAddress": state,
                "quantity": {"value": units},
                "adjudication": [
                    {"category": cat, "amount": money(amount)}
                    for cat, amount in zip(INSTITUTIONAL_LINE_ADJUDICATIONS, amounts, strict=True)
                ],
            }
        )
    _finish(eob, kind, patient_id, items, charged, paid, INSTITUTIONAL_BENEFITS, rng)
    return eob


_PDE_INFO: Final = (
    (
        "daw_prod_slctn_cd",
        "Dispense as Written (DAW) Product Selection Code",
        "0",
        "No Product Selection Indicated (may also have missing values)",
    ),
    ("drug_cvrg_stus_cd", "Drug Coverage Status Code", "C", "Covered"),
    ("rx_orgn_cd", "Prescription Origination Code", "3", "Electronic"),
    ("brnd_gnrc_cd", "Brand-Generic Code Reported by Submitting Plan", "G", "Generic Null/missing"),
    ("phrmcy_srvc_type_cd", "Pharmacy service type code", "01", "Community/retail pharmacy"),
    (
        "ptnt_rsdnc_cd",
        "Patient Residence Code",
        "00",
        "Not specified, other patient residence not identified below",
    ),
    ("submsn_clr_cd", "Submission clarification code", "08", "Process compound for approved ingredients"),
    ("dspnsng_stus_cd", "Dispensing Status Code", "P", "Partial fill"),
    ("adjstmt_dltn_cd", "Adjustment Deletion Code", "A", "Adjustment"),
    ("nstd_frmt_cd", "Non-Standard Format Code", "X", "X12 837"),
    ("ctstrphc_cvrg_cd", "Catastrophic Coverage Code", "A", "Attachment point met on this event"),
)


def _pde(
    rng: random.Random, kind: str, claim_id: str, patient_id: str, start: date, end: date, last_updated: str
) -> dict[str, Any]:
    eob = _header(rng, kind, claim_id, patient_id, start, end, last_updated, [])
    del eob["extension"]  # CMS sends Part D events without claim-level extensions
    eob["identifier"].append(
        {"system": BB_VAR + "rx_srvc_rfrnc_num", "value": str(rng.randint(10**10, 10**11))}
    )
    pharmacy = _npi(rng)
    eob["provider"] = {"identifier": {"system": NPI, "value": pharmacy}}
    eob["facility"] = {
        "extension": [bb_coding_extension("phrmcy_srvc_type_cd", "01", "Community/retail pharmacy")],
        "identifier": {"system": NPI, "value": pharmacy},
    }
    eob["outcome"] = "complete"
    eob["careTeam"] = [
        {
            "sequence": 1,
            "provider": {"identifier": {"system": NPI, "value": _npi(rng)}},
            "role": _ROLES["prescribing"],
        }
    ]
    supporting: list[dict[str, Any]] = [
        {
            "sequence": seq,
            "category": _info(variable, label),
            "code": concept(coding(BB_VAR + variable, code, display)),
        }
        for seq, (variable, label, code, display) in enumerate(_PDE_INFO, start=1)
    ]
    supply = rng.choice((30, 60, 90))
    supporting.append(
        {
            "sequence": len(supporting) + 1,
            "category": concept(coding(C4BB_INFO, "dayssupply", "Days Supply")),
            "valueQuantity": {"value": supply},
        }
    )
    supporting.append(
        {
            "sequence": len(supporting) + 1,
            "category": concept(coding(C4BB_INFO, "refillnum", "Refill Number")),
            "valueQuantity": {"value": rng.randint(0, 11)},
        }
    )
    eob["supportingInfo"] = supporting
    cost = rng.uniform(4, 600)
    patient_pay = cost * rng.uniform(0.05, 0.4)
    amounts = (0.0, 0.0, 0.0, 0.0, cost - patient_pay, 0.0, patient_pay, cost, cost, 0.0)
    ndc, name = rng.choice(DRUGS)
    item = {
        "sequence": 1,
        "careTeamSequence": [1],
        "productOrService": concept(coding(NDC, ndc, name)),
        "servicedDate": end.isoformat(),
        "quantity": {
            "extension": [{"url": BB_VAR + "fill_num", "valueQuantity": {"value": 0}}],
            "value": supply,
        },
        "adjudication": [
            {"category": cat, "amount": money(amount)}
            for cat, amount in zip(PDE_ADJUDICATIONS, amounts, strict=True)
        ],
    }
    _finish(eob, kind, patient_id, [item], cost, cost - patient_pay, (), rng)
    return eob


def build_claim(
    rng: random.Random,
    kind: str,
    claim_id: str,
    patient_id: str,
    start: date,
    end: date,
    last_updated: str,
    defect: str | None = None,
) -> dict[str, Any]:
    """One EOB of claim type `kind` (see `codes.CLAIM_TYPES`), optionally with a `DEFECTS` key."""
    if kind == "pde":
        eob = _pde(rng, kind, claim_id, patient_id, start, end, last_updated)
    elif kind in ("carrier", "dme"):
        eob = _professional(rng, kind, claim_id, patient_id, start, end, last_updated)
    else:
        eob = _institutional(rng, kind, claim_id, patient_id, start, end, last_updated)
    if defect == "provider":
        del eob["provider"]
    elif defect == "productOrService":
        eob["item"][0] = {k: v for k, v in eob["item"][0].items() if k != "productOrService"}
    elif defect == "focal":
        eob["insurance"][0] = {"coverage": eob["insurance"][0]["coverage"]}
    elif defect is not None:
        raise ValueError(f"unknown defect {defect!r}")
    return eob
