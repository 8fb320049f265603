"""`pip install .`: pyproject's dependencies are Pipfile's [packages] (the locked way stays the
Pipfile), and a wheel built from a clean copy of the tree holds every package, template and SQL
migration, and installs a `bluebutton` command with the subcommands of `python -m bluebutton`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bluebutton.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bluebutton"
# Made at run time or by tools, never shipped.
LOCAL = {"__pycache__", ".pytest_cache"}
LOCAL_SUFFIXES = {".pyc", ".pyo", ".sqlite3", ".db"}


def pipfile_requirements() -> dict[str, Requirement]:
    """Pipfile's [packages] as requirements (`name = "spec"` or `{extras, version, markers}`)."""
    packages = tomllib.loads((ROOT / "Pipfile").read_text(encoding="utf-8"))["packages"]
    found: dict[str, Requirement] = {}
    for name, spec in packages.items():
        if isinstance(spec, str):
            spec = {"version": spec}
        extras = f"[{','.join(sorted(spec.get('extras', [])))}]" if spec.get("extras") else ""
        version = "" if spec.get("version", "*") == "*" else spec["version"]
        markers = f"; {spec['markers']}" if spec.get("markers") else ""
        found[canonicalize_name(name)] = Requirement(f"{name}{extras}{version}{markers}")
    return found


def project_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(line) for line in project["dependencies"]]
    return {canonicalize_name(r.name): r for r in requirements}


def test_pyproject_and_pipfile_name_the_same_dependencies() -> None:
    pipfile, project = pipfile_requirements(), project_requirements()
    assert len(pipfile) > 10  # the parse found the section
    assert sorted(project) == sorted(pipfile), "add or drop the package in both files"
    for name, wanted in pipfile.items():
        got = project[name]
        assert (got.extras, got.specifier, got.marker) == (wanted.extras, wanted.specifier, wanted.marker), (
            name
        )


def shipped_files() -> list[str]:
    """Every file of the source tree a wheel must hold, relative to ROOT."""
    return sorted(
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file()
        and not LOCAL & set(path.relative_to(ROOT).parts)
        and path.suffix not in LOCAL_SUFFIXES
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A wheel of a clean copy of the tree (no build/ or egg-info left in the worktree), built with
    the environment's setuptools, offline."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not in this environment (the build backend of pyproject.toml)")
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns(*LOCAL, *(f"*{s}" for s in LOCAL_SUFFIXES))
    shutil.copytree(PACKAGE, source / "bluebutton", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    done = subprocess.run(
        [
            *pip,
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    [built] = out.glob("bluebutton-*.whl")
    yield built


@pytest.mark.slow
def test_the_wheel_holds_every_package_template_and_migration(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = shipped_files()
    assert any(name.endswith(".sql") for name in expected) and any(
        name.endswith(".html") for name in expected
    )
    packages = {
        p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("__init__.py") if "__pycache__" not in p.parts
    }
    assert {"bluebutton/__init__.py", "bluebutton/sync/migrations/__init__.py"} <= packages
    assert sorted(set(expected) - names) == []
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]


@pytest.mark.slow
def test_the_wheel_installs_the_bluebutton_command(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "install", str(wheel), "--no-deps", "--no-index", "--target", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    entry = (next(target.glob("bluebutton-*.dist-info")) / "entry_points.txt").read_text()
    assert "bluebutton = bluebutton.__main__:main" in entry
    command = target / "bin" / "bluebutton"
    # The installed copy, not the checkout: run from elsewhere with the target first on the path.
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [str(command), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: bluebutton ")
    for name in COMMANDS:
        assert f"    {name}" in done.stdout
    where = subprocess.run(
        [sys.executable, "-c", "import bluebutton; print(bluebutton.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(target)
