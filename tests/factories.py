"""Test data: settings, synthetic FHIR R4 resources, CMS search pages and token answers, connect
envelopes, and the names and addresses the tests share."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from bluebutton.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = ROOT.parent / "shared" / "bb2-samples"
CERTS = ROOT / "local-certs"

CMS_ORIGIN = "https://cms.test"
FHIR_BASE = f"{CMS_ORIGIN}/v2/fhir/"
CONNECT_ORIGIN = "https://lfh.test"
SANDBOX_ORIGIN = "https://sandbox.bluebutton.cms.gov"

# RFC 6750 b64token characters only; distinctive so a leak is easy to find.
TOKEN = "bbTok-7Qx9Lr2Vw8Kz4Np6Hs3Jd5Mf1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PATIENT_ID = "-20140000008325"

FHIR_JSON = "application/fhir+json"
SMALL_LIMIT = 10_000  # the smallest BLUEBUTTON_LFH_MAX_BUNDLE_BYTES allowed

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-secret-value"
CALLBACK_URL = "https://localhost:5200/bluebutton/authorize_callback"
DEFAULT_SCOPES = "openid profile patient/Patient.read patient/Coverage.read patient/ExplanationOfBenefit.read"

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
JSON_ACCEPT = "application/json"

AUTHORIZE = "/bluebutton/authorize"
CALLBACK = "/bluebutton/authorize_callback"
REFRESH = "/bluebutton/refresh"
REVOKE = "/bluebutton/revoke"


def make_settings(**overrides: Any) -> Settings:
    """Test settings: plain HTTP, mock upstreams, OAuth credentials, no backoff, two validation
    workers; whatever BLUEBUTTON_* variables the developer has set are ignored."""
    values: dict[str, Any] = {
        "tls": False,
        "cms_base_url": CMS_ORIGIN,
        "lfh_url": CONNECT_ORIGIN,
        "cms_client_id": CLIENT_ID,
        "cms_client_secret": CLIENT_SECRET,
        "cms_retry_backoff_seconds": 0,
        "validation_workers": 2,
    }
    values.update(overrides)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("BLUEBUTTON_"):
                mp.delenv(name)
        return Settings(_env_file=None, **values)


# ------------------------------------------------------------------------ synthetic FHIR resources


def make_patient(patient_id: str = PATIENT_ID, *, family: str = "Doe", given: str = "Jane") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "meta": {
            "lastUpdated": "2024-01-02T03:04:05.678-05:00",
            "profile": ["http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-Patient"],
        },
        "identifier": [
            {"system": "https://bluebutton.cms.client.gov/resources/variables/bene_id", "value": patient_id}
        ],
        "name": [{"use": "usual", "family": family, "given": [given]}],
        "gender": "female",
        "birthDate": "1950-04-01",
        "address": [{"state": "MD", "postalCode": "21201"}],
    }


def make_coverage(part: str = "A", patient_id: str = PATIENT_ID) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": f"part-{part.lower()}--{patient_id}",
        "status": "active",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "SUBSIDIZ"}]
        },
        "subscriberId": "1S00E00AA00",
        "beneficiary": {"reference": f"Patient/{patient_id}"},
        "relationship": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}
            ]
        },
        "period": {"start": "2014-02-06"},
        "payor": [{"identifier": {"value": "Centers for Medicare and Medicaid Services"}}],
        "class": [
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": "plan"}
                    ]
                },
                "value": f"Part {part.upper()}",
            }
        ],
    }


def eob_id(number: int, claim_type: str = "carrier") -> str:
    return f"{claim_type}--{10_000_000_000 + number}"


def make_eob(
    number: int = 1,
    *,
    patient_id: str = PATIENT_ID,
    claim_type: str = "carrier",
    items: int = 1,
    pad: int = 0,
    note: str | None = None,
) -> dict[str, Any]:
    """A valid R4 ExplanationOfBenefit; `items` and `pad` (bytes of note text) set its size."""
    resource: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit",
        "id": eob_id(number, claim_type),
        "meta": {"lastUpdated": "2024-01-02T03:04:05.678-05:00"},
        "identifier": [
            {"system": "https://bluebutton.cms.client.gov/resources/variables/clm_id", "value": str(number)}
        ],
        "status": "active",
        "type": {
            "coding": [
                {
                    "system": "https://bluebutton.cms.client.gov/resources/codesystem/eob-type",
                    "code": claim_type.upper(),
                },
                {"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"},
            ]
        },
        "use": "claim",
        "patient": {"reference": f"Patient/{patient_id}"},
        "billablePeriod": {"start": "2023-03-01", "end": "2023-03-01"},
        "created": "2024-01-02T03:04:05-05:00",
        "insurer": {"identifier": {"value": "CMS"}},
        "provider": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999999"}},
        "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/part-b--{patient_id}"}}],
        "item": [
            {
                "sequence": i + 1,
                "productOrService": {
                    "coding": [
                        {
                            "system": "https://bluebutton.cms.client.gov/resources/codesystem/hcpcs",
                            "code": f"{99200 + i}",
                        }
                    ]
                },
                "servicedDate": "2023-03-01",
                "adjudication": [
                    {
                        "category": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/adjudication",
                                    "code": "submitted",
                                }
                            ]
                        },
                        "amount": {"value": 125.5 + i, "currency": "USD"},
                    }
                ],
            }
            for i in range(items)
        ],
        "payment": {"amount": {"value": 100.25, "currency": "USD"}},
    }
    if pad or note is not None:
        resource["processNote"] = [{"number": 1, "type": "display", "text": (note or "") + "x" * pad}]
    return resource


def entry_for(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"{FHIR_BASE}{resource['resourceType']}/{resource['id']}", "resource": resource}


def compact(value: Any) -> bytes:
    return orjson.dumps(value)


def eob_with_entry_size(number: int, size: int, **kwargs: Any) -> dict[str, Any]:
    """An EOB whose search entry is exactly `size` bytes of compact JSON."""
    resource = make_eob(number, pad=1, **kwargs)
    measured = len(compact(entry_for(resource)))
    if measured > size:
        raise ValueError(f"an entry is at least {measured} bytes")
    return make_eob(number, pad=1 + size - measured, **kwargs)


def make_resources(resource_type: str, count: int) -> list[dict[str, Any]]:
    """`count` distinct valid resources of one type."""
    if resource_type == "Patient":
        return [make_patient(f"-2014000000{n:04d}") for n in range(count)]
    if resource_type == "Coverage":
        return [make_coverage(f"{chr(ord('a') + n % 26)}{n}") for n in range(count)]
    return [make_eob(n) for n in range(count)]


# ------------------------------------------------------------------------------------- CMS pages


def page_url(resource_type: str, start: int, count: int = 50, origin: str = CMS_ORIGIN) -> str:
    return (
        f"{origin}/v2/fhir/{resource_type}?_format=application%2Fjson%2Bfhir"
        f"&startIndex={start}&_count={count}&patient={PATIENT_ID}"
    )


def cms_page(
    resources: list[dict[str, Any]],
    *,
    links: list[dict[str, str]] | None = None,
    total: int | None = None,
    self_url: str | None = None,
    next_url: str | None = None,
) -> dict[str, Any]:
    """One CMS searchset page holding `resources`, with `self` and (optionally) `next` links."""
    page: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": "2024-05-06T07:08:09.123-04:00"},
        "type": "searchset",
    }
    if total is not None:
        page["total"] = total
    if links is None:
        links = [{"relation": "self", "url": self_url or page_url("ExplanationOfBenefit", 0)}]
        if next_url is not None:
            links.append({"relation": "next", "url": next_url})
    page["link"] = links
    page["entry"] = [entry_for(r) for r in resources]
    return page


def cms_pages(
    resource_type: str,
    resources: list[dict[str, Any]],
    *,
    per_page: int = 50,
    with_total: bool = True,
) -> list[dict[str, Any]]:
    """A whole CMS search: pages of `per_page` with first/next/previous/last/self links by index."""
    chunks = [resources[i : i + per_page] for i in range(0, len(resources), per_page)] or [[]]
    last_start = (len(chunks) - 1) * per_page
    pages = []
    for n, chunk in enumerate(chunks):
        start = n * per_page
        links = [{"relation": "first", "url": page_url(resource_type, 0, per_page)}]
        if n + 1 < len(chunks):
            links.append({"relation": "next", "url": page_url(resource_type, start + per_page, per_page)})
        if n > 0:
            links.append({"relation": "previous", "url": page_url(resource_type, start - per_page, per_page)})
        links.append({"relation": "last", "url": page_url(resource_type, last_start, per_page)})
        links.append({"relation": "self", "url": page_url(resource_type, start, per_page)})
        pages.append(cms_page(chunk, links=links, total=len(resources) if with_total else None))
    return pages


def fhir_response(body: Any, status: int = 200, **headers: str) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers={"Content-Type": FHIR_JSON, **headers})


# ------------------------------------------------------------------------------------------ OAuth


def token_body(**overrides: Any) -> dict[str, Any]:
    """A CMS token response (bb2-api.md §2.5)."""
    body: dict[str, Any] = {
        "access_token": "cms-access-" + uuid.uuid4().hex,
        "refresh_token": "cms-refresh-" + uuid.uuid4().hex,
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": DEFAULT_SCOPES,
        "patient": "-20140000008325",
        "access_grant_expiration": "2027-07-01T12:00:00Z",
    }
    body.update(overrides)
    return body


# --------------------------------------------------------------------------------------- connect


def envelope_for(number: int, body: bytes) -> dict[str, Any]:
    """connect 0.42.0's storage envelope for the `number`-th stored record."""
    return {
        "uuid": f"5b1c3f4e-0000-4000-8000-{number:012d}",
        "lfh_id": "connect-test",
        "operation": "POST",
        "creation_date": "2024-05-06T07:08:09+00:00",
        "store_date": "2024-05-06T07:08:09+00:00",
        "consuming_endpoint_url": "/fhir/Bundle",
        # connect sends the whole Bundle back base64-encoded; a digest keeps test output short
        "data": base64.b64encode(hashlib.sha256(body).digest()).decode(),
        "data_format": "FHIR-R4",
        "status": "success",
        "data_record_location": f"FHIR-R4:0:{number}",
        "target_endpoint_urls": [],
        "ipfs_uri": None,
        "elapsed_storage_time": 0.012,
        "transmit_date": None,
        "elapsed_transmit_time": None,
        "elapsed_total_time": 0.034,
        "transmission_attributes": {"content-type": FHIR_JSON},
    }


def record_uuid(number: int) -> str:
    return f"5b1c3f4e-0000-4000-8000-{number:012d}"


def record_location(number: int) -> str:
    return f"FHIR-R4:0:{number}"
