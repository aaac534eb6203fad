"""kvm_domain against the real qemu:///system daemon with the tiny test guest.

Every scenario runs four ways (check, real, again, again in check). Guests boot
under TCG in tens of seconds on a busy machine, so the lifecycle is one ordered
scenario with as few boots as possible.
"""

from __future__ import annotations

import os

import libvirt
import pytest

from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module

pytestmark = pytest.mark.slow

MOD = "kvm_domain"


def domains(conn, prefix: str = "vt-") -> list[str]:
    """Our domains only: other helpers define and undefine theirs on the same daemon meanwhile."""
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix))


def state(conn, name) -> int:
    return conn.lookupByName(name).state()[0]


def kernel_xml(name, scratch, cmdline=None, disk=None):
    text = guestlib.domain_xml(name, disk, scratch / f"{name}.log", kind="kernel")
    if cmdline:
        text = text.replace("console=ttyS0 panic=-1", cmdline)
    return text


def four(args, first=True):
    results = four_ways(MOD, args)
    assert_four_ways(results, first_changes=first)
    assert results[0]["diff"] == results[1]["diff"], "check mode must predict the real diff"
    return results


def test_lifecycle(conn, guest, prefix, scratch):
    name = f"{prefix}-life"
    xml = kernel_xml(name, scratch)
    log = scratch / f"{name}.log"

    # define (virsh define): four ways, then a third definition: no UUID/MAC churn
    r = four(dict(name=name, xml=xml))
    dom = r[1]["domain"]
    assert dom["state"] == "shutoff" and dom["config_file"] == f"/etc/libvirt/qemu/{name}.xml"
    assert r[0]["domain"] is None  # check mode defined nothing
    third = run_module(MOD, dict(name=name, xml=xml))
    assert third["changed"] is False
    ident = [(x["domain"]["uuid"], [i["mac"] for i in x["domain"]["interfaces"]]) for x in (r[1], r[2], third)]
    assert ident[0] == ident[1] == ident[2] and ident[0][1][0]
    assert os.path.exists(dom["config_file"])

    # start (virsh start)
    four(dict(name=name, state="running"))
    assert state(conn, name) == libvirt.VIR_DOMAIN_RUNNING
    guestlib.wait_for_marker(log, timeout=240)

    # virsh edit while running: applied to the config, pending restart
    r = four(dict(name=name, memory=320, vcpus=2))
    assert [x["pending_restart"] for x in r] == [True] * 4
    assert r[1]["domain"]["max_memory_mib"] == 256  # still the running config
    # title/description/autostart need no restart (and do not hide the pending one)
    r = four(dict(name=name, title="life", description="lifecycle test", autostart=True))
    assert r[2]["domain"]["title"] == "life" and r[2]["domain"]["autostart"] is True
    four(dict(name=name, autostart=False))

    # suspend / resume
    four(dict(name=name, state="paused"))
    assert state(conn, name) == libvirt.VIR_DOMAIN_PAUSED
    r = four(dict(name=name, state="running"))
    assert r[1]["changes"] == ["resume"]

    # reboot: always changed, waits until the guest has reset; it then boots again
    for check in (True, False):
        r = run_module(MOD, dict(name=name, state="rebooted", shutdown_timeout=240), check=check)
        assert r["changed"] is True and not r.get("failed"), r.get("msg")
    assert state(conn, name) == libvirt.VIR_DOMAIN_RUNNING
    guestlib.wait_for_marker(log, timeout=240, count=2)

    # a real ACPI shutdown (virsh shutdown), waited for
    r = four(dict(name=name, state="shutdown", shutdown_timeout=240))
    assert "shutdown" in r[1]["changes"] and "destroy after timeout" not in r[1]["changes"]
    assert state(conn, name) == libvirt.VIR_DOMAIN_SHUTOFF
    assert "VIRTOPS-GUEST-POWEROFF" in log.read_text(errors="replace")
    assert r[1]["pending_restart"] is False

    # the new config is live after the start
    r = run_module(MOD, dict(name=name, state="running"))
    assert r["changed"] and r["domain"]["max_memory_mib"] == 320 and r["domain"]["vcpus"] == 2
    assert r["pending_restart"] is False

    # virsh destroy
    four(dict(name=name, state="destroyed"))
    assert state(conn, name) == libvirt.VIR_DOMAIN_SHUTOFF

    # undefine
    four(dict(name=name, state="absent"))
    assert name not in domains(conn)


