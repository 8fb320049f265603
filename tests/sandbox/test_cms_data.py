"""The CMS emulator's synthetic data: ids, determinism, documented users, sizes, R4 validity."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from bluebutton.sandbox.cms.beneficiary import build_coverages, build_patient, userinfo
from bluebutton.sandbox.cms.codes import CLAIM_TYPES
from bluebutton.sandbox.cms.data import (
    INVALID_USERS,
    CmsDataset,
    claim_count,
    generate_claims,
    invalid_claim_ids,
    parse_username,
    patient_id,
    user_for_eob_id,
    user_for_patient_id,
)

EOB = get_fhir_model_class("ExplanationOfBenefit")
PATIENT = get_fhir_model_class("Patient")
COVERAGE = get_fhir_model_class("Coverage")


def error_paths(resource: dict[str, Any]) -> set[str]:
    """The R4B validation errors of an EOB as `ExplanationOfBenefit.a[0].b` paths (empty if valid)."""
    try:
        EOB.model_validate(resource)
    except ValidationError as exc:
        paths = set()
        for error in exc.errors():
            path = "ExplanationOfBenefit"
            for part in error["loc"]:
                path += f"[{part}]" if isinstance(part, int) else f".{part}"
            paths.add(path)
        return paths
    return set()


def test_ids_follow_the_documented_scheme():
    assert patient_id(0) == "-19990000000001"
    assert patient_id(2001) == "-19990000002002"
    assert patient_id(29999) == "-19990000030000"
    ids = {patient_id(n) for n in range(30000)}
    assert len(ids) == 30000 and all(len(i) == 15 and i.startswith("-") for i in ids)
    assert all(user_for_patient_id(patient_id(n)) == n for n in (0, 1, 12345, 29999))
    assert user_for_patient_id("-20140000008325") is None
    assert parse_username("BBUser00042") == 42 and parse_username("BBUser42") is None
    for claim in generate_claims(12345)[:20]:
        assert claim.id == f"{claim.kind}-{claim.claim_id}"
        assert claim.id.startswith(f"{claim.kind}--112345")
        assert user_for_eob_id(claim.id) == 12345
    assert [c["id"] for c in build_coverages(7)] == [f"part-{p}--19990000000008" for p in "abcd"]


def test_documented_claim_counts():
    assert [claim_count(n) for n in (0, 1, 2, 3, 4, 29999)] == [155, 0, 7, 52, 200, 146]
    assert [claim_count(n) for n in INVALID_USERS] == list(range(10, 60, 5))
    assert all(len(generate_claims(n)) == claim_count(n) for n in (0, 1, 2, 5, 6, 7))
    counts = [claim_count(n) for n in range(100, 400)]
    assert min(counts) == 0 and max(counts) <= 200
    assert 45 < statistics.mean(counts) < 75
    assert claim_count(5, claims_override=150) == 150


def test_generation_is_deterministic_and_stable_in_order():
    first = [(c.id, c.json()) for c in generate_claims(77)]
    again = [(c.id, c.json()) for c in reversed(generate_claims(77))]
    assert first == list(reversed(again))
    assert build_patient(77) == build_patient(77) and userinfo(77) == userinfo(77)
    order = [CLAIM_TYPES.index(c.kind) for c in generate_claims(77)]
    assert order == sorted(order)
    assert generate_claims(77)[0].json() != generate_claims(78)[0].json()


def test_claims_are_realistic_in_size():
    # How fast they are generated is the benchmark's business (`python -m bluebutton.sandbox.tools.bench`),
    # not a timed assert's.
    assert len([c.json() for c in generate_claims(4)]) == 200
    sizes = [len(c.json()) for n in range(20, 45) for c in generate_claims(n)]
    assert 40_000 < statistics.mean(sizes) < 60_000
    assert max(sizes) < 200_000 and min(sizes) > 5_000
    override = CmsDataset(claims_override=150).claims(1)
    assert len(override) == 150
    assert 35_000 < statistics.mean(len(c.json()) for c in override) < 65_000


def test_claims_spread_over_types_and_dates():
    claims = [c for n in range(20, 40) for c in generate_claims(n)]
    kinds = Counter(c.kind for c in claims)
    assert set(kinds) == set(CLAIM_TYPES)
    updated = sorted(c.last_updated for c in claims)
    assert updated[0].year == 2020 and updated[-1].year == 2024
    assert min(c.end for c in claims).year == 2015 and max(c.end for c in claims).year >= 2023


def test_generated_resources_are_valid_r4():
    for user in (0, 2, 3, 29999):
        PATIENT.model_validate(build_patient(user))
        for coverage in build_coverages(user):
            COVERAGE.model_validate(coverage)
    # every claim type, and whole histories of a few users (one with several pages)
    sample = [c for c in generate_claims(3)] + generate_claims(2) + generate_claims(0)[::5]
    by_kind = {c.kind: c for n in range(20, 30) for c in generate_claims(n)}
    sample += by_kind.values()
    assert {c.kind for c in sample} == set(CLAIM_TYPES)
    for claim in sample:
        resource = claim.resource()
        assert error_paths(resource) == set(), claim.id
        assert resource["id"] == claim.id
        assert resource["patient"]["reference"] == f"Patient/{claim.patient}"
        assert resource["meta"]["lastUpdated"].startswith(claim.last_updated.strftime("%Y-%m-%dT"))


@pytest.mark.parametrize("user", [INVALID_USERS[0], INVALID_USERS[1], INVALID_USERS[-1]])
def test_documented_invalid_users_fail_exactly_as_documented(user):
    expected = invalid_claim_ids(user)
    assert sorted(expected.values()) == [
        "ExplanationOfBenefit.insurance[0].focal",
        "ExplanationOfBenefit.item[0].productOrService",
        "ExplanationOfBenefit.provider",
    ]
    kinds = {eob_id.split("-")[0]: path for eob_id, path in expected.items()}
    assert kinds == {
        "carrier": "ExplanationOfBenefit.provider",
        "outpatient": "ExplanationOfBenefit.item[0].productOrService",
        "pde": "ExplanationOfBenefit.insurance[0].focal",
    }
    claims = generate_claims(user)
    checked = claims if user != INVALID_USERS[-1] else [c for c in claims if c.id in expected]
    for claim in checked:
        assert error_paths(claim.resource()) == ({expected[claim.id]} if claim.id in expected else set())


def test_valid_users_have_no_invalid_claims_and_override_keeps_defects():
    assert invalid_claim_ids(0) == {} and invalid_claim_ids(29899) == {} and invalid_claim_ids(29910) == {}
    assert len(invalid_claim_ids(29905, claims_override=150)) == 3
    assert sorted(invalid_claim_ids(29905, claims_override=2).values()) == [
        "ExplanationOfBenefit.item[0].productOrService",
        "ExplanationOfBenefit.provider",
    ]


def test_dataset_caches_a_bounded_number_of_users():
    dataset = CmsDataset(cached_users=2)
    first = dataset.claims(10)
    assert dataset.claims(10) is first
    dataset.claims(11)
    dataset.claims(12)
    assert dataset.claims(10) is not first
    assert orjson.loads(first[0].json()) == dataset.claims(10)[0].resource()
    assert dataset.claim(10, first[0].id) is not None and dataset.claim(10, "pde--1") is None
