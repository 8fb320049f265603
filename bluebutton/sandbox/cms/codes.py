"""Code tables for the emulated Blue Button 2.0 data: systems, profiles and a few real-looking codes.

Only vocabulary lives here (no randomness, no resources): the generator in `claims.py` and
`data.py` picks from these tuples. The systems and variable names are the ones CMS's v2 (CARIN
Blue Button) responses use (see `../shared/bb2-samples/`): `https://bluebutton.cms.client.gov/resources/...`
variables and code systems next to the C4BB and HL7 terminology systems. Codes are plausible, not a
clinical data set.
"""

from __future__ import annotations

from typing import Any, Final

BB_VAR: Final = "https://bluebutton.cms.client.gov/resources/variables/"
BB_CS: Final = "https://bluebutton.cms.client.gov/resources/codesystem/"
EOB_TYPE_SYSTEM: Final = BB_CS + "eob-type"
ADJ_SYSTEM: Final = BB_CS + "adjudication"
INFO_SYSTEM: Final = BB_CS + "information"
BENEFIT_SYSTEM: Final = BB_CS + "benefit-balance"
HCPCS_SYSTEM: Final = BB_CS + "hcpcs"
C4BB: Final = "http://hl7.org/fhir/us/carin-bb/"
C4BB_ID_TYPE: Final = C4BB + "CodeSystem/C4BBIdentifierType"
C4BB_ADJ: Final = C4BB + "CodeSystem/C4BBAdjudication"
C4BB_ADJ_DISC: Final = C4BB + "CodeSystem/C4BBAdjudicationDiscriminator"
C4BB_INFO: Final = C4BB + "CodeSystem/C4BBSupportingInfoType"
C4BB_ROLE: Final = C4BB + "CodeSystem/C4BBClaimCareTeamRole"
C4BB_DIAG: Final = C4BB + "CodeSystem/C4BBClaimDiagnosisType"
HL7_ADJ: Final = "http://terminology.hl7.org/CodeSystem/adjudication"
HL7_INFO: Final = "http://terminology.hl7.org/CodeSystem/claiminformationcategory"
HL7_CLAIM_TYPE: Final = "http://terminology.hl7.org/CodeSystem/claim-type"
HL7_DIAG_TYPE: Final = "http://terminology.hl7.org/CodeSystem/ex-diagnosistype"
ICD10_CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10: Final = "http://hl7.org/fhir/sid/icd-10"
ICD10_PCS: Final = "http://www.cms.gov/Medicare/Coding/ICD10"
NDC: Final = "http://hl7.org/fhir/sid/ndc"
NPI: Final = "http://hl7.org/fhir/sid/us-npi"
MBI_SYSTEM: Final = "http://hl7.org/fhir/sid/us-mbi"

PROFILE: Final = C4BB + "StructureDefinition/"
PATIENT_PROFILE: Final = PROFILE + "C4BB-Patient"
COVERAGE_PROFILE: Final = PROFILE + "C4BB-Coverage"

# The eight v2 claim types in the order a search returns them (bb2-api.md §3.1 `type`).
CLAIM_TYPES: Final = ("carrier", "dme", "hha", "hospice", "inpatient", "outpatient", "pde", "snf")

# type -> (nch_clm_type_cd or None, its display, claim-type code, C4BB EOB profile, Coverage part)
CLAIM_TYPE_INFO: Final[dict[str, tuple[str | None, str, str, str, str]]] = {
    "carrier": (
        "71",
        "Local carrier non-durable medical equipment, prosthetics, orthotics, and supplies (DMEPOS) claim",
        "professional",
        "C4BB-ExplanationOfBenefit-Professional-NonClinician",
        "b",
    ),
    "dme": (
        "82",
        "DMERC; DMEPOS claim",
        "professional",
        "C4BB-ExplanationOfBenefit-Professional-NonClinician",
        "b",
    ),
    "hha": ("10", "HHA claim", "institutional", "C4BB-ExplanationOfBenefit-Outpatient-Institutional", "a"),
    "hospice": (
        "50",
        "Hospice claim",
        "institutional",
        "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
        "a",
    ),
    "inpatient": (
        "60",
        "Inpatient claim",
        "institutional",
        "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
        "a",
    ),
    "outpatient": (
        "40",
        "Hospital Outpatient claim",
        "institutional",
        "C4BB-ExplanationOfBenefit-Outpatient-Institutional",
        "b",
    ),
    "pde": (None, "", "pharmacy", "C4BB-ExplanationOfBenefit-Pharmacy", "d"),
    "snf": (
        "20",
        "Non swing bed Skilled Nursing Facility (SNF) claim",
        "institutional",
        "C4BB-ExplanationOfBenefit-Inpatient-Institutional",
        "a",
    ),
}

