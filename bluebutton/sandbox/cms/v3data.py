"""The v3 form of the emulator's synthetic data: v3 ids, claims as CMS v3 sends them, v3 state.

v3 is built from the same users and claims as v2 (`data.py`), so every claim has a v2 and a v3
form whose cross-version keys agree while their ids do not (bb2-v3.md §3.2, §3.3):

    Patient id  "-30" + 2-digit generation + the v2 digits: BBUser09001 -> -30250000009002
                (WS fixtures pair v2 -2014... with v3 -3025...; §3.4); a merge (admin call)
                bumps the generation, so the old id answers a stub Patient `replaced-by` the new
    EOB id      CLM_UNIQ_ID: "-9" + 12 digits hashed from the v2 claim id (another key space, no
                type prefix), ordered numerically (BFD `EobHandler.searchByBene`, §4)
    control no. `identifier[system=.../CLM-CNTL-NUM]` = the v2 `carr_clm_cntl_num` /
                `fi_doc_clm_cntl_num` value (DD3 row 63 maps one to the other)
    Part D      `supportingInfo[CLM_LINE_RX_NUM].valueString` = the v2 `rx_srvc_rfrnc_num`; NDC,
                service date and refill number as in v2

Besides its final (NCH or DDPS) form, about one FFS claim in seven also has a not-final
shared-system form (FISS, MCS or VMS; `NotFinalAction`), with its own id and the same control
number, returned only when a search asks for it with `_source`/`_tag` (WS `ba0c6856a`, §4). About
one FFS claim in ten is a substance-use claim (`meta.security` 42CFRPart2, §3.1), which vanishes
from v3 results when the consent's SAMHSA box was left unticked (§5).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from bluebutton.sandbox.cms.codes import BB_VAR, C4BB_ID_TYPE, HL7_CLAIM_TYPE, PROFILE, coding, concept
from bluebutton.sandbox.cms.data import USER_COUNT, Claim, CmsDataset

PILOT_USERS: Final = range(9001, 9006)  # BBUser09001-BBUser09005 (OAS `tags`, §1)
V3_CS: Final = "https://bluebutton.cms.gov/fhir/CodeSystem/"
EOB_TYPE_V3: Final = V3_CS + "EOB-TYPE"
SYSTEM_TYPE: Final = V3_CS + "System-Type"
FINAL_ACTION: Final = V3_CS + "Final-Action"
CONTROL_NUMBER: Final = "https://bluebutton.cms.gov/identifiers/CLM-CNTL-NUM"
SUPPORTING_INFO_V3: Final = V3_CS + "Supporting-Information"  # system unconfirmed; code per DD3 row 58
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SAMHSA: Final = "42CFRPart2"
FINAL_SOURCES: Final = ("NCH", "DDPS")
SOURCES: Final = ("NCH", "DDPS", "FISS", "MCS", "VMS", "CWF")  # BFD `MetaSourceSk`
SYSTEM_TYPES: Final = {"NCH": "NationalClaimsHistory", "DDPS": "DDPS"}  # others: SharedSystem
VERSIONED: Final = "|2.2.0"  # C4BB 2.2.0 canonicals (BFD `SystemUrls.java`, §3.1)
_EOB_PROFILES: Final = {
    "carrier": "C4BB-ExplanationOfBenefit-Professional-NonClinician",
    "dme": "C4BB-ExplanationOfBenefit-Professional-NonClinician",
    "hha": "C4BB-ExplanationOfBenefit-Outpatient-Institutional",
    "outpatient": "C4BB-ExplanationOfBenefit-Outpatient-Institutional",
    "hospice": "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
    "inpatient": "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
    "snf": "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
    "pde": "C4BB-ExplanationOfBenefit-Pharmacy",
}
_SHARED_SYSTEM: Final = {"carrier": "MCS", "dme": "VMS"}  # institutional claims: FISS
_V3_PATIENT: Final = re.compile(r"^-30(\d{2})(\d{10})$")


def v3_patient_id(user: int, generation: int = 0) -> str:
    """The v3 id (BENE_SK) of a user; each merge of the record gives a new one."""
    return f"-30{25 + generation:02d}{user + 1:010d}"


def user_for_v3_patient_id(fhir_id: str) -> tuple[int, int] | None:
    """(user, generation) of a v3 patient id of the emulator's shape, or None."""
    match = _V3_PATIENT.match(fhir_id)
    if match is None or int(match[1]) < 25:
        return None
    user = int(match[2]) - 1
    return (user, int(match[1]) - 25) if 0 <= user < USER_COUNT else None


