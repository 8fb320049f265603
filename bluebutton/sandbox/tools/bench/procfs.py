"""What the benchmarks read from /proc about the stack's processes: RSS, peaks, CPU time."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bluebutton.sandbox.tools.stack import Stack

TICKS = os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, key: str) -> int:
    """A `/proc/<pid>/status` figure in kB (`VmRSS`, `VmHWM`), 0 once the process is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    return [d for child in children(pid) for d in (child, *descendants(child))]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of one live process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15 of stat


def cpu_seconds(stack: Stack) -> dict[str, tuple[float, float]]:
    """Per process of the stack: (its own CPU seconds, its live children's)."""
    return {
        name: (process_cpu_seconds(p.pid), sum(process_cpu_seconds(c) for c in descendants(p.pid)))
        for name, p in stack.processes.items()
    }


def cpu_used(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    return {
        name: (own - before.get(name, (0.0, 0.0))[0], children - before.get(name, (0.0, 0.0))[1])
        for name, (own, children) in after.items()
    }


def peak_rss_mb(stack: Stack) -> dict[str, float]:
    """Each process's peak RSS (VmHWM), its children (validation pool, forkserver) listed apart."""
    peaks: dict[str, float] = {}
    for name, process in stack.processes.items():
        peaks[name] = status_kb(process.pid, "VmHWM") / 1024
        children = descendants(process.pid)
        if children:
            peaks[f"{name} children ({len(children)})"] = max(status_kb(c, "VmHWM") for c in children) / 1024
    peaks["bench (this process)"] = status_kb(os.getpid(), "VmHWM") / 1024
    return peaks
