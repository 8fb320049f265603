"""R4 validation (entry by entry, off the event loop) and its report; the synthetic resources too."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fhir.resources.R4B as r4b
import orjson
import pydantic
import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource

from bluebutton.fhir.bundles import BundleHeader, connect_size
from bluebutton.fhir.r4_types import R4_RESOURCE_TYPES
from bluebutton.fhir.validator import (
    MAX_ISSUES,
    EntriesNotJsonError,
    Validator,
    problems_to_issues,
    validate_entries,
    validate_shell,
)
from tests.factories import (
    ROOT,
    cms_page,
    compact,
    entry_for,
    eob_id,
    eob_with_entry_size,
    make_coverage,
    make_eob,
    make_patient,
    make_resources,
)
from tests.processes import command, descendants, running, wait_gone


def r4_errors(resource: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except pydantic.ValidationError as e:
        return [dict(error) for error in e.errors()]
    return []


# --------------------------------------------------------------------- the synthetic generator


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(make_patient(), id="Patient"),
        pytest.param(make_coverage("A"), id="Coverage-A"),
        pytest.param(make_coverage("D"), id="Coverage-D"),
        pytest.param(make_eob(1), id="EOB"),
        pytest.param(make_eob(2, claim_type="pde", items=12), id="EOB-12-items"),
        pytest.param(make_eob(3, pad=50_000), id="EOB-padded"),
        pytest.param(make_eob(4, note="Canary"), id="EOB-note"),
    ],
)
def test_synthetic_resources_are_valid_r4(resource: dict[str, Any]) -> None:
    assert r4_errors(resource) == []


@pytest.mark.parametrize("resource_type", ["Patient", "Coverage", "ExplanationOfBenefit"])
def test_synthetic_searchset_is_a_valid_r4_bundle(resource_type: str) -> None:
    resources = make_resources(resource_type, 7)
    assert len({r["id"] for r in resources}) == 7
    Bundle.model_validate(cms_page(resources, total=7))


@pytest.mark.parametrize("size", [2_000, 4_321, 60_000])
def test_entries_of_exact_size(size: int) -> None:
    resource = eob_with_entry_size(9, size)
    assert len(compact(entry_for(resource))) == size
    assert r4_errors(resource) == []


# --------------------------------------------------------------------------------- validate_entries


def payload(entries: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(entries)


def broken(number: int, *remove: str, **replace: Any) -> dict[str, Any]:
    resource = make_eob(number)
    for name in remove:
        del resource[name]
    resource.update(replace)
    return resource


def test_valid_entries_have_no_problems() -> None:
    entries = [entry_for(make_patient()), entry_for(make_coverage()), entry_for(make_eob(1))]
    assert validate_entries(payload(entries), 0) == []


@pytest.mark.parametrize(
    ("resource", "path"),
    [
        pytest.param(broken(3, "provider"), "Bundle.entry[3].resource.provider", id="provider-missing"),
        pytest.param(broken(3, "insurer"), "Bundle.entry[3].resource.insurer", id="insurer-missing"),
        pytest.param(broken(3, "created"), "Bundle.entry[3].resource.created", id="created-missing"),
        pytest.param(
            broken(3, item=[{"sequence": 1}]),
            "Bundle.entry[3].resource.item[0].productOrService",
            id="item-productOrService",
        ),
        pytest.param(
            broken(
                3,
                insurance=[
                    {"focal": True, "coverage": {"reference": "C/1"}},
                    {"coverage": {"reference": "C/2"}},
                ],
            ),
            "Bundle.entry[3].resource.insurance[1].focal",
            id="insurance-focal",
        ),
        pytest.param(
            broken(3, madeUpElement=1), "Bundle.entry[3].resource.madeUpElement", id="unknown-element"
        ),
        pytest.param(broken(3, created="yesterday"), "Bundle.entry[3].resource.created", id="bad-dateTime"),
    ],
)
def test_problem_names_entry_resource_and_path(resource: dict[str, Any], path: str) -> None:
    entries = [entry_for(make_eob(n)) for n in range(3)] + [entry_for(resource)]
    problems = validate_entries(payload(entries), 0)
    assert [(p[0], p[1], p[2]) for p in problems] == [(3, f"ExplanationOfBenefit/{resource['id']}", path)]
    assert problems[0][3]


def test_index_counts_from_the_first_index() -> None:
    problems = validate_entries(payload([entry_for(make_eob(0)), entry_for(broken(1, "provider"))]), 50)
    assert [(p[0], p[2]) for p in problems] == [(51, "Bundle.entry[51].resource.provider")]


def test_every_problem_of_a_resource_is_reported() -> None:
    resource = broken(1, "provider", "insurer", "created")
    problems = validate_entries(payload([entry_for(resource)]), 0)
    expected = {f"Bundle.entry[0].resource.{'.'.join(map(str, e['loc']))}" for e in r4_errors(resource)}
    assert {p[2] for p in problems} == expected
    assert len(expected) >= 2


def test_unknown_resource_type() -> None:
    problems = validate_entries(payload([{"resource": {"resourceType": "Claimz", "id": "c1"}}]), 0)
    assert [(p[0], p[1], p[2]) for p in problems] == [
        (0, "Claimz/c1", "Bundle.entry[0].resource.resourceType")
    ]


# --- resource types connect's R4 validator does not have -------------------------------------------


def r4b_resource_types() -> set[str]:
    """The concrete resource types of the R4B models, found by walking the package (not a list)."""
    found: set[str] = set()
    for module in pkgutil.iter_modules(r4b.__path__):
        if module.name.startswith(("_", "fhirtypes")) or module.name == "tests":
            continue
        namespace = vars(importlib.import_module(f"{r4b.__name__}.{module.name}"))
        found |= {
            value.__name__
            for value in namespace.values()
            if isinstance(value, type)
            and issubclass(value, Resource)
            and value.__module__.endswith(module.name)
        }
    return found - {"Resource", "DomainResource", "MetadataResource"}


R4B_ONLY = sorted(r4b_resource_types() - R4_RESOURCE_TYPES)
SUBSCRIPTION_STATUS = {
    "resourceType": "SubscriptionStatus",
    "id": "status-1",
    "type": "heartbeat",
    "subscription": {"reference": "Subscription/1"},
}


def test_the_r4_list_and_the_r4b_models_differ_as_the_versions_do() -> None:
    assert {"SubscriptionStatus", "SubscriptionTopic", "Citation", "Ingredient"} <= set(R4B_ONLY)
    assert {"Patient", "Coverage", "ExplanationOfBenefit", "Bundle", "OperationOutcome"} <= R4_RESOURCE_TYPES
    assert not {"Resource", "DomainResource"} & R4_RESOURCE_TYPES  # abstract, never an instance


def test_an_r4b_only_resource_valid_here_is_refused_naming_the_entry() -> None:
    get_fhir_model_class("SubscriptionStatus").model_validate(SUBSCRIPTION_STATUS)  # valid R4B
    entries = [entry_for(make_eob(0)), {"resource": SUBSCRIPTION_STATUS}]

    problems = validate_entries(payload(entries), 0)

    assert [(p[0], p[1], p[2]) for p in problems] == [
        (1, "SubscriptionStatus/status-1", "Bundle.entry[1].resource.resourceType")
    ]
    assert "not in FHIR R4" in problems[0][3] and "connect" in problems[0][3]


@pytest.mark.parametrize("resource_type", R4B_ONLY)
def test_every_r4b_only_type_is_refused(resource_type: str) -> None:
    problems = validate_entries(payload([{"resource": {"resourceType": resource_type, "id": "x1"}}]), 0)
    assert [(p[1], p[2]) for p in problems] == [
        (f"{resource_type}/x1", "Bundle.entry[0].resource.resourceType")
    ]
    assert "not in FHIR R4 (4.0.1)" in problems[0][3]


def test_an_r4_type_withdrawn_in_r4b_says_so() -> None:
    problems = validate_entries(payload([{"resource": {"resourceType": "MedicinalProduct", "id": "m1"}}]), 0)
    assert [p[2] for p in problems] == ["Bundle.entry[0].resource.resourceType"]
    assert "withdrawn after R4" in problems[0][3]


def test_a_resource_type_that_is_not_a_string_is_unknown() -> None:
    problems = validate_entries(payload([{"resource": {"resourceType": ["Patient"], "id": "p1"}}]), 0)
    assert [p[2] for p in problems] == ["Bundle.entry[0].resource.resourceType"]
    assert "unknown FHIR R4 resource type" in problems[0][3]


def test_entry_level_problem() -> None:
    entry = {**entry_for(make_eob(1)), "bogus": True}
    problems = validate_entries(payload([entry]), 0)
    assert [p[2] for p in problems] == ["Bundle.entry[0].bogus"]


def test_resource_without_id_is_named_with_a_placeholder() -> None:
    resource = broken(1, "provider")
    del resource["id"]
    problems = validate_entries(payload([{"resource": resource}]), 0)
    assert [p[2] for p in problems] == ["Bundle.entry[0].resource.provider"]
    assert problems[0][1].startswith("ExplanationOfBenefit/")


def test_validate_shell() -> None:
    assert validate_shell(BundleHeader.fresh(3).as_dict()) == []
    problems = validate_shell({**BundleHeader.fresh(3).as_dict(), "total": "three"})
    assert [p[2] for p in problems] == ["Bundle.total"]


# ---------------------------------------------------------------------------------------- the report


def test_problems_to_issues() -> None:
    issues = problems_to_issues(
        [(3, "ExplanationOfBenefit/carrier--1", "Bundle.entry[3].resource.provider", "Field required")]
    )
    assert len(issues) == 1
    fhir = issues[0].as_fhir()
    assert fhir["severity"] == "error"
    assert fhir["expression"] == ["Bundle.entry[3].resource.provider"]
    assert "entry 3" in fhir["diagnostics"]
    assert "ExplanationOfBenefit/carrier--1" in fhir["diagnostics"]
    assert "Field required" in fhir["diagnostics"]


def test_issue_count_is_bounded() -> None:
    problems = [
        (n, f"ExplanationOfBenefit/{n}", f"Bundle.entry[{n}].resource.provider", "Field required")
        for n in range(MAX_ISSUES + 25)
    ]
    issues = problems_to_issues(problems)
    assert len(issues) == MAX_ISSUES + 1
    assert "25 more" in issues[-1].diagnostics


# ----------------------------------------------------------------------------------------- Validator


@pytest.fixture
def thread_validator() -> Iterator[Validator]:
    validator = Validator(2, executor=ThreadPoolExecutor(2))
    yield validator
    validator.close()


def _mixed(count: int, bad: set[int]) -> list[bytes]:
    return [compact(entry_for(broken(n, "provider") if n in bad else make_eob(n))) for n in range(count)]


async def test_validator_reports_in_entry_order(thread_validator: Validator) -> None:
    bad = {3, 12, 24, 25}
    problems = await thread_validator.validate(_mixed(27, bad))
    assert [p[0] for p in problems] == sorted(bad)
    assert [p[1] for p in problems] == [f"ExplanationOfBenefit/{eob_id(n)}" for n in sorted(bad)]


async def test_check_measures_each_entry_as_connect_will_store_it(thread_validator: Validator) -> None:
    entries = _mixed(23, {5})
    pretty = [json.dumps(orjson.loads(e), indent=2).encode() for e in entries]
    problems, sizes = await thread_validator.check(pretty)
    assert [p[0] for p in problems] == [5]
    assert sizes == [connect_size(e) for e in entries]  # in entry order, whatever the layout


class CountingExecutor(ThreadPoolExecutor):
    """Records how many tasks were handed over and not yet finished, at most."""

    def __init__(self) -> None:
        super().__init__(2)
        self.lock = threading.Lock()
        self.running = self.most = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future[Any]) -> None:
        with self.lock:
            self.running -= 1


async def test_validator_hands_the_pool_a_few_chunks_at_a_time() -> None:
    """A pull's chunks wait their turn instead of all queueing (with their copies) at once."""
    executor = CountingExecutor()
    validator = Validator(2, executor=executor)
    try:
        bad = {5, 77, 133}
        problems = await validator.validate(_mixed(140, bad))  # 14 chunks
        assert [p[0] for p in problems] == sorted(bad)
        assert 1 <= executor.most <= 4
        assert executor.running == 0
    finally:
        validator.close()


