# Copyright: (c) 2025, virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as users get it: build the artefact, install it into an empty
collections path, and run a playbook from outside the checkout that sees only
that path. Catches files missing from the build (build_ignore, MANIFEST) and
anything that works only because the checkout is on a path. Also: the artefact's
metadata and size, and the execution environment ansible-builder makes from it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import uuid
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import libvirt
import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# What galaxy.yml's build_ignore (and ansible-galaxy's own rules) keep out of the artefact:
# environments, caches, developer tooling, test by-products, built artefacts.
LEAK = re.compile(
    r"(^|/)(\.venv[^/]*|\.collections|\.git|\.ci|\.cache|\.pytest_cache|\.ruff_cache|\.mypy_cache|__pycache__)(/|$)"
    r"|^(bench|scripts|tests/output)(/|$)|\.pyc$|\.tar\.gz$"
    r"|^changelogs/\.plugin-cache\.yaml$|^requirements-(dev|targets)\.txt$"
)
# The artefact stays small: sources and docs, nothing generated or binary.
MAX_ARTEFACT_BYTES = 1024 * 1024
MAX_UNPACKED_BYTES = 4 * 1024 * 1024
MAX_FILE_BYTES = 256 * 1024


def _galaxy_version() -> str:
    for line in (ROOT / "galaxy.yml").read_text().splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("galaxy.yml has no version")


def _clean_env(collections: Path, cfg: Path) -> dict:
    """An environment in which Ansible finds virtops.kvm only in ``collections``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(cfg),
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
        ANSIBLE_ROLES_PATH=str(cfg.parent / "roles"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(cfg.parent / "tmp"),
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    return env


def _run(argv: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv} failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the artefact and install it into an empty collections path (offline)."""
    top = tmp_path_factory.mktemp("package")
    build, colls, work = top / "build", top / "collections", top / "work"
    for d in (build, colls, work, work / "roles", work / "tmp"):
        d.mkdir()
    cfg = work / "ansible.cfg"
    cfg.write_text("[defaults]\nretry_files_enabled = false\n")
    env = _clean_env(colls, cfg)
    _run([BIN / "ansible-galaxy", "collection", "build", str(ROOT), "--output-path", str(build)], cwd=work, env=env)
    artefact = build / f"virtops-kvm-{_galaxy_version()}.tar.gz"
    assert artefact.is_file(), sorted(p.name for p in build.iterdir())
    _run(
        [BIN / "ansible-galaxy", "collection", "install", "--offline", "-p", str(colls), str(artefact)],
        cwd=work,
        env=env,
    )
    return dict(artefact=artefact, collections=colls, work=work, env=env)


def test_artefact_holds_the_collection_and_nothing_local(installed):
    with tarfile.open(installed["artefact"]) as tar:
        names = set(tar.getnames())
    for wanted in (
        "MANIFEST.json",
        "FILES.json",
        "plugins/modules/kvm_host.py",
        "plugins/module_utils/_connection.py",
        "plugins/doc_fragments/connection.py",
        "roles/kvm_host/tasks/main.yml",
        "roles/kvm_host/meta/argument_specs.yml",
        "roles/kvm_fleet/tasks/main.yml",
        "roles/kvm_fleet/meta/argument_specs.yml",
        "meta/runtime.yml",
    ):
        assert wanted in names, f"{wanted} missing from {installed['artefact'].name}"
    leaked = sorted(n for n in names if LEAK.search(n))
    assert not leaked, leaked
    manifest = json.loads(tarfile.open(installed["artefact"]).extractfile("MANIFEST.json").read())
    assert manifest["collection_info"]["namespace"] == "virtops"
    assert manifest["collection_info"]["name"] == "kvm"


def test_installed_collection_is_the_only_one_ansible_sees(installed):
    proc = _run([BIN / "ansible-galaxy", "collection", "list", "virtops.kvm", "--format", "json"],
                cwd=installed["work"], env=installed["env"])  # fmt: skip
    found = json.loads(proc.stdout)
    assert list(found) == [str(installed["collections"] / "ansible_collections")], found
    assert found[str(installed["collections"] / "ansible_collections")]["virtops.kvm"]["version"] == _galaxy_version()


