"""kvm_domain_info against qemu:///system: list --all, filters, dumpxml, read-only."""

from __future__ import annotations

import libvirt

from tests import guestlib
from tests.harness import run_module

MOD = "kvm_domain_info"


def test_list_filter_and_xml(conn, guest, prefix, scratch):
    name = f"{prefix}-info"
    xml = guestlib.domain_xml(name, None, scratch / "i.log", kind="kernel")
    r = run_module("kvm_domain", dict(name=name, xml=xml, title="info test"))
    assert r["changed"], r.get("msg")
    inactive = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    for check in (False, True):
        # virsh list --all
        r = run_module(MOD, {}, check=check)
        assert r["changed"] is False and not r.get("failed"), r.get("msg")
        names = [d["name"] for d in r["domains"]]
        assert name in names and names == sorted(names)
        assert set(names) >= {d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix)}

    # virsh dominfo NAME; virsh dumpxml NAME
    r = run_module(MOD, dict(name=[name, f"{prefix}-nothere"], xml=True))
    assert [d["name"] for d in r["domains"]] == [name] and r["missing"] == [f"{prefix}-nothere"]
    d = r["domains"][0]
    assert d["state"] == "shutoff" and d["id"] is None and d["persistent"] is True
    assert d["title"] == "info test" and d["memory_mib"] == 256 and d["vcpus"] == 1
    assert d["domain_type"] == "qemu" and d["os"]["arch"] == "x86_64" and d["os"]["machine"].startswith("pc")
    assert d["config_file"] == f"/etc/libvirt/qemu/{name}.xml"
    assert d["consoles"][0]["path"] == str(scratch / "i.log")
    from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
    from ansible_collections.virtops.kvm.plugins.module_utils import _xml_compare as xc

    dumped = dx.parse(d["xml"])
    assert dx.uuid_of(dumped) == d["uuid"] and xc.differences(dumped, dx.parse(inactive)) == []
    assert d["interfaces"][0]["mac"].startswith("52:54:00")

    # virsh list (running only): our shut off domain is not there; with shutoff it is
    r = run_module(MOD, dict(names=[name], state=["running", "paused"]))
    assert r["domains"] == []
    r = run_module(MOD, dict(names=[name], state=["shutoff"]))
    assert [x["name"] for x in r["domains"]] == [name]

    # read-only: nothing changed
    assert conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == inactive


def test_stopped_daemon_is_a_clear_error():
    r = run_module(MOD, dict(uri="qemu+unix:///system?socket=/tmp/nonexistent.sock"))
    assert r.get("failed") and r["error"] == "DaemonNotRunning" and "libvirtd -d" in r["msg"]
