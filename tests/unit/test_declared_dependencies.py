"""What an execution environment must install, read from the code.

Every third-party module that plugins/ imports and every program it runs must be
declared in meta/ee-requirements.txt (pip) or meta/ee-bindep.txt (system packages,
Debian and Fedora/EL names), the files meta/execution-environment.yml points
ansible-builder at; and nothing is declared that the code no longer needs. A new
``import x`` or ``runner(["tool", ...])`` fails here until it is declared (and, for a
program, said which package provides it below).

Programs are found where the code names them: the first item of an argument list
given to ``runner``/``run_command``/``subprocess.*`` or assigned to an ``argv``/``cmd``
variable, and the names given to ``which``/``get_bin_path``/``_bin``/``_need_tool``
(string constants, or module-level constants holding one). A program the code only
falls back to when the declared one is missing (ALTERNATIVES) needs no declaration of its own.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OWN = "ansible_collections.virtops.kvm"
PLATFORMS = ("dpkg", "rpm")

# Import name -> what provides it in an execution environment. None: the environment's own.
IMPORTS = {
    "ansible": None,  # ansible-core
    "libvirt": {"pip": "libvirt-python"},
    "lxml": {"pip": "lxml"},
    # Not on PyPI: packaged for the distribution's python3 only.
    "guestfs": {"dpkg": "python3-guestfs", "rpm": "python3-libguestfs"},
}
# Program -> the package that provides it (rpm names as on Fedora and EL 9+).
PROGRAMS = {
    "qemu-img": {"dpkg": "qemu-utils", "rpm": "qemu-img"},
    "guestmount": {"dpkg": "guestmount", "rpm": "libguestfs"},
    "guestunmount": {"dpkg": "guestmount", "rpm": "libguestfs"},
    "virsh": {"dpkg": "libvirt-clients", "rpm": "libvirt-client"},
    "xorriso": {"dpkg": "xorriso", "rpm": "xorriso"},
}
# Program -> the declared program it stands in for: the code uses it only when that one is
# not installed (kvm_clone's cloud-init seed: xorriso, else genisoimage, else mkisofs).
ALTERNATIVES = {
    "genisoimage": "xorriso",
    "mkisofs": "xorriso",
}
# Programs of the hypervisor itself: kvm_host inspects and changes the host it runs on
# (its package manager, init system, libvirt daemons and QEMU binaries). Inside an
# execution environment there is no such host to manage, so they are not declared.
HOST_PROGRAMS = {
    "apt-get",
    "dpkg-query",
    "dnf",
    "yum",
    "rpm",
    "zypper",
    "systemctl",
    "libvirtd",
    "virtqemud",
    "qemu-kvm",
    "qemu-system-x86_64",
    "qemu-system-aarch64",
}
# Runtime system packages needed without the code naming them.
SUPPORT = {
    "libvirt0": "the libvirt client library that libvirt-python links to",
    "libvirt-libs": "the libvirt client library that libvirt-python links to",
    "osinfo-db": "the osinfo database kvm_vm reads (data files under /usr/share/osinfo, no program)",
}

RUNNERS = {"runner", "run_command"}
SUBPROCESS = {"run", "Popen", "call", "check_call", "check_output"}
FINDERS = {"which", "get_bin_path", "_bin", "_need_tool"}
ARGV_NAME = re.compile(r"argv|cmd|command", re.IGNORECASE)


# ---------------------------------------------------------------------------- the scan


def is_stdlib(name: str) -> bool:
    if name in sys.builtin_module_names:
        return True
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names is not None:
        return name in names
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    return spec.origin.startswith(sysconfig.get_paths()["stdlib"]) and "-packages" not in spec.origin


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _string(node: ast.AST, constants: dict) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _argv_head(node: ast.AST, constants: dict) -> str | None:
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        return _string(node.elts[0], constants)
    return None


def _add(found: dict, key: str, where: str) -> None:
    found.setdefault(key, set()).add(where)


def scan(root: Path) -> tuple[dict, dict]:
    """Third-party import roots and program names under ``root``: name -> {file:line}."""
    imports, programs = {}, {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(root.parent) if root.parent in path.parents else path
        constants = {
            node.targets[0].id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        }
        for node in ast.walk(tree):
            where = f"{rel}:{getattr(node, 'lineno', 0)}"
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Call):
                name = _call_name(node.func)
                first = node.args[0] if node.args else None
                if name in ("import_module", "__import__") and first is not None:
                    module = _string(first, constants)
                    modules = [module] if module else []
                elif name in FINDERS:
                    for arg in node.args:
                        program = _string(arg, constants)
                        if program:
                            _add(programs, Path(program).name, where)
                elif first is not None and (
                    name in RUNNERS
                    or (
                        name in SUBPROCESS
                        and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "subprocess"
                    )
                ):
                    program = _argv_head(first, constants)
                    if program:
                        _add(programs, Path(program).name, where)
            elif isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                program = _argv_head(node.value, constants)
                if program and any(ARGV_NAME.search(t) for t in targets):
                    _add(programs, Path(program).name, where)
            for module in modules:
                if module == OWN or module.startswith(OWN + "."):
                    continue
                top = module.split(".")[0]
                if top == "ansible_collections":
                    _add(imports, ".".join(module.split(".")[:3]), where)
                elif not is_stdlib(top):
                    _add(imports, top, where)
    return imports, programs


# ----------------------------------------------------------------------- the declarations


def pip_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def bindep_packages(path: Path) -> dict:
    """platform -> the packages installed at run time there (bindep's rules, the part this file uses)."""
    out = {p: set() for p in PLATFORMS}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9.+_-]*)(?:\s+\[([^\]]*)\])?", line)
        assert m, f"{path.name}:{number}: {raw!r} uses bindep syntax this test does not read; extend bindep_packages()"
        name, selectors = m.group(1), (m.group(2) or "").split()
        assert not any(s.startswith("!") for s in selectors), f"{path.name}:{number}: negations are not read here"
        platforms = [s.split(":", 1)[1] for s in selectors if s.startswith("platform:")]
        profiles = [s for s in selectors if not s.startswith("platform:")]
        if profiles:
            continue  # compile and other profiles: not installed at run time
        for p in PLATFORMS:
            if not platforms or p in platforms:
                out[p].add(name)
    return out


