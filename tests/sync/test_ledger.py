"""The ledger's content hash and entry reading (the database side is covered by the run tests)."""

from __future__ import annotations

import orjson
import pytest

from bluebutton.sync.ledger import EntryShapeError, content_hash, read_entry

RESOURCE = {
    "resourceType": "ExplanationOfBenefit",
    "id": "carrier--1",
    "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "profile": ["p"]},
    "status": "active",
}


def test_the_hash_ignores_meta_last_updated_and_key_order() -> None:
    restamped = {**RESOURCE, "meta": {"profile": ["p"], "lastUpdated": "2025-06-30T12:00:00Z"}}
    reordered = dict(reversed(list(RESOURCE.items())))
    assert content_hash(RESOURCE) == content_hash(restamped) == content_hash(reordered)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"status": "cancelled"}, id="content"),
        pytest.param({"meta": {"lastUpdated": "2024-01-01T00:00:00Z", "profile": ["q"]}}, id="other-meta"),
    ],
)
def test_the_hash_follows_real_changes(change: dict[str, object]) -> None:
    assert content_hash({**RESOURCE, **change}) != content_hash(RESOURCE)


def test_an_entry_keeps_its_bytes_and_names_its_resource() -> None:
    raw = orjson.dumps({"fullUrl": "x", "resource": RESOURCE})
    entry = read_entry(raw)
    assert (entry.resource_id, entry.raw, entry.content_hash) == ("carrier--1", raw, content_hash(RESOURCE))


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"fullUrl": "x"}, id="no-resource"),
        pytest.param({"resource": {"resourceType": "Patient"}}, id="no-id"),
        pytest.param({"resource": {"resourceType": "Patient", "id": 7}}, id="id-not-text"),
        pytest.param([], id="not-an-object"),
    ],
)
def test_untrackable_entries_are_refused(entry: object) -> None:
    with pytest.raises(EntryShapeError):
        read_entry(orjson.dumps(entry))
