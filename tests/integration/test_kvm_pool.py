"""kvm_pool against the real qemu:///system daemon: dir pools in a scratch directory, no guest boots.

Every scenario runs four ways (check, real, again, again in check). The domains
that hold disks in a pool are only defined, never started.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import libvirt
import pytest

from tests.harness import assert_four_ways, four_ways, run_module

MOD = "kvm_pool"


def four(args, first=True):
    results = four_ways(MOD, args)
    assert_four_ways(results, first_changes=first)
    assert results[0]["diff"] == results[1]["diff"], "check mode must predict the real diff"
    assert results[0]["changes"] == results[1]["changes"]
    return results


def remove_pools(conn, prefix: str) -> None:
    for pool in conn.listAllStoragePools(0):
        if not pool.name().startswith(prefix):
            continue
        if pool.isActive():
            pool.destroy()
        if pool.isPersistent():
            pool.undefine()


@pytest.fixture
def pools(conn, prefix) -> Iterator[str]:
    """The prefix; its pools are stopped and undefined at teardown (before the scratch dir goes)."""
    try:
        yield prefix
    finally:
        remove_pools(conn, prefix)


def domain_xml(name: str, disk: str) -> str:
    """A domain that is only defined (never started) with one disk."""
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
      <os><type arch='x86_64'>hvm</type></os><devices>{disk}</devices></domain>"""


def file_disk(path) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{path}'/>"
        "<target dev='vda' bus='virtio'/></disk>"
    )


def test_lifecycle(conn, pools, scratch):
    name = f"{pools}-dir"
    images = scratch / "images"
    args = dict(name=name, path=f"{images}/", state="active", autostart=True)

    # define, build (the directory is missing), start, autostart: four ways
    r0 = run_module(MOD, args, check=True)
    assert r0["changed"] and r0["pool"] is None and not images.exists()  # check mode built nothing
    r = four(args)
    assert r[1]["changes"] == [f"define (dir pool on {images})", "autostart", "build (create the directory)", "start"]
    pool = conn.storagePoolLookupByName(name)
    assert pool.isActive() and pool.autostart() and images.is_dir()
    info = r[2]["pool"]
    assert (info["path"], info["state"], info["autostart"], info["volumes"]) == (str(images), "running", True, [])
    assert info["capacity"] > 0 and len(info["uuid"]) == 36

    # a file copied in by hand: refresh shows it, and refreshing is not a change
    (images / "by-hand.img").write_bytes(b"\0" * 4096)
    r = run_module(MOD, dict(name=name, refresh=True))
    assert r["changed"] is False and r["refreshed"] is True and r["pool"]["volumes"] == ["by-hand.img"]

    # a new directory while active: defined, pending until a restart
    moved = scratch / "moved"
    moved.mkdir()
    r = four(dict(name=name, path=str(moved)))
    assert [x["pending_restart"] for x in r] == [True] * 4
    assert r[1]["changes"] == [f"define: /pool/target/path: '{images}' -> '{moved}'"]
    assert r[2]["pool"]["path"] == str(images)  # still running with the old one
    xml = pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
    assert f"<path>{moved}</path>" in xml
    r = four(dict(name=name, path=str(moved), restart=True))
    assert r[1]["changes"] == ["restart", "start"] and r[1]["pending_restart"] is False
    assert r[2]["pool"]["path"] == str(moved) and r[2]["pool"]["uuid"] == info["uuid"]

    # stop, no autostart, then absent: the files stay
    four(dict(name=name, state="inactive"))
    assert not pool.isActive()
    four(dict(name=name, autostart=False))
    assert not pool.autostart()
    (moved / "keep.img").write_bytes(b"data")
    r = four(dict(name=name, state="absent"))
    assert r[1]["changes"] == ["undefine"] and r[1]["deleted_volumes"] == [] and r[1]["pool"] is None
    assert name not in [p.name() for p in conn.listAllStoragePools(0)]
    assert (moved / "keep.img").read_bytes() == b"data" and (images / "by-hand.img").exists()


