"""The walls of plugins/module_utils (docs/development.md, "Map of the code"), read from the imports.

Each rule here is one a refactoring could break without any behaviour test
noticing: an import cycle, a pure file that starts talking to libvirt, a
feature package that reaches into another one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[4]
MU = ROOT / "plugins" / "module_utils"
PREFIX = "ansible_collections.virtops.kvm.plugins."

# Each unit (a top-level file or a package) and the units it may import. Lower layers first.
ALLOWED = {
    "_errors": set(),
    "_deps": set(),
    "_wait": set(),
    "_stream": {"_deps", "_errors"},
    "_validate": {"_errors"},
    "_connection_errors": {"_deps", "_errors"},
    "_connection": {"_deps", "_errors", "_connection_errors"},
    "_manager": {"_deps", "_errors", "_connection"},
    "_domain_xml": {"_deps", "_errors"},
    "_xml_compare": {"_deps", "_domain_xml"},
    "_disk_files": {"_errors"},
    "_scan": {"_deps", "_errors", "_connection", "_domain_xml", "_disk_files"},
    "_drift": {"_deps", "_errors", "_domain_xml"},
    "_network_xml": {"_deps", "_errors", "_domain_xml"},
    "_dhcp": {"_deps", "_errors", "_connection", "_network_xml"},
    "_host": {"_deps", "_errors", "_connection", "_manager", "_scan", "_image"},
    "_domain": {
        "_deps",
        "_errors",
        "_connection",
        "_manager",
        "_domain_xml",
        "_xml_compare",
        "_disk_files",
        "_scan",
        "_host",
        "_drift",
    },
    "_clone": {
        "_deps",
        "_errors",
        "_connection",
        "_manager",
        "_domain_xml",
        "_disk_files",
        "_scan",
        "_host",
        "_network_xml",
        "_dhcp",
        "_guestfs",
        "_drift",
    },
    "_network": {"_deps", "_errors", "_connection", "_manager", "_domain_xml", "_scan", "_network_xml", "_dhcp"},
    "_guestfs": {"_deps", "_errors", "_connection", "_manager", "_domain_xml", "_disk_files", "_scan", "_host"},
    "_snapshot": {"_deps", "_errors", "_connection", "_manager", "_domain_xml", "_disk_files", "_scan"},
    "_pool": {"_deps", "_errors", "_connection", "_manager", "_domain_xml", "_disk_files", "_scan", "_stream"},
    "_inventory": {"_deps", "_errors", "_connection", "_manager", "_domain_xml", "_scan"},
    "_image": {"_deps", "_errors", "_manager", "_disk_files"},
    "_migrate": {"_deps", "_errors", "_connection", "_manager", "_domain_xml", "_drift", "_scan", "_stream"},
    # kvm_vm makes a VM's files as kvm_clone makes a clone's, then converges it as kvm_domain does
    "_vm": {
        "_deps",
        "_errors",
        "_connection",
        "_manager",
        "_domain_xml",
        "_xml_compare",
        "_disk_files",
        "_scan",
        "_host",
        "_drift",
        "_network_xml",
        "_clone",
        "_domain",
    },
    # kvm_customize writes files in shut-off guests through the appliance kvm_guestfs uses
    "_customize": {"_deps", "_errors", "_connection", "_manager", "_domain_xml", "_scan", "_guestfs"},
    # kvm_fleet_host runs the managers of the modules it replaces, and the rules the role's filters share
    "_fleet": {
        "_deps",
        "_domain_xml",
        "_errors",
        "_connection",
        "_manager",
        "_clone",
        "_domain",
        "_guestfs",
        "_network",
    },
}
# The checks of what users type (_validate) sit at the bottom: every unit above _errors may use them.
# So does the one poll loop (_wait, standard library only).
for _name, _allowed in ALLOWED.items():
    if _name not in ("_errors", "_deps", "_validate", "_wait"):
        _allowed.update(("_validate", "_wait"))
# Feature packages may use the host package only for its hardware verdict.
HOST_PUBLIC = {"_host.probe"}
# The host package knows nothing of domains, except kvm_host_info's counts, read from the one host scan.
HOST_SCANS = {"_host.info"}
# ... and whether the base images a fleet needs are settled there (kvm_image's read-only check).
HOST_IMAGES = {"_host.info"}
# kvm_clone's identity reset drives the appliance kvm_guestfs uses: only its session and drive naming.
GUESTFS_PUBLIC = {"_guestfs.session", "_guestfs.devices", "_guestfs.drives", "_guestfs.guest"}
# The one composer: it may run another feature's manager (and nothing else of it).
COMPOSERS = {"_fleet"}
FEATURES = {
    "_host",
    "_domain",
    "_clone",
    "_guestfs",
    "_network",
    "_pool",
    "_snapshot",
    "_inventory",
    "_migrate",
    "_vm",
    "_customize",
}
# Files over this many lines hold more than one concept (the issue says ~400).
MAX_LINES = 420


def _files() -> list[Path]:
    return sorted(p for p in MU.rglob("*.py") if "__pycache__" not in p.parts)


def _unit(path: Path) -> str:
    return path.relative_to(MU).parts[0].removesuffix(".py")


def _dotted(path: Path) -> str:
    rel = path.relative_to(MU).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(path: Path) -> list[str]:
    """Collection imports of one file as 'module_utils.<dotted>' or 'modules.<name>'."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PREFIX):
            base = node.module[len(PREFIX) :]
            # "from ...module_utils import _deps" imports the file _deps
            names = [base] if base != "module_utils" else [f"module_utils.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name[len(PREFIX) :] for a in node.names if a.name.startswith(PREFIX)]
        out.extend(names)
    return out


def test_every_unit_is_known():
    units = {_unit(p) for p in _files() if p.name != "__init__.py" or p.parent != MU}
    units.discard("__init__")
    assert units <= set(ALLOWED), sorted(units - set(ALLOWED))


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(MU)))
def test_imports_follow_the_layers(path):
    unit = _unit(path)
    for imported in _imports(path):
        assert imported.startswith("module_utils."), f"{path.name} imports a non-module_utils plugin {imported}"
        dotted = imported[len("module_utils.") :]
        target = dotted.split(".")[0]
        if target == unit:
            continue
        assert target in ALLOWED[unit], f"{unit} may not import {target} ({path.relative_to(MU)})"
        if target == "_scan" and unit == "_host":
            assert _dotted(path) in HOST_SCANS, f"{path.relative_to(MU)} imports _scan; only _host.info counts domains"
        if target == "_image" and unit == "_host":
            assert _dotted(path) in HOST_IMAGES, f"{path.relative_to(MU)} imports _image; only _host.info asks it"
        if target == "_host" and unit != "_host":
            assert dotted in HOST_PUBLIC, f"{path.relative_to(MU)} imports {dotted}; use _host.probe only"
        if unit in COMPOSERS and target in FEATURES:
            assert dotted.endswith(("manager", ".info")), f"{path.relative_to(MU)} imports {dotted}; only managers"
            continue
        if target == "_guestfs" and unit != "_guestfs":
            assert dotted in GUESTFS_PUBLIC, f"{path.relative_to(MU)} imports {dotted}; use the appliance only"


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for path in _files():
        me = _dotted(path)
        graph.setdefault(me, set())
        for imported in _imports(path):
            graph[me].add(imported[len("module_utils.") :])
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2:
            return
        assert state.get(node) != 1, "import cycle: " + " -> ".join([*trail, node])
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt in graph:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        visit(node, [])


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(MU)))
def test_one_concept_per_file(path):
    text = path.read_text()
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path.relative_to(MU)} has {lines} lines; split it along its seams"
    assert text.startswith("# Private to the virtops.kvm collection"), path
    doc = ast.get_docstring(ast.parse(text))
    assert doc and doc.strip(), f"{path.relative_to(MU)} has no docstring saying what it is"