def v3_claim_id(claim_id: str, *, final: bool = True) -> str:
    """CLM_UNIQ_ID: an IDR surrogate key, unrelated to the v2 CLM_ID (§3.3: assume different spaces)."""
    digest = hashlib.sha256(f"{claim_id}:{'final' if final else 'shared'}".encode()).digest()
    return f"-9{int.from_bytes(digest[:8], 'big') % 10**12:012d}"


def is_samhsa(claim: Claim) -> bool:
    """About one FFS claim in ten is a substance-use claim (stable per claim id)."""
    return claim.kind != "pde" and zlib.crc32(claim.id.encode()) % 10 == 0


def has_shared_system_form(claim: Claim) -> bool:
    return claim.kind != "pde" and zlib.crc32(claim.id.encode()) % 7 == 3


@dataclass(slots=True)
class V3Claim:
    """The v3 form of one claim: what filters need up front, the body built on first use."""

    id: str
    claim: Claim
    source: str
    samhsa: bool
    _json: bytes | None = field(default=None, repr=False)
    _patient: str | None = field(default=None, repr=False)

    @property
    def final(self) -> bool:
        return self.source in FINAL_SOURCES

    @property
    def tags(self) -> tuple[tuple[str, str], ...]:
        system_type = SYSTEM_TYPES.get(self.source, "SharedSystem")
        action = "FinalAction" if self.final else "NotFinalAction"
        return ((SYSTEM_TYPE, system_type), (FINAL_ACTION, action))

    def json(self, patient: str) -> bytes:
        """The resource as compact JSON for the beneficiary's current v3 id."""
        if self._json is None or self._patient != patient:
            self._json = orjson.dumps(v3_eob(self.claim.resource(), self, patient))
            self._patient = patient
        return self._json


def _control_number(v2: dict[str, Any], claim: Claim) -> str:
    for extension in v2.get("extension", []):
        if extension["url"] in (BB_VAR + "carr_clm_cntl_num", BB_VAR + "fi_doc_clm_cntl_num"):
            return str(extension["valueIdentifier"]["value"])
    return f"{claim.claim_id.lstrip('-')}PDE"  # Part D: CLM_CNTL_NUM, not part of the match key


def v3_eob(v2: dict[str, Any], form: V3Claim, patient: str) -> dict[str, Any]:
    """Rewrite a v2 EOB as v3 sends it: new id, C4BB 2.2.0 meta with source, tags and security,
    `uc` without a system plus CLM-CNTL-NUM, v3 type codes and references; no v2 variables."""
    claim = form.claim
    meta: dict[str, Any] = {
        "lastUpdated": v2["meta"]["lastUpdated"],
        "source": form.source,
        "profile": [PROFILE + _EOB_PROFILES[claim.kind] + VERSIONED],
        "tag": [coding(system, code) for system, code in form.tags],
    }
    if form.samhsa:
        meta["security"] = [coding(ACT_CODE, SAMHSA)]
    eob = {k: v for k, v in v2.items() if k not in ("extension", "meta", "identifier", "type")}
    eob["id"] = form.id
    eob["meta"] = meta
    eob["identifier"] = [
        {"type": concept(coding(C4BB_ID_TYPE, "uc", "Unique Claim ID")), "value": form.id},
        {"system": CONTROL_NUMBER, "value": _control_number(v2, claim)},
    ]
    claim_type = next(c for c in v2["type"]["coding"] if c["system"] == HL7_CLAIM_TYPE)
    eob["type"] = {"coding": [coding(EOB_TYPE_V3, claim.kind.upper()), claim_type]}
    eob["patient"] = {"reference": f"Patient/{patient}"}
    for insurance in eob.get("insurance", []):
        part = insurance["coverage"]["reference"].split("-")[1]
        insurance["coverage"] = {"reference": f"Coverage/part-{part}-{patient}"}
    if claim.kind == "pde":
        rx = next(i["value"] for i in v2["identifier"] if i.get("system") == BB_VAR + "rx_srvc_rfrnc_num")
        info = eob.setdefault("supportingInfo", [])
        info.append(
            {
                "sequence": len(info) + 1,
                "category": concept(coding(SUPPORTING_INFO_V3, "CLM_LINE_RX_NUM")),
                "valueString": rx,
            }
        )
    if not form.final:
        eob["status"] = "active"
        eob["outcome"] = "partial"  # not yet adjudicated in full
    return eob


