"""The validator's own speed on the claims of a sample of the bench's beneficiaries, in one
validation process, for comparison with what the workers reached."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bluebutton.cms.client import CmsClient
from bluebutton.fhir.validator import Validator
from bluebutton.pull.query import PAGE_SIZE
from bluebutton.sandbox.tools.bench.enrol import Enrolled
from bluebutton.sandbox.tools.bench.procfs import descendants, process_cpu_seconds
from bluebutton.settings import Settings
from bluebutton.sync.runner import RESOURCE_TYPES


@dataclass
class Speed:
    entries: int
    claims: int
    seconds: float  # wall
    cpu_seconds: float  # of the validation process: what it costs whatever else the machine runs
    mode: str  # "fast" with the validation patches, "standard" without


async def validator_speed(settings: Settings, cms: CmsClient, sample: list[Enrolled]) -> Speed:
    """One validation process (the workers' own `Validator`) validating the sample's resources
    type by type, as a run hands them over."""
    batches: list[list[bytes]] = []
    for enrolled in sample:
        for kind in RESOURCE_TYPES:
            entries: list[bytes] = []
            params = [("_count", str(PAGE_SIZE))]
            async for page in cms.iter_pages(kind, params, enrolled.access_token):
                entries += page.entries
            batches.append(entries)
    async with Validator(1, fast=settings.fast_validation) as validator:
        for batch in batches[: len(RESOURCE_TYPES)]:  # warm: a model's first use builds it
            await validator.validate(batch)
        pool = descendants(os.getpid())
        cpu = sum(process_cpu_seconds(p) for p in pool)
        started = time.perf_counter()
        for batch in batches:
            await validator.validate(batch)
        seconds = time.perf_counter() - started
        cpu = sum(process_cpu_seconds(p) for p in pool) - cpu
        mode = validator.mode
    claims = sum(len(b) for i, b in enumerate(batches) if RESOURCE_TYPES[i % 3] == "ExplanationOfBenefit")
    return Speed(sum(len(b) for b in batches), claims, seconds, cpu, mode)
