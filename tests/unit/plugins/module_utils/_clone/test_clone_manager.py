"""CloneManager against libvirt's test:///default driver (no daemon) and real qemu-img in tmp_path.

The seams are the ones the module uses: the connection (here holding the
test's own virConnect) and a runner for qemu-img.
"""

from __future__ import annotations

import os
import subprocess
import threading

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import plan as clone_plan
from ansible_collections.virtops.kvm.plugins.module_utils._clone.lock import HostLock
from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    InvalidInput,
    KvmError,
    StorageError,
    TimeoutExpired,
)
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan
from tests import fakes

TPL = "ut-tpl"


runner, template_xml, Held = fakes.runner, fakes.template_xml, fakes.Held


def manager(conn, tmp_path, check_mode=False, **params):
    """A CloneManager as the module makes one: options (defaults from the spec), connection, check mode."""
    if "template_xml" not in params:
        params.setdefault("template", TPL)
    params.setdefault("identity", {"operations": []})  # blank test disks: the reset has its own tests
    return fakes.clone_manager(conn, tmp_path, check_mode, **params)


def snapshot(conn, tmp_path):
    names = sorted(d.name() for d in conn.listAllDomains())
    files = sorted((p.name, p.stat().st_mode) for p in tmp_path.iterdir() if p.name != "lock")
    return names, files


def test_overlay_clones_four_ways(conn, tpl, tmp_path):
    kw = dict(clones=["ut-a", {"name": "ut-b", "memory": 128, "autostart": True}])
    before = snapshot(conn, tmp_path)
    check = manager(conn, tmp_path, check_mode=True, **kw).run()
    assert check["changed"] is True
    assert [c["name"] for c in check["clones"]] == ["ut-a", "ut-b"]
    assert all(c["macs"][0].startswith("52:54:00:") for c in check["clones"])
    assert check["clones"][0]["disks"][0]["path"] == str(tmp_path / "ut-a.qcow2")
    assert check["bases"][0]["read_only"] is True and check["bases"][0]["dependents"] == ["ut-a", "ut-b"]
    assert check["diff"]["before"]["clones"]["ut-a"] == {"state": "absent"}
    assert snapshot(conn, tmp_path) == before  # check mode touched nothing

    real = manager(conn, tmp_path, **kw).run()
    assert real["changed"] is True
    for c in real["clones"]:
        dom = conn.lookupByName(c["name"])
        root = dx.parse(dom.XMLDesc(0))
        assert dx.provenance(root)["template"] == TPL
        assert c["macs"] == [i["mac"] for i in dx.interfaces(root)]
        chain = st.backing_chain(c["disks"][0]["path"])
        assert chain[0]["backing_file"] == str(tpl) and chain[0]["backing_format"] == "qcow2"
    assert conn.lookupByName("ut-b").autostart() == 1
    assert dx.memory_mib(dx.parse(conn.lookupByName("ut-b").XMLDesc(0))) == 128
    assert not os.stat(tpl).st_mode & 0o222  # base protected
    assert real["bases"] == [dict(path=str(tpl), read_only=True, dependents=["ut-a", "ut-b"])]

    again = manager(conn, tmp_path, **kw).run()
    assert again["changed"] is False
    assert [c["uuid"] for c in again["clones"]] == [c["uuid"] for c in real["clones"]]
    assert manager(conn, tmp_path, check_mode=True, **kw).run()["changed"] is False


def test_copy_mode_independent(conn, tpl, tmp_path):
    os.chmod(tpl, 0o644)
    res = manager(conn, tmp_path, name="ut-c", mode="copy").run()
    disk = res["clones"][0]["disks"][0]
    assert disk["mode"] == "copy" and disk["backing_file"] is None
    assert st.backing_chain(disk["path"])[0]["backing_file"] is None
    assert res["bases"] == []
    assert os.stat(tpl).st_mode & 0o200  # copy does not protect the source
    assert manager(conn, tmp_path, name="ut-c", mode="copy").run()["changed"] is False
    with pytest.raises(Conflict, match="copy clone, not overlay"):
        manager(conn, tmp_path, name="ut-c").run()


