"""The maps stay true: docs/development.md and each module_utils package's __init__ docstring name what is there.

docs/development.md's "Map of the code" names every module_utils file and package (and every file of a
package, on the package's lines) and every module; its "Layout" names every filter plugin and role. Each
package's ``__init__.py`` docstring names each of its files. A file added without its line fails here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "development.md"
MODULE_UTILS = ROOT / "plugins" / "module_utils"
PACKAGES = sorted(p.parent.name for p in MODULE_UTILS.glob("*/__init__.py"))
TOP_FILES = sorted(p.name for p in MODULE_UTILS.glob("*.py") if p.name != "__init__.py")
MODULES = sorted(p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if p.name != "__init__.py")
FILTERS = sorted(p.name for p in (ROOT / "plugins" / "filter").glob("*.py") if p.name != "__init__.py")
ROLES = sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/tasks/main.yml"))


def code_block(heading: str) -> str:
    """The first fenced code block after the ``## heading`` line of docs/development.md."""
    text = DOC.read_text()
    start = text.index(f"\n## {heading}\n")
    block = re.search(r"^```\n(.*?)^```", text[start:], re.S | re.M)
    assert block, f"docs/development.md: no code block under '## {heading}'"
    return block.group(1)


def words(text: str) -> set[str]:
    return set(re.findall(r"[\w./-]+", text))


def package_lines(pkg: str) -> str:
    """The map's lines for one package: from the line that starts with ``pkg/`` to the next top-level entry."""
    lines = code_block("Map of the code").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"{pkg}/")]
    assert starts, f"docs/development.md's map has no line starting with {pkg}/"
    out = [lines[starts[0]]]
    for line in lines[starts[0] + 1 :]:
        if line[:1] not in ("", " "):
            break
        out.append(line)
    return "\n".join(out)


def test_the_tree_is_found():
    assert len(PACKAGES) >= 9 and len(TOP_FILES) >= 10 and len(MODULES) >= 14 and FILTERS and ROLES


@pytest.mark.parametrize("name", TOP_FILES)
def test_every_module_utils_file_is_on_the_map(name):
    assert name in words(code_block("Map of the code")), f"docs/development.md's map does not name {name}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_package_and_its_files_are_on_the_map(pkg):
    files = sorted(p.name for p in (MODULE_UTILS / pkg).glob("*.py") if p.name != "__init__.py")
    missing = [f for f in files if f not in words(package_lines(pkg))]
    assert not missing, f"docs/development.md's map: {pkg}/ does not name {missing}"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_package_docstring_names_its_files(pkg):
    doc = ast.get_docstring(ast.parse((MODULE_UTILS / pkg / "__init__.py").read_text())) or ""
    files = sorted(p.name for p in (MODULE_UTILS / pkg).glob("*.py") if p.name != "__init__.py")
    missing = [f for f in files if f not in words(doc)]
    assert not missing, f"plugins/module_utils/{pkg}/__init__.py's docstring does not name {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_every_module_is_on_the_map(module):
    assert re.search(rf"\b{module}\b", code_block("Map of the code")), f"docs/development.md's map: no {module}"


@pytest.mark.parametrize("name", FILTERS)
def test_every_filter_is_in_the_layout(name):
    assert name in words(code_block("Layout")), f"docs/development.md's layout does not name plugins/filter/{name}"


@pytest.mark.parametrize("role", ROLES)
def test_every_role_is_in_the_layout(role):
    assert f"roles/{role}" in words(code_block("Layout")), f"docs/development.md's layout does not name roles/{role}"


def test_the_map_names_nothing_that_is_gone():
    """Every ``name.py`` the map names exists somewhere under plugins/ (a renamed file leaves no stale line)."""
    shipped = {p.name for p in (ROOT / "plugins").rglob("*.py")}
    stale = sorted(w for w in words(code_block("Map of the code")) if w.endswith(".py") and Path(w).name not in shipped)
    assert not stale, f"docs/development.md's map names files that do not exist: {stale}"