def test_artefact_metadata_is_complete_for_publishing(installed):
    with tarfile.open(installed["artefact"]) as tar:
        info = json.loads(tar.extractfile("MANIFEST.json").read())["collection_info"]
        files = {f["name"] for f in json.loads(tar.extractfile("FILES.json").read())["files"]}
        licence = tar.extractfile("COPYING").read().decode()
    assert len(info["description"]) >= 60 and "libvirt" in info["description"], info["description"]
    # Galaxy's rules for tags: at most 20, lowercase letters, digits and underscores.
    assert {"kvm", "libvirt", "qemu", "virtualization"} <= set(info["tags"]) and len(info["tags"]) <= 20
    assert all(re.fullmatch(r"[a-z0-9_]{1,64}", tag) for tag in info["tags"]), info["tags"]
    for key in ("repository", "documentation", "homepage", "issues"):
        url = urlparse(info[key] or "")
        assert url.scheme == "https" and url.netloc, f"galaxy.yml {key}: {info[key]!r}"
    assert info["license"] == ["GPL-3.0-or-later"] and not info["license_file"]
    assert "COPYING" in files and "GNU GENERAL PUBLIC LICENSE" in licence and "Version 3, 29 June 2007" in licence
    # What ansible-builder reads from the installed collection is in it.
    ee = yaml.safe_load(
        (installed["collections"] / "ansible_collections/virtops/kvm/meta/execution-environment.yml").read_text()
    )
    for entry in ("python", "system"):
        assert ee["dependencies"][entry] in files, ee["dependencies"][entry]


def test_artefact_size_is_bounded(installed):
    with tarfile.open(installed["artefact"]) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
    unpacked = sum(m.size for m in members)
    biggest = max(members, key=lambda m: m.size)
    assert installed["artefact"].stat().st_size <= MAX_ARTEFACT_BYTES, installed["artefact"].stat().st_size
    assert unpacked <= MAX_UNPACKED_BYTES, unpacked
    assert biggest.size <= MAX_FILE_BYTES, (biggest.name, biggest.size)


# Files a checkout may hold that must never reach the artefact, one per build_ignore rule.
CANARIES = (
    ".venv-targets/3.9/lib/python3.9/site-packages/canary.py",
    ".venv/lib/canary.py",
    ".collections/ansible_collections/canary.txt",
    "tests/output/docsite/build/html/index.html",
    "tests/unit/__pycache__/canary.cpython-311.pyc",
    "tests/integration/.pytest_cache/v/cache/lastfailed",
    ".pytest_cache/v/cache/lastfailed",
    ".ruff_cache/canary",
    ".cache/canary",
    "bench/results/canary.json",
    "changelogs/.plugin-cache.yaml",
    "virtops-kvm-0.0.1.tar.gz",
    "requirements-dev.txt",
    "scripts/canary.sh",
    "bench/canary.py",
    ".ci/canary",
)


def test_build_ignore_keeps_environments_caches_and_test_output_out(tmp_path):
    """Build a copy of the checkout with a file in every place the artefact must not take from."""
    src = tmp_path / "src"
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file() and not LEAK.search(name):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    for name in CANARIES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text("canary\n")
    out = tmp_path / "out"
    _run([BIN / "ansible-galaxy", "collection", "build", str(src), "--output-path", str(out)], cwd=tmp_path)
    with tarfile.open(out / f"virtops-kvm-{_galaxy_version()}.tar.gz") as tar:
        names = set(tar.getnames())
    assert "plugins/modules/kvm_clone.py" in names and "COPYING" in names
    assert not names & set(CANARIES), sorted(names & set(CANARIES))
    assert not [n for n in names if LEAK.search(n)]


