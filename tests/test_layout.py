"""The layout is the architecture: the product never imports the sandbox, the sandbox has no cycles.

Two independent proofs that the product (every module under `bluebutton/` but `bluebutton/sandbox/`)
stays free of `bluebutton.sandbox`: an AST scan
(catches imports inside functions or behind `TYPE_CHECKING`, which a run would not execute) and a
fresh interpreter that imports every product module and then looks at `sys.modules` (catches
imports built at run time, e.g. through `importlib`).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names, relative ones resolved."""
    package = module_name(path) if path.stem == "__init__" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from bluebutton.sandbox import cms` imports the submodule `bluebutton.sandbox.cms`.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def is_sandbox(module: str) -> bool:
    return module == "bluebutton.sandbox" or module.startswith("bluebutton.sandbox.")


def test_the_product_modules_are_found() -> None:
    # Guards the two tests below against passing on an empty list.
    assert {"bluebutton.web.app", "bluebutton.web.routes.pull", "bluebutton.__main__"} <= set(PRODUCT_MODULES)
    assert not [m for m in PRODUCT_MODULES if is_sandbox(m)]


@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_product_module_imports_the_sandbox(path: Path) -> None:
    sandbox_imports = sorted(m for m in imported_modules(path) if is_sandbox(m))
    assert sandbox_imports == [], f"{path.relative_to(ROOT)} imports {sandbox_imports}"


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


def sandbox_import_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in SANDBOX.rglob("*.py")}
    return {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_the_sandbox_packages_exist() -> None:
    graph = sandbox_import_graph()
    assert {"bluebutton.sandbox.cms.app", "bluebutton.sandbox.connect.app"} <= set(graph)
    assert not [p.name for p in SANDBOX.glob("cms_*.py")] + [p.name for p in SANDBOX.glob("connect_*.py")]


def test_the_sandbox_has_no_import_cycle() -> None:
    graph = sandbox_import_graph()
    state: dict[str, str] = {}  # "open" while on the DFS stack, "done" after

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycle = [*path[path.index(target) :], target] if target in path else [name, target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


HTTP_LAYER = {
    "app.py",
    "deps.py",
    "routes.py",
    "metrics_routes.py",
    "sync/routes.py",
    "console/routes.py",
    "body_limit.py",
    "headers.py",
    "metrics.py",
}


@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_http_layer_imports_fastapi(path: Path) -> None:
    """Everything else (clients, pipeline, stores, sync) can be used without a web framework."""
    web = sorted(m for m in imported_modules(path) if m.split(".")[0] in {"fastapi", "starlette"})
    if path.relative_to(PACKAGE).as_posix() not in HTTP_LAYER:
        assert not web, f"{path.relative_to(ROOT)} imports {web}; only the HTTP layer may"


def test_the_readme_layout_names_every_top_level_module_and_package() -> None:
    layout = (ROOT / "README.md").read_text(encoding="utf-8").split("### Layout", 1)[1]
    listed = {line.split()[0] for line in layout.splitlines() if line.startswith("      ") and line.strip()}
    present = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    present |= {f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert present - listed == set(), "README's layout section misses these"
