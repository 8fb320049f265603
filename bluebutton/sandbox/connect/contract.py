"""connect 0.42.0's request and response contract, as the emulator reproduces it.

Everything here follows /work/shared/reference/lfh-connect.md: FastAPI 0.78's body parsing and its
list-shaped 422 bodies (§1 "Request", §6 "Request parsing"), connect's checks in order (unknown type
404, `resourceType` mismatch 422, invalid FHIR 500), the 17-field envelope (§1 "Success response")
and the scrubbing of `transmission_attributes`. Nothing here echoes a payload back, except the
`resourceType` value that connect itself puts in its mismatch message.
"""

from __future__ import annotations

import base64
import email.message
import json
from collections.abc import Iterable
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from bluebutton.sandbox.connect.reserialise import connect_json

DATA_FORMAT = "FHIR-R4"

# Headers connect drops from transmission_attributes (`_scrub_transmission_attributes`).
_SCRUBBED_EXACT = frozenset({"authorization"})
_SCRUBBED_PARTS = ("password", "pwd", "token")


class ConnectError(Exception):
    """An answer connect gives instead of storing: status code plus JSON body."""

    def __init__(self, status_code: int, content: dict[str, Any]) -> None:
        super().__init__(status_code)
        self.status_code = status_code
        self.content = content


def detail(status_code: int, message: str) -> ConnectError:
    """connect's `http_exception_handler` shape: `{"detail": "<string>"}`."""
    return ConnectError(status_code, {"detail": message})


def field_errors(errors: list[dict[str, Any]]) -> ConnectError:
    """FastAPI 0.78's `RequestValidationError` shape: 422 with a list of pydantic v1 errors."""
    return ConnectError(422, {"detail": errors})


def missing(loc: list[str | int]) -> dict[str, Any]:
    return {"loc": loc, "msg": "field required", "type": "value_error.missing"}


def _is_json_content_type(value: str) -> bool:
    # FastAPI 0.78 parses the header with email.message: case-insensitive, parameters ignored.
    message = email.message.Message()
    message["content-type"] = value
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _loads(raw: bytes) -> Any:
    """`json.loads`, faster: orjson gives the same value for all it accepts (strict RFC 8259), and
    whatever it refuses is left to `json.loads`, for FastAPI's leniency and its exact errors."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


async def read_body_dict(request: Request) -> dict[str, Any]:
    """The body as FastAPI 0.78 hands `request_data: dict = Body(...)` to connect's route."""
    raw = await request.body()
    body: Any = None
    if raw:
        content_type = request.headers.get("content-type")  # the first header wins, as in FastAPI
        try:
            body = _loads(raw) if not content_type or _is_json_content_type(content_type) else raw
        except json.JSONDecodeError as e:
            # pydantic v1 puts the exception's __dict__ in ctx; we leave out `doc`, the body itself.
            ctx = {"msg": e.msg, "pos": e.pos, "lineno": e.lineno, "colno": e.colno}
            error = {"loc": ["body", e.pos], "msg": str(e), "type": "value_error.jsondecode"}
            raise field_errors([{**error, "ctx": ctx}]) from e
        except Exception as e:  # undecodable bytes, nesting too deep, ...
            raise detail(400, "There was an error parsing the body") from e
    if body is None:  # empty body or JSON null
        raise field_errors([missing(["body"])])
    if isinstance(body, dict):
        return body
    try:
        # pydantic v1's dict validator calls dict(v): a JSON list of pairs (or "") is accepted.
        return dict(body)
    except (TypeError, ValueError) as e:
        error = {"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}
        raise field_errors([error]) from e


def is_fhir_type(name: str) -> bool:
    """Whether connect would route `/fhir/<name>`: any fhir.resources model, datatypes included."""
    try:
        get_fhir_model_class(name)
    except Exception:  # ValueError for unknown names; anything odd is unknown too
        return False
    return True


def validate_fhir(resource_type: str, body: dict[str, Any]) -> tuple[BaseModel | None, str | None]:
    """Validate `body`: the model when valid, else pydantic-v1-style text without input values.

    CPU-bound for big bundles: call it from a worker thread.
    """
    try:
        return get_fhir_model_class(resource_type).model_validate(body), None
    except ValidationError as e:
        return None, _format_errors(e.title, e.errors(include_url=False, include_input=False))
    except LookupError:
        # fhir.resources raises KeyError for an unknown nested resourceType; its text holds the input.
        nested = {"loc": ("__root__",), "msg": "unknown resource type", "type": "lookup"}
        return None, _format_errors(resource_type, [nested])
    except (TypeError, ValueError) as e:
        other = {"loc": ("__root__",), "msg": type(e).__name__, "type": "value_error"}
        return None, _format_errors(resource_type, [other])


def connect_data(resource_type: str, body: dict[str, Any], *, validate: bool) -> str:
    """The JSON connect stores for a valid `body` (`reserialise.py`); invalid FHIR is connect's
    500. Without validation there is no model to type the elements, so the body is only written
    with `json.dumps` defaults (smaller than connect's record when it holds decimals or times).

    CPU-bound for big bundles: call it from a worker thread.
    """
    if not validate:
        return json.dumps(body)
    model, problem = validate_fhir(resource_type, body)
    if model is None:
        raise detail(500, problem or "invalid")  # connect's `except Exception` turns it into a 500
    return connect_json(model, body)


def entry_references(body: dict[str, Any]) -> list[str]:
    """`Type/id` of each entry's resource in a Bundle (the resource itself otherwise), for the
    test controls that count what was stored twice."""
    entries = body.get("entry") if body.get("resourceType") == "Bundle" else [{"resource": body}]
    references = []
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            references.append(f"{resource.get('resourceType')}/{resource.get('id')}")
    return references


def _format_errors(title: str, errors: Iterable[Any]) -> str:
    errors = list(errors)
    plural = "" if len(errors) == 1 else "s"
    lines = [f"{len(errors)} validation error{plural} for {title}"]
    for error in errors:
        lines.append(" -> ".join(str(part) for part in error["loc"]) or "__root__")
        lines.append(f"  {error['msg']} (type={error['type']})")
    return "\n".join(lines)


def transmission_attributes(request: Request) -> dict[str, str] | None:
    """Request headers (lower-case keys, first value wins) minus the ones connect scrubs."""
    kept = {
        key: request.headers[key]
        for key in request.headers
        if key not in _SCRUBBED_EXACT and not any(part in key for part in _SCRUBBED_PARTS)
    }
    return kept or None


def encode_data(text: str) -> str:
    """`data`: the JSON connect re-serialised (`reserialise.py`; ASCII only), base64."""
    return base64.b64encode(text.encode()).decode()


def stored_envelope(
    *,
    record_uuid: str,
    lfh_id: str,
    resource_type: str,
    created: str,
    data: str,
    attributes: dict[str, str] | None,
) -> dict[str, Any]:
    """The envelope as connect writes it to Kafka: delivery fields still null (core.py l.99-123)."""
    return {
        "uuid": record_uuid,
        "lfh_id": lfh_id,
        "operation": "POST",
        "creation_date": created,
        "store_date": created,
        "consuming_endpoint_url": f"/fhir/{resource_type}",
        "data": data,
        "data_format": DATA_FORMAT,
        "status": None,
        "data_record_location": None,
        "target_endpoint_urls": [],
        "ipfs_uri": None,
        "elapsed_storage_time": None,
        "transmit_date": None,
        "elapsed_transmit_time": None,
        "elapsed_total_time": None,
        "transmission_attributes": attributes,
    }
