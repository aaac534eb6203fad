"""kvm_volume against the real qemu:///system daemon, in one dir pool shared by the file's tests.

Every scenario runs four ways (check, real, again, again in check). qemu-img,
not the module, says what the volume became; uploads and downloads are
compared byte for byte through their sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module

MOD = "kvm_volume"
MIB = 1024**2


def four(args, first=True):
    results = four_ways(MOD, args)
    assert_four_ways(results, first_changes=first)
    assert results[0]["diff"] == results[1]["diff"], "check mode must predict the real diff"
    assert results[0]["changes"] == results[1]["changes"]
    return results


def qemu_img(path) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pool(conn) -> Iterator[dict]:
    """A started dir pool in a scratch directory of its own: {name, dir, prefix}."""
    prefix = guestlib.new_prefix()
    folder = guestlib.make_scratch(prefix) / "pool"
    name = f"{prefix}-vols"
    r = run_module("kvm_pool", dict(name=name, path=str(folder), state="active"))
    assert not r.get("failed"), r.get("msg")
    try:
        yield dict(name=name, dir=folder, prefix=prefix)
    finally:
        try:
            guestlib.cleanup_domains(conn, prefix)
            p = conn.storagePoolLookupByName(name)
            if p.isActive():
                p.destroy()
            p.undefine()
        finally:
            guestlib.remove_scratch(prefix)


def test_create_grow_overlay_clone_delete(conn, pool):
    p = pool["name"]
    base = pool["dir"] / "base.qcow2"

    # create a 64 MiB qcow2 (vol-create-as)
    r = four(dict(pool=p, name="base.qcow2", size="64M"))
    assert r[0]["volume"] is None and r[1]["changes"] == ["create qcow2 64 MiB (67108864 bytes)"]
    info = qemu_img(base)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 * MIB)
    assert r[2]["volume"]["allocation"] < MIB  # sparse

    # grow (vol-resize), seen by qemu-img; shrinking is refused, nothing changed
    r = four(dict(pool=p, name="base.qcow2", size="96M"))
    assert r[1]["changes"] == ["grow from 64 MiB (67108864 bytes) to 96 MiB (100663296 bytes)"]
    assert qemu_img(base)["virtual-size"] == 96 * MIB
    r = run_module(MOD, dict(pool=p, name="base.qcow2", size="32M"))
    assert r.get("failed") and "would shrink it" in r["msg"] and qemu_img(base)["virtual-size"] == 96 * MIB

    # a raw volume shrinks only when allowed
    four(dict(pool=p, name="scratch.img", size="8M", format="raw"))
    r = four(dict(pool=p, name="scratch.img", size="4M", allow_shrink=True))
    assert r[1]["changes"][0].startswith("shrink from 8 MiB")
    assert os.path.getsize(pool["dir"] / "scratch.img") == 4 * MIB

    # an overlay on the base (vol-create-as --backing-vol), seen by qemu-img
    r = four(dict(pool=p, name="top.qcow2", backing_volume="base.qcow2"))
    top = qemu_img(pool["dir"] / "top.qcow2")
    assert top["backing-filename"] == str(base) and top["virtual-size"] == 96 * MIB
    assert r[2]["volume"]["backing"] == dict(path=str(base), format="qcow2")

    # the base may not change or go now
    r = run_module(MOD, dict(pool=p, name="base.qcow2", size="128M"))
    assert r.get("failed") and r["error"] == "Conflict" and "top.qcow2 (an image file backed by it)" in r["msg"]
    r = run_module(MOD, dict(pool=p, name="base.qcow2", state="absent"))
    assert r.get("failed") and "not deleted" in r["msg"] and base.exists()

    # a full copy (vol-clone) is independent of the base
    four(dict(pool=p, name="flat.qcow2", clone_from="top.qcow2"))
    flat = qemu_img(pool["dir"] / "flat.qcow2")
    assert "backing-filename" not in flat and flat["virtual-size"] == 96 * MIB

    # a defined domain's disk is not deleted; once it is gone the overlay, then the base, go
    disk = f"<disk type='file' device='disk'><source file='{pool['dir']}/top.qcow2'/><target dev='vda'/></disk>"
    conn.defineXML(
        f"<domain type='qemu'><name>{pool['prefix']}-d</name><memory unit='MiB'>64</memory>"
        f"<os><type arch='x86_64'>hvm</type></os><devices>{disk}</devices></domain>"
    )
    r = run_module(MOD, dict(pool=p, name="top.qcow2", state="absent"))
    assert r.get("failed") and f"domain {pool['prefix']}-d (defined, disk vda" in r["msg"]
    conn.lookupByName(f"{pool['prefix']}-d").undefine()
    four(dict(pool=p, name="top.qcow2", state="absent"))
    r = four(dict(pool=p, name="base.qcow2", state="absent"))
    assert r[1]["volume"] is None and not base.exists()
    four(dict(pool=p, name="base.qcow2", state="absent"), first=False)


def test_upload_download_round_trip(pool, tmp_path):
    p = pool["name"]
    data = secrets.token_bytes(3 * MIB + 12345)
    src = tmp_path / "src.img"
    src.write_bytes(data)
    digest = sha256(src)

    # upload (vol-upload) into a new volume: four ways, verified, with progress every MiB
    args = dict(pool=p, name="up.img", upload=str(src), checksum=f"sha256:{digest}", progress_mib=1)
    r = four(args)
    assert r[0]["transfer"] is None and r[2]["transfer"] is None  # check mode and the rerun move nothing
    t = r[1]["transfer"]
    assert (t["direction"], t["bytes"], t["sha256"], t["verified"]) == ("upload", len(data), digest, True)
    assert [x["bytes"] for x in t["progress"]] == [MIB, 2 * MIB, 3 * MIB] and t["seconds"] >= 0
    assert sha256(pool["dir"] / "up.img") == digest and r[1]["volume"]["format"] == "raw"

    # download (vol-download) to a new file: four ways, the same bytes
    dest = tmp_path / "back.img"
    r = four(dict(pool=p, name="up.img", download=str(dest)))
    assert r[1]["transfer"]["sha256"] == digest and r[1]["transfer"]["verified"] is True
    assert sha256(dest) == digest and r[2]["sha256"] == digest
    assert oct(dest.stat().st_mode & 0o777) == "0o600"

    # other content on either side is replaced only with force
    other = tmp_path / "other.img"
    other.write_bytes(b"\1" * MIB)
    r = run_module(MOD, dict(pool=p, name="up.img", upload=str(other)))
    assert r.get("failed") and "force=true" in r["msg"] and sha256(pool["dir"] / "up.img") == digest
    r = run_module(MOD, dict(pool=p, name="up.img", upload=str(other), force=True))
    assert r["changed"] and r["transfer"]["verified"] and sha256(pool["dir"] / "up.img") == sha256(other)
    r = run_module(MOD, dict(pool=p, name="up.img", download=str(dest)))
    assert r.get("failed") and "force=true" in r["msg"] and sha256(dest) == digest
    r = run_module(MOD, dict(pool=p, name="up.img", download=str(dest), force=True))
    assert r["changed"] and sha256(dest) == sha256(other)

    # a qcow2 file keeps its format; libvirt reads it from the data
    q = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q), "40M"], check=True)
    r = four(dict(pool=p, name="q.qcow2", upload=str(q)))
    assert r[2]["volume"]["format"] == "qcow2" and r[2]["volume"]["capacity"] == 40 * MIB
    assert qemu_img(pool["dir"] / "q.qcow2")["virtual-size"] == 40 * MIB

    # bad input: a wrong checksum, a format that is not the file's; nothing was made
    r = run_module(MOD, dict(pool=p, name="bad.img", upload=str(src), checksum="0" * 64))
    assert r.get("failed") and "not the expected checksum" in r["msg"]
    r = run_module(MOD, dict(pool=p, name="bad.img", upload=str(src), format="qcow2"))
    assert r.get("failed") and "is a raw image, not qcow2" in r["msg"]
    assert not (pool["dir"] / "bad.img").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(name="v.qcow2", size="lots"), "size is 'lots': a size is a whole number"),
        (dict(name="v.qcow2"), "size is needed"),
        (dict(name="../v", size="1M"), "name is '../v': a name is 1 to 64 characters"),
        (dict(name="v.qcow2", size="1M", upload="/etc/hostname"), "mutually exclusive"),
        (dict(name="v.qcow2", backing_volume="missing.qcow2"), "not a volume libvirt knows"),
        (dict(name="v.qcow2", download="/tmp/v.img"), "nothing to download"),
    ],
)
def test_bad_input(pool, args, message):
    r = run_module(MOD, dict(pool=pool["name"], **args))
    assert r.get("failed") and message in r["msg"], r
    assert not (pool["dir"] / "v.qcow2").exists()


def test_missing_or_inactive_pool(conn, pool):
    r = run_module(MOD, dict(pool=f"{pool['prefix']}-none", name="v.qcow2", size="1M"))
    assert r.get("failed") and "does not exist" in r["msg"]
    off = f"{pool['prefix']}-off"
    run_module("kvm_pool", dict(name=off, path=str(pool["dir"].parent / "off")))
    try:
        r = run_module(MOD, dict(pool=off, name="v.qcow2", size="1M"))
        assert r.get("failed") and "is not active" in r["msg"] and "state=active" in r["msg"]
    finally:
        conn.storagePoolLookupByName(off).undefine()
