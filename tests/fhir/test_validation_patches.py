"""The validation speedups give exactly the library's results: same pass or fail, same errors.

Both sides run in fresh interpreters (the speedups change the process they are installed in), over
the sandbox's valid claims, every claim of its invalid users, the CMS samples in ../shared when
they are there, and mutations aimed at each check the speedups replace.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pydantic
import pytest

from bluebutton.fhir import validation_patches
from bluebutton.fhir.validator import Validator, _init_worker, _model_for, validate_entries
from bluebutton.sandbox.cms.data import INVALID_USERS, generate_claims
from tests.factories import SAMPLES_DIR

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = SAMPLES_DIR


def outcomes(entries: list[dict[str, Any]]) -> list[Any]:
    """What validation says of each entry: the problems we report, and pydantic's full errors."""
    from fhir.resources.R4B.bundle import BundleEntry

    results: list[Any] = []
    for index, entry in enumerate(entries):
        payload = orjson.dumps([entry])
        detail: list[Any] = []
        for model, data in (
            (BundleEntry, {k: v for k, v in entry.items() if k != "resource"}),
            (_model_for(entry.get("resource", {}).get("resourceType")), entry.get("resource")),
        ):
            if model is None:
                detail.append("no model")
                continue
            try:
                model.model_validate(copy.deepcopy(data))
                detail.append("valid")
            except pydantic.ValidationError as e:
                detail.append(
                    [
                        [list(err["loc"]), err["msg"], err["type"]]
                        for err in e.errors(include_url=False, include_input=False, include_context=False)
                    ]
                )
        results.append([[list(p) for p in validate_entries(payload, index)], detail])
    return results


def _main() -> None:
    """`python -m tests.fhir.test_validation_patches {plain|fast} CORPUS`: print the outcomes as JSON."""
    mode, corpus = sys.argv[1], Path(sys.argv[2])
    if mode == "fast" and not validation_patches.install():
        raise SystemExit("the speedups do not apply to these library versions")
    sys.stdout.buffer.write(orjson.dumps(outcomes(orjson.loads(corpus.read_bytes()))))


def _eob_mutations(base: dict[str, Any]) -> list[dict[str, Any]]:
    def mutated(change: Any) -> dict[str, Any]:
        resource = copy.deepcopy(base)
        change(resource)
        return {"fullUrl": f"https://x/ExplanationOfBenefit/{resource.get('id')}", "resource": resource}

    two_values = {"url": "http://x.test/e", "valueString": "a", "valueBoolean": True}
    return [
        mutated(lambda r: r["item"].append(None)),
        mutated(lambda r: r["item"][0].setdefault("adjudication", []).insert(0, None)),
        mutated(lambda r: r.setdefault("extension", []).append(None)),
        mutated(lambda r: r.__setitem__("meta", {"profile": [None, "http://x.test/p"]})),
        mutated(lambda r: r.setdefault("extension", []).append(two_values)),
        mutated(lambda r: r["item"][0].setdefault("extension", []).append(two_values)),
        mutated(lambda r: r.setdefault("extension", []).append({"valueString": "no url"})),
        mutated(lambda r: r.setdefault("extension", []).append({"_url": {}, "valueString": "a"})),
        mutated(
            lambda r: r.setdefault("extension", []).append(
                {"_url": {"extension": [{"url": "http://x.test/y", "valueString": "z"}]}, "valueString": "a"}
            )
        ),
        mutated(lambda r: r.pop("status")),
        mutated(lambda r: (r.pop("status"), r.__setitem__("_status", {}))),
        mutated(
            lambda r: (
                r.pop("status"),
                r.__setitem__("_status", {"extension": [{"url": "http://x.test/a", "valueCode": "b"}]}),
            )
        ),
        mutated(lambda r: (r.pop("status"), r.pop("type"), r.pop("patient"))),
        mutated(lambda r: r.__setitem__("created", 12345)),
        mutated(lambda r: r.__setitem__("bogus", 1)),
        mutated(lambda r: r["item"][0].__setitem__("bogus", 1)),
        mutated(lambda r: r.__setitem__("item", [1])),
        mutated(lambda r: r.__setitem__("item", ["x"])),
        mutated(lambda r: r.__setitem__("item", {"sequence": 1})),
        mutated(lambda r: r.__setitem__("contained", [{"resourceType": "Patient", "id": "p", "bogus": 1}])),
        mutated(lambda r: r.__setitem__("resourceType", "Patient")),
        mutated(lambda r: (r["item"].append(None), r.__setitem__("bogus", 1), r.pop("status"))),
    ]