ICD10_DIAGNOSES: Final = (
    ("E119", "TYPE 2 DIABETES MELLITUS WITHOUT COMPLICATIONS"),
    ("I10", "ESSENTIAL (PRIMARY) HYPERTENSION"),
    ("E785", "HYPERLIPIDEMIA, UNSPECIFIED"),
    ("J449", "CHRONIC OBSTRUCTIVE PULMONARY DISEASE, UNSPECIFIED"),
    ("N183", "CHRONIC KIDNEY DISEASE, STAGE 3 (MODERATE)"),
    ("M545", "LOW BACK PAIN"),
    ("I509", "HEART FAILURE, UNSPECIFIED"),
    ("F329", "MAJOR DEPRESSIVE DISORDER, SINGLE EPISODE, UNSPECIFIED"),
    ("J189", "PNEUMONIA, UNSPECIFIED ORGANISM"),
    ("N390", "URINARY TRACT INFECTION, SITE NOT SPECIFIED"),
    ("I4891", "UNSPECIFIED ATRIAL FIBRILLATION"),
    ("E039", "HYPOTHYROIDISM, UNSPECIFIED"),
    ("M170", "BILATERAL PRIMARY OSTEOARTHRITIS OF KNEE"),
    ("G4733", "OBSTRUCTIVE SLEEP APNEA (ADULT) (PEDIATRIC)"),
    ("K219", "GASTRO-ESOPHAGEAL REFLUX DISEASE WITHOUT ESOPHAGITIS"),
    ("Z7901", "LONG TERM (CURRENT) USE OF ANTICOAGULANTS"),
    ("R0602", "SHORTNESS OF BREATH"),
    ("R079", "CHEST PAIN, UNSPECIFIED"),
    ("H2513", "AGE-RELATED NUCLEAR CATARACT, BILATERAL"),
    ("Z608", "OTHER PROBLEMS RELATED TO SOCIAL ENVIRONMENT"),
    ("M797", "FIBROMYALGIA"),
    ("Z733", '"STRESS, NOT ELSEWHERE CLASSIFIED"'),
    ("J329", '"CHRONIC SINUSITIS, UNSPECIFIED"'),
    ("I2510", "ATHSCL HEART DISEASE OF NATIVE CORONARY ARTERY W/O ANG PCTRS"),
    ("E1122", "TYPE 2 DIABETES MELLITUS WITH DIABETIC CHRONIC KIDNEY DISEASE"),
    ("Z23", "ENCOUNTER FOR IMMUNIZATION"),
    ("R5383", "OTHER FATIGUE"),
    ("M25561", "PAIN IN RIGHT KNEE"),
    ("L03115", "CELLULITIS OF RIGHT LOWER LIMB"),
    ("S72001A", "FRACTURE OF UNSP PART OF NECK OF RIGHT FEMUR, INIT"),
    ("Z96651", "PRESENCE OF RIGHT ARTIFICIAL KNEE JOINT"),
    ("D649", "ANEMIA, UNSPECIFIED"),
)

