"""The one-shot pull's HTTP surface: `/health` and `/bluebutton/fhir`. Errors are raised, and
rendered by the app's handler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse

from bluebutton.pull.idempotency import HEADER_DOC
from bluebutton.web.deps import BearerTokenDep, FhirQueryDep, IdempotentDep, SyncDep, ValidatorDep
from bluebutton.web.schemas import Health, outcome_responses

router = APIRouter()

VERSION_HEADER = "X-Blue-Button-Version"  # which API version a pull used (its token's)


@router.get("/health", tags=["service"], response_model_exclude_unset=True)
async def health(validator: ValidatorDep, sync: SyncDep) -> Health:
    """Liveness: answers 200 while the one-shot route can serve, touching no upstream.
    `validation` says whether the validation workers run with the speedup patches (`fast`) or
    the library as it is (`standard`); `grant_keeping` adds the database's and the workers' state
    (see `/health/grant-keeping` for a status code that follows it)."""
    if sync is None:  # grant keeping off: no `grant_keeping` at all, as before it existed
        return Health(status="ok", validation=validator.mode)
    return Health(status="ok", validation=validator.mode, grant_keeping=await sync.health())


FHIR_DOC = """Pull every page of a Blue Button search, validate it as FHIR R4, and store it in
LinuxForHealth connect as one or more `searchset` Bundles (each under
`BLUEBUTTON_LFH_MAX_BUNDLE_BYTES`).

- `return_cms=false`: connect's envelope, unchanged, when one Bundle sufficed; otherwise
  `ForwardedBundles` listing every envelope in order.
- `return_cms=true`: the merged CMS Bundle (all entries, `total` = their number).

Either way the headers `X-LFH-Bundle-Count`, `X-LFH-Record-UUIDs` and
`X-LFH-Data-Record-Locations` name what connect stored. It is a success only if every Bundle was
stored; an invalid Bundle (422) is never forwarded.

An empty search result is not forwarded: the answer is `ForwardedBundles` with `bundle_count` 0
(or the empty CMS Bundle), with `X-LFH-Bundle-Count: 0` and `X-LFH-Skipped` saying why.

`version` names the Blue Button API version the token belongs to (2 or 3, default
`BLUEBUTTON_CMS_API_VERSION`); `X-Blue-Button-Version` says which one the pull used.

Retry with the same `Idempotency-Key`: a finished pull is replayed, a partial one completed, and no
Bundle known to be stored is sent again. The whole pull has one deadline,
`BLUEBUTTON_PULL_TIMEOUT_SECONDS` (504)."""


@router.get(
    "/bluebutton/fhir",
    tags=["bluebutton"],
    summary="Pull from Blue Button and store in LinuxForHealth connect",
    description=FHIR_DOC,
    response_class=Response,
    responses={
        200: {
            "description": "Stored in connect",
            "headers": {
                VERSION_HEADER: {
                    "description": "The Blue Button API version of the pull (2 or 3)",
                    "schema": {"type": "string"},
                }
            },
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/LfhEnvelope"},
                            {"$ref": "#/components/schemas/ForwardedBundles"},
                        ]
                    }
                },
                "application/fhir+json": {"schema": {"type": "object", "description": "FHIR R4 Bundle"}},
            },
        },
        **outcome_responses(400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504),
    },
)
async def fetch_fhir(
    request: Request,
    query: FhirQueryDep,
    token: BearerTokenDep,
    transfer: IdempotentDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", description=HEADER_DOC)] = None,
) -> Response:
    answer = await transfer(idempotency_key, query, token, caller_gone=lambda: _disconnected(request))
    version = {VERSION_HEADER: str(query.version)}
    return StreamingResponse(
        _send(answer.parts),
        media_type=answer.media_type,
        headers={**answer.headers, **version, "Content-Length": str(answer.length)},
    )


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (ASGI `http.disconnect`); a GET has no body to lose."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _send(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
