"""Blue Button v2 search semantics: the query schema, date and type filters, paging links, Bundle.

Pure functions, no HTTP (`fhir.py` calls them). Rules from bb2-api.md §3.1/§3.2 and CMS's
`views/search.py` QUERY_SCHEMA:

- `_count` (alias `count`, which wins) is an int 0..50, default 10: "expected int",
  "value must be at most 50"; `startIndex` is an int offset;
- `_lastUpdated` (all searches) and `service-date` (EOB) are repeatable and need a `lt`/`le`/`gt`/
  `ge` prefix ("the _lastUpdated operator is not valid"); a bad date after a good prefix is BFD's
  400, relayed as "An error occurred contacting the upstream server:...";
- `type` (EOB) is a case-insensitive comma list of claim types, bare or as
  `https://bluebutton.cms.client.gov/resources/codesystem/eob-type|<code>`;
- for a repeated single-valued parameter the last value wins (Django `QueryDict.dict()`).

Date prefixes compare ranges the FHIR way: `ge2021-01-01` keeps anything from that day on, `gt`
anything after the whole day, `lt` anything before it, `le` anything up to its end. `service-date`
tests the claim's end date (`billablePeriod.end`, a Part D event's service date).

Links copy CMS v2 (PYSDK fixtures): `first`, `next` (not on the last page), `previous` (not on the
first), `last`, `self`; `?_format=application%2Fjson%2Bfhir&startIndex=..&_count=..&patient=..`
then the filters; `self` is `<Type>/?` with the parameters sorted.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, cast
from urllib.parse import urlencode

import orjson
from starlette.datastructures import QueryParams

from bluebutton.sandbox.cms.codes import CLAIM_TYPES, EOB_TYPE_SYSTEM
from bluebutton.sandbox.cms.data import iso_instant

MAX_COUNT: Final = 50
DEFAULT_COUNT: Final = 10
UPSTREAM_400: Final = "An error occurred contacting the upstream server:"
_OPERATOR: Final = re.compile(r"^(lt|le|gt|ge).+")
_FHIR_DATE: Final = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_FORMAT: Final = ("_format", "application/json+fhir")
_Op = Literal["lt", "le", "gt", "ge"]


def fhir_date_range(value: str) -> tuple[datetime, datetime] | None:
    """A FHIR date/dateTime as the half-open instant range it stands for (UTC), or None."""
    match = _FHIR_DATE.match(value)
    if not match:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        tz = UTC if zone in (None, "Z") else datetime.strptime(zone, "%z").tzinfo
        if hour is not None:
            low = datetime(
                int(year), int(month), int(day), int(hour), int(minute), int(second or 0), tzinfo=tz
            ).astimezone(UTC)
            return low, low + (timedelta(seconds=1) if second else timedelta(minutes=1))
        if day is not None:
            low = datetime(int(year), int(month), int(day), tzinfo=UTC)
            return low, low + timedelta(days=1)
        if month is not None:
            low = datetime(int(year), int(month), 1, tzinfo=UTC)
            return low, (low + timedelta(days=32)).replace(day=1)
        low = datetime(int(year), 1, 1, tzinfo=UTC)
        return low, low.replace(year=low.year + 1)
    except ValueError:
        return None


@dataclass(frozen=True)
class DateFilter:
    """One `_lastUpdated` / `service-date` condition: prefix plus the value's instant range."""

    op: _Op
    low: datetime
    high: datetime

    def accepts(self, moment: datetime) -> bool:
        if self.op == "ge":
            return moment >= self.low
        if self.op == "gt":
            return moment >= self.high
        if self.op == "lt":
            return moment < self.low
        return moment < self.high


@dataclass(frozen=True)
class SearchQuery:
    start: int
    count: int
    last_updated: tuple[DateFilter, ...]
    service_date: tuple[DateFilter, ...]
    types: frozenset[str] | None
    echo: tuple[tuple[str, str], ...]  # the filters, repeated in the paging links


def _date_filters(values: list[str], name: str) -> tuple[DateFilter, ...] | str:
    filters = []
    for value in values:
        if not _OPERATOR.match(value):
            return f"the {name} operator is not valid"
        span = fhir_date_range(value[2:])
        if span is None:  # BFD refuses it; CMS relays BFD's 400 diagnostics
            return f'{UPSTREAM_400}Invalid date/time format: "{value}"'
        filters.append(DateFilter(cast(_Op, value[:2]), *span))
    return tuple(filters)


