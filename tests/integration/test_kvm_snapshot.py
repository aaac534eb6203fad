"""kvm_snapshot and kvm_snapshot_info against the real qemu:///system with booted test guests.

One module-scoped world: a template on a private copy of the test guest's base and
two overlay clones of it made by kvm_clone and booted: ``ext`` for external
snapshots, ``int`` for internal ones. The tests run in file order on that world
(each guest boots once and reboots once; ext boots again after its revert), and
the last one reads both guests' boot logs offline in one kvm_guestfs launch: the
line written after each snapshot is gone. The template's disk (the clones' base)
must end with the checksum it began with. The external guest covers live commits
of the top layer and of a layer below it, a live pull and an offline commit; the
internal one memory and disk-only snapshots.
"""

from __future__ import annotations

import json
import os
import subprocess

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module

pytestmark = pytest.mark.slow

BOOT_LOG = "/var/log/virtops-boot.log"


def chain(path) -> list[str]:
    """The backing chain as qemu-img reports it (works on a running guest's disk too)."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [i["filename"] for i in json.loads(out)]


def disk_of(dom, live: bool = False) -> str:
    flags = 0 if live else libvirt.VIR_DOMAIN_XML_INACTIVE
    return dx.disks(dx.parse(dom.XMLDesc(flags)))[0]["path"]


def snaps(conn, name: str) -> list[str]:
    return sorted(s.getName() for s in conn.lookupByName(name).listAllSnapshots())


def ok(result: dict) -> dict:
    assert not result.get("failed"), result.get("msg")
    return result


@pytest.fixture(scope="module")
def world(conn, guest):
    with guestlib.scratch_dir(conn=conn) as (prefix, scratch):
        made = guestlib.define_template(conn, guest["base"], scratch, prefix, memory_mib=256)
        tpl, tpl_disk = made["name"], made["disk"]
        tpl_sha = guestlib.sha256(tpl_disk)
        ext, intl = f"{prefix}-ext", f"{prefix}-int"
        ok(run_module("kvm_clone", dict(template=tpl, clones=[ext, intl], domain_type="qemu", state="running")))
        yield dict(prefix=prefix, scratch=scratch, tpl=tpl, tpl_disk=tpl_disk, tpl_sha=tpl_sha, ext=ext, int=intl)


def test_external_snapshots_of_a_running_and_a_shut_off_guest(world, conn):
    ext, scratch, tpl_disk = world["ext"], world["scratch"], str(world["tpl_disk"])
    disk = str(scratch / f"{ext}.qcow2")
    log = scratch / f"{ext}.log"
    guestlib.wait_for_marker(log, timeout=180)
    dom = conn.lookupByName(ext)
    assert chain(disk) == [disk, tpl_disk]

    # running: a new overlay per disk, the guest paused for the switch and running on
    results = four_ways("kvm_snapshot", dict(domain=ext, name="pre", kind="external", description="before"))
    assert_four_ways(results)
    pre = str(scratch / f"{ext}.vda.pre.qcow2")
    assert results[0]["created_files"] == results[1]["created_files"] == [pre]
    assert any("guest paused for it" in c for c in results[1]["changes"])
    snap = results[1]["snapshot"]
    assert (snap["kind"], snap["memory"], snap["current"], snap["description"]) == ("external", False, True, "before")
    assert snap["disks"][0]["base"] == disk and snap["disks"][0]["in_chain"] is True
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert chain(pre) == [pre, disk, tpl_disk] and disk_of(dom, live=True) == disk_of(dom) == pre

    # written after the snapshot: the guest reboots and logs its second boot (into the new layer)
    dom.reboot(0)
    guestlib.wait_for_marker(log, timeout=180, count=2)

    # two more; the middle one's live delete commits a layer below the top, the next snapshot moves down
    ok(run_module("kvm_snapshot", dict(domain=ext, name="mid", kind="external")))
    ok(run_module("kvm_snapshot", dict(domain=ext, name="post", kind="external")))
    mid, post = str(scratch / f"{ext}.vda.mid.qcow2"), str(scratch / f"{ext}.vda.post.qcow2")
    assert chain(post) == [post, mid, pre, disk, tpl_disk]
    r = ok(run_module("kvm_snapshot", dict(domain=ext, name="mid", state="absent")))
    assert r["merged"] == [dict(target="vda", method="commit", base=pre, layer=mid)] and not os.path.exists(mid)
    assert f"snapshot post: its base is now {pre}" in r["changes"]
    assert chain(post) == [post, pre, disk, tpl_disk] and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    info = ok(run_module("kvm_snapshot_info", dict(domain=ext, name=["post"])))
    assert info["snapshots"][0]["disks"][0]["base"] == pre and info["snapshots"][0]["parent"] == "pre"

    # the top one's live delete: an active commit and pivot, one layer shorter, the guest still running
    results = four_ways("kvm_snapshot", dict(domain=ext, name="post", state="absent"))
    assert_four_ways(results)
    assert results[1]["merged"] == [dict(target="vda", method="commit", base=pre, layer=post)]
    assert results[1]["removed_files"] == [post] and not os.path.exists(post)
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert disk_of(dom, live=True) == disk_of(dom) == pre and chain(pre) == [pre, disk, tpl_disk]
    assert snaps(conn, ext) == ["pre"]

    # revert: the guest powered off, its disk a fresh overlay on the snapshot's base, the later state kept
    results = four_ways("kvm_snapshot", dict(domain=ext, name="pre", state="current"))
    assert_four_ways(results)
    fresh = str(scratch / f"{ext}.vda.pre@1.qcow2")
    assert results[0]["created_files"] == results[1]["created_files"] == [fresh]
    assert results[1]["kept_files"] == [pre] and os.path.exists(pre)
    assert not dom.isActive() and disk_of(dom) == fresh and chain(fresh) == [fresh, disk, tpl_disk]
    assert "state: shutoff" in results[1]["diff"]["after"]

    # kvm_clone will not put clones on a template whose disk is a snapshot layer
    r = run_module("kvm_clone", dict(template=ext, name=f"{world['prefix']}-cc", domain_type="qemu"))
    assert r["failed"] and "external snapshot layer" in r["msg"] and "pre" in r["msg"]

    # shut off: created by libvirt offline, at once current (nothing written), then merged offline
    results = four_ways("kvm_snapshot", dict(domain=ext, name="off", kind="external"))
    assert_four_ways(results)
    off = str(scratch / f"{ext}.vda.off.qcow2")
    assert chain(off) == [off, fresh, disk, tpl_disk]
    assert ok(run_module("kvm_snapshot", dict(domain=ext, name="off", state="current")))["changed"] is False
    results = four_ways("kvm_snapshot", dict(domain=ext, name="off", state="absent"))
    assert_four_ways(results)
    assert results[1]["merged"] == [dict(target="vda", method="commit", base=fresh, layer=off)]
    assert disk_of(dom) == fresh and chain(fresh) == [fresh, disk, tpl_disk] and not os.path.exists(off)

    # booted again from the reverted disk (a third boot line, into the fresh overlay) ...
    dom.create()
    guestlib.wait_for_marker(log, timeout=180, count=3)
    # ... pre's base carries the kept layer: it is pulled live into the disk, never written
    disk_sha = guestlib.sha256(disk)
    results = four_ways("kvm_snapshot", dict(domain=ext, name="pre", state="absent"))
    assert_four_ways(results)
    assert results[1]["merged"] == [dict(target="vda", method="pull", base=disk, layer=fresh)]
    assert results[1]["removed_files"] == [] and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert guestlib.sha256(disk) == disk_sha and chain(fresh) == [fresh, tpl_disk]
    assert snaps(conn, ext) == []
    dom.destroy()


def test_internal_snapshots_of_a_running_and_a_shut_off_guest(world, conn):
    intl, scratch = world["int"], world["scratch"]
    disk = str(scratch / f"{intl}.qcow2")
    log = scratch / f"{intl}.log"
    guestlib.wait_for_marker(log, timeout=180)
    dom = conn.lookupByName(intl)

    results = four_ways("kvm_snapshot", dict(domain=intl, name="run"))
    assert_four_ways(results)
    snap = results[1]["snapshot"]
    assert (snap["kind"], snap["memory"], snap["state"]) == ("internal", True, "running")
    assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING

    dom.reboot(0)  # written after the snapshot: a second boot line
    guestlib.wait_for_marker(log, timeout=180, count=2)

    results = four_ways("kvm_snapshot", dict(domain=intl, name="run", state="current"))
    assert_four_ways(results)
    assert tuple(dom.state()) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT)
    dom.destroy()

    results = four_ways("kvm_snapshot", dict(domain=intl, name="cold", description="off"))
    assert_four_ways(results)
    assert (results[1]["snapshot"]["memory"], results[1]["snapshot"]["state"]) == (False, "shutoff")
    assert ok(run_module("kvm_snapshot", dict(domain=intl, name="cold", state="current")))["changed"] is False

    info = ok(run_module("kvm_snapshot_info", dict(domain=intl)))
    assert [s["name"] for s in info["snapshots"]] == ["run", "cold"]
    assert info["current"] == "cold" and info["roots"] == ["run"] and info["snapshots"][0]["children"] == ["cold"]
    assert info["disks"] == [dict(target="vda", chain=[disk, str(world["tpl_disk"])])]

    assert_four_ways(four_ways("kvm_snapshot", dict(domain=intl, name="cold", state="absent")))
    assert snaps(conn, intl) == ["run"]
    listed = subprocess.run(["qemu-img", "snapshot", "-l", disk], capture_output=True, text=True, check=True)
    assert "run" in listed.stdout and "cold" not in listed.stdout


def test_bad_input_changes_nothing(world, conn, guest):
    tpl, scratch, prefix = world["tpl"], world["scratch"], world["prefix"]
    before = sorted(p.name for p in scratch.iterdir())
    for kind in ("internal", "external"):
        r = run_module("kvm_snapshot", dict(domain=tpl, name="x", kind=kind))
        assert r["failed"] and "is the base of" in r["msg"] and world["int"] in r["msg"], r["msg"]
    r = run_module("kvm_snapshot", dict(domain=f"{prefix}-nope", name="x"))
    assert r["failed"] and "is not defined" in r["msg"]
    r = run_module("kvm_snapshot", dict(domain=tpl, name="../x"))
    assert r["failed"] and "a name is 1 to 64 characters" in r["msg"]
    r = run_module("kvm_snapshot", dict(domain=tpl, name="missing", state="current"))
    assert r["failed"] and "no snapshot named 'missing'" in r["msg"]
    # a memory snapshot of a running domain with a shared disk
    shr = f"{prefix}-shr"
    own = guestlib.make_overlay(guest["base"], scratch / "shr.qcow2")
    shared = scratch / "shared.img"
    shared.write_bytes(b"\0" * (1 << 20))
    root = dx.parse(guestlib.domain_xml(shr, own, scratch / "shr.log", kind="kernel", memory_mib=128))
    vdb = dx.parse(
        f"<domain><devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{shared}'/>"
        "<target dev='vdb' bus='virtio'/><shareable/></disk></devices></domain>"
    ).find("devices/disk")
    root.find("devices").append(vdb)
    dom = conn.defineXML(dx.tostring(root))
    dom.create()
    try:
        r = run_module("kvm_snapshot", dict(domain=shr, name="x"))
        assert r["failed"] and "shared disk" in r["msg"]
    finally:
        dom.destroy()
    assert snaps(conn, tpl) == [] and snaps(conn, shr) == []
    assert sorted(p.name for p in scratch.iterdir()) == sorted([*before, "shr.qcow2", "shared.img", "shr.log"])


def test_what_was_written_after_the_snapshots_is_gone(world, conn):
    """Both guests' boot logs, read offline in one launch: the boot after each snapshot left no line.

    ext booted 3 times (first boot, the reboot after "pre", the boot after the revert): 2 lines.
    int booted twice (first boot, the reboot after "run", then reverted to "run"): 1 line.
    """
    for name in (world["ext"], world["int"]):
        assert not conn.lookupByName(name).isActive()
    r = ok(run_module("kvm_guestfs", dict(domains=[world["ext"], world["int"]], paths=[BOOT_LOG])))
    for name, count in ((world["ext"], 2), (world["int"], 1)):
        lines = r["domains"][name]["files"][BOOT_LOG]["content"].splitlines()
        # the identity reset named each clone and emptied its log before the first boot
        assert len(lines) == count and all(f"boot hostname={name}" in x for x in lines), (name, lines)


def test_the_clones_base_never_changed(world):
    assert guestlib.sha256(world["tpl_disk"]) == world["tpl_sha"]