def test_absent_shuts_a_running_domain_down_first(conn, guest, prefix, scratch):
    name = f"{prefix}-gone"
    log = scratch / f"{name}.log"
    run_module(MOD, dict(name=name, xml=kernel_xml(name, scratch), state="running"))
    guestlib.wait_for_marker(log, timeout=240)
    r = four(dict(name=name, state="absent", shutdown_timeout=240))
    assert r[1]["changes"] == ["shutdown", "undefine"]
    assert "VIRTOPS-GUEST-POWEROFF" in log.read_text(errors="replace")
    assert name not in domains(conn)


def test_guest_that_ignores_shutdown(conn, guest, prefix, scratch):
    """acpi=off: the power button goes nowhere. Without force: error naming force, still running."""
    name = f"{prefix}-deaf"
    xml = kernel_xml(name, scratch, cmdline="console=ttyS0 panic=-1 acpi=off")
    run_module(MOD, dict(name=name, xml=xml, state="running"))
    guestlib.wait_for_marker(scratch / f"{name}.log", timeout=240)
    before = domains(conn, prefix)
    r = run_module(MOD, dict(name=name, state="shutdown", shutdown_timeout=3))
    assert r.get("failed") and "did not shut down within 3 s" in r["msg"] and "force: true" in r["msg"]
    assert r["error"] == "TimeoutExpired"
    assert state(conn, name) == libvirt.VIR_DOMAIN_RUNNING and domains(conn, prefix) == before
    # absent behaves the same: the domain stays defined
    r = run_module(MOD, dict(name=name, state="absent", shutdown_timeout=2))
    assert r.get("failed") and name in domains(conn)
    # with force it is powered off after the timeout
    r = four(dict(name=name, state="shutdown", shutdown_timeout=2, force=True))
    assert r[1]["changes"] == ["shutdown", "destroy after timeout"]
    assert state(conn, name) == libvirt.VIR_DOMAIN_SHUTOFF


def test_bad_input_changes_nothing(conn, guest, prefix, scratch):
    name = f"{prefix}-bad"
    good = kernel_xml(name, scratch)
    run_module(MOD, dict(name=name, xml=good))
    files = sorted(os.listdir(scratch))
    inactive = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    before = domains(conn, prefix)
    cases = [
        (dict(name=name, xml=good.replace("</vcpu>", "</vcpux>")), "line", "InvalidInput"),
        (dict(name=name, xml=good.replace(f"<name>{name}</name>", "<name>other</name>")), "other", "InvalidInput"),
        (dict(name=f"{prefix}-undefined", state="running"), "not defined", "DomainNotFound"),
        (dict(name=name, memory=0), "memory", "InvalidInput"),
        (dict(name=name, vcpus=0), "vcpus", "InvalidInput"),
        (dict(name=name, state="running", uri="qemu+unix:///system?socket=/tmp/nonexistent.sock"), "not running",
         "DaemonNotRunning"),
        (dict(name=name, uri="bogus:///nothing"), "bogus", "UnknownUri"),
    ]  # fmt: skip
    for args, text, error in cases:
        for check in (True, False):
            r = run_module(MOD, args, check=check)
            assert r.get("failed"), (args, r)
            assert text in r["msg"] and r.get("error") == error, (args, r["msg"], r.get("error"))
    r = run_module(MOD, dict(name=name, xml=good.replace("</vcpu>", "</vcpux>")))
    assert "(line 5, column" in r["msg"] and r["line"] == 5
    assert domains(conn, prefix) == before and sorted(os.listdir(scratch)) == files
    assert conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == inactive
    assert state(conn, name) == libvirt.VIR_DOMAIN_SHUTOFF