def test_absent_removes_only_created_files(conn, tpl, tmp_path):
    manager(conn, tmp_path, clones=["ut-a", "ut-b"], xml_dir=str(tmp_path)).run()
    assert (tmp_path / "ut-a.xml").exists()
    (tmp_path / "unrelated.txt").write_text("mine")
    res = manager(conn, tmp_path, clones=["ut-a"], state="absent", template=None, xml_dir=str(tmp_path)).run()
    assert res["changed"] is True
    assert sorted(res["removed_files"]) == sorted([str(tmp_path / "ut-a.qcow2"), str(tmp_path / "ut-a.xml")])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["base.qcow2", "lock", "unrelated.txt", "ut-b.qcow2", "ut-b.xml"]
    assert "ut-a" not in [d.name() for d in conn.listAllDomains()]
    res = manager(conn, tmp_path, clones=["ut-a"], state="absent", template=None).run()
    assert res["changed"] is False


def test_absent_keeps_file_another_domain_uses(conn, tpl, tmp_path):
    manager(conn, tmp_path, name="ut-a").run()
    child = tmp_path / "child.qcow2"
    st.create_overlay(runner, str(tmp_path / "ut-a.qcow2"), str(child))
    conn.defineXML(template_xml("ut-child", str(child)))
    res = manager(conn, tmp_path, name="ut-a", state="absent", template=None).run()
    assert res["kept_files"] == [dict(path=str(tmp_path / "ut-a.qcow2"), used_by=["ut-child"])]
    assert (tmp_path / "ut-a.qcow2").exists()


def test_absent_refuses_domain_not_made_by_kvm_clone(conn, tpl, tmp_path):
    with pytest.raises(Conflict, match=r"not created by virtops\.kvm"):
        manager(conn, tmp_path, name=TPL, state="absent", template=None).run()


def test_existing_domain_not_a_clone_never_overwritten(conn, tpl, tmp_path):
    other = tmp_path / "other.qcow2"
    st.create_overlay(runner, str(tpl), str(other))
    conn.defineXML(template_xml("ut-x", str(other)))
    before = snapshot(conn, tmp_path)
    with pytest.raises(Conflict, match=r"not created by virtops\.kvm"):
        manager(conn, tmp_path, clones=["ut-new", "ut-x"]).run()
    assert snapshot(conn, tmp_path) == before


def test_mismatching_clone_names_the_difference(conn, tpl, tmp_path):
    manager(conn, tmp_path, name="ut-a").run()
    with pytest.raises(Conflict, match="memory is 64 MiB, expected 256 MiB"):
        manager(conn, tmp_path, clones=[{"name": "ut-a", "memory": 256}]).run()
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(Conflict, match=r"disk vda is .*ut-a\.qcow2, expected .*other/ut-a\.qcow2"):
        manager(conn, tmp_path, name="ut-a", dest_dir=str(other)).run()


def test_bad_inputs_change_nothing(conn, tpl, tmp_path):
    manager(conn, tmp_path, name="ut-a").run()
    used_mac = dx.interfaces(dx.parse(conn.lookupByName("ut-a").XMLDesc(0)))[0]["mac"]
    used_uuid = conn.lookupByName("ut-a").UUIDString()
    (tmp_path / "ut-taken.qcow2").write_bytes(b"someone else's")
    cases = [
        (dict(name="ut-taken"), Conflict, "already exists"),
        (dict(clones=[{"name": "ut-m", "macs": [used_mac]}]), Conflict, "already used by domain 'ut-a'"),
        (dict(clones=[{"name": "ut-u", "uuid": used_uuid}]), Conflict, "already used by domain 'ut-a'"),
        (dict(clones=["ut-d", "ut-d"]), InvalidInput, "more than once"),
        (dict(name="../x"), InvalidInput, "name is '../x': a name is 1 to 64 characters"),
        (dict(name="ut-n", dest_dir=str(tmp_path / "missing")), StorageError, "does not exist"),
        (dict(name="ut-n", template="ut-nope"), DomainNotFound, "not defined"),
        (dict(name="ut-n", template="test"), InvalidInput, "running"),
        (dict(clones=[{"name": "ut-n", "macs": ["52:54:00:00:00:01", "52:54:00:00:00:02"]}]), InvalidInput, "MAC"),
    ]
    for kw, exc, match in cases:
        before = snapshot(conn, tmp_path)
        with pytest.raises(exc, match=match):
            manager(conn, tmp_path, **kw).run()
        assert snapshot(conn, tmp_path) == before, kw
    assert (tmp_path / "ut-taken.qcow2").read_bytes() == b"someone else's"


