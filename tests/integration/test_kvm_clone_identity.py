"""kvm_clone's identity reset and cloud-init seeds, on the real daemon, real qcow2 and a real appliance.

One scenario shares its appliance launches and boots: a clone that existed
before (made without a reset), then a batch of two new clones (one with a
per-clone hostname and a cidata seed) in one task. The test guest prints
``VIRTOPS-IDENTITY hostname=... machine-id=<state>:<id> seed-hostname=...``
on its serial console at boot (playbooks/files/build_test_guest.py).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import read_seed
from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module

IDENTITY_RE = re.compile(r"VIRTOPS-IDENTITY hostname=(\S+) machine-id=(\w+):(\S+) seed-hostname=(\S+)")
ALL_OPS = ["hostname", "machine-id", "ssh-hostkeys", "net-persistent", "dhcp-leases", "logfiles"]


def identity_line(serial_log: Path, timeout: float = 180) -> tuple[str, str, str, str]:
    """The guest's identity line of its first boot (hostname, machine-id state, id, seed hostname)."""
    deadline = time.monotonic() + timeout
    while True:
        text = serial_log.read_text(errors="replace") if serial_log.exists() else ""
        m = IDENTITY_RE.search(text)
        if m:
            return m.group(1), m.group(2), m.group(3), m.group(4)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no identity line in {serial_log} after {timeout} s:\n{text[-1500:]}")
        time.sleep(0.25)


@pytest.mark.slow
def test_a_batch_boots_as_distinct_machines_in_one_launch(conn, guest, tpl, prefix, scratch):
    old, c1, c2 = f"{prefix}-old", f"{prefix}-c1", f"{prefix}-c2"
    base_sum = guestlib.sha256(tpl["disk"])
    common = dict(template=tpl["name"], domain_type="qemu", dest_dir=str(scratch))

    r = run_module("kvm_clone", dict(common, name=old, identity={"operations": []}))
    assert not r.get("failed"), r.get("msg")
    assert "identity" not in r["clones"][0]
    old_disk = scratch / f"{old}.qcow2"
    old_sum = guestlib.sha256(old_disk)

    seed_meta = {"local-hostname": "seed-two", "role": "web"}
    args = dict(
        common,
        clones=[
            old,
            c1,
            {"name": c2, "hostname": "web-two", "cloud_init": {"meta_data": seed_meta, "user_data": {"a": 1}}},
        ],
        identity={"files": [{"path": "/etc/virtops/role", "content": "fleet\n", "mode": "0600"}]},
    )
    # check mode plans the reset without launching an appliance: with no appliance to find, a launch would fail
    check = run_module("kvm_clone", args, check=True, env={"LIBGUESTFS_PATH": str(scratch / "no-appliance")})
    assert not check.get("failed"), check.get("msg")
    planned = {c["name"]: c.get("identity") for c in check["clones"]}
    assert planned[old] is None
    assert planned[c1] == dict(hostname=c1, planned=ALL_OPS, files=["/etc/virtops/role"])
    assert planned[c2]["hostname"] == "web-two"
    assert not (scratch / f"{c1}.qcow2").exists() and not (scratch / f"{c2}-cidata.iso").exists()

    results = four_ways("kvm_clone", args)
    assert_four_ways(results)
    real = {c["name"]: c for c in results[1]["clones"]}
    assert real[old]["changed"] is False and "identity" not in real[old]
    for name, host in ((c1, c1), (c2, "web-two")):
        rep = real[name]["identity"]
        assert rep["hostname"] == host
        assert set(rep["done"]) >= {"hostname", "machine-id", "ssh-hostkeys", "net-persistent", "logfiles"}
        assert rep["files"] == ["/etc/virtops/role"]
        prov = dx.provenance(dx.parse(conn.lookupByName(name).XMLDesc(0)))
        assert prov["identity"]["hostname"] == host and prov["identity"]["done"] == rep["done"]
    # the rerun reports what its provenance recorded, and touched nothing
    assert {c["name"]: c.get("identity", {}).get("done") for c in results[2]["clones"]} == {
        old: None,
        c1: real[c1]["identity"]["done"],
        c2: real[c2]["identity"]["done"],
    }
    assert guestlib.sha256(tpl["disk"]) == base_sum, "the base changed"
    assert guestlib.sha256(old_disk) == old_sum, "a clone that existed was touched"

    # the seed: beside the disk, labelled cidata, instance-id = the clone's UUID, attached read-only
    seed = scratch / f"{c2}-cidata.iso"
    assert real[c2]["seed"] == str(seed) and "seed" not in real[c1]
    label, docs = read_seed(str(seed))
    assert label.lower() == "cidata"
    assert f'"instance-id": "{real[c2]["uuid"]}"' in docs["meta-data"].decode()
    assert '"local-hostname": "seed-two"' in docs["meta-data"].decode()
    assert docs["user-data"].decode().startswith("#cloud-config\n")
    cdroms = [d for d in dx.disks(dx.parse(conn.lookupByName(c2).XMLDesc(0))) if d["device"] == "cdrom"]
    assert [(d["path"], d["readonly"]) for d in cdroms] == [(str(seed), True)]

    # the new disks, read back offline in one launch: own hostname, no host keys, the file written
    read = run_module(
        "kvm_guestfs",
        dict(domains=[c1, c2], paths=["/etc/hostname", "/etc/machine-id", "/etc/virtops/role"], list_dirs=["/etc/ssh"]),
    )
    assert not read.get("failed"), read.get("msg")
    for name, host in ((c1, c1), (c2, "web-two")):
        files = read["domains"][name]["files"]
        assert files["/etc/hostname"]["content"] == f"{host}\n"
        assert files["/etc/machine-id"]["content"] == ""
        assert files["/etc/virtops/role"]["content"] == "fleet\n" and files["/etc/virtops/role"]["mode"] == "0600"
        assert read["domains"][name]["dirs"]["/etc/ssh"] == [], read["domains"][name]["dirs"]

    # first boot: each clone says its own name and a machine-id of its own; the seed is read by the guest
    for name in (c1, c2):
        conn.lookupByName(name).create()
    seen = {name: identity_line(scratch / f"{name}.log") for name in (c1, c2)}
    assert seen[c1][:2] == (c1, "regenerated") and seen[c1][3] == "none"
    assert seen[c2][:2] == ("web-two", "regenerated") and seen[c2][3] == "seed-two"
    assert seen[c1][2] != seen[c2][2] != guest["machine_id"] and seen[c1][2] != guest["machine_id"]
    old_seen = run_module("kvm_domain", dict(name=old, state="running"))
    assert not old_seen.get("failed"), old_seen.get("msg")
    assert identity_line(scratch / f"{old}.log")[:3] == ("virtops-base", "kept", guest["machine_id"])

    # removed with the clone: its disk and its seed; the others and the base stay
    gone = run_module("kvm_clone", dict(name=c2, state="absent"))
    assert not gone.get("failed"), gone.get("msg")
    assert sorted(gone["removed_files"]) == sorted([str(scratch / f"{c2}.qcow2"), str(seed)])
    assert not seed.exists() and (scratch / f"{c1}.qcow2").exists() and tpl["disk"].exists()
