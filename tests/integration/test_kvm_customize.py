"""kvm_customize on the real Debian 12 test guest's disk (tests/realguest.py), real libguestfs, qemu:///system.

Offline only: two shut-off clones (qcow2 overlays of a private copy of the guest's disk) get an
operator's key in root's authorized_keys, a file, a line appended to /etc/hosts and a password hash,
in ONE appliance launch for both, four ways. The guest's own /etc/passwd, /etc/shadow and /root are
used, as a user's would be. Then what was written is read back with kvm_guestfs, the base is
proven unwritten, and the copy the clones stand on is refused. Each launch costs ~20-40 s here
(software emulation), so mounts are given (ext4 on the whole disk) and one world serves every check.
"""

from __future__ import annotations

import shutil

import pytest

from tests import guestlib, realguest
from tests.harness import assert_four_ways, four_ways, run_module

pytestmark = pytest.mark.slow

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfflineEditKeyOfTheOperator0000000000000000 operator@offline"
MOUNTS = {"/dev/sda": "/"}


@pytest.fixture(scope="module")
def world(conn):
    """A private copy of the real guest's disk, two shut-off clones on overlays of it, and a password hash."""
    manifest = realguest.build()
    prefix = guestlib.new_prefix()
    scratch = guestlib.make_scratch(prefix)
    base = scratch / "base.qcow2"
    shutil.copyfile(manifest["disk"], base)
    names = []
    for n in ("a", "b"):
        disk = guestlib.make_overlay(base, scratch / f"{n}.qcow2")
        xml = realguest.domain_xml(
            f"{prefix}-{n}", disk, manifest["kernel"], manifest["initrd"], scratch / f"{n}.serial.log"
        )
        conn.defineXML(xml)
        names.append(f"{prefix}-{n}")
    # a SHA-512 crypt(3) hash as a user's playbook would give it (password_hash); no login uses it here
    hashed = "$6$virtopsoffline$" + "Xq7Lr1mVb9Zp0Ct3Ns8Kd2Wy5Fh6Ga4Je" * 2 + "Q0aB1cD2eF3gH4iJ5kL6mN7oP8qR9s"
    try:
        yield dict(prefix=prefix, scratch=scratch, base=base, names=names, hash=hashed, manifest=manifest)
    finally:
        guestlib.cleanup_domains(conn, prefix)
        guestlib.remove_scratch(prefix)


def edits(world) -> dict:
    return dict(
        domains=world["names"],
        mounts=MOUNTS,
        force_tcg="yes",
        authorized_keys=[dict(user="root", keys=[KEY])],
        files=[
            dict(path="/etc/motd", content="Edited offline by virtops.kvm\n", mode="0644"),
            dict(path="/etc/hosts", state="appended", content="192.0.2.10 backup.example.com\n"),
            dict(path="/etc/virtops-offline/marker", content="one\n", owner="root:root", mode="0600"),
        ],
        passwords=[dict(user="root", hash=world["hash"])],
    )


def test_two_clones_edited_in_one_launch_four_ways_and_read_back(world):
    base_before = guestlib.sha256(world["base"])
    results = four_ways("kvm_customize", edits(world))
    assert_four_ways(results)
    check, real, again, _check2 = results
    assert check["launches"] == real["launches"] == again["launches"] == 1
    assert check["domains"] == real["domains"]  # what check mode planned is what was done
    first = real["domains"][world["names"][0]]["changes"]
    assert "set the password hash of root" in first and any("/root/.ssh/authorized_keys" in c for c in first)
    assert world["hash"] not in repr(results)  # never returned, never in a diff
    assert guestlib.sha256(world["base"]) == base_before  # the clones' base: read, never written

    for name in world["names"]:
        read = run_module(
            "kvm_guestfs",
            dict(domain=name, mounts=MOUNTS, force_tcg="yes", paths=[
                "/root/.ssh/authorized_keys", "/etc/motd", "/etc/hosts", "/etc/shadow", "/etc/virtops-offline/marker",
            ]),
        )  # fmt: skip
        assert not read.get("failed"), read.get("msg")
        files = read["files"]
        keys = files["/root/.ssh/authorized_keys"]
        assert KEY in keys["content"].splitlines() and keys["mode"] == "0600"
        # the key the image was built with is still there: keys are added, not replaced
        assert len(keys["content"].splitlines()) >= 2
        assert files["/etc/motd"]["content"] == "Edited offline by virtops.kvm\n"
        assert files["/etc/hosts"]["content"].endswith("192.0.2.10 backup.example.com\n")
        assert files["/etc/hosts"]["content"].count("backup.example.com") == 1
        assert f"root:{world['hash']}:" in files["/etc/shadow"]["content"]
        assert files["/etc/shadow"]["mode"] == "0640"
        assert files["/etc/virtops-offline/marker"]["mode"] == "0600"


def test_the_disk_the_clones_stand_on_is_refused_and_left_unwritten(conn, world):
    manifest = world["manifest"]
    name = f"{world['prefix']}-tpl"
    conn.defineXML(
        realguest.domain_xml(
            name, world["base"], manifest["kernel"], manifest["initrd"], world["scratch"] / "tpl.serial.log"
        )
    )
    before = guestlib.sha256(world["base"])
    res = run_module("kvm_customize", dict(domain=name, mounts=MOUNTS, files=[dict(path="/etc/motd", content="x\n")]))
    assert res.get("failed") and res["error"] == "StorageError", res
    assert "is the base of" in res["msg"] and "nothing was changed" in res["msg"]
    assert sorted(res["dependants"]) == sorted(
        f"{world['scratch'] / (n + '.qcow2')} (domain {world['prefix']}-{n})" for n in ("a", "b")
    )
    assert guestlib.sha256(world["base"]) == before
