"""_vm.files: targets, the disk plan and its refusals, claims, making and protecting (real qemu-img files)."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan
from ansible_collections.virtops.kvm.plugins.module_utils._vm import build, files, spec
from tests import fakes

MIB = 1024**2


def img(path, fmt="qcow2", size="16M", backing=None):
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    argv += ["-b", str(backing), "-F", "qcow2", str(path)] if backing else [str(path), size]
    subprocess.run(argv, check=True, capture_output=True)
    return str(path)


def info(path) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True, capture_output=True)
    return json.loads(out.stdout)


def disks(*raw, bus="virtio"):
    return files.assign_targets([spec.check_disk(d, f"disks[{i}]") for i, d in enumerate(raw)], bus)


def plan(tmp_path, scan, *raw, name="ut-vm", existing=None, bus="virtio"):
    ds = disks(*raw, bus=bus)
    dirs = {i: os.path.dirname(d["path"]) if d["path"] else str(tmp_path) for i, d in enumerate(ds)}
    return files.plan_disks(dict(name=name), ds, dirs, existing, scan)


@pytest.fixture
def scan(conn):
    return HostScan.take(conn)


@pytest.fixture
def tconn():
    c, close = fakes.open_conn()
    yield c
    close()


# ---------------------------------------------------------------- targets


def test_assign_targets_per_bus():
    buses = [None, "sata", "ide", None, "scsi", "usb"]
    out = files.assign_targets([dict(bus=b, target=None) for b in buses], "virtio")
    assert [(d["bus"], d["target"]) for d in out] == [
        ("virtio", "vda"),
        ("sata", "sda"),
        ("ide", "hda"),
        ("virtio", "vdb"),
        ("scsi", "sdb"),
        ("usb", "sdc"),
    ]


def test_assign_targets_keeps_explicit_ones():
    out = files.assign_targets([dict(bus=None, target=None), dict(bus=None, target="vda")], "sata")
    assert [(d["bus"], d["target"]) for d in out] == [("sata", "sda"), ("sata", "vda")]
    out = files.assign_targets([dict(bus="virtio", target=None), dict(bus="virtio", target="vda")], "virtio")
    assert [d["target"] for d in out] == ["vdb", "vda"], "an explicit target is never given to another disk"


def test_assign_targets_too_many_disks_is_a_clear_error():
    with pytest.raises(InvalidInput, match="free"):
        files.assign_targets([dict(bus="virtio", target=None)] * 27, "virtio")


# ---------------------------------------------------------------- plan


def test_plan_overlay_copy_as_is_blank(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    r = img(tmp_path / "base.raw", "raw")
    out = plan(
        tmp_path,
        scan,
        dict(image=q),
        dict(image=r, mode="copy"),
        dict(image=r, mode="copy", format="qcow2"),
        dict(image=r, mode="as_is"),
        dict(size="1G"),
        dict(size="1G", format="raw", path=str(tmp_path / "sub" / "data.img")),
    )
    got = [(e["mode"], e["target"], os.path.basename(e["path"]), e["format"], e["source_format"]) for e in out]
    assert got == [
        ("overlay", "vda", "ut-vm-vda.qcow2", "qcow2", "qcow2"),
        ("copy", "vdb", "ut-vm-vdb.img", "raw", "raw"),
        ("copy", "vdc", "ut-vm-vdc.qcow2", "qcow2", "raw"),
        ("as_is", "vdd", "base.raw", "raw", "raw"),
        ("blank", "vde", "ut-vm-vde.qcow2", "qcow2", None),
        ("blank", "vdf", "data.img", "raw", None),
    ]
    assert [e["create"] for e in out] == [True, True, True, False, True, True]
    assert out[0]["source"] == q and out[3]["path"] == r
    assert all(e["created"] is None for e in out)


def test_plan_missing_image(tmp_path, scan):
    with pytest.raises(StorageError, match=r"The image .*nope.qcow2 of disks\[0\] of VM ut-vm does not exist"):
        plan(tmp_path, scan, dict(image=str(tmp_path / "nope.qcow2")))


def test_plan_size_smaller_than_image(tmp_path, scan):
    q = img(tmp_path / "base.qcow2", size="64M")
    with pytest.raises(InvalidInput, match="size 33554432 bytes is smaller than the image") as e:
        plan(tmp_path, scan, dict(image=q, size="32M"))
    assert "never shrunk" in e.value.hint
    assert plan(tmp_path, scan, dict(image=q, size="64M"))[0]["size"] == 64 * MIB


def test_plan_path_is_the_image(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    with pytest.raises(InvalidInput, match="the path of the disk made is its image"):
        plan(tmp_path, scan, dict(image=q, mode="copy", path=q))


def test_plan_refuses_a_file_not_ours(tmp_path, scan):
    (tmp_path / "ut-vm-vda.qcow2").write_bytes(b"someone's")
    with pytest.raises(Conflict, match="exists and was not made by kvm_vm for this VM"):
        plan(tmp_path, scan, dict(size="1G"))
    assert (tmp_path / "ut-vm-vda.qcow2").read_bytes() == b"someone's"


def test_plan_keeps_a_file_recorded_in_the_provenance(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    first = plan(tmp_path, scan, dict(image=q))
    over = img(tmp_path / "ut-vm-vda.qcow2", backing=q)
    old = dict(path=over, mode="overlay", format="qcow2", base=q, base_fingerprint=dict(size=1, mtime=2, digest="d"))
    root = build.domain_xml(
        dict(spec.vm_params(dict(name="ut-vm"), None, ""), disks=[dict(image=q)]),
        first,
        None,
        "qemu",
        None,
        None,
        [old],
    )
    out = plan(tmp_path, scan, dict(image=q), existing=root)
    assert out[0]["create"] is False
    assert out[0]["created"]["base_fingerprint"] == old["base_fingerprint"], "the old record, not a new one"
    assert files.record(out[0]) == out[0]["created"]


def test_plan_keeps_an_external_snapshot_layer_above_the_disk(tmp_path, scan):
    """After kvm_snapshot the VM writes to a layer above its file: a rerun keeps that layer in the XML."""
    q = img(tmp_path / "base.qcow2")
    first = plan(tmp_path, scan, dict(image=q))
    over = img(tmp_path / "ut-vm-vda.qcow2", backing=q)
    snap = img(tmp_path / "ut-vm-vda.snap1", backing=over)
    vm = dict(spec.vm_params(dict(name="ut-vm"), None, ""), disks=[dict(image=q)])
    record = dict(path=over, mode="overlay", format="qcow2", base=q, base_fingerprint=None)
    root = build.domain_xml(vm, [dict(first[0], top=snap)], None, "qemu", None, None, [record])
    assert root.find("devices/disk/source").get("file") == snap
    out = plan(tmp_path, scan, dict(image=q), existing=root)
    assert out[0]["path"] == over and out[0]["top"] == snap
    rebuilt = build.domain_xml(vm, out, None, "qemu", None, None, [record])
    assert rebuilt.find("devices/disk/source").get("file") == snap, "never back to the frozen file"
    assert rebuilt.find("devices/disk/driver").get("type") == "qcow2"
    # a disk of the VM that is not above the planned file is not kept (the plan's file wins)
    other = img(tmp_path / "elsewhere.qcow2")
    moved = build.domain_xml(vm, [dict(first[0], top=other)], None, "qemu", None, None, [record])
    assert plan(tmp_path, scan, dict(image=q), existing=moved)[0]["top"] is None


def test_as_is_refused_when_another_domain_uses_the_image(tmp_path, tconn):
    q = img(tmp_path / "shared.qcow2")
    fakes.disk_domain(tconn, "ut-other", q)
    with pytest.raises(Conflict, match=r"mode as_is\) is already a disk of ut-other") as e:
        plan(tmp_path, HostScan.take(tconn), dict(image=q, mode="as_is"))
    assert "overlay" in e.value.hint
    out = plan(tmp_path, HostScan.take(tconn), dict(image=q, mode="as_is"), name="ut-other")
    assert out[0]["path"] == q, "the domain's own disk is not another's"


def test_as_is_refused_when_an_overlay_stands_on_it(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    img(tmp_path / "hand-made.qcow2", backing=q)
    with pytest.raises(StorageError, match="is the base of"):
        plan(tmp_path, scan, dict(image=q, mode="as_is"))


# ---------------------------------------------------------------- claims


def entry(path, target="vda", mode="blank"):
    return dict(path=str(path), target=target, mode=mode)


def test_claims_two_vms_one_file(tmp_path, scan):
    p = tmp_path / "same.qcow2"
    with pytest.raises(Conflict) as e:
        files.claims(dict(a=[entry(p)], b=[entry(p, "vdb")]), scan, {})
    assert f"{p} is claimed by VM a disk vda and VM b disk vdb" in e.value.message
    assert "nothing was changed" in e.value.message


def test_claims_two_disks_through_a_link(tmp_path, scan):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(Conflict, match="claimed by VM a disk vda and VM a disk vdb"):
        files.claims(dict(a=[entry(tmp_path / "real" / "x"), entry(tmp_path / "link" / "x", "vdb")]), scan, {})


def test_claims_a_disk_and_a_seed(tmp_path, scan):
    p = tmp_path / "a-cidata.iso"
    with pytest.raises(Conflict, match="claimed by VM a disk vda and VM b's cloud-init seed"):
        files.claims(dict(a=[entry(p)], b=[entry(tmp_path / "b.qcow2")]), scan, dict(a=None, b=str(p)))


def test_claims_a_file_another_domain_uses(tmp_path, tconn):
    q = img(tmp_path / "theirs.qcow2")
    fakes.disk_domain(tconn, "ut-owner", q)
    scan = HostScan.take(tconn)
    with pytest.raises(Conflict, match=f"{q} is used by ut-owner"):
        files.claims(dict(a=[entry(q)]), scan, {})
    files.claims(dict(a=[entry(q, mode="as_is")]), scan, {})  # as_is was weighed by plan_disks
    files.claims({"ut-owner": [entry(q)]}, scan, {})  # its own disk


def test_claims_an_as_is_image_another_planned_disk_stands_on(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    overlay = dict(entry(tmp_path / "b-vda.qcow2", mode="overlay"), source=q)
    with pytest.raises(Conflict, match=r"base.qcow2 is VM a's writable disk vda \(mode as_is\) and the base of VM b"):
        files.claims(dict(a=[entry(q, mode="as_is")], b=[overlay]), scan, {})
    files.claims(dict(a=[entry(q, mode="as_is")], b=[dict(overlay, mode="copy")]), scan, {})


def test_claims_distinct_files_pass(tmp_path, scan):
    files.claims(dict(a=[entry(tmp_path / "a")], b=[entry(tmp_path / "b")]), scan, dict(a=str(tmp_path / "s")))


# ---------------------------------------------------------------- make


def made(tmp_path, scan, raw, name="ut-vm"):
    e = plan(tmp_path, scan, raw, name=name)[0]
    files.make(fakes.runner, name, e)
    return e


def test_make_overlay_grown_to_size(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    e = made(tmp_path, scan, dict(image=q, size="64M"))
    i = info(e["path"])
    assert i["format"] == "qcow2" and i["virtual-size"] == 64 * MIB
    assert os.path.realpath(i["backing-filename"]) == q and i["backing-filename-format"] == "qcow2"
    assert info(q)["virtual-size"] == 16 * MIB, "the base is never grown"


def test_make_copy_same_format(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    e = made(tmp_path, scan, dict(image=q, mode="copy"))
    i = info(e["path"])
    assert i["format"] == "qcow2" and i["virtual-size"] == 16 * MIB and "backing-filename" not in i


@pytest.mark.parametrize(("src", "want"), [("qcow2", "raw"), ("raw", "qcow2")])
def test_make_copy_in_another_format(tmp_path, scan, src, want):
    base = img(tmp_path / f"base.{src}", src)
    e = made(tmp_path, scan, dict(image=base, mode="copy", format=want, size="32M"))
    assert e["format"] == want
    i = info(e["path"])
    assert i["format"] == want, "the file is in the format the XML will say"
    assert i["virtual-size"] == 32 * MIB


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_make_blank(tmp_path, scan, fmt):
    e = made(tmp_path, scan, dict(size="8M", format=fmt))
    i = info(e["path"])
    assert i["format"] == fmt and i["virtual-size"] == 8 * MIB
    assert e["path"].endswith(".qcow2" if fmt == "qcow2" else ".img")


def failing(fail_on):
    """The real runner, failing every call whose subcommand is ``fail_on`` (after it ran, leaving its file)."""

    def runner(argv, env=None):
        rc, out, err = fakes.runner(argv, env)
        if argv[1] == fail_on:
            return 1, "", f"{fail_on}: No space left on device"
        return rc, out, err

    return runner


@pytest.mark.parametrize(
    ("raw", "fail_on"),
    [
        (dict(size="8M"), "create"),
        (dict(image="BASE", size="64M"), "resize"),
        (dict(image="BASE", mode="copy", size="64M"), "resize"),
        (dict(image="BASE", mode="copy"), "convert"),
        (dict(image="BASE"), "create"),
        (dict(image="BASE", mode="copy", format="raw"), "convert"),
    ],
)
def test_make_leaves_nothing_on_failure(tmp_path, scan, raw, fail_on):
    q = img(tmp_path / "base.qcow2")
    raw = {k: (q if v == "BASE" else v) for k, v in raw.items()}
    e = plan(tmp_path, scan, raw)[0]
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(StorageError):
        files.make(failing(fail_on), "ut-vm", e)
    assert sorted(os.listdir(tmp_path)) == before
    assert not os.path.lexists(e["path"])


def test_make_refuses_a_file_that_appeared(tmp_path, scan):
    e = plan(tmp_path, scan, dict(size="8M"))[0]
    (tmp_path / "ut-vm-vda.qcow2").write_bytes(b"mine")
    with pytest.raises(Conflict, match="appeared after the plan"):
        files.make(fakes.runner, "ut-vm", e)
    assert (tmp_path / "ut-vm-vda.qcow2").read_bytes() == b"mine"


# ---------------------------------------------------------------- fingerprints, records, protect


def test_fingerprint_bases_and_record(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    out = plan(tmp_path, scan, dict(image=q), dict(image=q, mode="copy"), dict(size="1G"))
    files.fingerprint_bases(out)
    assert out[0]["base_fingerprint"]["size"] == os.path.getsize(q)
    assert out[1]["base_fingerprint"] is None and out[2]["base_fingerprint"] is None
    assert files.record(out[0]) == dict(
        path=out[0]["path"], mode="overlay", format="qcow2", base=q, base_fingerprint=out[0]["base_fingerprint"]
    )
    assert files.record(out[1]) == dict(path=out[1]["path"], mode="copy", format="qcow2")
    assert files.record(dict(out[2], mode="as_is")) is None


def test_protect(tmp_path, scan):
    q = img(tmp_path / "base.qcow2")
    other = img(tmp_path / "other.qcow2")
    os.chmod(q, 0o664)
    out = plan(tmp_path, scan, dict(image=q), dict(image=q, size="32M"), dict(image=other, mode="copy"))
    assert files.protect(out, check_mode=True) == [q]
    assert stat.S_IMODE(os.stat(q).st_mode) == 0o664, "check mode changes nothing"
    assert files.protect(out, check_mode=False) == [q]
    assert stat.S_IMODE(os.stat(q).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(other).st_mode) & 0o200, "a copy's image is not a base"
    assert files.protect(out, check_mode=False) == [], "already read-only"


# ---------------------------------------------------------------- pool_dir


def test_pool_dir(conn):
    cache: dict = {}
    assert files.pool_dir(conn, "default", cache) == files.DEFAULT_DIR
    assert files.pool_dir(conn, "default-pool", cache) == "/default-pool"
    assert cache == {"default": files.DEFAULT_DIR, "default-pool": "/default-pool"}
    with pytest.raises(InvalidInput, match="Storage pool 'nowhere' does not exist") as e:
        files.pool_dir(conn, "nowhere", cache)
    assert "kvm_pool" in e.value.hint


def test_pool_dir_not_a_directory_pool(conn):
    pool = conn.storagePoolDefineXML(
        "<pool type='logical'><name>ut-vg</name><source><name>ut-vg</name></source>"
        "<target><path>/dev/ut-vg</path></target></pool>"
    )
    try:
        with pytest.raises(InvalidInput, match="is a logical pool"):
            files.pool_dir(conn, "ut-vg", {})
    finally:
        pool.undefine()


def test_detect_format_of_made_files(tmp_path):
    assert st.detect_format(img(tmp_path / "a.raw", "raw")) == "raw"
