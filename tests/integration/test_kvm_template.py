"""kvm_template's seal and kvm_clone's sealed path (issue 25), on the real daemon, real qcow2 and a real appliance.

One module-scoped world shares its appliance launches and its one boot: a
template on a private copy of the test guest's base is sealed (four ways),
read back offline, then two clones of it are made with a cloud-init seed each
and no appliance, booted together, and read from their serial consoles
(``VIRTOPS-IDENTITY hostname=.. machine-id=<state>:<id> seed-hostname=..``,
playbooks/files/build_test_guest.py: a disk without /etc/hostname takes the
seed's local-hostname). Last, the refusals: a running domain, and the template
once its disk changed under the clones that stand on it. The tests run in file
order and build on each other.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils._clone import seal
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import read_seed
from tests import guestlib
from tests.harness import assert_four_ways, run_module

pytestmark = pytest.mark.slow

IDENTITY_RE = re.compile(r"VIRTOPS-IDENTITY hostname=(\S+) machine-id=(\w+):(\S+) seed-hostname=(\S+)")
ALL_OPS = ["hostname", "machine-id", "ssh-hostkeys", "net-persistent", "dhcp-leases", "logfiles"]
SEAL_NS = "https://virtops.dev/xmlns/kvm/seal/1"
BOOT_TIMEOUT = 300  # s, both clones booting at once under TCG on 2 cores


def ok(result: dict) -> dict:
    assert not result.get("failed"), result.get("msg")
    return result


def seal_element(conn, name: str):
    """The ``<seal>`` element in the persistent domain XML's metadata, or None."""
    root = etree.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    return root.find(f"metadata/{{{SEAL_NS}}}seal")


def seal_text(conn, name: str) -> str | None:
    el = seal_element(conn, name)
    return None if el is None else etree.tostring(el, encoding="unicode")


def write_bits(path: Path) -> int:
    return os.stat(path).st_mode & 0o222


def raw_sha256(overlay: Path, scratch: Path) -> str:
    """SHA-256 of what the guest reads through ``overlay`` (its whole chain, converted to raw)."""
    out = scratch / f"{overlay.stem}.raw"
    try:
        subprocess.run(
            ["qemu-img", "convert", "-O", "raw", str(overlay), str(out)], check=True, capture_output=True, timeout=300
        )
        return guestlib.sha256(out)
    finally:
        out.unlink(missing_ok=True)