HCPCS_PROFESSIONAL: Final = (
    ("99213", "Office/outpatient visit est"),
    ("99214", "Office/outpatient visit est"),
    ("99215", "Office/outpatient visit est"),
    ("99203", "Office/outpatient visit new"),
    ("36415", "Routine venipuncture"),
    ("80053", "Comprehen metabolic panel"),
    ("85025", "Complete cbc w/auto diff wbc"),
    ("93000", "Electrocardiogram complete"),
    ("71046", "X-ray exam chest 2 views"),
    ("83036", "Glycosylated hemoglobin test"),
    ("80061", "Lipid panel"),
    ("97110", "Therapeutic exercises"),
    ("99232", "Sbsq hospital care/day 35"),
    ("99285", "Emergency dept visit hi mdm"),
    ("G0439", "Ppps, subseq visit"),
    ("J1100", "Dexamethasone sodium phos"),
    ("81001", "Urinalysis auto w/scope"),
    ("84443", "Assay thyroid stim hormone"),
    ("77067", "Scr mammo bi incl cad"),
    ("99495", "Trans care mgmt 14 day disch"),
)

HCPCS_DME: Final = (
    ("A4253", "Blood glucose/reagent strips"),
    ("E0601", "Cont airway pressure device"),
    ("E1390", "Oxygen concentrator"),
    ("K0001", "Standard wheelchair"),
    ("A7030", "Cpap full face mask"),
    ("E0143", "Walker folding wheeled w/o s"),
    ("A4259", "Lancets per box"),
)

DRUGS: Final = (
    ("00093505698", "Atorvastatin Calcium - ATORVASTATIN CALCIUM"),
    ("68180051301", "Lisinopril - LISINOPRIL"),
    ("00378018110", "Metformin Hydrochloride - METFORMIN HYDROCHLORIDE"),
    ("55111015810", "Omeprazole - OMEPRAZOLE"),
    ("60505257909", "Amlodipine Besylate - AMLODIPINE BESYLATE"),
    ("00378180310", "Levothyroxine Sodium - LEVOTHYROXINE SODIUM"),
    ("00172375810", "Hydrochlorothiazide - HYDROCHLOROTHIAZIDE"),
    ("16714010303", "Sertraline Hydrochloride - SERTRALINE HYDROCHLORIDE"),
    ("00093717998", "Simvastatin - SIMVASTATIN"),
    ("65862020190", "Gabapentin - GABAPENTIN"),
    ("00056017275", "Warfarin Sodium - WARFARIN SODIUM"),
    ("00597015237", "Apixaban - ELIQUIS"),
)

REVENUE_CENTERS: Final = (
    ("0250", "Pharmacy - General Classification"),
    ("0300", "Laboratory - General Classification"),
    ("0301", "Laboratory - Chemistry"),
    ("0320", "Radiology - Diagnostic - General Classification"),
    ("0450", "Emergency room - General Classification"),
    ("0510", "Clinic - General Classification"),
    ("0636", "Drugs requiring detailed coding"),
    ("0730", "EKG/ECG (Electrocardiogram) - General Classification"),
    ("0420", "Physical therapy - General Classification"),
    ("0120", "Room & Board - Semi-private Two Beds - General Classification"),
    ("0360", "Operating room services - General Classification"),
    ("0270", "Medical/surgical supplies and devices - General Classification"),
    ("0551", "Skilled nursing - Visit charge"),
    ("0651", "Hospice service - Routine home care"),
)

PROCEDURES: Final = (
    ("0SRD0JZ", "REPLACEMENT OF LEFT KNEE JOINT WITH SYNTH SUB, OPEN APPROACH"),
    ("0DB68ZX", "EXCISION OF STOMACH, VIA OPENING ENDO, DIAGN"),
    ("02703ZZ", "DILATION OF CORONARY ARTERY, ONE ARTERY, PERC APPROACH"),
    ("5A1955Z", "RESPIRATORY VENTILATION, GREATER THAN 96 CONSECUTIVE HOURS"),
    ("0FT44ZZ", "RESECTION OF GALLBLADDER, PERC ENDO APPROACH"),
    ("30233N1", "TRANSFUSION OF NONAUT RED BLOOD CELLS INTO PERIPH VEIN, PERC"),
)

DRGS: Final = (
    ("470", "MAJOR HIP AND KNEE JOINT REPLACEMENT OR REATTACHMENT OF LOWER EXTREMITY W/O MCC"),
    ("291", "HEART FAILURE AND SHOCK WITH MCC"),
    ("193", "SIMPLE PNEUMONIA AND PLEURISY WITH MCC"),
    ("690", "KIDNEY AND URINARY TRACT INFECTIONS WITHOUT MCC"),
    ("871", "SEPTICEMIA OR SEVERE SEPSIS WITHOUT MV >96 HOURS WITH MCC"),
)