async def test_entries_that_are_not_json_fail_in_a_worker_process() -> None:
    validator = Validator(1)
    try:
        with pytest.raises(EntriesNotJsonError) as info:
            await validator.validate([b'{"resource":{"resourceType":"Patient","id":"\xff"}}'])
        assert "\xff" not in str(info.value)
        assert await validator.validate(_mixed(2, set())) == []
    finally:
        validator.close()


async def test_validator_in_worker_processes() -> None:
    validator = Validator(2)
    try:
        problems = await validator.validate(_mixed(23, {0, 22}), first_index=100)
        assert [(p[0], p[2]) for p in problems] == [
            (100, "Bundle.entry[100].resource.provider"),
            (122, "Bundle.entry[122].resource.provider"),
        ]
        assert await validator.validate(_mixed(5, set())) == []
    finally:
        validator.close()


async def test_a_dead_worker_fails_one_pull_and_the_pool_is_replaced() -> None:
    """A worker killed mid-task breaks the pool: that pull fails with a 503 saying so (nothing
    above the validator sees the pool's own exception); the next submission gets a fresh pool."""
    import os
    import signal
    from concurrent.futures.process import BrokenProcessPool

    from bluebutton.errors import ValidationUnavailableError

    validator = Validator(1)
    try:
        assert await validator.validate(_mixed(2, set())) == []
        pool = validator._executor
        for pid in list(pool._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(ValidationUnavailableError) as info:
            await validator.validate(_mixed(2, set()))
        assert info.value.status_code == 503
        assert isinstance(info.value.__cause__, BrokenProcessPool)
        problems = await validator.validate(_mixed(3, {1}))
        assert [p[0] for p in problems] == [1]
        assert validator._executor is not pool
    finally:
        validator.close()


def test_no_validation_process_outlives_a_sigkilled_holder() -> None:
    """The forkserver, the resource tracker and the pool workers end when the process holding
    the Validator is SIGKILLed (nothing can run in it to shut them down)."""
    started: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-m", "tests.fhir.holder"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the tracker's "leaked semaphore" notice after the kill
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "ready"
            started = descendants(holder.pid)
            assert len(started) >= 4, [command(pid) for pid in started]  # tracker, forkserver, 2 workers

            holder.kill()
            holder.wait()

            left = wait_gone(started, seconds=60)
            assert left == [], [command(pid) for pid in left]
        finally:
            holder.kill()
            for pid in started:
                if running(pid):
                    os.kill(pid, signal.SIGKILL)
