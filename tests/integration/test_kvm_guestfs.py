"""kvm_guestfs against real libguestfs, qcow2 overlays and qemu:///system.

Every appliance launch costs ~20-60 s on this machine (software emulation), so
one module-scoped world is built once (an overlay of the test base with files
written into it) and each module run checks many paths at once.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import time

import pytest

from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module

pytestmark = pytest.mark.slow

NOTE = "written into the overlay only\n"
BLOB = bytes(range(256)) * 4 + b"\xff\xfe not utf-8"
BIG_SIZE = 2 * 1024 * 1024 + 5


def write_into_overlay(overlay) -> None:
    """Test setup only: the guestfs binding opened READ-WRITE, on the overlay (never the base)."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend_settings(["force_tcg"])
        g.add_drive_opts(str(overlay), format="qcow2", readonly=0)
        g.launch()
        g.mount("/dev/sda1", "/")
        g.write("/etc/virtops-note.txt", NOTE.encode())
        g.mkdir_p("/var/lib/virtops")
        g.write("/var/lib/virtops/blob.bin", BLOB)
        g.chmod(0o600, "/var/lib/virtops/blob.bin")
        g.fill(ord("x"), BIG_SIZE, "/var/lib/virtops/big.txt")
        g.ln_s("../etc/virtops-note.txt", "/var/note-link")
        # what makes libguestfs recognise the test guest as an OS goes, so that this world
        # exercises the single-filesystem fallback (kvm_clone's tests boot the recognised one)
        g.rm_f("/etc/os-release")
        if g.is_dir("/bin") and not g.ls("/bin"):
            g.rmdir("/bin")
        g.umount_all()
        g.shutdown()
    finally:
        g.close()


@pytest.fixture(scope="module")
def world(conn, guest):
    base = guest["base"]
    base_sha = guestlib.sha256(base)
    with guestlib.scratch_dir(conn=conn) as (prefix, scratch):
        overlay = guestlib.make_overlay(base, scratch / "written.qcow2")
        write_into_overlay(overlay)
        name = f"{prefix}-off"
        conn.defineXML(guestlib.domain_xml(name, overlay, scratch / "off-serial.log", kind="disk"))
        yield dict(base=base, base_sha=base_sha, overlay=str(overlay), domain=name, prefix=prefix, scratch=scratch)
    assert guestlib.sha256(base) == base_sha, "the base image changed"


def test_read_domain_with_inspection_in_check_mode(world):
    """One launch: text, binary, symlink, missing and oversized paths, listings; inspection fallback."""
    r = run_module(
        "kvm_guestfs",
        {
            "domain": world["domain"],
            "paths": [
                "/etc/virtops-note.txt",
                "/etc/hostname",
                "/var/lib/virtops/blob.bin",
                "/var/note-link",
                "/etc/no-such-file",
                "/var/lib/virtops/big.txt",
            ],
            "list_dirs": ["/etc", "/var/lib/virtops", "/no-such-dir"],
        },
        check=True,  # reading changes nothing, so check mode reads for real
    )
    # the oversized file fails the task, after every other path was read
    assert r["failed"] is True
    assert f"{BIG_SIZE} bytes" in r["msg"] and "max_size 1048576" in r["msg"]
    files = r["files"]
    big = files["/var/lib/virtops/big.txt"]
    assert big["exists"] is True and big["size"] == BIG_SIZE
    assert "content" not in big and "content_b64" not in big and "max_size" in big["error"]

    note = files["/etc/virtops-note.txt"]
    assert note["content"] == NOTE
    assert note["sha256"] == hashlib.sha256(NOTE.encode()).hexdigest()
    assert note["size"] == len(NOTE) and note["mode"] == "0644" and note["owner"] == "0"
    assert isinstance(note["mtime"], int) and note["mtime"] > 0
    assert files["/etc/hostname"]["content"] == "virtops-base\n"
    blob = files["/var/lib/virtops/blob.bin"]
    assert "content" not in blob and base64.b64decode(blob["content_b64"]) == BLOB and blob["mode"] == "0600"
    assert files["/var/note-link"]["content"] == NOTE  # relative symlink followed inside the guest
    assert files["/etc/no-such-file"] == {"exists": False}

    assert "virtops-note.txt" in r["dirs"]["/etc"] and "hosts" in r["dirs"]["/etc"]
    assert r["dirs"]["/var/lib/virtops"] == ["big.txt", "blob.bin"]
    assert r["dirs"]["/no-such-dir"] is None
    # the busybox guest is not an OS libguestfs recognises: its one filesystem is mounted at /
    assert r["inspection"]["method"] == "single-filesystem"
    assert r["inspection"]["mountpoints"] == {"/": "/dev/sda1"}
    assert r["appliance"]["launches"] == 1
    # no environment variable was set by the test: force_tcg auto decided it
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in os.environ
    assert r["appliance"]["force_tcg"] is True and "KVM is not usable" in r["appliance"]["force_tcg_reason"]