def test_removal_refused_while_a_domain_has_a_disk_inside(conn, pools, scratch):
    name = f"{pools}-used"
    folder = scratch / "used"
    run_module(MOD, dict(name=name, path=str(folder), state="active"))
    disk = folder / "d.img"
    disk.write_bytes(b"\0" * 65536)
    dom = conn.defineXML(domain_xml(f"{pools}-file", file_disk(disk)))

    for check in (True, False):
        r = run_module(MOD, dict(name=name, state="absent"), check=check)
        assert r.get("failed") and r["error"] == "Conflict", r
        assert f"domain {pools}-file (defined, disk vda: {disk})" in r["msg"] and r["users"]
    assert conn.storagePoolLookupByName(name).isActive() and disk.exists()  # nothing changed

    # a disk that names the pool and volume (type='volume') counts too
    dom.undefine()
    by_name = (
        f"<disk type='volume' device='disk'><driver name='qemu' type='raw'/>"
        f"<source pool='{name}' volume='d.img'/><target dev='vda' bus='virtio'/></disk>"
    )
    dom = conn.defineXML(domain_xml(f"{pools}-vol", by_name))
    r = run_module(MOD, dict(name=name, state="absent", delete=True))
    assert r.get("failed") and f"{name}/d.img" in r["msg"]
    # stopping is allowed, with a warning
    r = run_module(MOD, dict(name=name, state="inactive"))
    assert r["changed"] and "cannot start while the pool is inactive" in str(r["warnings"])
    run_module(MOD, dict(name=name, state="active"))

    # with delete: a file outside the pool backed by a volume inside counts as well
    dom.undefine()
    base = folder / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    outside = scratch / "outside.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(outside)], check=True
    )
    conn.defineXML(domain_xml(f"{pools}-chain", file_disk(outside)))
    r = run_module(MOD, dict(name=name, state="absent", delete=True))
    assert r.get("failed") and f"its disk {outside} is backed by it" in r["msg"], r["msg"]
    conn.lookupByName(f"{pools}-chain").undefine()
    outside.unlink()  # (an overlay in another directory that no domain uses is not seen: HostScan's rule)

    # nothing uses it any more: delete it with its volumes, four ways
    r = four(dict(name=name, state="absent", delete=True))
    assert sorted(r[1]["deleted_volumes"]) == [str(base), str(disk)]
    assert r[0]["deleted_volumes"] == r[1]["deleted_volumes"]
    assert not folder.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(path="relative/dir"), "path is 'relative/dir': an absolute path"),
        (dict(type="netfs", path="/mnt/x"), "needs source_host and source_path"),
        (dict(path="/x", source_devices=["/dev/sdz"]), "does not apply to a dir pool"),
        (dict(state="active"), "the options do not describe it"),
        (dict(path="/x", xml="<pool type='dir'/>"), "mutually exclusive"),
        (dict(xml="<pool type='dir'><name>x"), "not well-formed"),
    ],
)
def test_bad_input(conn, pools, args, message):
    r = run_module(MOD, dict(dict(name=f"{pools}-bad"), **args))
    assert r.get("failed") and message in r["msg"], r
    assert f"{pools}-bad" not in [p.name() for p in conn.listAllStoragePools(0)]


def test_conflicts_refused_before_anything(conn, pools, scratch):
    run_module(MOD, dict(name=f"{pools}-a", path=str(scratch)))
    r = run_module(MOD, dict(name=f"{pools}-b", path=f"{scratch}/"), check=True)
    assert r.get("failed") and r["error"] == "Conflict" and "already uses the directory" in r["msg"]
    r = run_module(MOD, dict(name=f"{pools}-a", type="netfs", path="/m", source_host="h", source_path="/e"))
    assert r.get("failed") and "cannot become a netfs pool" in r["msg"]
    assert [p.name() for p in conn.listAllStoragePools(0) if p.name().startswith(pools)] == [f"{pools}-a"]
