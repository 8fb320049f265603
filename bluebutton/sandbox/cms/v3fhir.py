"""FHIR endpoints of the emulated Blue Button API v3 (bb2-v3.md §3, §4, §6).

    GET /v3/fhir/metadata, /v3/fhir/.well-known/smart-configuration     no token
    GET /v3/fhir/{Patient|Coverage|ExplanationOfBenefit}[/]             search
    GET /v3/fhir/{Patient|Coverage|ExplanationOfBenefit}/<id>           read
    GET /v3/fhir/Patient/$generate-insurance-card                       the C4DIC card (§6)

Token and scope checks are v2's (`fhir.FhirApi`); what differs:

- BFD's errors come through as an OperationOutcome with BFD's own status (WS `024d7da6f`, §4);
- EOB paging by `_offset`/`_count` (0..50, default 10) over claims ordered by CLM_UNIQ_ID; links
  `next` and `previous` only, the request's URL with `_offset` replaced; `total` only on the last
  page, and then that page's count; no results: a Bundle with only `meta.lastUpdated` (§4);
- without `_source`/`_tag` an EOB search gets `_source=NCH,DDPS` (final claims); shared-system
  claims come only when asked; a Part-D-only app gets `_source=DDPS` and its `_tag` dropped (§4);
- a token whose consent left the SAMHSA box unticked never sees a 42CFRPart2 claim (§5);
- a token reads its beneficiary by the crosswalk's id: after a merge, until the next refresh, the
  old id, whose Patient is a stub `replaced-by` the new one and whose EOB search is empty (§3.2).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bluebutton.sandbox.cms.beneficiary import person
from bluebutton.sandbox.cms.config import CmsSandboxConfig
from bluebutton.sandbox.cms.data import CmsDataset, iso_instant
from bluebutton.sandbox.cms.faults import FHIR_MEDIA_TYPE, FaultState
from bluebutton.sandbox.cms.fhir import FhirApi
from bluebutton.sandbox.cms.oauth import NO_PERMISSION, json_error
from bluebutton.sandbox.cms.scopes import RESOURCES, SUPPORTED_SCOPES, allows
from bluebutton.sandbox.cms.search import SearchQuery, parse_search
from bluebutton.sandbox.cms.tokens import AccessToken, Consent, TokenStore
from bluebutton.sandbox.cms.v3data import (
    FINAL_ACTION,
    SAMHSA,
    SOURCES,
    SYSTEM_TYPE,
    V3Claim,
    V3Claims,
    V3State,
    user_for_v3_patient_id,
)
from bluebutton.sandbox.cms.v3resources import (
    build_coverages_v3,
    build_patient_v3,
    insurance_card,
    merged_stub,
)

EOB: Final = "ExplanationOfBenefit"
TAG_VALUES: Final = {
    SYSTEM_TYPE: ("NationalClaimsHistory", "SharedSystem", "DDPS"),
    FINAL_ACTION: ("FinalAction", "NotFinalAction"),
}


def outcome(status: int, diagnostics: str, code: str = "invalid") -> Response:
    """BFD's error body, passed through by BB2 with BFD's status (WS `exceptions.py`)."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }
    return JSONResponse(body, status_code=status, media_type=FHIR_MEDIA_TYPE)


def _claim_filter(
    params: QueryParams, consent: Consent
) -> tuple[list[tuple[str, str]], Callable[[V3Claim], bool]] | str:
    """(parameters BB2 adds to the query, a predicate on claims), or BFD's 400 diagnostics."""
    tags: list[tuple[str, str]] = []
    if consent.part_d_only:  # WS utils.py determine_eob_search_parameter_to_add
        added, sources = [("_source", "DDPS")], {"DDPS"}
    else:
        raw_sources, raw_tags = params.getlist("_source"), params.getlist("_tag")
        added = [] if raw_sources or raw_tags else [("_source", "NCH,DDPS")]
        sources = {s.strip() for value in raw_sources or ["NCH,DDPS"] for s in value.split(",")}
        if raw_tags and not raw_sources:
            sources = set(SOURCES)
        unknown = sources - set(SOURCES)
        if unknown:
            return f"Unknown source. Supported sources are: [{', '.join(SOURCES)}]"
        for value in raw_tags:
            system, _, code = value.partition("|")
            if code not in TAG_VALUES.get(system, ()):
                allowed = ", ".join(v for values in TAG_VALUES.values() for v in values)
                return f"Unsupported _tag value for system type. Supported values are {allowed}"
            tags.append((system, code))
    excluded = params.get("_security:not", "").rpartition("|")[2] == SAMHSA
    hide_samhsa = excluded or not consent.include_samhsa

    def accepts(claim: V3Claim) -> bool:
        return (
            claim.source in sources
            and all(tag in claim.tags for tag in tags)
            and not (hide_samhsa and claim.samhsa)
        )

    return added, accepts