def _documented_ee_definition() -> str:
    """The execution-environment.yml that docs/execution-environment.md tells users to write."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "execution-environment.md").read_text(), re.S)
    found = [b for b in blocks if re.search(r"^version: 3$", b, re.M)]
    assert len(found) == 1, "docs/execution-environment.md should show one version 3 definition"
    return found[0]


def test_ansible_builder_makes_the_build_context_from_the_collections_own_files(installed, tmp_path):
    """ansible-builder create on the documented definition, then the image build's two steps
    that read the collection, run here (no container engine): the collection install from the
    context, and the introspection that collects its Python and system requirements."""
    text = _documented_ee_definition()
    definition = yaml.safe_load(text)
    artefact_name = definition["additional_build_files"][0]["src"]
    shutil.copy(installed["artefact"], tmp_path / artefact_name)
    (tmp_path / "execution-environment.yml").write_text(text)
    # As in the image: the collections path ansible-galaxy installs to is the configured one.
    ee_collections = tmp_path / "usr-share-ansible-collections"
    env = {
        **installed["env"],
        "ANSIBLE_COLLECTIONS_PATH": str(ee_collections),
        "ANSIBLE_GALAXY_DISABLE_GPG_VERIFY": "1",
    }
    _run([BIN / "ansible-builder", "create", "--output-filename", "Containerfile"], cwd=tmp_path, env=env)
    context = tmp_path / "context"
    build = context / "_build"
    containerfile = (context / "Containerfile").read_text()
    assert "COPY _build /build" in containerfile and "WORKDIR /build" in containerfile
    assert (build / "collections" / artefact_name).read_bytes() == installed["artefact"].read_bytes()

    # Galaxy stage: RUN ... ansible-galaxy collection install ... -r requirements.yml (in /build).
    assert re.search(r"^RUN .*ansible-galaxy collection install .*-r requirements\.yml", containerfile, re.M)
    _run([BIN / "ansible-galaxy", "collection", "install", "--offline", "-r", "requirements.yml",
          "--collections-path", str(ee_collections)], cwd=build, env=env)  # fmt: skip
    assert (ee_collections / "ansible_collections/virtops/kvm/meta/execution-environment.yml").is_file()

    # Builder stage: RUN $PYCMD /output/scripts/introspect.py introspect --write-bindep=... --write-pip=...
    m = re.search(r"^RUN \$PYCMD /output/scripts/introspect\.py (introspect .*)$", containerfile, re.M)
    assert m, containerfile
    args = [a.replace("/tmp/src/", f"{tmp_path}/src/") for a in shlex.split(m.group(1))]
    (tmp_path / "src").mkdir()
    _run([sys.executable, str(build / "scripts" / "introspect.py"), *args, str(ee_collections)], cwd=tmp_path, env=env)
    written_pip = (tmp_path / "src" / "requirements.txt").read_text().splitlines()
    written_bindep = (tmp_path / "src" / "bindep.txt").read_text().splitlines()
    for ours, written in (("ee-requirements.txt", written_pip), ("ee-bindep.txt", written_bindep)):
        wanted = [
            line.split("#", 1)[0].strip()
            for line in (ROOT / "meta" / ours).read_text().splitlines()
            if line.split("#", 1)[0].strip()
        ]
        assert written == [f"{line}  # from collection virtops.kvm" for line in wanted], (ours, written)

    # The Python requirements are what the project's own venv runs on.
    for line in written_pip:
        req = Requirement(line.split("#", 1)[0])
        assert version(req.name) in req.specifier, (line, version(req.name))
    # On Debian, bindep itself reads the list, and finds every Debian package of it (run time
    # and compile profile) installed here: scripts/setup.sh installs them, so the names are real.
    if shutil.which("dpkg"):
        for profile in ([], ["compile"]):
            proc = subprocess.run([BIN / "bindep", "-b", "-f", str(tmp_path / "src" / "bindep.txt"), *profile],
                                  capture_output=True, text=True, check=False)  # fmt: skip
            assert proc.returncode == 0 and not proc.stdout.strip(), (profile, proc.stdout, proc.stderr)


PLAYBOOK = """\
- name: Use the installed virtops.kvm from outside the checkout
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{python}"
  tasks:
    - name: Host facts from the module
      virtops.kvm.kvm_host:
        install_packages: false
      register: host

    - name: The role, from the installed artefact
      ansible.builtin.include_role:
        name: virtops.kvm.kvm_host
      vars:
        kvm_host_install_packages: false

    - name: Write what the module and the role returned
      ansible.builtin.copy:
        dest: "{{{{ playbook_dir }}}}/result.json"
        content: "{{{{ result | to_json }}}}"
        mode: "0600"
      vars:
        result:
          changed: "{{{{ host.changed }}}}"
          host: "{{{{ host.host }}}}"
          role_domain_type: "{{{{ kvm_host_domain_type }}}}"