def declared(root: Path) -> tuple[set, dict, set]:
    """(pip names, platform -> bindep run-time packages, collection dependencies) of ``root``."""
    ee = yaml.safe_load((root / "meta" / "execution-environment.yml").read_text())
    deps = ee["dependencies"]
    galaxy = yaml.safe_load((root / "galaxy.yml").read_text())
    return (
        pip_names(root / deps["python"]),
        bindep_packages(root / deps["system"]),
        set(galaxy.get("dependencies") or {}),
    )


def undeclared(imports: dict, programs: dict, pip: set, system: dict, collections: set) -> list[str]:
    """What the code uses that the execution environment files do not declare."""
    problems = []
    for module, where in sorted(imports.items()):
        at = ", ".join(sorted(where))
        if module.startswith("ansible_collections."):
            if module.split(".", 1)[1] not in collections:
                problems.append(f"{at}: imports from the collection {module}, not in galaxy.yml's dependencies")
            continue
        if module not in IMPORTS:
            problems.append(
                f"{at}: imports {module!r}: add its package to meta/ee-requirements.txt (PyPI) or "
                "meta/ee-bindep.txt (distribution), and to IMPORTS in this test"
            )
            continue
        provider = IMPORTS[module]
        if provider and "pip" in provider and provider["pip"] not in pip:
            problems.append(f"{at}: imports {module!r}; {provider['pip']} is not in meta/ee-requirements.txt")
        for p in PLATFORMS:
            if provider and p in provider and provider[p] not in system[p]:
                problems.append(f"{at}: imports {module!r}; {provider[p]} [platform:{p}] is not in meta/ee-bindep.txt")
    for program, where in sorted(programs.items()):
        at = ", ".join(sorted(where))
        if program in HOST_PROGRAMS:
            continue
        declared_as = ALTERNATIVES.get(program, program)
        runs = repr(program) if declared_as == program else f"{program!r} (in place of {declared_as!r})"
        if declared_as not in PROGRAMS:
            problems.append(
                f"{at}: runs {runs}: add the packages that provide it to meta/ee-bindep.txt "
                "(platform:dpkg and platform:rpm) and to PROGRAMS in this test"
            )
            continue
        for p in PLATFORMS:
            if PROGRAMS[declared_as][p] not in system[p]:
                problems.append(
                    f"{at}: runs {runs}; {PROGRAMS[declared_as][p]} [platform:{p}] is not in meta/ee-bindep.txt"
                )
    return problems


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def used() -> tuple[dict, dict]:
    return scan(ROOT / "plugins")


def test_the_code_uses_only_declared_modules_and_programs(used):
    problems = undeclared(*used, *declared(ROOT))
    assert not problems, "\n".join(problems)


