"""The HTTP surface: parse, call, answer. Errors are raised, and rendered by the app's handler."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response

from bluebutton import pipeline
from bluebutton.deps import BearerTokenDep, CmsDep, LfhDep, SettingsDep, ValidatorDep
from bluebutton.lfh import LfhEnvelope
from bluebutton.query import FhirQuery
from bluebutton.schemas import ForwardedBundles, Health, OperationOutcome

router = APIRouter()


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": OperationOutcome} for code in codes}


@router.get("/health", tags=["service"])
async def health() -> Health:
    """Liveness: answers without touching any upstream."""
    return Health()


FHIR_DOC = """Pull every page of a Blue Button search, validate it as FHIR R4, and store it in
LinuxForHealth connect as one or more `searchset` Bundles (each under
`BLUEBUTTON_LFH_MAX_BUNDLE_BYTES`).

- `return_cms=false`: connect's envelope, unchanged, when one Bundle sufficed; otherwise
  `ForwardedBundles` listing every envelope in order.
- `return_cms=true`: the merged CMS Bundle (all entries, `total` = their number).

Either way the headers `X-LFH-Bundle-Count`, `X-LFH-Record-UUIDs` and
`X-LFH-Data-Record-Locations` name what connect stored. It is a success only if every Bundle was
stored; an invalid Bundle (422) is never forwarded."""


@router.get(
    "/bluebutton/fhir",
    tags=["bluebutton"],
    summary="Pull from Blue Button and store in LinuxForHealth connect",
    description=FHIR_DOC,
    response_class=Response,
    responses={
        200: {
            "description": "Stored in connect",
            "content": {
                "application/json": {
                    "schema": {"oneOf": [
                        {"$ref": "#/components/schemas/LfhEnvelope"},
                        {"$ref": "#/components/schemas/ForwardedBundles"},
                    ]}
                },
                "application/fhir+json": {"schema": {"type": "object",
                                                      "description": "FHIR R4 Bundle"}},
            },
        },
        **_errors(400, 401, 403, 404, 422, 429, 500, 502, 504),
    },
    openapi_extra={"x-models": [LfhEnvelope.__name__, ForwardedBundles.__name__]},
)
async def fetch_fhir(
    query: Annotated[FhirQuery, Query()],
    token: BearerTokenDep,
    settings: SettingsDep,
    cms: CmsDep,
    lfh: LfhDep,
    validator: ValidatorDep,
) -> Response:
    answer = await pipeline.transfer(
        query, token, cms, validator, lfh, settings.lfh_max_bundle_bytes
    )
    return Response(answer.body, media_type=answer.media_type, headers=answer.headers)
