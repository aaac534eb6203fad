"""kvm_template (seal a template once) and kvm_clone's default for a sealed template: no appliance of its own.

test:///default for the domains, real qcow2 files, the in-memory libguestfs stand-in of tests/fakes.py.
"""

from __future__ import annotations

import os
import subprocess

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import seal, sysprep
from ansible_collections.virtops.kvm.plugins.module_utils._clone.sysprep import OPERATIONS
from ansible_collections.virtops.kvm.plugins.module_utils._clone.template_manager import TemplateManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, StorageError
from tests import fakes
from tests.fakes import Appliances, debian

TPL = "ut-tpl"


def guest() -> Appliances:
    """Appliances whose every disk is a used Debian guest with systemd and ssh-keygen."""
    fs = debian()
    fs.add("/usr/bin/ssh-keygen", b"ELF", mode=0o755)
    fs.mkdir_p("/etc/systemd/system")
    apps = Appliances()
    apps.content = lambda path, fs=fs: apps.images.setdefault(path, [fs])
    return apps


def sealer(conn, apps, check=False, **params):
    params.setdefault("name", TPL)
    return TemplateManager(params, fakes.Held(conn), check, handle_factory=apps)


def launches(apps) -> int:
    return sum(h.launches for h in apps.handles)


def test_seal_four_ways(conn, tpl):
    apps = guest()
    results = [sealer(conn, apps, check).run() for check in (True, False, False, True)]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert results[0]["changes"] == results[1]["changes"] == [f"seal {tpl}: {', '.join(OPERATIONS)}"]
    assert results[0]["sealed"]["planned"] == list(OPERATIONS)
    assert launches(apps) == 1  # the check runs launch nothing, the rerun nothing
    fs = apps.images[str(tpl)][0]
    assert "/etc/hostname" not in fs.files
    assert "127.0.1.1" not in fs.text("/etc/hosts") and "localhost" in fs.text("/etc/hosts")
    assert fs.text("/etc/machine-id") == ""
    assert not [p for p in fs.files if p.startswith("/etc/ssh/ssh_host_")]
    assert f"/etc/systemd/system/{sysprep.KEYGEN_UNIT}" in fs.files
    # a clone without a seed is named after its DHCP lease, by a unit that needs no polkit
    hostname_unit = f"/etc/systemd/system/{seal.HOSTNAME_UNIT}"
    assert "ConditionPathExists=!/etc/hostname" in fs.text(hostname_unit)
    assert 'n=$$(sed -n "s/^HOSTNAME=//p" "$$f" 2>/dev/null)' in fs.text(hostname_unit)  # systemd expands a lone $
    assert fs.links[f"/etc/systemd/system/multi-user.target.wants/{seal.HOSTNAME_UNIT}"] == hostname_unit
    assert fs.text("/var/log/syslog") == ""
    # recorded in the template's metadata, the disk made read-only
    record = seal.record_of(dx.parse(conn.lookupByName(TPL).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    assert record["done"] == list(OPERATIONS) and record["skipped"] == []
    assert [d["path"] for d in record["disks"]] == [str(tpl)] and record["at"].endswith("Z")
    assert results[1]["sealed"] == record and results[2]["sealed"] == record
    assert results[1]["protected"] == [str(tpl)] and not os.stat(tpl).st_mode & 0o222
    assert results[1]["diff"]["before"] == "sealed: no\n" and results[1]["diff"]["after"].startswith("sealed: yes")


def test_a_changed_disk_unseals_and_is_sealed_again(conn, tpl):
    apps = guest()
    sealer(conn, apps).run()
    os.chmod(tpl, 0o644)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write 0 4k", str(tpl)], check=True, capture_output=True)
    root = dx.parse(conn.lookupByName(TPL).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert not seal.sealed(root, [str(tpl)])
    (why,) = seal.drift(seal.record_of(root), [str(tpl)])
    assert why.startswith(f"{tpl}: ") and "content" in why and why.endswith("changed since the seal")
    r = sealer(conn, apps, True).run()
    assert r["changed"] is True and "changed since the seal" in r["diff"]["before"]
    assert sealer(conn, apps).run()["changed"] is True and launches(apps) == 2


def test_refused_while_running_or_when_others_stand_on_it(conn, tpl, tmp_path):
    apps = guest()
    dom = conn.lookupByName(TPL)
    dom.create()
    with pytest.raises(InvalidInput, match="is running; sealing writes its disks"):
        sealer(conn, apps).run()
    dom.destroy()
    over = tmp_path / "over.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(tpl), "-F", "qcow2", str(over)], check=True)
    for check in (True, False):
        with pytest.raises(StorageError, match=rf"Refusing to seal template {TPL}: {tpl} is the base of {over}"):
            sealer(conn, apps, check).run()
    assert launches(apps) == 0 and os.stat(tpl).st_mode & 0o200
    with pytest.raises(InvalidInput, match="name"):
        sealer(conn, apps, name="../x").run()


def test_clones_of_a_sealed_template_need_no_appliance(conn, tpl, tmp_path):
    apps = guest()
    sealer(conn, apps).run()
    before = launches(apps)
    res = fakes.clone_manager(conn, tmp_path, template=TPL, clones=["ut-a", "ut-b"], handle_factory=apps).run()
    assert res["changed"] is True and launches(apps) == before
    assert {c["name"]: c["identity_source"] for c in res["clones"]} == {
        "ut-a": "sealed-template",
        "ut-b": "sealed-template",
    }
    assert all("identity" not in c for c in res["clones"])
    clone_root = dx.parse(conn.lookupByName("ut-a").XMLDesc(0))
    prov = dx.provenance(clone_root)
    assert prov["identity_source"] == "sealed-template" and prov["identity"] is None
    assert seal.record_of(clone_root) is None  # the template's seal stays the template's
    # a rerun reads the source back from the provenance
    again = fakes.clone_manager(conn, tmp_path, template=TPL, clones=["ut-a", "ut-b"], handle_factory=apps).run()
    assert again["changed"] is False and [c["identity_source"] for c in again["clones"]] == ["sealed-template"] * 2


def test_an_empty_cloud_init_still_gives_each_clone_a_seed(conn, tpl, tmp_path):
    """cloud_init: {} asks for a seed with the defaults (local-hostname: the clone's name), as documented."""
    apps = guest()
    sealer(conn, apps).run()
    res = fakes.clone_manager(
        conn, tmp_path, template=TPL, clones=["ut-a", {"name": "ut-b", "cloud_init": {}}], handle_factory=apps
    ).run()
    assert [c.get("seed") for c in res["clones"]] == [None, str(tmp_path / "ut-b-cidata.iso")]
    res = fakes.clone_manager(conn, tmp_path, template=TPL, clones=["ut-c"], cloud_init={}, handle_factory=apps).run()
    assert res["clones"][0]["seed"] == str(tmp_path / "ut-c-cidata.iso") and (tmp_path / "ut-c-cidata.iso").is_file()


def test_an_unsealed_template_gets_the_offline_reset(conn, tpl, tmp_path):
    apps = guest()
    res = fakes.clone_manager(conn, tmp_path, template=TPL, clones=["ut-a"], handle_factory=apps).run()
    assert res["clones"][0]["identity_source"] == "offline-reset" and launches(apps) == 1
    assert res["clones"][0]["identity"]["done"] == list(OPERATIONS)
    # and now that a clone stands on it, the template is not sealed (sealing would write a base)
    with pytest.raises(StorageError, match="is the base of"):
        sealer(conn, apps).run()


@pytest.mark.parametrize(("operations", "source"), [(["hostname"], "offline-reset"), ([], "sealed-template")])
def test_explicit_operations_on_a_sealed_template_are_done(conn, tpl, tmp_path, operations, source):
    apps = guest()
    sealer(conn, apps).run()
    res = fakes.clone_manager(
        conn, tmp_path, template=TPL, clones=["ut-b"], identity=dict(operations=operations), handle_factory=apps
    ).run()
    entry = res["clones"][0]
    assert entry["identity_source"] == source
    assert launches(apps) == (2 if operations else 1)
    if operations:
        assert entry["identity"]["done"] == operations
