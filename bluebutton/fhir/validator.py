"""FHIR R4 validation of CMS data with fhir.resources (the only import of `fhir.resources.R4B`).

Validation is CPU-bound (about 6 ms per 50 KB claim) and pydantic holds the GIL, so it runs entry
by entry in a process pool: the event loop keeps answering while a large pull is checked. Workers
get the entries' JSON bytes as CMS sent them (the service never parses them), and pause the garbage
collector while they work, since the models allocate many short-lived objects and collections only
cost time here.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Any, Literal, Self

import orjson
import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit
from fhir.resources.R4B.patient import Patient

from bluebutton.errors import Issue, ValidationUnavailableError
from bluebutton.fhir import validation_patches
from bluebutton.fhir.bundles import connect_size
from bluebutton.fhir.r4_types import R4_RESOURCE_TYPES

logger = logging.getLogger(__name__)

# Imported above so forked workers start with the models built; listed for the lookup below.
MODELS: dict[str, type[Any]] = {
    "Bundle": Bundle,
    "Patient": Patient,
    "Coverage": Coverage,
    "ExplanationOfBenefit": ExplanationOfBenefit,
}
CHUNK_ENTRIES = 10
MAX_ISSUES = 500

# (entry index, "Type/id", FHIRPath-like element path, message)
Problem = tuple[int, str, str, str]
# The problems of some entries, and each entry's `connect_size`, in entry order.
Checked = tuple[list[Problem], list[int]]


def _model_for(resource_type: object) -> type[Any] | None:
    if not isinstance(resource_type, str):
        return None
    model = MODELS.get(resource_type)
    if model is None:
        try:
            model = get_fhir_model_class(resource_type)
        except (KeyError, ValueError):
            return None
    return model


def _type_problem(resource_type: object, model: type[Any] | None) -> str:
    name = str(resource_type)[:64]
    if model is not None:
        return (
            f"resource type {name!r} is not in FHIR R4 (4.0.1), only in later versions; "
            "LinuxForHealth connect validates FHIR R4 and would refuse it"
        )
    if isinstance(resource_type, str) and resource_type in R4_RESOURCE_TYPES:
        return f"FHIR R4 resource type {name!r} cannot be validated here (it was withdrawn after R4)"
    return f"unknown FHIR R4 resource type {name!r}"


def _element_path(prefix: str, loc: Sequence[int | str]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _problems(error: pydantic.ValidationError, index: int, ref: str, prefix: str) -> list[Problem]:
    return [
        (index, ref, _element_path(prefix, err["loc"]), err["msg"])
        for err in error.errors(include_url=False, include_input=False, include_context=False)
    ]


class EntriesNotJsonError(ValueError):
    """The entries passed the fetch's syntax check but are not JSON after all (bad UTF-8, say)."""


def _load(payload: bytes) -> list[Any]:
    try:
        entries: list[Any] = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        # The message is orjson's position and reason; it never quotes the data.
        raise EntriesNotJsonError(str(e)) from None
    return entries


def validate_entries(payload: bytes, first_index: int) -> list[Problem]:
    """Validate a JSON array of Bundle entries; runs in a worker process."""
    return _validate(_load(payload), first_index)


def check_entries(payload: bytes, first_index: int) -> Checked:
    """`validate_entries`, plus each entry's size as connect will store it (`connect_size`),
    measured here while the entries are parsed anyway, off the event loop; runs in a worker."""
    entries = _load(payload)
    problems = _validate(entries, first_index)
    # connect's record depends only on the parsed values, which orjson writes back compactly.
    return problems, [connect_size(orjson.dumps(entry)) for entry in entries]


def _validate(entries: list[Any], first_index: int) -> list[Problem]:
    problems: list[Problem] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for offset, entry in enumerate(entries):
            index = first_index + offset
            resource = entry.get("resource") or {}
            resource_type = resource.get("resourceType")
            ref = f"{resource_type}/{resource.get('id', '?')}"
            prefix = f"Bundle.entry[{index}]"
            shell = {k: v for k, v in entry.items() if k != "resource"}
            try:
                BundleEntry.model_validate(shell)
            except pydantic.ValidationError as e:
                problems += _problems(e, index, ref, prefix)
            model = _model_for(resource_type)
            if model is None or resource_type not in R4_RESOURCE_TYPES:
                problems.append(
                    (index, ref, f"{prefix}.resource.resourceType", _type_problem(resource_type, model))
                )
                continue
            try:
                model.model_validate(resource)
            except pydantic.ValidationError as e:
                problems += _problems(e, index, ref, f"{prefix}.resource")
    finally:
        if gc_was_enabled:
            gc.enable()
    return problems


def validate_shell(bundle: dict[str, Any]) -> list[Problem]:
    """Validate the merged Bundle without its entries (checked separately, in chunks)."""
    try:
        Bundle.model_validate({k: v for k, v in bundle.items() if k != "entry"})
    except pydantic.ValidationError as e:
        return _problems(e, -1, "Bundle", "Bundle")
    return []


