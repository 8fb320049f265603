"""The layout is the architecture. The import contracts of pyproject.toml (`lint-imports`, run by
scripts/check) state it over the static import graph; what they cannot see is proven here.

A fresh interpreter imports every product module (every module under `bluebutton/` but
`bluebutton/sandbox/`) and then looks at `sys.modules`: this catches imports built at run time, e.g.
through `importlib`, which no static graph holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bluebutton"
SANDBOX = PACKAGE / "sandbox"
PRODUCT_FILES = sorted(path for path in PACKAGE.rglob("*.py") if SANDBOX not in path.parents)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


PRODUCT_MODULES = sorted(module_name(path) for path in PRODUCT_FILES)


def is_sandbox(module: str) -> bool:
    return module == "bluebutton.sandbox" or module.startswith("bluebutton.sandbox.")


def test_the_product_modules_are_found() -> None:
    # Guards the test below against passing on an empty list.
    assert {"bluebutton.web.app", "bluebutton.web.routes.pull", "bluebutton.__main__"} <= set(PRODUCT_MODULES)
    assert not [m for m in PRODUCT_MODULES if is_sandbox(m)]


def test_importing_the_whole_product_loads_nothing_of_the_sandbox() -> None:
    # A fresh interpreter: this test process has long imported the sandbox for other tests.
    # `bluebutton.__main__` only starts the server under `if __name__ == "__main__"`.
    script = (
        "import importlib, json, sys\n"
        f"for name in {PRODUCT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert set(PRODUCT_MODULES) <= set(loaded)
    assert [m for m in loaded if is_sandbox(m)] == []


def test_the_import_contracts_are_checked() -> None:
    # The static half of the proof binds only if scripts/check runs it.
    assert ".venv/bin/lint-imports" in (ROOT / "scripts" / "check").read_text()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    sandbox = {"type": "protected", "protected_modules": ["bluebutton.sandbox"]}
    assert any(sandbox.items() <= contract.items() for contract in config["contracts"])