def test_read_disks_with_explicit_mounts_and_dest_four_ways(world):
    """disks + mounts (no inspection), max_size raised, copies to dest: check, real, again, again in check."""
    dest = world["scratch"] / "copies"
    args = {
        "disks": [{"path": world["overlay"], "format": "qcow2"}],
        "mounts": {"/dev/sda1": "/"},
        "paths": ["/etc/virtops-note.txt", "/var/lib/virtops/blob.bin", "/var/lib/virtops/big.txt", "/etc/nope"],
        "max_size": 4 * 1024 * 1024,
        "dest": str(dest),
    }
    results = four_ways("kvm_guestfs", args)
    assert_four_ways(results, first_changes=True)
    check1, real1, real2 = results[:3]
    for r in results:
        assert r["inspection"] is None  # mounts given: no inspection
        assert r["files"]["/etc/virtops-note.txt"]["content"] == NOTE
        assert r["files"]["/var/lib/virtops/big.txt"]["size"] == BIG_SIZE
        assert r["files"]["/etc/nope"] == {"exists": False}
        assert r["appliance"]["launches"] == 1
    assert check1["diff"]["after"]["dest_files"] == real1["diff"]["after"]["dest_files"]
    assert len(real1["diff"]["after"]["dest_files"]) == 3 and real2["diff"]["after"]["dest_files"] == []
    assert (dest / "etc/virtops-note.txt").read_text() == NOTE
    assert (dest / "var/lib/virtops/blob.bin").read_bytes() == BLOB
    assert (dest / "var/lib/virtops/big.txt").stat().st_size == BIG_SIZE
    assert not (dest / "etc/nope").exists()
    assert guestlib.sha256(world["base"]) == world["base_sha"]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ({"paths": ["etc/hosts"]}, "not an absolute path"),
        ({"disks": ["/var/lib/libvirt/images/vt-none/missing.qcow2"]}, "does not exist"),
        ({"disks": [{"path": "__BASE__", "format": "qcow9"}]}, "Unknown disk image format 'qcow9'"),
        ({"domain": "vt-no-such-domain-0"}, "not defined"),
        ({"mounts": {"/dev/sda1": "root"}}, "not an absolute path"),
    ],
)
def test_errors_name_cause_and_fix_before_any_launch(world, args, expect):
    full = {"disks": [world["overlay"]], "paths": ["/etc/hosts"], **args}
    if "domain" in args:
        full.pop("disks")
    if full.get("disks") and isinstance(full["disks"][0], dict):
        full["disks"][0]["path"] = world["base"]
    r = run_module("kvm_guestfs", full)
    assert r["failed"] is True
    assert expect in r["msg"], r["msg"]
    assert "files" not in r or not r["files"]


def test_running_domain_refused_then_allowed(world, conn, guest):
    scratch, prefix = world["scratch"], world["prefix"]
    disk = guestlib.make_overlay(guest["base"], scratch / "running.qcow2")
    name = f"{prefix}-run"
    dom = conn.defineXML(guestlib.domain_xml(name, disk, scratch / "run-serial.log", kind="disk"))
    dom.create()
    try:
        guestlib.wait_for_marker(scratch / "run-serial.log", timeout=240)
        by_domain = run_module("kvm_guestfs", {"domain": name, "paths": ["/etc/hostname"]})
        assert by_domain["failed"] is True
        assert f"running domain(s) {name}" in by_domain["msg"] and "allow_running: true" in by_domain["msg"]
        by_path = run_module("kvm_guestfs", {"disks": [str(disk)], "paths": ["/etc/hostname"]})
        assert by_path["failed"] is True and name in by_path["msg"]

        allowed = run_module(
            "kvm_guestfs",
            {
                "domain": name,
                "allow_running": True,
                "mounts": {"/dev/sda1": "/"},
                "paths": ["/etc/hostname"],
            },
        )
        assert not allowed.get("failed"), allowed.get("msg")
        assert allowed["changed"] is False
        assert allowed["files"]["/etc/hostname"]["content"] == "virtops-base\n"
        assert any("inconsistent" in w["event"]["msg"] if isinstance(w, dict) else "inconsistent" in w
                   for w in allowed["warnings"])  # fmt: skip
        assert dom.isActive()  # the guest kept running
    finally:
        dom.destroy()


def _mount_fstype(mount_point: str) -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _sep, right = line.partition(" - ")
            if left.split(" ")[4] == mount_point:
                return right.split(" ")[0]
    return None