PLACES_OF_SERVICE: Final = (
    (
        "11",
        "Office. Location, other than a hospital, skilled nursing facility (SNF), military "
        "treatment facility, community health center, State or local public health clinic, or "
        "intermediate care facility (ICF), where the health professional routinely provides health "
        "examinations, diagnosis, and treatment of illness or injury on an ambulatory basis.",
    ),
    (
        "21",
        "Inpatient hospital. A facility, other than psychiatric, which primarily provides "
        "diagnostic, therapeutic (both surgical and nonsurgical), and rehabilitation services by, or "
        "under, the supervision of physicians to patients admitted for a variety of medical conditions.",
    ),
    (
        "22",
        "Outpatient hospital. A portion of a hospital which provides diagnostic, therapeutic "
        "(both surgical and nonsurgical), and rehabilitation services to sick or injured persons who "
        "do not require hospitalization or institutionalization.",
    ),
    (
        "12",
        "Home. Location, other than a hospital or other facility, where the patient receives "
        "care in a private residence.",
    ),
    (
        "81",
        "Independent laboratory. A laboratory certified to perform diagnostic and/or clinical "
        "tests independent of an institution or a physician's office.",
    ),
)

SPECIALTIES: Final = (
    ("01", "General practice"),
    ("08", "Family practice"),
    ("11", "Internal medicine"),
    ("06", "Cardiology"),
    ("69", "Clinical laboratory (billing independently)"),
    ("30", "Diagnostic radiology"),
    ("65", "Physical therapist in private practice"),
)

# (SSA state code as CMS sends it in Patient.address.state, postal abbreviation, name, zip prefix)
STATES: Final = (
    ("01", "AL", "ALABAMA", "358"),
    ("05", "CA", "CALIFORNIA", "945"),
    ("10", "FL", "FLORIDA", "331"),
    ("11", "GA", "GEORGIA", "303"),
    ("14", "IL", "ILLINOIS", "606"),
    ("21", "MD", "MARYLAND", "212"),
    ("23", "MI", "MICHIGAN", "482"),
    ("33", "NY", "NEW YORK", "100"),
    ("36", "OH", "OHIO", "432"),
    ("39", "PA", "PENNSYLVANIA", "191"),
    ("45", "TX", "TEXAS", "770"),
    ("50", "WA", "WASHINGTON", "981"),
)

GIVEN_NAMES: Final = (
    ("Jane", "female"),
    ("Mary", "female"),
    ("Linda", "female"),
    ("Patricia", "female"),
    ("Barbara", "female"),
    ("Dorothy", "female"),
    ("Helen", "female"),
    ("Margaret", "female"),
    ("John", "male"),
    ("Robert", "male"),
    ("James", "male"),
    ("William", "male"),
    ("Richard", "male"),
    ("Charles", "male"),
    ("Joseph", "male"),
    ("Thomas", "male"),
)

FAMILY_NAMES: Final = (
    "Doe",
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Thompson",
    "White",
    "Harris",
    "Clark",
    "Lewis",
)

# Letters allowed in an MBI (CMS excludes S, L, O, I, B, Z; synthetic MBIs use S to never clash).
MBI_LETTERS: Final = "ACDEFGHJKMNPQRTUVWXY"


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    """A FHIR Coding; `display` only when CMS sends one."""
    out: dict[str, Any] = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def concept(*codings: dict[str, Any]) -> dict[str, Any]:
    """A CodeableConcept of the given codings."""
    return {"coding": list(codings)}


def bb_coding_extension(variable: str, code: str, display: str | None = None) -> dict[str, Any]:
    """A CMS variable extension (`valueCoding` in the variable's own system), as in the samples."""
    return {"url": BB_VAR + variable, "valueCoding": coding(BB_VAR + variable, code, display)}


