"""docs/distribution-image-to-class.md, without libvirt: its marked blocks parse and name only real modules.

The real-guest stage (tests/integration/test_real_guest.py) runs these blocks on a Debian guest; this
catches a broken page in seconds: a lost or renamed marker, YAML that does not parse, a module the
collection does not have, a shell script ``sh -n`` rejects, a playbook ``ansible-playbook --syntax-check``
rejects.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import realguest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULES = {p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if not p.name.startswith("_")}
PLAYBOOKS = ("network", "seal", "fleet", "teardown")
# ansible.builtin keywords that look like module keys but are task options
TASK_KEYS = {
    "name", "register", "when", "loop", "loop_control", "changed_when", "failed_when", "timeout",
    "delegate_to", "vars", "become", "tags", "notify", "ignore_errors", "until", "retries", "delay",
}  # fmt: skip


def _tasks(plays: list) -> list[dict]:
    return [
        task for play in plays for section in ("pre_tasks", "tasks", "post_tasks") for task in play.get(section) or []
    ]


def _module(task: dict) -> str:
    keys = [k for k in task if k not in TASK_KEYS]
    assert len(keys) == 1, f"task {task.get('name')!r}: want one module key, found {keys}"
    return keys[0]


def test_the_page_has_every_block_and_a_broken_page_fails():
    blocks = realguest.class_blocks()
    assert set(blocks) == set(realguest.CLASS_KINDS)
    text = realguest.CLASS_DOC.read_text()
    for broken in (
        text.replace("<!-- class:seal -->\n```yaml", "<!-- class:seal -->\n\n```yaml"),  # not right after
        text.replace("<!-- class:fleet -->", "<!-- class:clones -->"),  # renamed
        text.replace("<!-- class:whoami -->\n```sh", "<!-- class:whoami -->\n```yaml"),  # wrong language
        text + "\n<!-- class:network -->\n```yaml\n- hosts: x\n```\n",  # twice
    ):
        with pytest.raises(AssertionError):
            realguest.class_blocks(broken)


def test_the_blocks_parse_and_name_only_modules_the_collection_has():
    blocks = realguest.class_blocks()
    inventory = yaml.safe_load(blocks["inventory"])
    assert inventory["plugin"] == "virtops.kvm.libvirt" and isinstance(inventory["uris"], list), inventory
    used = set()
    for kind in PLAYBOOKS:
        plays = yaml.safe_load(blocks[kind])
        assert isinstance(plays, list) and plays, f"{kind}: not a list of plays"
        for task in _tasks(plays):
            fqcn = _module(task)
            assert fqcn.startswith(("virtops.kvm.", "ansible.builtin.")), f"{kind}: {fqcn} is not fully qualified"
            if fqcn.startswith("virtops.kvm."):
                assert fqcn.split(".")[-1] in MODULES, f"{kind}: no module {fqcn} in plugins/modules/"
            used.add(fqcn)
    for fqcn in ("kvm_network", "kvm_template", "kvm_clone", "kvm_domain_address"):
        assert f"virtops.kvm.{fqcn}" in used, f"the page lost its {fqcn} task"
    assert "ansible.builtin.meta" in used


def test_the_whoami_script_is_valid_shell():
    proc = subprocess.run(
        ["sh", "-n"], input=realguest.class_blocks()["whoami"], text=True, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_ansible_accepts_the_playbooks(tmp_path):
    blocks = realguest.class_blocks()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
    )
    for kind in PLAYBOOKS:
        book = tmp_path / f"{kind}.yml"
        book.write_text(blocks[kind])
        argv = [str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", str(book)]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120)
        assert proc.returncode == 0, f"{kind}: {proc.stdout}{proc.stderr}"