def test_template_disk_problems(conn, tmp_path):
    missing = template_xml("ut-t1", str(tmp_path / "gone.qcow2"))
    with pytest.raises(StorageError, match="does not exist"):
        manager(conn, tmp_path, template_xml=missing, name="ut-n").run()
    vmdk = tmp_path / "t.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "1M"], check=True)
    for fmt in ("vmdk", "raw"):
        with pytest.raises(StorageError, match="not support"):
            manager(conn, tmp_path, template_xml=template_xml("ut-t2", str(vmdk), fmt), name="ut-n").run()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "lock") == ["t.vmdk"]


def test_raw_template_gives_qcow2_overlay_on_raw(conn, tmp_path):
    raw = tmp_path / "base.img"
    raw.write_bytes(b"\0" * 1048576)
    xml = template_xml("ut-rawtpl", str(raw), "raw")
    res = manager(conn, tmp_path, template_xml=xml, name="ut-r").run()
    disk = res["clones"][0]["disks"][0]
    assert disk["format"] == "qcow2" and disk["backing_format"] == "raw"
    assert st.qcow2_header(disk["path"])["backing_format"] == "raw"


def test_define_failure_rolls_back_that_clone_only(conn, tpl, tmp_path):
    class FailingConn:
        """The real connection, except defineXML fails for one clone."""

        def __init__(self, real, bad):
            self._real, self._bad = real, bad

        def defineXML(self, xml):
            if dx.name_of(dx.parse(xml)) == self._bad:
                raise libvirt.libvirtError("injected define failure")
            return self._real.defineXML(xml)

        def __getattr__(self, name):
            return getattr(self._real, name)

    m = manager(FailingConn(conn, "ut-bad"), tmp_path, clones=["ut-ok1", "ut-bad", "ut-ok2"], xml_dir=str(tmp_path))
    with pytest.raises(KvmError, match=r"1 of 3 clone\(s\) failed \(ut-bad\).*injected define failure") as info:
        m.run()
    assert info.value.details["failed_clones"] == ["ut-bad"]
    outcome = {c["name"]: c for c in info.value.details["clones"]}
    assert outcome["ut-bad"]["failed"] is True and outcome["ut-bad"]["state"] == "absent"
    assert outcome["ut-ok1"]["state"] == "present"
    assert not (tmp_path / "ut-bad.qcow2").exists() and not (tmp_path / "ut-bad.xml").exists()
    assert (tmp_path / "ut-ok1.qcow2").exists() and (tmp_path / "ut-ok2.qcow2").exists()
    names = {d.name() for d in conn.listAllDomains()}
    assert {"ut-ok1", "ut-ok2"} <= names and "ut-bad" not in names


def test_auto_domain_type_uses_host_verdict(conn, tpl, tmp_path, monkeypatch):
    monkeypatch.setattr(clone_plan, "usable_domain_type", lambda c=None: ("qemu", "no vmx/svm"))
    res = manager(conn, tmp_path, name="ut-auto", domain_type="auto").run()
    assert res["domain_type_reason"] == "no vmx/svm"
    assert conn.lookupByName("ut-auto").XMLDesc(0).startswith("<domain type='qemu'")


def test_overlay_refused_on_base_a_running_domain_writes(conn, tmp_path):
    base = tmp_path / "busy.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    dom = conn.defineXML(template_xml("ut-busy", str(base)))
    dom.create()
    with pytest.raises(StorageError, match="running domain\\(s\\) ut-busy write to it"):
        manager(conn, tmp_path, template_xml=template_xml("ut-t", str(base)), name="ut-n").run()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "lock") == ["busy.qcow2"]


