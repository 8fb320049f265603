"""Processes the tests started, found through /proc: a process's descendants, whether one is still
running, and the ones a session left behind.

Every process a test starts inherits `MARKER` from the pytest process (set at session start), so
a leftover is found by its environment even once its parent died and init adopted it.
"""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = "PYTEST_SESSION_PROCESS_MARK"
PROC = Path("/proc")


def state(pid: int) -> str | None:
    """The process's state letter (`R`, `S`, `Z`, ...), None once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def running(pid: int) -> bool:
    """Alive and not a zombie (a dead process not yet reaped by its parent)."""
    return state(pid) not in (None, "Z")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in (PROC / str(pid) / "task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def command(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except (FileNotFoundError, ProcessLookupError):
        return "?"


def wait_gone(pids: list[int], seconds: float) -> list[int]:
    """Wait until none of `pids` is running, or `seconds` passed; the ones still running."""
    deadline = time.monotonic() + seconds
    while True:
        left = [pid for pid in pids if running(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def mark_session() -> None:
    os.environ[MARKER] = f"{os.getpid()}"


def _helpers_of_this_process() -> set[int]:
    """multiprocessing's forkserver and resource tracker serve this process until it exits."""
    helpers = {
        multiprocessing.forkserver._forkserver._forkserver_pid,  # type: ignore[attr-defined]
        multiprocessing.resource_tracker._resource_tracker._pid,  # type: ignore[attr-defined]
    }
    return {pid for pid in helpers if pid is not None}


def leftovers() -> list[int]:
    """Running processes started during this session (they carry `MARKER`), other than this
    process and its multiprocessing helpers."""
    mark = f"{MARKER}={os.environ.get(MARKER, '')}".encode()
    skip = {os.getpid(), *_helpers_of_this_process()}
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if mark in environment and running(int(entry.name)):
            found.append(int(entry.name))
    return found


WAIT = 600.0  # generous: a loaded two-core machine; every wait is for a condition, not a time


def until(check: Callable[[], Any], what: str) -> Any:
    """`check()`'s first truthy answer, polled while real processes get there."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")