def _int(params: QueryParams, *names: str) -> int | str | None:
    for name in names:  # `count` is renamed to `_count` and wins over it (QUERY_TRANSFORMS)
        values = params.getlist(name)
        if values:
            try:
                return int(values[-1])
            except ValueError:
                return "expected int"
    return None


def parse_search(resource: str, params: QueryParams) -> SearchQuery | str:
    """The validated query, or the 400 `detail` CMS answers (bb2-api.md §3.1)."""
    start = _int(params, "startIndex")
    if isinstance(start, str):
        return start
    count = _int(params, "count", "_count")
    if isinstance(count, str):
        return count
    count = DEFAULT_COUNT if count is None else count
    if count > MAX_COUNT:
        return f"value must be at most {MAX_COUNT}"
    if count < 0:
        return "value must be at least 0"
    start = start or 0
    if start < 0:
        return f"{UPSTREAM_400}Value for startIndex cannot be negative: {start}"
    echo: list[tuple[str, str]] = [("_lastUpdated", v) for v in params.getlist("_lastUpdated")]
    last_updated = _date_filters(params.getlist("_lastUpdated"), "_lastUpdated")
    if isinstance(last_updated, str):
        return last_updated
    service_date: tuple[DateFilter, ...] = ()
    types: frozenset[str] | None = None
    if resource == "ExplanationOfBenefit":
        dates = _date_filters(params.getlist("service-date"), "service-date")
        if isinstance(dates, str):
            return dates
        service_date = dates
        echo += [("service-date", v) for v in params.getlist("service-date")]
        if "type" in params:
            value = params.getlist("type")[-1]
            valid, types = _claim_types(value)
            if not valid:
                return "the type parameter value is not valid"
            echo.append(("type", value))
    return SearchQuery(start, count, last_updated, service_date, types, tuple(echo))


def _claim_types(value: str) -> tuple[bool, frozenset[str] | None]:
    """CMS's case-insensitive `type` list: (valid, the types or None for all)."""
    prefix = EOB_TYPE_SYSTEM.lower() + "|"
    found = set()
    for raw in value.split(","):
        token = raw.strip().lower()
        if not token:
            continue
        code = token.removeprefix(prefix)
        if token.startswith(prefix) and not code:
            found.add("*")  # the system with an empty code (allowed by CMS's regex): any type
        elif code in CLAIM_TYPES:
            found.add(code)
        else:
            return False, None
    if not found:
        return False, None
    return True, (None if "*" in found else frozenset(found))


def paging_links(
    base: str, query: SearchQuery, total: int, id_param: tuple[str, str], next_base: str | None = None
) -> list[dict[str, str]]:
    """CMS v2 links for one page; `next_base` replaces the host of `next` (a fault)."""
    count, start = query.count, query.start

    def url(index: int, host_base: str = base) -> str:
        params = [_FORMAT, ("startIndex", str(index)), ("_count", str(count)), id_param]
        return f"{host_base}?{urlencode(params + list(query.echo))}"

    last = ((total - 1) // count) * count if count and total else 0
    links = [{"relation": "first", "url": url(0)}]
    if count and start + count < total:
        links.append({"relation": "next", "url": url(start + count, next_base or base)})
    if start > 0:
        links.append({"relation": "previous", "url": url(max(start - count, 0))})
    links.append({"relation": "last", "url": url(last)})
    self_params = sorted([_FORMAT, ("startIndex", str(start)), ("_count", str(count)), id_param, *query.echo])
    links.append({"relation": "self", "url": f"{base}/?{urlencode(self_params)}"})
    return links


def searchset(
    links: list[dict[str, str]],
    total: int,
    entries: list[tuple[str, bytes]],
    now: datetime,
    full_url_base: str | None = None,
) -> bytes:
    """The Bundle as JSON bytes, splicing the entries' ready-made JSON (claims are cached as bytes).

    Entries carry only `resource`, as CMS's do; `full_url_base` adds `fullUrl` = base/id.
    """
    head = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": iso_instant(now)},
        "type": "searchset",
        "total": total,
        "link": links,
    }
    encoded = orjson.dumps(head)
    if not entries:  # FHIR JSON has no empty arrays
        return encoded
    parts = []
    for entry_id, body in entries:
        full_url = (
            b""
            if full_url_base is None
            else b'"fullUrl":' + orjson.dumps(f"{full_url_base}/{entry_id}") + b","
        )
        parts.append(b"{" + full_url + b'"resource":' + body + b"}")
    return encoded[:-1] + b',"entry":[' + b",".join(parts) + b"]}"