def v3_forms(claim: Claim) -> list[V3Claim]:
    """The claim's final form, and its shared-system (not final) form when it has one."""
    samhsa = is_samhsa(claim)
    forms = [V3Claim(v3_claim_id(claim.claim_id), claim, "DDPS" if claim.kind == "pde" else "NCH", samhsa)]
    if has_shared_system_form(claim):
        shared = _SHARED_SYSTEM.get(claim.kind, "FISS")
        forms.append(V3Claim(v3_claim_id(claim.claim_id, final=False), claim, shared, samhsa))
    return forms


@dataclass
class V3State:
    """What CMS decides about the app and the records, changed at run time by `/_sandbox/v3`.

    `crosswalk` holds each beneficiary's v3 id as last looked up, at login and refresh only (WS
    `mymedicare_cb/models.py`, §2.5): after a merge, tokens keep reading the old id until the
    next refresh, whose `patient` is the new one.
    """

    early_adopter: bool = True  # the app's `v3_early_adopter` flag (§1)
    part_d_only: bool = False  # `Application.part_d_eob_only` (§5)
    all_users: bool = False  # False: only the pilot users may sign in on v3
    generations: dict[int, int] = field(default_factory=dict)
    crosswalk: dict[int, str] = field(default_factory=dict)

    def current_id(self, user: int) -> str:
        return v3_patient_id(user, self.generations.get(user, 0))

    def looked_up(self, user: int) -> str:
        """Login or refresh: BB2 reads the current id from BFD by MBI and keeps it."""
        self.crosswalk[user] = self.current_id(user)
        return self.crosswalk[user]

    def token_id(self, user: int) -> str:
        """The id a token's calls use: the crosswalk's, which may be a merged-away one."""
        return self.crosswalk.get(user) or self.current_id(user)

    def merge(self, user: int) -> tuple[str, str]:
        """CMS merges the beneficiary's record into a new one: (old id, new id)."""
        old = self.current_id(user)
        self.generations[user] = self.generations.get(user, 0) + 1
        return old, self.current_id(user)

    def reset(self) -> None:
        self.early_adopter, self.part_d_only, self.all_users = True, False, False
        self.generations.clear()
        self.crosswalk.clear()


class V3Claims:
    """The v3 forms of a user's claims in v3 order (CLM_UNIQ_ID ascending), cached with the v2 list."""

    def __init__(self, dataset: CmsDataset) -> None:
        self.dataset = dataset
        self._cache: dict[int, tuple[list[Claim], list[V3Claim]]] = {}

    def claims(self, user: int) -> list[V3Claim]:
        v2 = self.dataset.claims(user)
        cached = self._cache.get(user)
        if cached is not None and cached[0] is v2:
            return cached[1]
        forms = sorted((f for c in v2 for f in v3_forms(c)), key=lambda f: int(f.id))
        if len(self._cache) >= 16:
            self._cache.pop(next(iter(self._cache)))
        self._cache[user] = (v2, forms)
        return forms
