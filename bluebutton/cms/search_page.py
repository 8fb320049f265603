"""A Blue Button search page, reduced to what a pull needs: each entry's JSON bytes, `total`, `next`.

The page is never parsed into Python objects (ten times its JSON size), so memory stays near the
size of the data however many pages arrive at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import orjson

from bluebutton.errors import CmsMalformedPageError


@dataclass(frozen=True)
class Page:
    """One search page: its entries' JSON bytes exactly as CMS sent them, `total` and `next`."""

    entries: list[bytes]
    total: int | None
    next_url: str | None
    last_updated: str | None = None  # the Bundle's meta.lastUpdated: CMS's clock, for watermarks


class _PageShape(msgspec.Struct):
    """What a pull reads of a search page. Each entry stays raw JSON: msgspec checks its syntax
    and skips it at C speed, where parsing it into dicts would cost ten times the page in memory."""

    resourceType: object = None
    total: object = None
    link: object = None
    meta: object = None
    entry: list[msgspec.Raw] = []


class _EntryShape(msgspec.Struct):
    resource: msgspec.Raw = msgspec.Raw()


_PAGE_DECODER = msgspec.json.Decoder(_PageShape)
_ENTRY_DECODER = msgspec.json.Decoder(_EntryShape)


def parse_page(content: bytes) -> Page:
    """Reduce a search page to its entries' JSON bytes, exactly as CMS sent them.

    Anything unusual (malformed JSON, not a Bundle, an entry without a resource object) is left
    to the strict parser below, which says precisely what is wrong. The raw entries are parsed
    for the first time by the validation workers.
    """
    try:
        page = _PAGE_DECODER.decode(content)
        entries = [bytes(raw) for raw in page.entry]
        whole = page.resourceType == "Bundle" and all(
            bytes(_ENTRY_DECODER.decode(raw).resource)[:1] == b"{" for raw in entries
        )
    except (msgspec.DecodeError, msgspec.ValidationError):
        whole = False
    if not whole:
        return _parse_strictly(content)
    return Page(
        entries=entries,
        total=_count(page.total),
        next_url=next_link(page.link),
        last_updated=_last_updated(page.meta),
    )


def _last_updated(meta: object) -> str | None:
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    return value if isinstance(value, str) and value else None


def _count(total: object) -> int | None:
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def next_link(links: object) -> str | None:
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) and url else None
    return None


def _parse_strictly(content: bytes) -> Page:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as e:
        raise CmsMalformedPageError("Blue Button answered 200 with a body that is not JSON") from e
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        kind = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        raise CmsMalformedPageError(f"Blue Button answered 200 with {kind!s}, not a FHIR Bundle")
    entries = body.get("entry", [])
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("resource"), dict) for e in entries
    ):
        raise CmsMalformedPageError("Blue Button's Bundle has entries without a resource")
    return Page(
        entries=[orjson.dumps(entry) for entry in entries],
        total=_count(body.get("total")),
        next_url=next_link(body.get("link")),
        last_updated=_last_updated(body.get("meta")),
    )