def identity_line(serial_log: Path, timeout: float = 60) -> tuple[str, str, str, str]:
    """The guest's identity line of its first boot (hostname, machine-id state, id, seed hostname)."""
    deadline = time.monotonic() + timeout
    while True:
        text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
        found = IDENTITY_RE.findall(text)
        if found:
            assert len(found) == 1, f"more than one boot in {serial_log}: {found}"
            return found[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no identity line in {serial_log} after {timeout} s:\n{text[-1500:]}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def world(conn, guest):
    """A shut-off template on a private copy of the base; its clones and files are removed at the end."""
    with guestlib.scratch_dir(conn=conn) as (prefix, scratch):
        made = guestlib.define_template(conn, guest["base"], scratch, prefix)
        tpl, disk = made["name"], made["disk"]
        clones = [f"{prefix}-c1", f"{prefix}-c2"]
        yield dict(prefix=prefix, scratch=scratch, tpl=tpl, disk=disk, clones=clones)


def no_appliance(scratch: Path) -> dict:
    """An environment in which libguestfs finds no appliance: a task that launches one fails."""
    return {"LIBGUESTFS_PATH": str(scratch / "no-appliance")}


def clone_args(world: dict) -> dict:
    return dict(
        template=world["tpl"], clones=world["clones"], cloud_init={}, domain_type="qemu", dest_dir=str(world["scratch"])
    )


def test_seal_four_ways(conn, guest, world):
    """check (nothing written, nothing recorded), real (one appliance), again and check again: no change."""
    tpl, disk = world["tpl"], world["disk"]
    args = dict(name=tpl)
    before = guestlib.sha256(disk)
    # check mode plans the seal and launches nothing: with no appliance to find, a launch would fail
    check = ok(run_module("kvm_template", args, check=True, env=no_appliance(world["scratch"])))
    assert check["changed"] is True and check["disks"] == [str(disk)]
    assert check["sealed"]["planned"] == ALL_OPS, check["sealed"]
    assert guestlib.sha256(disk) == before, "check mode wrote the template's disk"
    assert seal_element(conn, tpl) is None, "check mode recorded a seal"
    assert write_bits(disk) == 0o222 & 0o644, "check mode changed the disk's mode"

    results = [
        check,
        run_module("kvm_template", args),
        run_module("kvm_template", args),
        run_module("kvm_template", args, check=True),
    ]
    assert_four_ways(results)
    real = results[1]
    assert real["protected"] == [str(disk)]
    assert set(real["details"]) == set(ALL_OPS), real["details"]
    assert real["sealed"]["done"] == ALL_OPS and real["sealed"]["skipped"] == []
    assert results[2]["sealed"] == real["sealed"] and results[3]["sealed"] == real["sealed"]
    assert "planned" not in results[3]["sealed"]

    # the record: in its own namespace of the metadata, the operations and the disk's fingerprint
    el = seal_element(conn, tpl)
    assert el is not None, conn.lookupByName(tpl).XMLDesc(0)
    ops = {o.get("name"): o.get("result") for o in el.findall(f"{{{SEAL_NS}}}operation")}
    assert ops == dict.fromkeys(ALL_OPS, "done")
    disks = el.findall(f"{{{SEAL_NS}}}disk")
    assert [d.get("path") for d in disks] == [str(disk)]
    assert int(disks[0].get("size")) == os.stat(disk).st_size
    assert disks[0].get("digest").startswith("sha256-16x64k:")
    assert el.get("at") == real["sealed"]["at"]
    assert write_bits(disk) == 0, oct(os.stat(disk).st_mode)
    world["seal"] = seal_text(conn, tpl)

    # the disk read back offline (read-only): no hostname, an empty machine-id, no host keys
    read = ok(
        run_module(
            "kvm_guestfs",
            dict(
                domains=[tpl],
                paths=["/etc/hostname", "/etc/machine-id", "/var/lib/dbus/machine-id", "/etc/hosts"],
                list_dirs=["/etc/ssh", "/var/lib/dhcp", "/etc/udev/rules.d"],
            ),
        )
    )
    got = read["domains"][tpl]
    files, dirs = got["files"], got["dirs"]
    assert files["/etc/hostname"]["exists"] is False, files["/etc/hostname"]
    assert files["/etc/machine-id"]["exists"] is True and files["/etc/machine-id"]["content"] == ""
    assert files["/var/lib/dbus/machine-id"]["exists"] is False
    assert guest["hostname"] not in files["/etc/hosts"]["content"] and "localhost" in files["/etc/hosts"]["content"]
    assert not [f for f in dirs["/etc/ssh"] or [] if f.startswith("ssh_host_")], dirs["/etc/ssh"]
    assert not dirs["/var/lib/dhcp"] and "70-persistent-net.rules" not in (dirs["/etc/udev/rules.d"] or [])
    # reading did not unseal it
    assert seal.sealed(etree.fromstring(conn.lookupByName(tpl).XMLDesc(0).encode()), [str(disk)])
    world["sealed_sum"] = guestlib.sha256(disk)


def test_clones_of_a_sealed_template_need_no_appliance(conn, world):
    """Two clones with a seed each (``cloud_init: {}``), no offline reset, the template's disk not written."""
    assert world.get("seal"), "the template was not sealed (test_seal_four_ways failed)"
    scratch, clones = world["scratch"], world["clones"]
    args = clone_args(world)
    # no appliance for the clones: with none to find, a launch would fail the task
    check = ok(run_module("kvm_clone", args, check=True, env=no_appliance(scratch)))
    assert check["changed"] is True
    assert [(c["name"], c.get("identity_source")) for c in check["clones"]] == [(n, "sealed-template") for n in clones]
    assert all("identity" not in c for c in check["clones"]), check["clones"]
    assert not any((scratch / f"{n}.qcow2").exists() for n in clones), "check mode created a disk"

    real = ok(run_module("kvm_clone", args, env=no_appliance(scratch)))
    assert real["changed"] is True
    world["created"] = {c["name"]: c for c in real["clones"]}
    assert sorted(world["created"]) == sorted(clones)
    for name in clones:
        entry = world["created"][name]
        assert entry["identity_source"] == "sealed-template", entry
        assert "identity" not in entry, entry
    assert guestlib.sha256(world["disk"]) == world["sealed_sum"], "cloning wrote the sealed template's disk"
    assert seal_text(conn, world["tpl"]) == world["seal"]


def test_each_clone_has_its_seed(world):
    """``cloud_init: {}`` still means a seed per clone (local-hostname = the clone's name, by default)."""
    assert world.get("created"), "no clones (test_clones_of_a_sealed_template_need_no_appliance failed)"
    for name in world["clones"]:
        seed = world["scratch"] / f"{name}-cidata.iso"
        entry = world["created"][name]
        assert entry.get("seed") == str(seed) and seed.exists(), f"no seed for {name}: {entry}"
        _label, docs = read_seed(str(seed))
        assert f'"local-hostname": "{name}"' in docs["meta-data"].decode(), docs["meta-data"]


def test_the_clones_boot_with_the_seed_name_and_their_own_machine_id(conn, guest, world):
    """One boot of both: no /etc/hostname, so each takes its seed's name; each makes its own machine-id."""
    assert world.get("created"), "no clones (test_clones_of_a_sealed_template_need_no_appliance failed)"
    scratch, clones = world["scratch"], world["clones"]
    boot = ok(
        run_module(
            "kvm_domain",
            dict(
                domains=[dict(name=n) for n in clones],
                state="running",
                boot_marker=guestlib.MARKER,
                boot_timeout=BOOT_TIMEOUT,
            ),
        )
    )
    assert boot["changed"] is True
    seen = {name: identity_line(scratch / f"{name}.log") for name in clones}
    for name in clones:
        host, state, mid, seed_host = seen[name]
        assert (host, state, seed_host) == (name, "regenerated", name), seen
        assert re.fullmatch(r"[0-9a-f]{32}", mid) and mid != guest["machine_id"], seen
    assert seen[clones[0]][2] != seen[clones[1]][2], f"two clones made the same machine-id: {seen}"
    assert guestlib.sha256(world["disk"]) == world["sealed_sum"], "booting the clones wrote the template's disk"


def test_reruns_change_nothing(conn, world):
    """kvm_clone again: no change, the path each clone took read back from its provenance; the template still sealed."""
    assert world.get("created"), "no clones (test_clones_of_a_sealed_template_need_no_appliance failed)"
    scratch, clones = world["scratch"], world["clones"]
    again = ok(run_module("kvm_clone", clone_args(world), env=no_appliance(scratch)))
    assert again["changed"] is False, again.get("changes")
    assert [(c["name"], c.get("identity_source")) for c in again["clones"]] == [(n, "sealed-template") for n in clones]
    assert all("identity" not in c for c in again["clones"]), again["clones"]
    still = ok(run_module("kvm_template", dict(name=world["tpl"]), env=no_appliance(scratch)))
    assert still["changed"] is False and seal_text(conn, world["tpl"]) == world["seal"]
    assert guestlib.sha256(world["disk"]) == world["sealed_sum"]


def test_clones_do_not_inherit_the_seal_record(conn, world):
    """A clone is not a sealed template: the template's <seal> (its disk's fingerprint) is not copied into it."""
    assert world.get("seal"), "the template was not sealed (test_seal_four_ways failed)"
    inherited = {n: seal_text(conn, n) for n in world["clones"]}
    assert inherited == dict.fromkeys(world["clones"]), f"the clones carry the template's seal record: {inherited}"


def test_an_unsealed_template_plans_the_offline_reset(conn, guest, world):
    """The contrast, in check mode (no appliance): a template that was never sealed gets the per-batch reset."""
    scratch = world["scratch"]
    raw = f"{world['prefix']}-raw"
    raw_disk = scratch / "raw.qcow2"
    shutil.copyfile(guest["base"], raw_disk)
    os.chmod(raw_disk, 0o644)
    conn.defineXML(guestlib.domain_xml(raw, raw_disk, scratch / f"{raw}.log", kind="disk", memory_mib=192))
    name = f"{world['prefix']}-r1"
    args = dict(template=raw, name=name, cloud_init={}, domain_type="qemu", dest_dir=str(scratch))
    check = ok(run_module("kvm_clone", args, check=True, env=no_appliance(scratch)))
    (entry,) = check["clones"]
    assert entry["identity_source"] == "offline-reset", entry
    assert entry["identity"]["planned"] == ALL_OPS and entry["identity"]["hostname"] == name, entry


def test_sealing_a_running_domain_is_refused(conn, world):
    """A running domain is never sealed, in check mode neither; nothing changes."""
    running = world["clones"][0]
    dom = conn.lookupByName(running)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    overlay = world["scratch"] / f"{running}.qcow2"
    mode, record = os.stat(overlay).st_mode, seal_text(conn, running)
    for check in (True, False):
        r = run_module("kvm_template", dict(name=running), check=check)
        assert r.get("failed") is True, r
        assert "running" in r["msg"] and running in r["msg"], r["msg"]
    assert seal_text(conn, running) == record
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and os.stat(overlay).st_mode == mode


def test_resealing_a_changed_template_with_clones_is_refused(conn, world):
    """Once its disk changed the template is unsealed; sealing it again would write a base: refused, naming a clone."""
    tpl, disk, scratch, clones = world["tpl"], world["disk"], world["scratch"], world["clones"]
    ok(run_module("kvm_domain", dict(domains=[dict(name=n) for n in clones], state="destroyed")))
    # the change: writable again, one byte written at the end of the virtual disk
    os.chmod(disk, 0o644)
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(disk)], check=True, capture_output=True, text=True, timeout=60
    )
    size = int(re.search(r'"virtual-size":\s*(\d+)', info.stdout).group(1))
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {size - 1} 1", str(disk)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    root = etree.fromstring(conn.lookupByName(tpl).XMLDesc(0).encode())
    assert seal.drift(seal.record_of(root), [str(disk)]), "the write did not unseal the template"

    tpl_sum = guestlib.sha256(disk)
    overlay = scratch / f"{clones[1]}.qcow2"
    overlay_raw = raw_sha256(overlay, scratch)
    for check in (True, False):
        r = run_module("kvm_template", dict(name=tpl), check=check)
        assert r.get("failed") is True, r
        assert "Refusing to seal template" in r["msg"], r["msg"]
        assert any(str(scratch / f"{n}.qcow2") in r["msg"] for n in clones), r["msg"]
    assert guestlib.sha256(disk) == tpl_sum, "the refused seal wrote the template's disk"
    assert write_bits(disk) == 0o222 & 0o644, "the refused seal changed the disk's mode"
    assert seal_text(conn, tpl) == world["seal"], "the refused seal changed the record"
    assert raw_sha256(overlay, scratch) == overlay_raw, "a clone reads other bytes after the refused seal"
