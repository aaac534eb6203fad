"""kvm_guestfs ``domains``: several domains read in one appliance launch, against a fake libguestfs handle."""

from __future__ import annotations

import contextlib
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import DomainNotFound, GuestfsError, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs import devices
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.devices import (
    Part,
    drive_index,
    drive_letters,
    parts_of,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.read import read_guests
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.session import GuestfsSession
from tests import fakes
from tests.fakes import FS, FakeGuestFS


def many(content: dict, roots=(), mountpoints=None) -> FakeGuestFS:
    """A fake appliance with one filesystem per device of ``content`` (device -> {path: bytes})."""
    devices = {}
    for dev, files in content.items():
        devices[dev] = FS(uuid=dev)
        for path, data in files.items():
            devices[dev].add(path, data)
    return FakeGuestFS(devices=devices, roots=roots, mountpoints=mountpoints)


def three_clones():
    return {f"/dev/sd{x}1": {"/etc/hostname": f"clone-{x}\n".encode()} for x in "abc"}


def groups(n=3):
    return [(f"c{i}", [{"path": f"/img/c{i}.qcow2", "format": "qcow2"}]) for i in range(n)]


def session(handle, n=3):
    drives = [d for _name, ds in groups(n) for d in ds]
    return GuestfsSession(drives, handle_factory=lambda: handle)


def one(s, parts):
    """``read_guests``'s launches: a single one, of session ``s``."""
    return [(lambda: contextlib.nullcontext(s), parts)]


def hostnames(result):
    return {name: r["files"]["/etc/hostname"]["content"] for name, r in result["domains"].items()}


def test_drive_names_past_z():
    for index, letters in [(0, "a"), (25, "z"), (26, "aa"), (51, "az"), (52, "ba"), (701, "zz"), (702, "aaa")]:
        assert drive_letters(index) == letters and drive_index(letters) == index


def test_a_part_names_its_guests_devices():
    a, b = parts_of([("a", [1, 2]), ("b", [1, 2])])
    assert (b.first, b.count) == (2, 2)
    assert (
        b.own("/dev/sda1") == "/dev/sdc1"
        and b.own("/dev/sdb") == "/dev/sdd"
        and b.own("/dev/vg/root") == "/dev/vg/root"
    )
    assert b.owns("/dev/sdd2") and not b.owns("/dev/sda1") and not b.owns("/dev/mapper/x")
    assert b.local("/dev/sda1", [a, b]) == "/dev/sdc1" and b.local("/dev/sdd1", [a, b]) == "/dev/sdd1"
    assert Part("c", 4, 1).local("/dev/sdb1", [a, b]) == "/dev/sdb1"  # no second disk there: unchanged


def test_one_launch_reads_every_domain_with_its_own_mounts():
    h = many(three_clones())
    r = read_guests(one(session(h), parts_of(groups())), paths=["/etc/hostname"], mounts={"/dev/sda1": "/"})
    assert h.launches == 1 and r["appliance"]["launches"] == 1 and len(h.drives) == 3
    assert all(opts["readonly"] for _path, opts in h.drives)
    assert hostnames(r) == {"c0": "clone-a\n", "c1": "clone-b\n", "c2": "clone-c\n"}
    mounted = [("mount_ro", f"/dev/sd{x}1", "/") for x in "abc"]
    assert [e for e in h.events if e[0] in ("mount_ro", "umount_all")] == [
        step for m in mounted for step in (m, ("umount_all",))
    ]
    assert r["files"] == {} and r["inspection"] is None and r["changed"] is False


def test_inspection_runs_once_and_each_guest_gets_its_own_root():
    # clones share filesystem UUIDs: libguestfs resolves every fstab to the first clone's device
    h = many(three_clones(), roots=["/dev/sda1", "/dev/sdb1", "/dev/sdc1"], mountpoints={"/": "/dev/sda1"})
    r = read_guests(one(session(h), parts_of(groups())), paths=["/etc/hostname"])
    assert h.events.count(("inspect_os",)) == 1
    assert hostnames(r) == {"c0": "clone-a\n", "c1": "clone-b\n", "c2": "clone-c\n"}
    assert r["domains"]["c2"]["inspection"]["root"] == "/dev/sdc1"
    assert r["domains"]["c2"]["inspection"]["mountpoints"] == {"/": "/dev/sdc1"}


def test_a_guest_that_cannot_be_mounted_does_not_stop_the_others():
    content = three_clones()
    del content["/dev/sdb1"]
    h = many(content)
    with pytest.raises(GuestfsError) as exc:
        read_guests(one(session(h), parts_of(groups())), paths=["/etc/hostname"], mounts={"/dev/sda1": "/"})
    assert "c1: Cannot mount /dev/sdb1" in exc.value.message
    domains = exc.value.details["domains"]
    assert domains["c0"]["files"]["/etc/hostname"]["content"] == "clone-a\n"
    assert domains["c2"]["files"]["/etc/hostname"]["content"] == "clone-c\n"
    assert "Cannot mount" in domains["c1"]["error"] and domains["c1"]["files"] == {}


def test_missing_paths_are_named_per_domain_and_dest_has_a_directory_per_domain(tmp_path):
    content = three_clones()
    content["/dev/sdc1"] = {}
    h = many(content)
    with pytest.raises(GuestfsError) as exc:
        read_guests(
            one(session(h), parts_of(groups())),
            paths=["/etc/hostname"],
            mounts={"/dev/sda1": "/"},
            fail_missing=True,
            dest=str(tmp_path),
        )
    assert "c2: /etc/hostname does not exist" in exc.value.message
    assert (tmp_path / "c0" / "etc" / "hostname").read_text() == "clone-a\n"
    assert (tmp_path / "c1" / "etc" / "hostname").read_text() == "clone-b\n"
    assert exc.value.details["changed"] is True and len(exc.value.details["diff"]["after"]["dest_files"]) == 2


def test_a_domain_name_unsafe_below_dest_is_refused_before_the_launch(tmp_path):
    h = many(three_clones())
    with pytest.raises(InvalidInput, match="below dest"):
        read_guests(one(session(h, 1), [Part("..", 0, 1)]), paths=["/etc/hostname"], dest=str(tmp_path))
    assert h.launches == 0


# --------------------------------------------------------------------------- the manager, on test:///default


@pytest.fixture
def domain(testconn, tmp_path):
    """``domain(name, running=False)``: a test:///default domain on a qcow2 disk of its own; returns the disk."""

    def make(name, running=False):
        disk = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
        fakes.define_domain(testconn[0], testconn[1], name, disk, running)
        return str(disk)

    return make


def test_manager_reads_several_domains_in_one_launch(testconn, domain):
    conn = testconn[0]
    disks = [domain(n) for n in ("vt-gd-a", "vt-gd-b")]
    h = many({"/dev/sda1": {"/etc/hostname": b"a\n"}, "/dev/sdb1": {"/etc/hostname": b"b\n"}})
    params = dict(domains=["vt-gd-a", "vt-gd-b"], paths=["/etc/hostname"], mounts={"/dev/sda1": "/"})
    r = fakes.guestfs_manager(conn, params, h).run()
    assert [path for path, _opts in h.drives] == disks and h.launches == 1
    assert hostnames(r) == {"vt-gd-a": "a\n", "vt-gd-b": "b\n"}
    assert r["mounted"] is False and r["appliance"]["launches"] == 1


def test_manager_cuts_domains_over_the_drive_limit_into_launches(testconn, domain, monkeypatch):
    """An appliance takes at most 255 drives: past devices.MAX_DRIVES (here 2) the domains are read in several
    launches, a domain never split, and the result says how many."""
    monkeypatch.setattr(devices, "MAX_DRIVES", 2)
    names = ["vt-gd-a", "vt-gd-b", "vt-gd-c"]
    disks = [domain(n) for n in names]
    apps = fakes.Appliances()
    for name, disk in zip(names, disks):
        fs = FS(uuid=name)
        fs.add("/etc/hostname", f"{name}\n".encode())
        apps.images[disk] = [fs]
    params = dict(domains=names, paths=["/etc/hostname"], mounts={"/dev/sda1": "/"})
    r = fakes.guestfs_manager(testconn[0], params, apps).run()
    assert [[path for path, _opts in h.drives] for h in apps.handles] == [disks[:2], disks[2:]]
    assert hostnames(r) == {n: f"{n}\n" for n in names}
    assert r["appliance"]["launches"] == 2
    assert devices.by_launch([3, 1, 1, 2], lambda n: n, limit=2) == [[3], [1, 1], [2]]  # too big alone: its own


def test_manager_refuses_unknown_and_running_domains_before_the_launch(testconn, domain):
    conn = testconn[0]
    domain("vt-gd-off")
    domain("vt-gd-on", running=True)
    h = many({})
    with pytest.raises(DomainNotFound, match="vt-gd-nope, vt-gd-nada not defined"):
        fakes.guestfs_manager(conn, dict(domains=["vt-gd-off", "vt-gd-nope", "vt-gd-nada"], paths=["/x"]), h).run()
    with pytest.raises(GuestfsError, match=r"running domain\(s\) vt-gd-on"):
        fakes.guestfs_manager(conn, dict(domains=["vt-gd-off", "vt-gd-on"], paths=["/x"]), h).run()
    with pytest.raises(InvalidInput, match="only used with state=read"):
        fakes.guestfs_manager(conn, dict(domains=["vt-gd-off"], state="mounted", mount_point="/mnt/x"), h).run()
    with pytest.raises(InvalidInput, match="domains option is empty"):
        fakes.guestfs_manager(conn, dict(domains=[], paths=["/x"]), h).run()
    assert h.launches == 0


def test_domains_excludes_domain_and_disks(testconn, domain):
    conn = testconn[0]
    disk = domain("vt-gd-one")
    h = many({})
    for other in (dict(domain="vt-gd-one"), dict(disks=[disk])):
        with pytest.raises(InvalidInput, match="cannot be combined"):
            fakes.guestfs_manager(conn, dict(domains=["vt-gd-one"], paths=["/x"], **other), h).run()
    assert h.launches == 0