def problems_to_issues(problems: list[Problem]) -> list[Issue]:
    """One issue per problem, naming the entry (index and resource id) and the element."""
    issues = [
        Issue(
            f"entry {index} ({ref}) at {path}: {message}" if index >= 0 else f"{path}: {message}",
            code="structure",
            expression=(path,),
        )
        for index, ref, path, message in problems[:MAX_ISSUES]
    ]
    if len(problems) > MAX_ISSUES:
        issues.append(Issue(f"... and {len(problems) - MAX_ISSUES} more problems", "structure"))
    return issues


WORKER_NICENESS = 10


def _init_worker(fast: bool) -> None:
    """Worker initializer: end with the service, yield the CPU to its event loop, warm the models.

    Validation saturates every core it gets; a lower priority keeps the event loop (health
    checks, other requests, the pages still arriving) answering promptly meanwhile.
    """
    _end_with_parent()
    os.nice(WORKER_NICENESS)
    if fast and not validation_patches.install():
        logger.warning(
            "validation speedups off: they were checked against %s only; validating with the "
            "library as it is (correct, about twice as slow)",
            validation_patches.CHECKED_VERSIONS,
        )
    for model in MODELS.values():
        model.model_fields  # noqa: B018


def _end_with_parent() -> None:
    """Exit as soon as the process that started the pool is gone, however it died.

    A worker's parent is the forkserver, not the service, and nothing else ends it: it waits on
    queues it also holds the write end of, and it keeps the forkserver's "alive" pipe and the
    resource tracker's pipe open, so those two never see their EOF either; a SIGKILLed service
    left all three behind. multiprocessing gives each child a sentinel, a pipe whose write end
    only the service holds: it reads as ready (EOF) the moment the service is gone. A daemon
    thread waits on it and ends the worker; the forkserver and the tracker then see their EOF and
    exit on their own. In a process not started by multiprocessing there is nothing to watch.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)  # nothing to flush: an unfinished validation has no one left to answer

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


ValidationMode = Literal["fast", "standard"]


def worker_mode() -> ValidationMode:
    """Whether this process validates with the patches installed; asked of a worker, after its
    initializer ran, so the answer is what the workers really do."""
    return "fast" if validation_patches.installed() else "standard"


class Validator:
    """Validates entries off the event loop in a process pool sized by the settings.

    Enter it (`async with`) to start the pool and learn `mode` from a worker; leaving shuts the
    pool down.
    """

    def __init__(self, workers: int, executor: Executor | None = None, *, fast: bool = True) -> None:
        self._workers = workers
        self._fast = fast
        self._executor = executor or self._new_pool()
        self.mode: ValidationMode = "standard"
        # Chunks handed to the pool at once, across all requests: enough to keep every worker
        # busy, few enough that the copies waiting for a worker stay a small part of a pull.
        self._window = asyncio.Semaphore(2 * workers)

    def _new_pool(self) -> Executor:
        # forkserver: workers fork from a clean server that imported this module (and the
        # models) once, not from the threaded, socket-holding service process.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self._fast,),
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def __aenter__(self) -> Self:
        try:
            self.mode = await asyncio.get_running_loop().run_in_executor(self._executor, worker_mode)
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def submit(self, entry_bytes: Sequence[bytes], first_index: int) -> asyncio.Future[Checked]:
        """Start checking consecutive entries (JSON bytes each) from `first_index` on.

        A pool whose worker died (killed, out of memory) refuses all work; it is replaced here so
        one crash fails one request, not every later one.
        """
        payload = b"[" + b",".join(entry_bytes) + b"]"
        loop = asyncio.get_running_loop()
        try:
            return loop.run_in_executor(self._executor, check_entries, payload, first_index)
        except BrokenProcessPool:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_pool()
            return loop.run_in_executor(self._executor, check_entries, payload, first_index)

    def submit_chunks(self, entry_bytes: Sequence[bytes], first_index: int) -> list[asyncio.Future[Checked]]:
        """Validate in chunks small enough to keep every worker busy, a few at a time."""
        return [
            asyncio.ensure_future(self._check(entry_bytes[at : at + CHUNK_ENTRIES], first_index + at))
            for at in range(0, len(entry_bytes), CHUNK_ENTRIES)
        ]

    async def _check(self, entry_bytes: Sequence[bytes], first_index: int) -> Checked:
        async with self._window:
            try:
                return await self.submit(entry_bytes, first_index)
            except BrokenProcessPool as e:
                raise ValidationUnavailableError(
                    "A FHIR validation worker stopped (killed or out of memory) during this pull; "
                    "nothing was forwarded. Retry the request."
                ) from e

    async def validate(self, entry_bytes: Sequence[bytes], first_index: int = 0) -> list[Problem]:
        """Validate entries in chunks spread over the workers; problems in entry order."""
        return (await self.check(entry_bytes, first_index))[0]

    async def check(self, entry_bytes: Sequence[bytes], first_index: int = 0) -> Checked:
        """`validate`, plus each entry's `connect_size` for `split_entries` (entry order)."""
        results = await asyncio.gather(*self.submit_chunks(entry_bytes, first_index))
        return [p for problems, _ in results for p in problems], [n for _, sizes in results for n in sizes]