def _date_ok(claim: V3Claim, query: SearchQuery) -> bool:
    c = claim.claim
    end = datetime(c.end.year, c.end.month, c.end.day, tzinfo=UTC)
    return (
        (query.types is None or c.kind in query.types)
        and all(f.accepts(c.last_updated) for f in query.last_updated)
        and all(f.accepts(end) for f in query.service_date)
    )


def v3_searchset(
    links: list[dict[str, str]], total: int | None, entries: list[bytes], now: datetime
) -> bytes:
    """The v3 Bundle: `total` only when given; an empty result has no `entry` and no `link`."""
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "meta": {"lastUpdated": iso_instant(now)},
        "type": "searchset",
    }
    if total is not None and entries:
        head["total"] = total
    if links:
        head["link"] = links
    encoded = orjson.dumps(head)
    if not entries:
        return encoded
    return encoded[:-1] + b',"entry":[' + b",".join(b'{"resource":' + e + b"}" for e in entries) + b"]}"


class V3FhirApi(FhirApi):
    """The v3 resource server over the same dataset as v2."""

    def __init__(
        self,
        config: CmsSandboxConfig,
        tokens: TokenStore,
        dataset: CmsDataset,
        faults: FaultState,
        state: V3State,
    ) -> None:
        super().__init__(config, tokens, dataset, faults)
        self.state = state
        self.claims = V3Claims(dataset)

    def routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/v3/fhir/metadata", self.metadata_v3, methods=["GET"]),
            Route("/v3/fhir/.well-known/smart-configuration", self.smart_configuration_v3, methods=["GET"]),
            Route("/v3/fhir/Patient/$generate-insurance-card", self.insurance_card, methods=["GET"]),
        ]
        for resource in RESOURCES:
            routes += [
                Route(f"/v3/fhir/{resource}", self.search, methods=["GET"]),
                Route(f"/v3/fhir/{resource}/", self.search, methods=["GET"]),
                Route(f"/v3/fhir/{resource}/{{resource_id}}", self.read, methods=["GET"]),
                Route(f"/v3/fhir/{resource}/{{resource_id}}/", self.read, methods=["GET"]),
            ]
        return routes

    def refuses_eob(self, token: AccessToken) -> bool:
        return False  # v3 filters such claims instead

    def _visible(self, token: AccessToken, own: str) -> list[V3Claim]:
        """The claims BFD has under `own`: none for a merged-away id (BFD `EobHandler`)."""
        if own != self.state.current_id(token.user):
            return []
        return self.claims.claims(token.user)

    async def search(self, request: Request) -> Response:
        resource = request.url.path.split("/")[3]
        checked = self._authorize(request, resource, "search")
        if isinstance(checked, Response):
            return checked
        token, media = checked
        own = self.state.token_id(token.user)
        params = request.query_params
        # SearchCrosswalkPermission (§4): the injected id must be the token's own.
        if resource == EOB and params.getlist("patient") and params.getlist("patient")[-1] != own:
            return json_error(403, {"detail": NO_PERMISSION}, media_type=media)
        if (
            resource == "Coverage"
            and params.getlist("beneficiary")
            and own not in params.getlist("beneficiary")[-1]
        ):
            return json_error(403, {"detail": NO_PERMISSION}, media_type=media)
        query = parse_search(resource, params)
        if isinstance(query, str):
            return outcome(400, query)
        offset_values = params.getlist("_offset")
        try:
            offset = int(offset_values[-1]) if offset_values else query.start
        except ValueError:
            return outcome(400, f"Invalid value for _offset: {offset_values[-1][:32]!r}")
        if offset < 0:
            return outcome(400, "_offset must not be negative")
        now = datetime.fromtimestamp(self.tokens.clock(), UTC)
        if resource != EOB:
            return Response(
                self._small_search(request, resource, token.user, own, query, now), media_type=media
            )
        found = _claim_filter(params, token.consent)
        if isinstance(found, str):
            return outcome(400, found)
        added, accepts = found
        matching = [c for c in self._visible(token, own) if accepts(c) and _date_ok(c, query)]
        page = matching[offset : offset + query.count]
        kept = [
            (k, v)
            for k, v in params.multi_items()
            if k not in ("_offset", "startIndex", "_count", "count", "patient")
            and not (token.consent.part_d_only and k in ("_tag", "_source"))
        ]
        echo = [("_count", str(query.count)), ("patient", own), *kept, *added]
        base = f"{request.url.scheme}://{request.url.netloc}/v3/fhir/{EOB}"
        links = []
        more = query.count > 0 and offset + query.count < len(matching)
        if more:
            links.append(
                {
                    "relation": "next",
                    "url": f"{base}?{urlencode([*echo, ('_offset', str(offset + query.count))])}",
                }
            )
        if offset > 0:
            previous = max(offset - query.count, 0)
            links.append(
                {"relation": "previous", "url": f"{base}?{urlencode([*echo, ('_offset', str(previous))])}"}
            )
        entries = [c.json(own) for c in page]
        return Response(v3_searchset(links, None if more else len(page), entries, now), media_type=media)

    def _small_search(
        self, request: Request, resource: str, user: int, own: str, query: SearchQuery, now: datetime
    ) -> bytes:
        if resource == "Patient":
            wanted = request.query_params.getlist("_id")
            found = [self._patient(user, own)] if not wanted or wanted[-1] == own else []
        else:
            found = build_coverages_v3(user, own) if own == self.state.current_id(user) else []
        updated = datetime.fromisoformat(person(user).last_updated)
        if not all(f.accepts(updated) for f in query.last_updated):
            found = []
        entries = [orjson.dumps(r) for r in found]
        return v3_searchset([], len(entries), entries, now)

    def _patient(self, user: int, fhir_id: str) -> dict[str, Any]:
        current = self.state.current_id(user)
        return build_patient_v3(user, self.state) if fhir_id == current else merged_stub(fhir_id, current)

    async def read(self, request: Request) -> Response:
        resource = request.url.path.split("/")[3]
        checked = self._authorize(request, resource, "read")
        if isinstance(checked, Response):
            return checked
        token, media = checked
        own = self.state.token_id(token.user)
        resource_id = request.path_params["resource_id"]
        not_found = outcome(404, f"{resource}/{resource_id[:64]} is not known", "not-found")
        if resource == "Patient":
            owner = user_for_v3_patient_id(resource_id)
            if (
                owner is None
                or owner[0] != token.user
                or owner[1] > self.state.generations.get(token.user, 0)
            ):
                return not_found  # a foreign id goes to BFD, which finds nothing for it (§4)
            return Response(orjson.dumps(self._patient(token.user, resource_id)), media_type=media)
        if resource == "Coverage":
            coverages = (
                build_coverages_v3(token.user, own) if own == self.state.current_id(token.user) else []
            )
            coverage = next((c for c in coverages if c["id"] == resource_id), None)
            return not_found if coverage is None else Response(orjson.dumps(coverage), media_type=media)
        claim = next((c for c in self._visible(token, own) if c.id == resource_id), None)
        consent = token.consent
        if (
            claim is None
            or (claim.samhsa and not consent.include_samhsa)  # read gets `_security:not` too (§5)
            or (consent.part_d_only and claim.source != "DDPS")  # WS generic.py (§4)
        ):
            return not_found
        return Response(claim.json(own), media_type=media)

    async def insurance_card(self, request: Request) -> Response:
        """Needs a Patient read scope and a Coverage search scope (WS `HasDigitalInsuranceCardScope`)."""
        checked = self._authorize(request, "Patient", "read")
        if isinstance(checked, Response):
            return checked
        token, media = checked
        if not allows(token.scopes, "Coverage", "search"):
            return json_error(
                403,
                {
                    "detail": f"This application, {self.config.app_name}, does not have access to "
                    "make any calls for digital insurance card resources."
                },
                media_type=media,
            )
        own = self.state.token_id(token.user)
        if own != self.state.current_id(token.user):
            return outcome(404, "No coverage found for this beneficiary", "not-found")
        return Response(orjson.dumps(insurance_card(token.user, own)), media_type=media)

    async def metadata_v3(self, request: Request) -> Response:
        host = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2026-08-21T00:00:00+00:00",
                "kind": "instance",
                "software": {"name": "Blue Button API v3 (bluebutton sandbox emulator)", "version": "3.0.0"},
                "implementation": {"description": "bfd-server-ng", "url": f"{host}/v3/fhir"},
                "fhirVersion": "4.0.1",
                "format": ["application/json", "application/fhir+json"],
                "rest": [
                    {
                        "mode": "server",
                        "resource": [
                            {"type": r, "interaction": [{"code": "read"}, {"code": "search-type"}]}
                            for r in RESOURCES
                        ],
                    }
                ],
            },
            media_type=FHIR_MEDIA_TYPE,
        )

    async def smart_configuration_v3(self, request: Request) -> Response:
        host = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "authorization_endpoint": f"{host}/v3/o/authorize",
                "revocation_endpoint": f"{host}/v3/o/revoke_token",
                "token_endpoint": f"{host}/v3/o/token",
                "grant_types_supported": ["authorization_code", "client_credentials"],
                "scopes_supported": sorted(SUPPORTED_SCOPES),
                "code_challenge_methods_supported": ["S256"],
                "capabilities": ["client-confidential-symmetric", "client-confidential-asymmetric"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            }
        )