def test_mount_then_unmount_each_four_ways(world):
    """The course's guestmount -o nonempty -i on a directory that already holds a file; read-only."""
    mp = world["scratch"] / "mnt"
    mp.mkdir()
    (mp / "already-here").write_text("hidden while mounted\n")
    mount_args = {"domain": world["domain"], "state": "mounted", "mount_point": str(mp)}
    try:
        results = four_ways("kvm_guestfs", mount_args)
        assert_four_ways(results, first_changes=True)
        assert all(r["mounted"] is True for r in results)
        argv = results[1]["guestmount_argv"]
        assert argv[:4] == ["guestmount", "--ro", "-o", "nonempty"] and "--pid-file" in argv
        # -i found no OS in the busybox guest, so its only filesystem was mounted by device
        assert results[1]["inspection"]["method"] == "single-filesystem"
        assert _mount_fstype(str(mp)) is not None and _mount_fstype(str(mp)).startswith("fuse")
        assert (mp / "etc/virtops-note.txt").read_text() == NOTE
        assert not (mp / "already-here").exists()
        write = subprocess.run(["touch", str(mp / "etc/new")], capture_output=True, check=False)
        assert write.returncode != 0  # read-only

        unmount_args = {"state": "unmounted", "mount_point": str(mp)}
        results = four_ways("kvm_guestfs", unmount_args)
        assert_four_ways(results, first_changes=True)
        assert all(r["mounted"] is False for r in results)
        assert _mount_fstype(str(mp)) is None
        assert (mp / "already-here").read_text() == "hidden while mounted\n"
        # unmount waited for guestmount to exit: no guestmount process left for this mount point
        left = subprocess.run(["pgrep", "-f", f"guestmount.*{mp}"], capture_output=True, text=True, check=False)
        assert left.stdout.strip() == ""
    finally:
        if _mount_fstype(str(mp)):
            subprocess.run(["guestunmount", str(mp)], check=False)
            time.sleep(2)
    assert guestlib.sha256(world["base"]) == world["base_sha"]


def test_read_several_domains_in_one_launch(world, conn):
    """domains: the disks of two shut-off domains in ONE appliance, each read as its own guest."""
    plain = f"{world['prefix']}-plain"
    disk = guestlib.make_overlay(world["base"], world["scratch"] / "plain.qcow2")
    conn.defineXML(guestlib.domain_xml(plain, disk, world["scratch"] / "plain-serial.log", kind="disk"))
    args = {"domains": [world["domain"], plain], "paths": ["/etc/hostname", "/etc/virtops-note.txt"]}
    r = run_module("kvm_guestfs", args)
    assert not r.get("failed"), r.get("msg")
    assert r["appliance"]["launches"] == 1 and r["changed"] is False
    mine, other = r["domains"][world["domain"]], r["domains"][plain]
    assert mine["files"]["/etc/virtops-note.txt"]["content"] == NOTE
    assert other["files"]["/etc/virtops-note.txt"] == {"exists": False}  # its own disk, not the first one's
    assert mine["files"]["/etc/hostname"]["content"] == other["files"]["/etc/hostname"]["content"] == "virtops-base\n"
    # each guest's one filesystem, found on its own drive of the shared appliance
    assert mine["inspection"]["mountpoints"] == {"/": "/dev/sda1"}
    assert other["inspection"]["mountpoints"] == {"/": "/dev/sdb1"}
    assert r["files"] == {} and r["dirs"] == {}
    # an unknown domain fails before the launch, naming it
    r = run_module("kvm_guestfs", {"domains": [plain, f"{world['prefix']}-nope"], "paths": ["/etc/hostname"]})
    assert r.get("failed") and r["error"] == "DomainNotFound" and f"{world['prefix']}-nope" in r["msg"]


def test_more_domains_than_one_appliance_takes(world, conn):
    """domains: 260 shut-off domains (one disk each) are more than libguestfs's 255 drives in one appliance: they
    are read in two launches (250 + 10 disks), each domain as its own guest, and the result says so."""
    names = [f"{world['prefix']}-m{i:03d}" for i in range(260)]
    for name in names:
        disk = guestlib.make_overlay(world["base"], world["scratch"] / f"{name}.qcow2")
        conn.defineXML(guestlib.domain_xml(name, disk, world["scratch"] / f"{name}.log", kind="disk"))
    try:
        r = run_module("kvm_guestfs", {"domains": names, "paths": ["/etc/hostname"], "mounts": {"/dev/sda1": "/"}})
        assert not r.get("failed"), r.get("msg")
        assert r["appliance"]["launches"] == 2 and r["changed"] is False
        assert sorted(r["domains"]) == names
        assert {d["files"]["/etc/hostname"]["content"] for d in r["domains"].values()} == {"virtops-base\n"}
    finally:
        for name in names:
            conn.lookupByName(name).undefine()
