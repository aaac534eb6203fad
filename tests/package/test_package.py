# Copyright: (c) 2025, virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection as users get it: build the artefact, install it into an empty
collections path, and run a playbook from outside the checkout that sees only
that path. Catches files missing from the build (build_ignore, MANIFEST) and
anything that works only because the checkout is on a path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import libvirt
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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
    leaked = sorted(n for n in names if n.split("/", 1)[0] in (".venv", ".collections", "tests/output", ".git"))
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
