"""The documentation stays true where it can drift silently: every setting and emulator option
documented, the README's links leading somewhere, every page in the site's navigation.

`mkdocs build --strict` (in `scripts/check`) catches broken links and anchors inside the site; these
tests catch what it cannot: a setting added to the code but not to the page, a README link into a
page that moved.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bluebutton.sandbox.cms.cli import build_parser
from bluebutton.sandbox.cms.config import ENV_PREFIX as CMS_PREFIX
from bluebutton.sandbox.connect.config import ENV_PREFIX as CONNECT_PREFIX
from bluebutton.sandbox.connect.config import ConnectSandboxConfig
from bluebutton.settings import Settings
from tests.factories import ROOT

DOCS = ROOT / "docs"
SETTINGS_PAGE = DOCS / "settings.md"
# connect's switches are named by what they turn off (`--no-tls`, `--no-validate`).
CONNECT_FLAGS = {"tls": "no_tls", "validate": "no_validate"}


def documented_variables() -> set[str]:
    return set(re.findall(r"`(BLUEBUTTON_[A-Z0-9_]+)`", SETTINGS_PAGE.read_text(encoding="utf-8")))


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_on_the_settings_page(field: str) -> None:
    assert f"BLUEBUTTON_{field.upper()}" in documented_variables()


def test_the_settings_page_names_no_setting_that_does_not_exist() -> None:
    known = {f"BLUEBUTTON_{field.upper()}" for field in Settings.model_fields}
    others = {"BLUEBUTTON_TEST_DATABASE_URL"}  # the test suite's, named on the page as such
    unknown = {
        name
        for name in documented_variables() - known - others
        if not name.startswith((CMS_PREFIX, CONNECT_PREFIX))
    }
    assert unknown == set()


def test_every_option_of_the_emulated_cms_is_on_the_settings_page() -> None:
    options = {action.dest.upper() for action in build_parser({})._actions if action.dest != "help"}
    assert options, "the emulator's parser has options"
    missing = {f"{CMS_PREFIX}{name}" for name in options} - documented_variables()
    assert missing == set()


def test_every_option_of_the_emulated_connect_is_on_the_settings_page() -> None:
    names = {CONNECT_FLAGS.get(field, field).upper() for field in ConnectSandboxConfig.__dataclass_fields__}
    missing = {f"{CONNECT_PREFIX}{name}" for name in names} - documented_variables()
    assert missing == set()


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(node: object) -> set[str]:
        if isinstance(node, str):
            return {node}
        if isinstance(node, list):
            return set().union(*(pages(item) for item in node))
        if isinstance(node, dict):
            return set().union(*(pages(value) for value in node.values()))
        return set()

    assert pages(config["nav"]) == {path.name for path in DOCS.glob("*.md")}


def readme_links() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [
        (target, anchor)
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text)
        if not target.startswith(("http://", "https://"))
    ]


def anchors_of(path: Path) -> set[str]:
    """Heading ids as Python-Markdown's toc extension makes them (enough for our headings)."""
    ids = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", path.read_text(encoding="utf-8")):
        slug = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
        ids.add(re.sub(r"[\s-]+", "-", slug))
    return ids


def test_the_readme_links_lead_somewhere() -> None:
    links = readme_links()
    assert any(target.startswith("docs/") for target, _ in links), "the README links into docs/"
    for target, anchor in links:
        path = ROOT / "README.md" if target == "" else ROOT / target
        assert path.exists(), target
        if anchor:
            assert anchor in anchors_of(path), f"{target}#{anchor}"


def test_every_repository_path_the_docs_name_exists() -> None:
    # Files move (the layout changed once already); a page naming a path that is gone misleads.
    texts = [(ROOT / "README.md").read_text(encoding="utf-8")]
    texts += [path.read_text(encoding="utf-8") for path in DOCS.glob("*.md")]
    named = {
        path.rstrip(".")
        for text in texts
        for path in re.findall(r"`((?:bluebutton|tests|scripts|local-certs)/[\w./-]*)", text)
    }
    assert len(named) > 20
    assert sorted(path for path in named if not (ROOT / path).exists()) == []


def test_the_architecture_page_names_every_module() -> None:
    # The package map is written by hand; a module added without a line there would go unseen.
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    words = set(re.findall(r"[\w]+", page))
    modules = {
        path.stem if path.stem != "__init__" else path.parent.name
        for path in (ROOT / "bluebutton").rglob("*.py")
        if path.stem != "__main__"
    }
    assert sorted(modules - words) == []
