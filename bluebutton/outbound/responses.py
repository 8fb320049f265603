"""Finished upstream responses: freeing them at once, and reading what an error body says."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import orjson


def release(response: httpx.Response) -> None:
    """Let a finished response be freed at once, with its body and its request's body.

    httpx binds a response and its stream to each other. Such a cycle outlives its last use until
    the cyclic collector runs, which in a service that allocates few objects can be many pulls
    later: megabytes of pages and Bundles held for nothing, and a higher peak for the next pull.
    """
    response.stream = httpx.ByteStream(b"")


@dataclass(frozen=True)
class ErrorBody:
    """What an upstream said in an error body: the OAuth `error` code, and a short explanation."""

    error: str | None
    detail: str | None


def read_error_body(response: httpx.Response) -> ErrorBody:
    """Read an error body from CMS (DRF `detail`, OAuth `error`/`error_description`, FHIR
    OperationOutcome) or connect (FastAPI's `detail`, a string or a list of errors), or a short
    plain-text one (a proxy's); an HTML error page says nothing worth passing on."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.text.strip()
        return ErrorBody(None, text[:300] if text and not text.startswith("<") else None)
    if not isinstance(body, dict):
        return ErrorBody(None, None)
    error = body.get("error")
    error = error if isinstance(error, str) and error else None
    if body.get("resourceType") == "OperationOutcome":
        texts = [str(i.get("diagnostics", "")) for i in body.get("issue", []) if isinstance(i, dict)]
        text = "; ".join(t for t in texts if t)
    else:
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI's 422 shape
            detail = "; ".join(str(item.get("msg", item)) for item in detail if isinstance(item, dict))
        parts = [error, body.get("error_description"), detail, body.get("message")]
        text = ": ".join(p for p in parts if isinstance(p, str) and p)
    return ErrorBody(error, text[:500] or None)
