"""`stack.py`'s process handling: a child runs in a process group of its own, and stopping it ends
whatever it left there (a validation pool orphaned by a worker stopped while starting)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from bluebutton.sandbox.tools.stack import Stack, group_members

# Starts a grandchild in its own group, says its pid, then waits; SIGTERM kills it at once (no
# handler), as it does a worker still starting, leaving the grandchild behind.
LEAVES_A_CHILD = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(600)\n"
)


def test_stopping_a_child_ends_what_it_left_in_its_process_group(tmp_path: Path) -> None:
    stack = Stack("", "", "", "", tmp_path / "unused.sqlite3", tmp_path)
    stack.launch("parent", ["-c", LEAVES_A_CHILD], dict(os.environ))
    parent = stack.processes["parent"]
    try:
        log = tmp_path / "parent.log"
        deadline = time.monotonic() + 60
        while not log.read_text().strip():
            assert time.monotonic() < deadline and parent.poll() is None, "the child never started"
            time.sleep(0.05)
        grandchild = int(log.read_text())
        assert os.getpgid(parent.pid) == parent.pid != os.getpgid(0)  # a group of its own
        assert sorted(group_members(parent.pid)) == sorted([parent.pid, grandchild])
        stack.stop()
        assert parent.returncode == -signal.SIGTERM
        assert group_members(parent.pid) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_the_group_of_this_process_is_found() -> None:
    assert os.getpid() in group_members(os.getpgid(0))
