"""FHIR endpoints of the emulated Blue Button 2.0 API (v2, R4): search, read, paging, filters.

    GET /v2/fhir/metadata                                 CapabilityStatement, no token
    GET /v2/fhir/.well-known/smart-configuration          no token
    GET /v2/fhir/{Patient|Coverage|ExplanationOfBenefit}[/]   search (Bundle searchset)
    GET /v2/fhir/{Patient|Coverage|ExplanationOfBenefit}/<id>  read

Checks run in CMS's order (bb2-api.md §3, §4): Accept (406), token (400 for `?access_token=`, 401
with `WWW-Authenticate: Bearer realm="api"`), permissions (403 for a foreign `patient` /
`beneficiary` or a missing scope, 404 for a foreign Patient `_id`), then the query schema (400 with
CMS's texts). Unknown parameters are dropped silently, like CMS's voluptuous `REMOVE_EXTRA`; for a
repeated single-valued parameter the last value wins (Django `QueryDict.dict()`).

Query rules, filters, paging links and Bundle assembly live in `search.py`; links are absolute
on the request's own scheme/host/port. Result order is fixed per user, so pages fetched
concurrently by `startIndex` line up with following `next`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Final, Literal

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bluebutton.sandbox.cms.beneficiary import build_coverages, build_patient, person
from bluebutton.sandbox.cms.config import CmsSandboxConfig
from bluebutton.sandbox.cms.data import CmsDataset, is_eob_id_shape, patient_id, user_for_eob_id
from bluebutton.sandbox.cms.faults import FHIR_MEDIA_TYPE, FaultState
from bluebutton.sandbox.cms.oauth import NO_PERMISSION, authenticate_bearer, json_error
from bluebutton.sandbox.cms.scopes import RESOURCES, SUPPORTED_SCOPES, allows
from bluebutton.sandbox.cms.search import UPSTREAM_400, SearchQuery, paging_links, parse_search, searchset
from bluebutton.sandbox.cms.tokens import AccessToken, TokenStore

_COVERAGE_ID: Final = re.compile(r"^part-([abcd])-(-?\d+)$")


def media_type(request: Request) -> str | None:
    """DRF negotiation over CMS's renderers: fhir+json by default, json on request (§5)."""
    ranges = [part.split(";")[0].strip().lower() for part in request.headers.get("accept", "*/*").split(",")]
    if FHIR_MEDIA_TYPE in ranges:
        return FHIR_MEDIA_TYPE
    if "application/json" in ranges:
        return "application/json"
    if not any(ranges) or "*/*" in ranges or "application/*" in ranges:
        return FHIR_MEDIA_TYPE
    return None