"""


def test_playbook_runs_from_outside_the_checkout(installed):
    work = installed["work"]
    assert ROOT not in work.parents
    (work / "play.yml").write_text(PLAYBOOK.format(python=sys.executable))
    _run([BIN / "ansible-playbook", "-i", "localhost,", "play.yml"], cwd=work, env=installed["env"])
    out = json.loads((work / "result.json").read_text())
    host = out["host"]
    assert host["recommended_domain_type"] in ("kvm", "qemu")
    assert host["libvirt_version"] and host["qemu_version"], host
    assert host["cpu_count"] >= 1 and host["memory_mib"] > 0
    assert out["role_domain_type"] == host["recommended_domain_type"]
    assert out["changed"] is False


def test_demo_runs_from_the_installed_collection(installed):
    """The demo ships: ``ansible-playbook virtops.kvm.demo`` runs from the artefact alone.

    A smaller fleet than the README's (one clone, booted, no offline read) in a
    scratch directory with its own template, so it leaves the checkout's demo
    alone; the installed teardown playbook then removes the fleet, and the test
    removes the template and its base.
    """
    tag = f"vt-pkg{uuid.uuid4().hex[:6]}"
    scratch = Path("/var/lib/libvirt/images/virtops-test") / tag
    scratch.mkdir(parents=True, mode=0o755)
    scratch.chmod(0o755)
    template = f"{tag}-template"
    extra = dict(
        ansible_python_interpreter=sys.executable,
        demo_dir=str(scratch),
        demo_template=template,
        demo_base=str(scratch / "base.qcow2"),
        kvm_host_storage_dirs=[dict(path=str(scratch))],
        kvm_fleet_name=tag,
        kvm_fleet_dest_dir=str(scratch),
        kvm_fleet_xml_dir=str(scratch),
        kvm_fleet_clones=[dict(name=f"{tag}-01", state="running")],
        kvm_fleet_first_boot=False,
        kvm_fleet_verify_paths=[],
        kvm_site_hosts="localhost",
    )
    work = installed["work"]
    (work / "demo-vars.json").write_text(json.dumps(extra))
    play = ["-i", "localhost,", "-c", "local", "-e", "@demo-vars.json"]
    conn = libvirt.open("qemu:///system")
    try:
        proc = _run([BIN / "ansible-playbook", *play, "virtops.kvm.demo"], cwd=work, env=installed["env"])
        assert f"{tag}-01" in proc.stdout and "VIRTOPS-GUEST-UP" in proc.stdout, proc.stdout[-3000:]
        dom = conn.lookupByName(f"{tag}-01")
        assert dom.isActive()
        _run([BIN / "ansible-playbook", *play, "virtops.kvm.fleet_teardown"], cwd=work, env=installed["env"])
        assert f"{tag}-01" not in conn.listDefinedDomains() + [d.name() for d in conn.listAllDomains()]
    finally:
        for dom in conn.listAllDomains():
            if dom.name().startswith(tag):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        conn.close()
        for f in scratch.iterdir():
            f.chmod(0o644)
            f.unlink()
        scratch.rmdir()
