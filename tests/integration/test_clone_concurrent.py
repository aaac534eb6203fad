"""Two ansible-playbook processes at once on the same host and directory (issue 10, "concurrent plays").

Play A and play B clone overlapping fleets into one directory at the same time; then
one play removes A's own clones while another clones a new fleet there. Checked: no
MAC or UUID shared by two domains, every clone on its own disk over the base, nothing
one play made deleted or overwritten by the other, and every play's rerun reports no
change.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import libvirt
import pytest
import yaml

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from tests import guestlib
from tests.harness import playbook_env

BIN = Path(sys.executable).parent
RECAP = re.compile(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


def playbook(tmp: Path, name: str, clones: list[str], state: str, tpl: str, dest: Path) -> Path:
    task = {"virtops.kvm.kvm_clone": dict(clones=clones, state=state, dest_dir=str(dest))}
    if state != "absent":
        task["virtops.kvm.kvm_clone"].update(template=tpl, domain_type="qemu", identity={"operations": []})
    play = [dict(name=name, hosts="localhost", gather_facts=False, tasks=[dict(name=name, **task)])]
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def start(book: Path) -> subprocess.Popen:
    env = playbook_env()
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local"]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}", str(book)]
    return subprocess.Popen(
        argv, env=env, cwd=str(book.parent), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(*procs: subprocess.Popen) -> list[tuple[int, int]]:
    """(changed, failed) of each play's recap, in order; a play that failed fails the test with its output."""
    out = []
    for p in procs:
        text = p.communicate(timeout=600)[0]
        m = RECAP.search(text or "")
        assert p.returncode == 0 and m, text[-4000:]
        out.append((int(m.group(2)), int(m.group(4))))
    return out


def identities(conn, names: set[str]) -> dict[str, tuple]:
    out = {}
    for dom in conn.listAllDomains():
        if dom.name() in names:
            root = dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            out[dom.name()] = (
                dx.uuid_of(root),
                tuple(dx.macs(root)),
                tuple(d["path"] for d in dx.writable_file_disks(root)),
            )
    return out


@pytest.mark.slow
def test_two_plays_at_once_share_nothing_and_delete_nothing_of_each_other(conn, guest, prefix, scratch):
    made = guestlib.define_template(conn, guest["base"], scratch, prefix)
    tpl, base = made["name"], made["disk"]
    dest = scratch / "clones"
    dest.mkdir(mode=0o755)
    a = [f"{prefix}-a{i}" for i in range(6)]
    b = [f"{prefix}-b{i}" for i in range(6)]
    shared = [f"{prefix}-s{i}" for i in range(3)]
    d = [f"{prefix}-d{i}" for i in range(6)]
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        book_a = playbook(tmp, "fleet-a", a + shared, "present", tpl, dest)
        book_b = playbook(tmp, "fleet-b", shared + b, "present", tpl, dest)
        (ca, fa), (cb, fb) = finish(start(book_a), start(book_b))
        assert fa == fb == 0 and (ca, cb) == (1, 1)
        made = identities(conn, set(a + b + shared))
        assert sorted(made) == sorted(a + b + shared)
        uuids = [u for u, _m, _d in made.values()]
        macs = [m for _u, ms, _d in made.values() for m in ms]
        assert len(set(uuids)) == len(uuids) and len(set(macs)) == len(macs)
        for name, (_u, _m, disks) in made.items():
            assert disks == (str(dest / f"{name}.qcow2"),)
            assert os.path.realpath(st.qcow2_header(disks[0])["backing_file"]) == str(base)
        kept = {name: os.stat(dest / f"{name}.qcow2").st_ino for name in b + shared}

        # one play removes A's own clones while another clones a new fleet into the same directory
        book_gone = playbook(tmp, "gone-a", a, "absent", tpl, dest)
        book_d = playbook(tmp, "fleet-d", d, "present", tpl, dest)
        (cg, fg), (cd, fd) = finish(start(book_gone), start(book_d))
        assert fg == fd == 0 and (cg, cd) == (1, 1)
        now = identities(conn, set(a + b + shared + d))
        assert sorted(now) == sorted(b + shared + d)
        assert {n: os.stat(dest / f"{n}.qcow2").st_ino for n in b + shared} == kept  # not replaced, not deleted
        assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.qcow2" for n in b + shared + d)
        macs = [m for _u, ms, _d in now.values() for m in ms]
        assert len(set(macs)) == len(macs)

        # the reruns of the last two plays at once, and of B: no change
        assert finish(start(book_gone), start(book_d), start(book_b)) == [(0, 0), (0, 0), (0, 0)]
