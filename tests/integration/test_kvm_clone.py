"""kvm_clone against the real qemu:///system with the bootable test guest.

Every test clones its own copy of the test guest's base (``<scratch>/tpl.qcow2``,
template domain ``<prefix>-tpl``), so making the base read-only never touches
the shared cached image. The template's serial log is ``<scratch>/<prefix>-tpl.log``,
so each clone logs to ``<scratch>/<clone>.log``.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._host.probe import usable_domain_type
from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module


def my_domains(conn, prefix: str) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(prefix))


def files(*dirs: Path) -> list[tuple]:
    out = []
    for d in dirs:
        for p in sorted(Path(d).iterdir()):
            s = p.lstat()
            out.append((str(p), s.st_mode, s.st_size, s.st_mtime_ns))
    return out


def macs_on_host(conn) -> list[str]:
    macs = []
    for dom in conn.listAllDomains():
        try:
            macs += [i["mac"] for i in dx.interfaces(dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))]
        except libvirt.libvirtError:
            continue  # another helper's domain went away while we looked
    return macs


@pytest.mark.slow
def test_overlay_and_copy_clones_boot_and_base_never_changes(conn, tpl, prefix, scratch):
    base_sum = guestlib.sha256(tpl["disk"])
    ov = f"{prefix}-ov"
    args = dict(template=tpl["name"], name=ov, state="running", domain_type="qemu")
    results = four_ways("kvm_clone", args)
    assert_four_ways(results)
    real = results[1]
    clone = real["clones"][0]
    assert clone["state"] == "running"
    disk = clone["disks"][0]
    assert disk == dict(
        target="vda",
        path=str(scratch / f"{ov}.qcow2"),
        format="qcow2",
        backing_file=str(tpl["disk"]),
        backing_format="qcow2",
        mode="overlay",
    )
    assert st.qcow2_header(disk["path"])["backing_format"] == "qcow2"
    assert real["bases"] == [dict(path=str(tpl["disk"]), read_only=True, dependents=[ov])]
    assert not os.stat(tpl["disk"]).st_mode & 0o222
    # the check-mode plan named the same path (its MAC/UUID are only a preview)
    assert results[0]["clones"][0]["disks"][0]["path"] == disk["path"]
    marker = guestlib.wait_for_marker(scratch / f"{ov}.log", timeout=180)
    assert marker == [f"VIRTOPS-GUEST-UP hostname={ov}"]  # the identity reset named it
    dom = conn.lookupByName(ov)
    root = dx.parse(dom.XMLDesc(0))
    assert dx.interfaces(root)[0]["mac"] == clone["macs"][0]
    assert dx.provenance(root)["template"] == tpl["name"]
    dom.destroy()
    # the guest appended to its boot log on vda1; write more through the overlay for good measure
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0xab 1M 4M", disk["path"]], check=True, capture_output=True
    )
    assert guestlib.sha256(tpl["disk"]) == base_sum

    cp = f"{prefix}-cp"
    args = dict(template=tpl["name"], name=cp, mode="copy", state="running", domain_type="qemu")
    results = four_ways("kvm_clone", args)
    assert_four_ways(results)
    cdisk = results[1]["clones"][0]["disks"][0]
    assert cdisk["mode"] == "copy" and cdisk["backing_file"] is None
    assert st.backing_chain(cdisk["path"]) == [
        dict(path=cdisk["path"], format="qcow2", backing_file=None, backing_format=None)
    ]
    marker = guestlib.wait_for_marker(scratch / f"{cp}.log", timeout=180)
    assert marker == [f"VIRTOPS-GUEST-UP hostname={cp}"]
    conn.lookupByName(cp).destroy()
    assert guestlib.sha256(tpl["disk"]) == base_sum
    assert results[1]["clones"][0]["macs"] != clone["macs"]


def test_batch_of_20_then_absent_removes_only_its_files(conn, tpl, prefix, scratch):
    names = [f"{prefix}-b{i:02d}" for i in range(20)]
    xml_dir = scratch / "xml"
    xml_dir.mkdir()
    (scratch / "unrelated.qcow2").write_bytes(b"not kvm_clone's")
    (xml_dir / "notes.xml").write_text("<notes/>")
    args = dict(template=tpl["name"], clones=names, xml_dir=str(xml_dir), domain_type="qemu", parallel=4)
    results = four_ways("kvm_clone", args)
    assert_four_ways(results)
    real = results[1]
    assert [c["name"] for c in real["clones"]] == names
    macs = [m for c in real["clones"] for m in c["macs"]]
    assert len(macs) == 20 and len(set(macs)) == 20
    host_macs = macs_on_host(conn)
    assert all(host_macs.count(m) == 1 for m in macs)
    assert len({c["uuid"] for c in real["clones"]}) == 20
    assert real["bases"][0]["dependents"] == sorted(names)
    assert my_domains(conn, prefix) == sorted([*names, tpl["name"]])
    for n in names:
        assert (scratch / f"{n}.qcow2").exists()
        text = (xml_dir / f"{n}.xml").read_text()
        assert dx.name_of(dx.parse(text)) == n  # the course's stu01.xml, from virsh dumpxml
    # rerun, same 20: the results of the unchanged runs report the same identities
    assert [c["uuid"] for c in results[2]["clones"]] == [c["uuid"] for c in real["clones"]]

    args = dict(clones=names, xml_dir=str(xml_dir), state="absent")
    results = four_ways("kvm_clone", args)
    assert_four_ways(results)
    removed = sorted(results[1]["removed_files"])
    assert removed == sorted([str(scratch / f"{n}.qcow2") for n in names] + [str(xml_dir / f"{n}.xml") for n in names])
    assert my_domains(conn, prefix) == [tpl["name"]]
    assert sorted(p.name for p in scratch.iterdir()) == sorted(["tpl.qcow2", "unrelated.qcow2", "xml"])
    assert [p.name for p in xml_dir.iterdir()] == ["notes.xml"]
    assert tpl["disk"].exists()


def test_absent_finds_the_xml_file_without_xml_dir_and_needs_no_xml_dir(conn, tpl, prefix, scratch):
    n, m = f"{prefix}-x1", f"{prefix}-x2"
    xml_dir = scratch / "xml"
    xml_dir.mkdir()
    assert_four_ways(
        four_ways("kvm_clone", dict(template=tpl["name"], name=n, xml_dir=str(xml_dir), domain_type="qemu"))
    )
    assert (xml_dir / f"{n}.xml").exists()
    results = four_ways("kvm_clone", dict(name=n, state="absent"))  # xml_dir not given again
    assert_four_ways(results)
    want = sorted([str(scratch / f"{n}.qcow2"), str(xml_dir / f"{n}.xml")])
    assert sorted(results[0]["removed_files"]) == want  # check mode names what it would remove
    assert sorted(results[1]["removed_files"]) == want
    assert list(xml_dir.iterdir()) == []

    r = run_module("kvm_clone", dict(template=tpl["name"], name=m, domain_type="qemu"))
    assert r["changed"] is True, r.get("msg")
    results = four_ways("kvm_clone", dict(name=m, state="absent", xml_dir=str(scratch / "missing")))
    assert_four_ways(results)
    assert results[1]["removed_files"] == [str(scratch / f"{m}.qcow2")]
    assert my_domains(conn, prefix) == [tpl["name"]]


def test_existing_clone_that_differs_is_an_error_not_overwritten(conn, tpl, prefix, scratch):
    n = f"{prefix}-m"
    r = run_module("kvm_clone", dict(template=tpl["name"], name=n, domain_type="qemu"))
    assert r["changed"] is True, r.get("msg")
    before = (my_domains(conn, prefix), files(scratch), conn.lookupByName(n).XMLDesc(0))
    for check in (True, False):
        r = run_module(
            "kvm_clone", dict(template=tpl["name"], clones=[{"name": n, "vcpus": 2}], domain_type="qemu"), check=check
        )
        assert r.get("failed") and "has 1 vCPU(s), expected 2" in r["msg"], r
        assert r["error"] == "Conflict"
    r = run_module("kvm_clone", dict(template=tpl["name"], name=n, mode="copy", domain_type="qemu"))
    assert r.get("failed") and "it is a overlay clone, not copy" in r["msg"], r
    assert (my_domains(conn, prefix), files(scratch), conn.lookupByName(n).XMLDesc(0)) == before


def test_define_failure_rolls_back_only_that_clone(conn, tpl, prefix, scratch):
    ok, bad = f"{prefix}-ok", f"{prefix}-bad"
    # 4000 passes the collection's own bound (1 to 4096) and exceeds the machine type's: libvirt refuses the define
    args = dict(template=tpl["name"], clones=[ok, {"name": bad, "vcpus": 4000}], domain_type="qemu")
    r = run_module("kvm_clone", args)
    assert r.get("failed"), r
    assert r["failed_clones"] == [bad]
    assert bad in r["msg"] and "Maximum CPUs" in r["msg"]
    outcome = {c["name"]: c for c in r["clones"]}
    assert outcome[bad]["state"] == "absent" and outcome[bad]["failed"] is True
    assert outcome[ok]["state"] == "present"
    assert my_domains(conn, prefix) == sorted([ok, tpl["name"]])
    assert not (scratch / f"{bad}.qcow2").exists()
    assert (scratch / f"{ok}.qcow2").exists()


def test_two_concurrent_runs_get_distinct_macs(conn, tpl, prefix, scratch):
    groups = [[f"{prefix}-p{g}-{i}" for i in range(8)] for g in (1, 2)]
    results: dict[int, dict] = {}

    def go(g: int) -> None:
        results[g] = run_module("kvm_clone", dict(template=tpl["name"], clones=groups[g], domain_type="qemu"))

    threads = [threading.Thread(target=go, args=(g,)) for g in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for g in (0, 1):
        assert not results[g].get("failed"), results[g].get("msg")
        assert results[g]["changed"] is True
        assert [c["name"] for c in results[g]["clones"]] == groups[g]
    macs = [m for g in (0, 1) for c in results[g]["clones"] for m in c["macs"]]
    assert len(macs) == 16 and len(set(macs)) == 16
    host_macs = macs_on_host(conn)
    assert all(host_macs.count(m) == 1 for m in macs)
    assert my_domains(conn, prefix) == sorted([*groups[0], *groups[1], tpl["name"]])
    for n in groups[0] + groups[1]:
        chain = st.backing_chain(str(scratch / f"{n}.qcow2"))
        assert chain[0]["backing_file"] == str(tpl["disk"])


def test_bad_inputs_change_nothing(conn, guest, tpl, prefix, scratch):
    other = f"{prefix}-other"
    r = run_module("kvm_clone", dict(template=tpl["name"], name=other, domain_type="qemu"))
    assert r["changed"] is True, r.get("msg")
    used_mac = r["clones"][0]["macs"][0]
    used_uuid = r["clones"][0]["uuid"]
    (scratch / f"{prefix}-taken.qcow2").write_bytes(b"someone else's disk")
    ro_dir = scratch / "ro"
    ro_dir.mkdir()
    vmdk = scratch / "t.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "1M"], check=True)
    vmdk_xml = guestlib.domain_xml(f"{prefix}-vmdk", vmdk, scratch / "v.log").replace('type="qcow2"', 'type="vmdk"')
    missing_xml = guestlib.domain_xml(f"{prefix}-gone", scratch / "gone.qcow2", scratch / "g.log")
    base = dict(template=tpl["name"], domain_type="qemu")
    cases = [
        (dict(base, name=f"{prefix}-taken"), "already exists"),
        (dict(base, name="../x"), "a name is 1 to 64 characters"),
        (dict(base, name="/"), "a name is 1 to 64 characters"),
        (dict(base, name="a b"), "a name is 1 to 64 characters"),
        (dict(base, name="x" * 65), "a name is 1 to 64 characters"),
        (dict(base, name=""), "name is '': a name is 1 to 64 characters"),
        (dict(base, clones=[f"{prefix}-d", f"{prefix}-d"]), "more than once"),
        (dict(base, clones=[{"name": f"{prefix}-m", "macs": [used_mac]}]), f"already used by domain '{other}'"),
        (dict(base, clones=[{"name": f"{prefix}-u", "uuid": used_uuid}]), f"already used by domain '{other}'"),
        (dict(base, name=f"{prefix}-n", dest_dir=str(scratch / "missing")), "does not exist"),
        (dict(base, name=f"{prefix}-n", dest_dir=str(ro_dir)), "not writable"),
        (dict(template_xml=missing_xml, name=f"{prefix}-n", domain_type="qemu"), "does not exist"),
        (dict(template_xml=vmdk_xml, name=f"{prefix}-n", domain_type="qemu"), "does not support"),
    ]
    subprocess.run(["chattr", "+i", str(ro_dir)], check=True)
    try:
        for args, why in cases:
            before = (my_domains(conn, prefix), files(scratch, ro_dir, tpl["disk"].parent))
            for check in (True, False):
                r = run_module("kvm_clone", args, check=check)
                assert r.get("failed"), (args, r)
                assert why in r["msg"], (args, r["msg"])
            assert (my_domains(conn, prefix), files(scratch, ro_dir, tpl["disk"].parent)) == before, args
    finally:
        subprocess.run(["chattr", "-i", str(ro_dir)], check=True)
    assert (scratch / f"{prefix}-taken.qcow2").read_bytes() == b"someone else's disk"

    # a running (then paused) template is refused, and so are overlays on a disk a running domain writes
    dom = conn.lookupByName(tpl["name"])
    os.chmod(tpl["disk"], 0o644)  # the earlier clone protected it; the template itself must start here
    dom.create()
    try:
        running_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace(f">{tpl['name']}<", f">{prefix}-x<")
        for state_word, prep in (("running", None), ("paused", dom.suspend)):
            if prep:
                prep()
            before = (my_domains(conn, prefix), files(scratch))
            r = run_module("kvm_clone", dict(base, name=f"{prefix}-n"))
            assert r.get("failed") and f"is {state_word}" in r["msg"], r
            r = run_module("kvm_clone", dict(template_xml=running_xml, name=f"{prefix}-n", domain_type="qemu"))
            assert r.get("failed") and f"running domain(s) {tpl['name']} write to it" in r["msg"], r
            assert (my_domains(conn, prefix), files(scratch)) == before
    finally:
        dom.destroy()


def test_auto_domain_type_follows_the_host_verdict(conn, tpl, prefix, scratch):
    expected, reason = usable_domain_type(conn)
    n = f"{prefix}-auto"
    results = four_ways("kvm_clone", dict(template=tpl["name"], name=n, domain_type="auto"))
    assert_four_ways(results)
    assert results[1]["domain_type_reason"] == reason
    assert dx.parse(conn.lookupByName(n).XMLDesc(0)).get("type") == expected