def test_a_clone_base_is_not_started(conn, guest, prefix, scratch):
    base = guestlib.make_overlay(guest["base"], scratch / "mybase.qcow2")  # a base of our own
    clone_disk = guestlib.make_overlay(base, scratch / "clone.qcow2")
    name, clone = f"{prefix}-base", f"{prefix}-clone"
    run_module(MOD, dict(name=name, xml=guestlib.domain_xml(name, base, scratch / "b.log")))
    run_module(MOD, dict(name=clone, xml=guestlib.domain_xml(clone, clone_disk, scratch / "c.log")))
    digest = guestlib.sha256(base)
    for check in (True, False):
        r = run_module(MOD, dict(name=name, state="running"), check=check)
        assert r.get("failed") and r["error"] == "Conflict"
        assert str(clone_disk) in r["msg"] and clone in r["msg"] and "allow_base_start" in r["msg"]
    assert state(conn, name) == libvirt.VIR_DOMAIN_SHUTOFF and guestlib.sha256(base) == digest
    # the clone itself starts fine
    r = run_module(MOD, dict(name=clone, state="running"))
    assert r["changed"] and not r.get("failed")


def _provenance(xml, path):
    from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx

    return xml.replace(
        "</vcpu>",
        f"</vcpu><metadata><v:clone xmlns:v='{dx.NS}' template='t' mode='overlay' created-by='virtops.kvm'>"
        f"<v:disk path='{path}' mode='overlay' format='qcow2'/></v:clone></metadata>",
    )


def test_remove_storage_safety(conn, guest, prefix, scratch):
    base = guest["base"]
    digest = guestlib.sha256(base)
    a_disk = guestlib.make_overlay(base, scratch / "a.qcow2")
    a, b = f"{prefix}-a", f"{prefix}-b"
    a_xml = _provenance(guestlib.domain_xml(a, a_disk, scratch / "a.log"), a_disk)
    run_module(MOD, dict(name=a, xml=a_xml))
    # another domain uses the same file: refused for overlays and all, nothing changed
    run_module(MOD, dict(name=b, xml=guestlib.domain_xml(b, a_disk, scratch / "b.log")))
    for mode in ("overlays", "all"):
        for check in (True, False):
            r = run_module(MOD, dict(name=a, state="absent", remove_storage=mode), check=check)
            assert r.get("failed") and r["error"] == "StorageError" and b in r["msg"], r
    assert a in domains(conn) and a_disk.exists()
    run_module(MOD, dict(name=b, state="absent"))
    # a file that backs another disk: refused
    child = guestlib.make_overlay(a_disk, scratch / "child.qcow2")
    r = run_module(MOD, dict(name=a, state="absent", remove_storage="all"))
    assert r.get("failed") and "child.qcow2" in r["msg"] and a in domains(conn)
    child.unlink()
    # none: nothing deleted
    r = run_module(MOD, dict(name=a, state="absent"))
    assert r["changed"] and r["removed_files"] == [] and a_disk.exists()
    # overlays, four ways: only the recorded overlay, never the base
    run_module(MOD, dict(name=a, xml=a_xml))
    r = four(dict(name=a, state="absent", remove_storage="overlays"))
    assert r[0]["removed_files"] == r[1]["removed_files"] == [str(a_disk)]
    assert not a_disk.exists() and guestlib.sha256(base) == digest
    # overlays: a disk it did not create stays; all: deleted
    plain = guestlib.make_overlay(base, scratch / "plain.qcow2")
    run_module(MOD, dict(name=a, xml=guestlib.domain_xml(a, plain, scratch / "a.log")))
    r = run_module(MOD, dict(name=a, state="absent", remove_storage="overlays"))
    assert r["removed_files"] == [] and plain.exists()
    run_module(MOD, dict(name=a, xml=guestlib.domain_xml(a, plain, scratch / "a.log")))
    r = four(dict(name=a, state="absent", remove_storage="all"))
    assert r[1]["removed_files"] == [str(plain)] and not plain.exists()
    assert os.path.exists(base) and guestlib.sha256(base) == digest