def bb_identifier_extension(variable: str, value: str) -> dict[str, Any]:
    """A CMS variable extension carrying an identifier (claim control numbers and the like)."""
    return {
        "url": BB_VAR + variable,
        "valueIdentifier": {"system": BB_VAR + variable, "value": value},
    }


def adjudication_category(
    standard_system: str, standard_code: str, standard_display: str, variable: str, label: str
) -> dict[str, Any]:
    """A category with the C4BB/HL7 code first and the CMS variable second, as CMS sends it."""
    return concept(
        coding(standard_system, standard_code, standard_display),
        coding(ADJ_SYSTEM, BB_VAR + variable, label),
    )


# Line-level adjudications of professional claims (carrier/DME), category built once and shared.
PROFESSIONAL_LINE_ADJUDICATIONS: Final = tuple(
    adjudication_category(*row)
    for row in (
        (HL7_ADJ, "benefit", "Benefit Amount", "line_nch_pmt_amt", "Line NCH Medicare Payment Amount"),
        (
            C4BB_ADJ,
            "paidtopatient",
            "Paid to patient",
            "line_bene_pmt_amt",
            "Line Payment Amount to Beneficiary",
        ),
        (
            C4BB_ADJ,
            "paidtoprovider",
            "Paid to provider",
            "line_prvdr_pmt_amt",
            "Line Provider Payment Amount",
        ),
        (
            HL7_ADJ,
            "deductible",
            "Deductible",
            "line_bene_ptb_ddctbl_amt",
            "Line Beneficiary Part B Deductible Amount",
        ),
        (
            C4BB_ADJ,
            "priorpayerpaid",
            "Prior payer paid",
            "line_bene_prmry_pyr_pd_amt",
            "Line Primary Payer (if not Medicare) Paid Amount",
        ),
        (C4BB_ADJ, "coinsurance", "Co-insurance", "line_coinsrnc_amt", "Line Beneficiary Coinsurance Amount"),
        (HL7_ADJ, "submitted", "Submitted Amount", "line_sbmtd_chrg_amt", "Line Submitted Charge Amount"),
        (HL7_ADJ, "eligible", "Eligible Amount", "line_alowd_chrg_amt", "Line Allowed Charge Amount"),
    )
)

# Revenue-center adjudications of institutional claims.
INSTITUTIONAL_LINE_ADJUDICATIONS: Final = tuple(
    adjudication_category(*row)
    for row in (
        (HL7_ADJ, "submitted", "Submitted Amount", "rev_cntr_rate_amt", "Revenue Center Rate Amount"),
        (
            HL7_ADJ,
            "submitted",
            "Submitted Amount",
            "rev_cntr_tot_chrg_amt",
            "Revenue Center Total Charge Amount",
        ),
        (
            C4BB_ADJ,
            "noncovered",
            "Noncovered",
            "rev_cntr_ncvrd_chrg_amt",
            "Revenue Center Non-Covered Charge Amount",
        ),
        (
            HL7_ADJ,
            "deductible",
            "Deductible",
            "rev_cntr_blood_ddctbl_amt",
            "Revenue Center Blood Deductible Amount",
        ),
        (
            HL7_ADJ,
            "deductible",
            "Deductible",
            "rev_cntr_cash_ddctbl_amt",
            "Revenue Center Cash Deductible Amount",
        ),
        (
            C4BB_ADJ,
            "coinsurance",
            "Co-insurance",
            "rev_cntr_coinsrnc_wge_adjstd_c",
            "Revenue Center Coinsurance/Wage Adjusted Coinsurance Amount",
        ),
        (
            C4BB_ADJ,
            "paidtoprovider",
            "Paid to provider",
            "rev_cntr_prvdr_pmt_amt",
            "Revenue Center (Medicare) Provider Payment Amount",
        ),
        (
            C4BB_ADJ,
            "paidtopatient",
            "Paid to patient",
            "rev_cntr_bene_pmt_amt",
            "Revenue Center Payment Amount to Beneficiary",
        ),
        (
            C4BB_ADJ,
            "paidbypatient",
            "Paid by patient",
            "rev_cntr_ptnt_rspnsblty_pmt",
            "Revenue Center Patient Responsibility Payment",
        ),
        (
            HL7_ADJ,
            "benefit",
            "Benefit Amount",
            "rev_cntr_pmt_amt_amt",
            "Revenue Center Payment Amount Amount",
        ),
    )
)

