"""Helpers for the benches that time real ``ansible-playbook`` runs against this checkout's collection.

``play`` runs on localhost with a local connection and this venv's Python (the modules
need its libvirt and lxml), with the repository's ansible.cfg. ``idle_play`` is the
baseline: the same ``ansible-playbook`` with one trivial task, so that "beyond an idle
play" leaves out Ansible's own start-up. ``write_play`` and ``ground_play`` do the same over
the hypervisors of a test ground (tests/ground.py), over SSH. Not part of the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.fleet_clone import cleanup as remove_clones
from tests.harness import playbook_env

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IMAGES = Path("/var/lib/libvirt/images")

IDLE = """
- name: Idle play (baseline)
  hosts: localhost
  gather_facts: false
  tasks:
    - name: One trivial module
      ansible.builtin.ping:
"""

_RECAP = re.compile(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")
# one line of the play recap per host: name, ok, changed, unreachable, failed
_HOST_RECAP = re.compile(r"^(\S+)\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def play(text: str, extra_vars: dict | None = None, check: bool = False) -> dict:
    """Run one playbook; return {seconds, ok, changed, failed, stdout}. Raises on a failed play."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".collections"),
        ANSIBLE_ROLES_PATH=str(ROOT / "roles"),
        ANSIBLE_NOCOLOR="1",
        PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
    )
    with tempfile.TemporaryDirectory(prefix="virtops-bench-") as tmp:
        book = Path(tmp) / "play.yml"
        book.write_text(text)
        varsfile = Path(tmp) / "vars.json"
        varsfile.write_text(json.dumps(dict(extra_vars or {}, ansible_python_interpreter=sys.executable)))
        argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", f"@{varsfile}", str(book)]
        if check:
            argv.append("--check")
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - t0
    m = _RECAP.search(proc.stdout)
    if proc.returncode != 0 or m is None:
        raise RuntimeError(f"play failed (rc={proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}")
    ok, changed, _unreachable, failed = (int(x) for x in m.groups())
    return dict(seconds=seconds, ok=ok, changed=changed, failed=failed, stdout=proc.stdout)


def write_play(path: Path, tasks: list, variables: dict | None = None, hosts: str = "hypervisors") -> Path:
    """A one-play playbook at ``path`` (JSON, which is YAML) over ``hosts``, no fact gathering."""
    book = {"name": path.stem, "hosts": hosts, "gather_facts": False, "vars": variables or {}, "tasks": tasks}
    path.write_text(json.dumps([book], indent=1))
    return path


def ground_play(
    inventory: Path, book: Path, limit: str | None = None, forks: int = 10, allow_failure: bool = False, **env: str
) -> dict:
    """``ansible-playbook`` of ``book`` over a ground's ``inventory`` (SSH), ``forks`` forks, ``env`` on top of
    playbook_env. Returns {seconds, rc, hosts: {name: {ok, changed, unreachable, failed}}, changed (all hosts),
    stdout}; raises on a failed play unless ``allow_failure``."""
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(book)]
    if limit:
        argv += ["--limit", limit]
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, env=playbook_env(ANSIBLE_FORKS=str(forks), **env), cwd=str(book.parent), capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    hosts = {
        m[0]: dict(zip(("ok", "changed", "unreachable", "failed"), (int(x) for x in m[1:])))
        for m in _HOST_RECAP.findall(proc.stdout)
    }
    if (proc.returncode != 0 or not hosts) and not allow_failure:
        raise RuntimeError(f"{book.name} failed (rc={proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-2000:]}")
    changed = sum(h["changed"] for h in hosts.values())
    return dict(seconds=seconds, rc=proc.returncode, hosts=hosts, changed=changed, stdout=proc.stdout)


def idle_play() -> float:
    return play(IDLE)["seconds"]


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


@contextlib.contextmanager
def workspace(uri: str) -> Iterator[tuple[str, Path, object]]:
    """(prefix ``vb-<hex>``, its directory under /var/lib/libvirt/images, a connection); all removed after."""
    import libvirt

    prefix = f"vb-{secrets.token_hex(4)}"
    workdir = IMAGES / f"virtops-bench-{prefix}"
    workdir.mkdir(mode=0o755)
    conn = libvirt.open(uri)
    try:
        yield prefix, workdir, conn
    finally:
        try:
            remove_clones(conn, prefix, workdir, set())
        finally:
            conn.close()
            shutil.rmtree(workdir, ignore_errors=True)


def test_guest_template(conn, prefix: str, workdir: Path, memory_mib: int = 192) -> tuple[str, Path]:
    """The bootable test guest as template ``<prefix>-tpl``, defined on a copy of its base in ``workdir``.

    The copy is ``workdir/base.qcow2``, the one file ``remove_clones`` keeps; returns (template, disk).
    """
    from tests import guestlib

    tpl = f"{prefix}-tpl"
    disk = workdir / "base.qcow2"
    shutil.copyfile(guestlib.build_guest()["base"], disk)
    os.chmod(disk, 0o644)
    conn.defineXML(guestlib.domain_xml(tpl, disk, workdir / f"{tpl}.log", kind="disk", memory_mib=memory_mib))
    return tpl, disk