def test_host_lock_excludes_a_second_holder(tmp_path):
    path = str(tmp_path / "lock")
    with HostLock(path):
        with pytest.raises(TimeoutExpired):
            with HostLock(path, timeout=0.2):
                pass
    got = []

    def take():
        with HostLock(path, timeout=5):
            got.append(True)

    t = threading.Thread(target=take)
    t.start()
    t.join(10)
    assert got == [True]  # free again after release


def test_absent_with_missing_xml_dir_removes_the_clone(conn, tpl, tmp_path):
    missing = str(tmp_path / "no-such-dir")
    with pytest.raises(StorageError, match="does not exist"):
        manager(conn, tmp_path, name="ut-a", xml_dir=missing).run()  # writing XML still needs it
    manager(conn, tmp_path, name="ut-a").run()
    kw = dict(name="ut-a", state="absent", template=None, xml_dir=missing)
    before = snapshot(conn, tmp_path)
    check = manager(conn, tmp_path, check_mode=True, **kw).run()
    assert check["changed"] is True and check["removed_files"] == [str(tmp_path / "ut-a.qcow2")]
    assert snapshot(conn, tmp_path) == before
    real = manager(conn, tmp_path, **kw).run()
    assert real["changed"] is True and real["removed_files"] == [str(tmp_path / "ut-a.qcow2")]
    assert "ut-a" not in [d.name() for d in conn.listAllDomains()]
    assert manager(conn, tmp_path, **kw).run()["changed"] is False
    assert manager(conn, tmp_path, check_mode=True, **kw).run()["changed"] is False
    with pytest.raises(InvalidInput, match="absolute path"):
        manager(conn, tmp_path, name="ut-a", state="absent", template=None, xml_dir="rel/dir").run()


def test_recorded_xml_file_removed_without_xml_dir(conn, tpl, tmp_path):
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    xml_file = str(xml_dir / "ut-a.xml")
    kw = dict(name="ut-a", xml_dir=str(xml_dir))
    assert manager(conn, tmp_path, **kw).run()["changed"] is True
    created = dx.provenance(dx.parse(conn.lookupByName("ut-a").XMLDesc(0)))["created_disks"]
    assert dict(path=xml_file, base=None, mode="xml", format=None) in created
    assert dx.provenance(dx.parse(open(xml_file, encoding="utf-8").read()))["created_disks"] == created
    # the record does not disturb idempotency
    assert manager(conn, tmp_path, **kw).run()["changed"] is False
    assert manager(conn, tmp_path, check_mode=True, **kw).run()["changed"] is False

    absent = dict(name="ut-a", state="absent", template=None)
    want = sorted([str(tmp_path / "ut-a.qcow2"), xml_file])
    before = snapshot(conn, tmp_path), sorted(os.listdir(xml_dir))
    check = manager(conn, tmp_path, check_mode=True, **absent).run()
    assert check["changed"] is True and sorted(check["removed_files"]) == want
    assert check["clones"][0]["xml_file"] == xml_file
    assert (snapshot(conn, tmp_path), sorted(os.listdir(xml_dir))) == before
    real = manager(conn, tmp_path, **absent).run()
    assert real["changed"] is True and sorted(real["removed_files"]) == want
    assert os.listdir(xml_dir) == []
    assert manager(conn, tmp_path, **absent).run()["changed"] is False
    assert manager(conn, tmp_path, check_mode=True, **absent).run()["changed"] is False


def test_recorded_xml_file_kept_when_no_longer_ours(conn, tpl, tmp_path):
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    manager(conn, tmp_path, name="ut-a", xml_dir=str(xml_dir)).run()
    (xml_dir / "ut-a.xml").write_text("<domain><name>someone-else</name></domain>")
    res = manager(conn, tmp_path, name="ut-a", state="absent", template=None).run()
    assert res["removed_files"] == [str(tmp_path / "ut-a.qcow2")]
    assert (xml_dir / "ut-a.xml").read_text() == "<domain><name>someone-else</name></domain>"