# Part D event amounts (PDE line adjudications).
PDE_ADJUDICATIONS: Final = tuple(
    adjudication_category(*row)
    for row in (
        (C4BB_ADJ, "discount", "Discount", "rptd_gap_dscnt_num", "Gap Discount Amount"),
        (
            C4BB_ADJ,
            "paidbypatient",
            "Paid by patient",
            "othr_troop_amt",
            "Other True Out-of-Pocket (TrOOP) Amount",
        ),
        (
            C4BB_ADJ,
            "paidbypatient",
            "Paid by patient",
            "lics_amt",
            "Amount paid for the PDE by Part D low income subsidy",
        ),
        (
            C4BB_ADJ,
            "paidbypatient",
            "Paid by patient",
            "plro_amt",
            "Reduction in patient liability due to payments by other payers (PLRO) Amount",
        ),
        (
            HL7_ADJ,
            "benefit",
            "Benefit Amount",
            "cvrd_d_plan_pd_amt",
            "Amount paid by Part D plan for the PDE (drug is covered by Part D)",
        ),
        (
            HL7_ADJ,
            "benefit",
            "Benefit Amount",
            "ncvrd_plan_pd_amt",
            "Amount paid by Part D plan for the PDE (drug is not covered by Part D)",
        ),
        (C4BB_ADJ, "paidbypatient", "Paid by patient", "ptnt_pay_amt", "Amount Paid by Patient"),
        (HL7_ADJ, "submitted", "Submitted Amount", "tot_rx_cst_amt", "Total drug cost (Part D)"),
        (
            C4BB_ADJ,
            "coinsurance",
            "Co-insurance",
            "gdc_blw_oopt_amt",
            "Gross Drug Cost Below Part D Out-of-Pocket Threshold (GDCB)",
        ),
        (
            C4BB_ADJ,
            "coinsurance",
            "Co-insurance",
            "gdc_abv_oopt_amt",
            "Gross Drug Cost Above Part D Out-of-Pocket Threshold (GDCA)",
        ),
    )
)

# Claim-level benefit balance money (professional / institutional).
PROFESSIONAL_BENEFITS: Final = (
    (
        "carr_clm_cash_ddctbl_apld_amt",
        "Carrier Claim Cash Deductible Applied Amount (sum of all line-level deductible amounts)",
    ),
    ("nch_clm_prvdr_pmt_amt", "NCH Claim Provider Payment Amount"),
    ("nch_clm_bene_pmt_amt", "NCH Claim Payment Amount to Beneficiary"),
    (
        "nch_carr_clm_sbmtd_chrg_amt",
        "NCH Carrier Claim Submitted Charge Amount (sum of all line-level submitted charges)",
    ),
    (
        "nch_carr_clm_alowd_amt",
        "NCH Carrier Claim Allowed Charge Amount (sum of all line-level allowed charges)",
    ),
)

INSTITUTIONAL_BENEFITS: Final = (
    ("nch_profnl_cmpnt_chrg_amt", "Professional Component Charge Amount"),
    ("nch_bene_ptb_ddctbl_amt", "NCH Beneficiary Part B Deductible Amount"),
    ("nch_bene_ptb_coinsrnc_amt", "NCH Beneficiary Part B Coinsurance Amount"),
    ("clm_op_prvdr_pmt_amt", "Claim Outpatient Provider Payment Amount"),
    ("clm_op_bene_pmt_amt", "Claim Outpatient Payment Amount to Beneficiary"),
    ("nch_bene_blood_ddctbl_lblty_am", "NCH Beneficiary Blood Deductible Liability Amount"),
    ("nch_ip_ncvrd_chrg_amt", "NCH Inpatient(or other Part A) Non-covered Charge Amount"),
    ("nch_ip_tot_ddctn_amt", "NCH Inpatient (or other Part A) Total Deductible/Coinsurance Amount"),
)