def _other_mutations() -> list[dict[str, Any]]:
    coverage = {
        "resourceType": "Coverage",
        "id": "c",
        "status": "active",
        "beneficiary": {"reference": "Patient/p"},
        "payor": [{"reference": "Organization/o"}],
    }
    money = {"value": 1, "currency": "USD"}
    costs = [
        [{}],
        [{"valueMoney": money}],
        [{"valueMoney": money, "valueQuantity": {"value": 1}}],
        [{"valueMoney": money}, None],
    ]
    patient = {"resourceType": "Patient", "id": "p"}
    return [
        *({"resource": {**coverage, "costToBeneficiary": cost}} for cost in costs),
        {"resource": {**patient, "deceasedBoolean": False, "deceasedDateTime": "2020-01-01"}},
        {"resource": {**patient, "deceasedBoolean": False}},
        {"resource": {**patient, "name": [{"family": "F"}, None]}},
        {"fullUrl": 5, "resource": patient},
        {"fullUrl": "https://x/Patient/p", "search": {"mode": "nonsense"}, "resource": patient},
    ]


def _sample_entries() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for path in sorted(SAMPLES.glob("*.json")):
        document = orjson.loads(path.read_bytes())
        if isinstance(document, dict) and document.get("resourceType") == "Bundle":
            entries += [e for e in document.get("entry") or [] if isinstance(e, dict)]
        elif isinstance(document, dict) and "resourceType" in document:
            entries.append({"resource": document})
    return entries


def _corpus() -> list[dict[str, Any]]:
    valid = [{"resource": orjson.loads(c.json())} for c in generate_claims(0, 150)[::3]]
    invalid = [{"resource": orjson.loads(c.json())} for user in INVALID_USERS for c in generate_claims(user)]
    return [*valid, *invalid, *_eob_mutations(valid[0]["resource"]), *_other_mutations(), *_sample_entries()]


def _outcomes_of(corpus: Path) -> tuple[list[Any], list[Any]]:
    """(plain, fast): the outcomes from two fresh interpreters, run side by side."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.fhir.test_validation_patches", mode, str(corpus)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for mode in ("plain", "fast")
    ]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()[-2000:]
        results.append(orjson.loads(out))
    return results[0], results[1]


@pytest.mark.slow
@pytest.mark.skipif(
    not validation_patches.matches_checked_versions(), reason="speedups inactive for these versions"
)
def test_same_results_as_the_library(tmp_path: Path) -> None:
    corpus = _corpus()
    path = tmp_path / "corpus.json"
    path.write_bytes(orjson.dumps(corpus))
    plain, fast = _outcomes_of(path)
    assert len(plain) == len(fast) == len(corpus)
    failing = sum(1 for problems, _ in plain if problems)
    assert failing >= 40, "the corpus should exercise many kinds of failure"
    for number, (expected, got) in enumerate(zip(plain, fast, strict=True)):
        assert got == expected, f"entry {number}: {orjson.dumps(corpus[number])[:300]!r}"


def test_samples_are_part_of_the_corpus_when_present() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} not found: the CMS samples live in ../shared beside the repository")
    assert len(_sample_entries()) >= 10


@pytest.mark.parametrize("fast", [True, False])
def test_validation_workers_use_the_speedups_as_set(fast: bool) -> None:
    validator = Validator(1, fast=fast)
    try:
        installed = validator._executor.submit(validation_patches.installed).result(timeout=60)
        assert installed is (fast and validation_patches.matches_checked_versions())
    finally:
        validator.close()
    assert not validation_patches.installed(), "never in the service process itself"


def test_other_versions_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation_patches, "CHECKED_VERSIONS", {"fhir_core": "0.0.0"})
    assert validation_patches.install() is False
    assert not validation_patches._installed


def test_a_worker_says_when_the_speedups_are_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(os, "nice", lambda _: 0)  # the test process keeps its priority
    monkeypatch.setattr(validation_patches, "CHECKED_VERSIONS", {"fhir_core": "0.0.0"})
    _init_worker(True)
    assert "validation speedups off" in caplog.text
    assert "0.0.0" in caplog.text
    assert not validation_patches.installed()


if __name__ == "__main__":
    _main()