def test_every_declaration_is_still_needed(used):
    imports, programs = used
    pip, system, _collections = declared(ROOT)
    providers = [IMPORTS[m] for m in imports if IMPORTS.get(m)] + [PROGRAMS[p] for p in programs if p in PROGRAMS]
    needed_pip = {prov["pip"] for prov in providers if "pip" in prov}
    assert pip == needed_pip, f"meta/ee-requirements.txt lists {sorted(pip - needed_pip)} that no import needs"
    for p in PLATFORMS:
        needed = {prov[p] for prov in providers if p in prov}
        stale = sorted(system[p] - needed - set(SUPPORT))
        assert not stale, f"meta/ee-bindep.txt [platform:{p}] lists {stale} that the code neither imports nor runs"
    # The tables here stay true too: an entry the code no longer uses goes.
    assert not set(IMPORTS) - set(imports) - {"ansible"}, set(IMPORTS) - set(imports)
    tables = set(PROGRAMS) | HOST_PROGRAMS | set(ALTERNATIVES)
    assert not tables - set(programs), tables - set(programs)


def test_the_scan_sees_what_it_must(used):
    imports, programs = used
    assert {"ansible", "libvirt", "lxml", "guestfs"} <= set(imports), sorted(imports)
    assert {"qemu-img", "guestmount", "guestunmount", "virsh", "apt-get", "libvirtd"} <= set(programs), sorted(programs)
    assert not {"os", "json", "xml", "__future__", "ansible_collections"} & set(imports), sorted(imports)


PLANTED = """\
import os
import yaml_frobnicator
from cloudinit.util import load_file
from ansible_collections.community.general.plugins.module_utils import x
from ansible_collections.virtops.kvm.plugins.module_utils import _errors
import importlib

MCOPY = "mcopy"
mod = importlib.import_module("requests")


def make_seed(runner, which, out):
    runner(["mkdosfs", "-n", "cidata", out])
    argv = [MCOPY, "-i", out]
    runner(argv)
    tool = which("virt-customize") or which("genisoimage")
    return tool


def qemu(subprocess):
    subprocess.run(["/usr/bin/cloud-localds", "seed.img"], check=True)
    subprocess.run(["qemu-img", "info"], check=True)
"""


def test_a_new_import_or_program_fails_the_check(tmp_path):
    """The check can fail: a plugin that imports and runs undeclared things is reported, line by line."""
    plugins = tmp_path / "plugins" / "module_utils"
    plugins.mkdir(parents=True)
    (plugins / "_seed.py").write_text(PLANTED)
    imports, programs = scan(tmp_path / "plugins")
    assert set(imports) == {"yaml_frobnicator", "cloudinit", "requests", "ansible_collections.community.general"}
    assert set(programs) == {"mkdosfs", "mcopy", "virt-customize", "genisoimage", "cloud-localds", "qemu-img"}
    problems = "\n".join(undeclared(imports, programs, *declared(ROOT)))
    for name in ("yaml_frobnicator", "cloudinit", "requests", "community.general"):
        assert name in problems
    for name in ("mkdosfs", "mcopy", "virt-customize", "cloud-localds"):
        assert f"runs {name!r}" in problems
    # qemu-img is declared; genisoimage stands in for xorriso, which is.
    assert "qemu-img" not in problems and "genisoimage" not in problems and "_seed.py:2" in problems


def test_a_missing_declaration_fails_the_check(used, tmp_path):
    """The other half: code unchanged, a line dropped from the declarations."""
    pip, system, collections = declared(ROOT)
    system = {p: set(pkgs) for p, pkgs in system.items()}
    system["rpm"].discard("qemu-img")
    system["dpkg"].discard("xorriso")
    problems = undeclared(*used, pip - {"lxml"}, system, collections)
    assert any("lxml is not in meta/ee-requirements.txt" in p for p in problems), problems
    assert any("qemu-img [platform:rpm] is not in meta/ee-bindep.txt" in p for p in problems), problems
    # A fallback program does not excuse a missing declaration of the program it stands in for.
    assert any("runs 'genisoimage' (in place of 'xorriso'); xorriso [platform:dpkg]" in p for p in problems), problems


DPKG_FILES = [(pkgs["dpkg"], f"bin/{prog}") for prog, pkgs in sorted(PROGRAMS.items())] + [
    (pkgs["dpkg"], f"/{mod}.py") for mod, pkgs in sorted(IMPORTS.items()) if pkgs and "dpkg" in pkgs
]


@pytest.mark.skipif(not shutil.which("dpkg"), reason="Debian names are checked on Debian")
@pytest.mark.parametrize("package,suffix", DPKG_FILES, ids=[s.split("/")[-1] for _p, s in DPKG_FILES])
def test_the_debian_package_provides_it(package, suffix):
    """The tables' Debian names are right: the package really ships the program or module (setup.sh installs them)."""
    proc = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"{package} is not installed here (scripts/setup.sh installs it)")
    assert any(f.endswith(suffix) for f in proc.stdout.splitlines()), f"{package} ships no *{suffix}"
