"""The paging links of a Blue Button search: which may be followed, and which would repeat a page.

A link is followed only to the CMS origin, under its FHIR base, and without userinfo (bb2-api.md
§3.2: links point at the BB2 host; anything else is a bug or an attack, and the token must never
go elsewhere, nor be replaced by Basic credentials that httpx takes from `user:password@`).

A pull never asks for a page twice: pages are told apart by their normalised link (parameters
sorted, `_format` dropped, no trailing slash) and by their index, the position of their first
entry (`startIndex` in v2, `_offset` in v3). A link back to an index already fetched stops the pull,
however its parameters are ordered, so no entry is stored twice.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import httpx

from bluebutton.cms.search_page import Page
from bluebutton.errors import CmsProtocolError

DEFAULT_PORTS = {"http": 80, "https": 443}
# How a v2 (`startIndex`) or v3 (`_offset`) paging link says where its page starts.
INDEX_PARAMS = ("startIndex", "_offset")
# `_format` only picks the serialisation (CMS adds it to every link): it does not tell pages apart.
FORMAT_PARAMS = frozenset({"_format"})

PageKey = tuple[str, str, int | None, str, tuple[tuple[str, str], ...]]


def _path_within(url: httpx.URL, base_path: str) -> bool:
    """Whether the path the server will see stays under `base_path`.

    Checked on the raw path too: an encoded `%2e%2e` or `%2f` segment would pass a check of the
    decoded path and still be resolved by the server to somewhere else (e.g. `/v2/o/token/`).
    """
    raw = url.raw_path.split(b"?", 1)[0].decode("ascii", "replace")
    if re.search(r"%2[fF]|%5[cC]|\\", raw):
        return False
    segments = unquote(raw).split("/")
    return ".." not in segments and "." not in segments and unquote(raw).startswith(base_path)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or DEFAULT_PORTS.get(url.scheme)


def check_link(base: httpx.URL, url: str) -> httpx.URL:
    """The link resolved against the FHIR `base`, or CmsProtocolError if it may not be followed."""
    try:
        link = base.join(url)
    except httpx.InvalidURL as e:
        raise CmsProtocolError("Blue Button returned a malformed paging link") from e
    if _origin(link) != _origin(base) or not _path_within(link, base.path):
        raise CmsProtocolError(
            f"Blue Button returned a paging link to {link.scheme}://{link.host}{link.path}, "
            f"outside {base}; stopped without sending the token there"
        )
    if link.userinfo:
        raise CmsProtocolError(
            "Blue Button returned a paging link with credentials in it (user:password@); stopped "
            "without following it (they would be sent instead of the token)"
        )
    return link


def page_index(link: httpx.URL) -> int | None:
    """Where the linked page starts, if the link says so by exactly one integer index."""
    names = [name for name in INDEX_PARAMS if name in link.params]
    if len(names) != 1:
        return None
    try:
        return int(link.params[names[0]])
    except ValueError:
        return None


def page_key(link: httpx.URL) -> PageKey:
    """The link as a page's identity: what CMS may write differently for the same page is dropped."""
    params = sorted((k, v) for k, v in link.params.multi_items() if k not in FORMAT_PARAMS)
    return (*_origin(link), link.path.rstrip("/"), tuple(params))


def _planned_indices(first: Page, link: httpx.URL) -> range:
    """Where pages 2..n start, from the first page's `next` and `total`; empty when they do not
    allow it (no usable index or count, or an index that does not follow the first page)."""
    start = page_index(link)
    try:
        size = int(link.params.get("_count", len(first.entries)))
    except ValueError:
        return range(0)
    if first.total is None or start is None or size <= 0 or start <= 0 or start != len(first.entries):
        return range(0)
    return range(start, first.total, size)


class PageLog:
    """The pages one pull has asked for: a link to one of them again, or a page past the limit,
    stops the pull before it is fetched."""

    def __init__(self, max_pages: int) -> None:
        self._max_pages = max_pages
        self._indices: dict[PageKey, int | None] = {}
        self._spans: list[tuple[int, int]] = []  # [start, end) of the entries each page brought

    def claim(self, link: httpx.URL, *, default_index: int | None = None) -> None:
        """Record a page about to be fetched, or refuse it. `default_index` is where the page
        starts if its link does not say (the first request, without an index, starts at 0)."""
        key = page_key(link)
        index = page_index(link)
        index = default_index if index is None else index
        if key in self._indices:
            raise CmsProtocolError(
                "Blue Button's paging links repeat: a link leads back to a page this pull already "
                "fetched; stopped so that no entry is stored twice"
            )
        if index is not None and (
            index in self._indices.values() or any(start <= index < end for start, end in self._spans)
        ):
            raise CmsProtocolError(
                f"Blue Button's paging links repeat: a link asks for the entries from index {index}, "
                "which this pull already fetched; stopped so that no entry is stored twice"
            )
        self._check_room(1)
        self._indices[key] = index

    def plan(self, first: Page, link: httpx.URL) -> list[httpx.URL]:
        """Claim pages 2..n by index, from the first page's `next` and `total`, and return their
        links; [] when the first page does not allow it. The page limit is checked before any link
        is built (a hostile `total` could ask for billions)."""
        indices = _planned_indices(first, link)
        if not indices:
            return []
        self._check_room(len(indices))
        name = next(n for n in INDEX_PARAMS if n in link.params)
        links = [link.copy_set_param(name, str(index)) for index in indices]
        for planned in links:
            self.claim(planned)
        return links

    def _check_room(self, pages: int) -> None:
        if len(self._indices) + pages > self._max_pages:
            raise CmsProtocolError(
                f"the search has more than {self._max_pages} pages "
                "(BLUEBUTTON_CMS_MAX_PAGES); narrow it with type, service_date or last_updated"
            )

    def fetched(self, link: httpx.URL, page: Page) -> None:
        """Record which entries a claimed page brought, so a link into its middle is refused too."""
        start = self._indices.get(page_key(link))
        if start is not None:
            self._spans.append((start, start + len(page.entries)))