def test_older_clone_without_xml_record_needs_xml_dir(conn, tpl, tmp_path):
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    manager(conn, tmp_path, clones=["ut-a", "ut-b"], xml_dir=str(xml_dir)).run()
    for n in ("ut-a", "ut-b"):  # as kvm_clone wrote them before it recorded the XML file
        root = dx.parse(conn.lookupByName(n).XMLDesc(0))
        prov = dx.provenance(root)
        dx.set_provenance(
            root, prov["template"], prov["mode"], [c for c in prov["created_disks"] if c["mode"] != "xml"]
        )
        conn.defineXML(dx.tostring(root))
    res = manager(conn, tmp_path, name="ut-a", state="absent", template=None).run()
    assert res["removed_files"] == [str(tmp_path / "ut-a.qcow2")]
    assert (xml_dir / "ut-a.xml").exists()  # today's behaviour: not found without xml_dir
    res = manager(conn, tmp_path, name="ut-b", state="absent", template=None, xml_dir=str(xml_dir)).run()
    assert sorted(res["removed_files"]) == sorted([str(tmp_path / "ut-b.qcow2"), str(xml_dir / "ut-b.xml")])


def test_one_scan_per_run_taken_under_the_lock(conn, tpl, tmp_path, monkeypatch):
    manager(conn, tmp_path, name="ut-old").run()
    lock_held_at_scan = []
    take = HostScan.take.__func__

    def counting_take(cls, c):
        try:
            with HostLock(str(tmp_path / "lock"), timeout=0):
                lock_held_at_scan.append(False)
        except TimeoutExpired:
            lock_held_at_scan.append(True)
        return take(cls, c)

    monkeypatch.setattr(HostScan, "take", classmethod(counting_take))
    kw = dict(clones=[{"name": "ut-old", "state": "absent"}, "ut-n1", "ut-n2", "ut-n3"], parallel=2)
    check = manager(conn, tmp_path, check_mode=True, **kw).run()
    assert lock_held_at_scan == [False]  # check mode: one scan, no lock
    real = manager(conn, tmp_path, **kw).run()
    assert lock_held_at_scan == [False, True]  # a real run: one scan, under the lock
    # the bases' dependents: the scan's, without what the run removed, with what it created
    want = [dict(path=str(tpl), read_only=True, dependents=["ut-n1", "ut-n2", "ut-n3"])]
    assert check["bases"] == want and real["bases"] == want
    assert [c["state"] for c in real["clones"]] == ["absent", "present", "present", "present"]
    assert {d.name() for d in conn.listAllDomains() if d.name().startswith("ut-n")} == {"ut-n1", "ut-n2", "ut-n3"}


def test_absent_keeps_disk_a_hand_made_overlay_uses(conn, tpl, tmp_path):
    manager(conn, tmp_path, name="ut-a").run()
    disk = str(tmp_path / "ut-a.qcow2")
    by_hand = str(tmp_path / "by-hand.qcow2")
    st.create_overlay(runner, disk, by_hand)  # qemu-img create -b, no domain
    kw = dict(name="ut-a", state="absent", template=None)
    check = manager(conn, tmp_path, check_mode=True, **kw)
    assert check.run()["kept_files"] == [dict(path=disk, used_by=[by_hand])]
    assert check.warnings == [f"Would keep {disk}: still used by {by_hand}."]
    real = manager(conn, tmp_path, **kw)
    res = real.run()
    assert res["changed"] is True and "removed_files" not in res
    assert res["kept_files"] == [dict(path=disk, used_by=[by_hand])]
    assert real.warnings == [f"Kept {disk}: still used by {by_hand}."]
    assert os.path.exists(disk) and "ut-a" not in [d.name() for d in conn.listAllDomains()]


def test_module_options_live_in_the_manager():
    spec = CloneManager.argument_spec()
    assert spec["mode"]["default"] == "overlay" and spec["parallel"]["default"] == 4 and "uri" in spec
    kwargs = CloneManager.module_kwargs()
    assert ("template", "template_xml") in kwargs["mutually_exclusive"]
    assert kwargs["required_one_of"] == [("name", "clones")]
    assert kwargs["supports_check_mode"] is True
    m = CloneManager(dict(name="ut-a", template=TPL), Held(None))
    assert m.p["state"] == "present" and m.p["protect_base"] is True and m.specs[0]["name"] == "ut-a"
    with pytest.raises(InvalidInput, match="parallel"):
        CloneManager(dict(name="ut-a", parallel=0), Held(None))