class FhirApi:
    """The resource server: one beneficiary per token, data from `CmsDataset`."""

    def __init__(
        self, config: CmsSandboxConfig, tokens: TokenStore, dataset: CmsDataset, faults: FaultState
    ) -> None:
        self.config = config
        self.tokens = tokens
        self.dataset = dataset
        self.faults = faults

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/v2/fhir/metadata", self.metadata, methods=["GET"]),
            Route("/v2/fhir/metadata/", self.metadata, methods=["GET"]),
            Route("/v2/fhir/.well-known/smart-configuration", self.smart_configuration, methods=["GET"]),
        ]
        for resource in RESOURCES:  # CMS routes `Patient[/]?`: both forms answer directly
            routes += [
                Route(f"/v2/fhir/{resource}", self.search, methods=["GET"]),
                Route(f"/v2/fhir/{resource}/", self.search, methods=["GET"]),
                Route(f"/v2/fhir/{resource}/{{resource_id}}", self.read, methods=["GET"]),
                Route(f"/v2/fhir/{resource}/{{resource_id}}/", self.read, methods=["GET"]),
            ]
        return routes

    def _authorize(
        self, request: Request, resource: str, interaction: Literal["read", "search"]
    ) -> tuple[AccessToken, str] | Response:
        media = media_type(request)
        if media is None:
            return json_error(406, {"detail": "Could not satisfy the request Accept header."})
        token = authenticate_bearer(request, self.tokens, media)
        if isinstance(token, Response):
            return token
        if not allows(token.scopes, resource, interaction):  # e.g. demographics withheld
            return json_error(403, {"detail": NO_PERMISSION}, media_type=media)
        if resource == "ExplanationOfBenefit" and self.refuses_eob(token):
            return json_error(403, {"detail": NO_PERMISSION}, media_type=media)
        return token, media

    def refuses_eob(self, token: AccessToken) -> bool:
        """v1/v2 refuse EOB to a v3 token with SAMHSA withheld or of a Part-D-only app (WS
        `V2ExplanationOfBenefitPermission`, bb2-v3.md §2.5)."""
        return not token.consent.include_samhsa or token.consent.part_d_only

    async def search(self, request: Request) -> Response:
        resource = request.url.path.split("/")[3]
        checked = self._authorize(request, resource, "search")
        if isinstance(checked, Response):
            return checked
        token, media = checked
        user = token.user
        own = patient_id(user)
        params = request.query_params
        # SearchCrosswalkPermission: patient must equal the own id, beneficiary contain it (§3.1).
        if (
            resource == "ExplanationOfBenefit"
            and params.getlist("patient")
            and (params.getlist("patient")[-1] != own)
        ):
            return json_error(403, {"detail": NO_PERMISSION}, media_type=media)
        if (
            resource == "Coverage"
            and params.getlist("beneficiary")
            and (own not in params.getlist("beneficiary")[-1])
        ):
            return json_error(403, {"detail": NO_PERMISSION}, media_type=media)
        if resource == "Patient" and params.getlist("_id") and params.getlist("_id")[-1] != own:
            return json_error(404, {"detail": "Not found."}, media_type=media)
        query = parse_search(resource, params)
        if isinstance(query, str):
            return json_error(400, {"detail": query}, media_type=media)
        body = await self._search_bundle(request, resource, user, query)
        return Response(body, media_type=media)

    async def _search_bundle(self, request: Request, resource: str, user: int, query: SearchQuery) -> bytes:
        own = patient_id(user)
        if resource == "ExplanationOfBenefit":
            claims = [
                c
                for c in self.dataset.claims(user)
                if (query.types is None or c.kind in query.types)
                and all(f.accepts(c.last_updated) for f in query.last_updated)
                and all(
                    f.accepts(datetime(c.end.year, c.end.month, c.end.day, tzinfo=UTC))
                    for f in query.service_date
                )
            ]
            total = len(claims)
            page = claims[query.start : query.start + query.count]
            if not all(c.built for c in page):  # building ~50 claims takes tens of ms
                await anyio.to_thread.run_sync(lambda: [c.json() for c in page])
            entries = [(c.id, c.json()) for c in page]
            id_param = ("patient", own)
        else:
            updated = datetime.fromisoformat(person(user).last_updated)
            resources = [build_patient(user)] if resource == "Patient" else build_coverages(user)
            matching = [r for r in resources if all(f.accepts(updated) for f in query.last_updated)]
            total = len(matching)
            entries = [(r["id"], orjson.dumps(r)) for r in matching[query.start : query.start + query.count]]
            id_param = ("_id", own) if resource == "Patient" else ("beneficiary", f"Patient/{own}")
        base = f"{request.url.scheme}://{request.url.netloc}/v2/fhir/{resource}"
        next_base = None
        if self.faults.faults.foreign_next_link:
            next_base = re.sub(r"^https?://[^/]+", "https://evil.example.com", base)
        links = paging_links(base, query, total, id_param, next_base)
        now = datetime.fromtimestamp(self.tokens.clock(), UTC)  # the emulated clock
        return searchset(links, total, entries, now, base if self.config.entry_full_url else None)

    async def read(self, request: Request) -> Response:
        resource = request.url.path.split("/")[3]
        checked = self._authorize(request, resource, "read")
        if isinstance(checked, Response):
            return checked
        token, media = checked
        user = token.user
        own = patient_id(user)
        resource_id = request.path_params["resource_id"]
        not_found = json_error(404, {"detail": "Not found."}, media_type=media)
        unsupported = json_error(
            400,
            {
                "detail": f"{UPSTREAM_400}Failed to call access method: "
                "java.lang.IllegalArgumentException: Unsupported "
                f"ID pattern: {resource_id}"
            },
            media_type=media,
        )
        if resource == "Patient":
            if resource_id != own:  # v1/v2 answer 404 before asking BFD (§3.3)
                return not_found
            return Response(orjson.dumps(build_patient(user)), media_type=media)
        if resource == "Coverage":
            match = _COVERAGE_ID.match(resource_id)
            if match is None:
                return unsupported
            if match.group(2) != own:
                return not_found
            coverage = next(c for c in build_coverages(user) if c["id"] == resource_id)
            return Response(orjson.dumps(coverage), media_type=media)
        if not is_eob_id_shape(resource_id):
            return unsupported
        claim = self.dataset.claim(user, resource_id) if user_for_eob_id(resource_id) == user else None
        if claim is None:  # unknown, or another beneficiary's claim (§3.3)
            return not_found
        return Response(claim.json(), media_type=media)

    async def metadata(self, request: Request) -> Response:
        """A small R4 CapabilityStatement like CMS's (§3.4): three resources, OAuth URIs."""
        host = f"{request.url.scheme}://{request.url.netloc}"
        search_params: dict[str, list[tuple[str, str]]] = {
            "Patient": [("_id", "token"), ("identifier", "token")],
            "Coverage": [("beneficiary", "reference")],
            "ExplanationOfBenefit": [("patient", "reference"), ("type", "token"), ("service-date", "date")],
        }
        resources: list[dict[str, Any]] = [
            {
                "type": resource,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{resource}",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": name, "type": kind}
                    for name, kind in [
                        *search_params[resource],
                        ("_lastUpdated", "date"),
                        ("startIndex", "string"),
                        ("_count", "number"),
                    ]
                ],
            }
            for resource in RESOURCES
        ]
        oauth_uris = [
            {"url": name, "valueUri": f"{host}/v2/o/{path}/"}
            for name, path in (("token", "token"), ("authorize", "authorize"), ("revoke", "revoke_token"))
        ]
        return JSONResponse(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2024-01-01T00:00:00+00:00",
                "publisher": "Centers for Medicare & Medicaid Services",
                "kind": "instance",
                "software": {
                    "name": "Blue Button API: Direct (bluebutton sandbox emulator)",
                    "version": "2.0.0",
                },
                "implementation": {"description": "gov.cms.bfd:bfd-server-war", "url": f"{host}/v2/fhir"},
                "fhirVersion": "4.0.1",
                "format": ["application/json", "application/fhir+json"],
                "rest": [
                    {
                        "mode": "server",
                        "resource": resources,
                        "security": {
                            "cors": True,
                            "service": [
                                {
                                    "coding": [
                                        {
                                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                            "code": "SMART-on-FHIR",
                                            "display": "SMART-on-FHIR",
                                        }
                                    ],
                                    "text": "OAuth2 using SMART-on-FHIR profile",
                                }
                            ],
                            "extension": [
                                {
                                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/"
                                    "oauth-uris",
                                    "extension": oauth_uris,
                                }
                            ],
                        },
                    }
                ],
            },
            media_type=media_type(request) or FHIR_MEDIA_TYPE,
        )

    async def smart_configuration(self, request: Request) -> Response:
        host = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "authorization_endpoint": f"{host}/v2/o/authorize",
                "revocation_endpoint": f"{host}/v2/o/revoke_token",
                "token_endpoint": f"{host}/v2/o/token",
                "grant_types_supported": ["authorization_code"],
                "response_types_supported": ["code", "token"],
                "scopes_supported": sorted(SUPPORTED_SCOPES),
                "code_challenge_methods_supported": ["S256"],
                "capabilities": [
                    "client-confidential-symmetric",
                    "context-standalone-patient",
                    "launch-standalone",
                    "permission-offline",
                    "permission-patient",
                    "permission-v1",
                    "permission-v2",
                    "authorize-post",
                ],
            }
        )
