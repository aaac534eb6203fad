"""DomainManager against libvirt's test:///default driver (a real libvirt in this process, no daemon)."""

from __future__ import annotations

import secrets
import subprocess

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _scan as scan_module
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._domain import info
from ansible_collections.virtops.kvm.plugins.module_utils._domain.context import DomainContext
from ansible_collections.virtops.kvm.plugins.module_utils._domain.info import (
    DomainInfoManager,
    config_file,
    list_domains,
)
from ansible_collections.virtops.kvm.plugins.module_utils._domain.manager import DomainManager
from ansible_collections.virtops.kvm.plugins.module_utils._domain.transitions import Transitions
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    InvalidInput,
    StorageError,
    TimeoutExpired,
)
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, state_name
from ansible_collections.virtops.kvm.plugins.module_utils._wait import Clock, FakeClock

URI = "test:///default"


@pytest.fixture
def name(conn):
    n = f"ut-{secrets.token_hex(4)}"
    yield n
    try:
        dom = conn.lookupByName(n)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    if dom.isPersistent():
        dom.undefine()


def xml(name, disk="/guest/none.img", extra="", iface=True):
    nic = "<interface type='network'><source network='default'/></interface>" if iface else ""
    return f"""<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
      <os><type>hvm</type></os>{extra}
      <devices><disk type='file' device='disk'><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
      {nic}</devices></domain>"""


def run(name, check=False, **params):
    base = dict(
        name=name,
        state="present",
        shutdown_timeout=5,
        force=False,
        remove_storage="none",
        allow_base_start=False,
        uri=URI,
    )
    base.update(params)
    c = Connection(URI)
    try:
        return DomainManager(base, c, check, clock=Clock(sleep=lambda _s: None)).run()
    finally:
        c.close()


def four(name, **params):
    return [run(name, check=True, **params), run(name, **params), run(name, **params), run(name, check=True, **params)]


def assert_four(results, first=True):
    assert [r["changed"] for r in results] == [first, first, False, False], [r["changes"] for r in results]
    assert results[0]["diff"]["after"] == results[1]["diff"]["after"]


def state_of(conn, name):
    return state_name(conn.lookupByName(name).state()[0])


def test_define_four_ways_and_check_mode_defines_nothing(conn, name):
    r = run(name, check=True, xml=xml(name))
    assert r["changed"] and r["domain"] is None
    assert name not in [d.name() for d in conn.listAllDomains(0)]
    assert_four([r, run(name, xml=xml(name)), run(name, xml=xml(name)), run(name, check=True, xml=xml(name))])
    assert state_of(conn, name) == "shutoff"


def test_three_definitions_do_not_churn_uuid_or_mac(conn, name):
    ids = []
    for i in range(3):
        r = run(name, xml=xml(name))
        assert r["changed"] is (i == 0)
        ids.append((r["domain"]["uuid"], [n["mac"] for n in r["domain"]["interfaces"]]))
    assert ids[0] == ids[1] == ids[2]
    assert ids[0][1][0]


def test_a_real_change_is_defined_keeping_identity(conn, name):
    first = run(name, xml=xml(name))["domain"]
    results = four(name, xml=xml(name, extra="<features><acpi/></features>"))
    assert_four(results)
    after = results[1]["domain"]
    assert (after["uuid"], after["interfaces"][0]["mac"]) == (first["uuid"], first["interfaces"][0]["mac"])
    assert "+" in "".join(results[1]["diff"]["after"].splitlines()[0]) or "acpi" in results[1]["diff"]["after"]


@pytest.mark.parametrize(
    ("target", "expect"),
    [("running", "running"), ("paused", "paused"), ("shutdown", "shutoff"), ("destroyed", "shutoff")],
)
def test_state_transitions_four_ways(conn, name, target, expect):
    run(name, xml=xml(name))
    if target in ("shutdown", "destroyed"):
        run(name, state="running")
    assert_four(four(name, state=target))
    assert state_of(conn, name) == expect


def test_paused_and_running_resume(conn, name):
    run(name, xml=xml(name), state="paused")
    assert state_of(conn, name) == "paused"
    r = run(name, state="running")
    assert r["changes"] == ["resume"] and state_of(conn, name) == "running"


def test_rebooted_always_changes(conn, name):
    run(name, xml=xml(name), state="running")
    for check in (True, False, False):
        r = run(name, check=check, state="rebooted")
        assert r["changed"] and r["changes"] == ["reboot"]
    assert state_of(conn, name) == "running"
    run(name, state="destroyed")
    r = run(name, state="rebooted")
    assert r["changes"] == ["start"] and state_of(conn, name) == "running"


def test_absent_four_ways_shuts_down_first(conn, name):
    run(name, xml=xml(name), state="running")
    results = four(name, state="absent")
    assert_four(results)
    assert results[1]["changes"] == ["shutdown", "undefine"]
    assert name not in [d.name() for d in conn.listAllDomains(0)]


def test_targeted_settings_and_pending_restart(conn, name):
    run(name, xml=xml(name), state="running")
    results = four(name, memory=256, vcpus=2)
    assert_four(results)
    assert [r["pending_restart"] for r in results] == [True, True, True, True]
    inactive = dx.parse(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert dx.text(inactive, "memory") == str(256 * 1024) and dx.text(inactive, "vcpu") == "2"
    run(name, state="destroyed")
    r = run(name, state="running")
    assert r["pending_restart"] is False and r["domain"]["max_memory_mib"] == 256


def test_autostart_title_description_need_no_restart(conn, name):
    run(name, xml=xml(name), state="running")
    results = four(name, autostart=True, title="web", description="the web server")
    assert_four(results)
    assert results[1]["pending_restart"] is False
    d = results[2]["domain"]
    assert (d["autostart"], d["title"], d["description"]) == (True, "web", "the web server")
    assert dx.text(dx.parse(conn.lookupByName(name).XMLDesc(0)), "title") == "web"
    assert_four(four(name, autostart=False, title=""))
    assert run(name)["domain"]["title"] is None


@pytest.mark.parametrize(
    ("params", "error", "text"),
    [
        (dict(xml="<domain type='test'>\n  <name>x</name\n</domain>"), InvalidInput, "line 3, column"),
        (dict(xml=xml("other-name")), InvalidInput, "names the domain 'other-name'"),
        (dict(state="running"), DomainNotFound, "not defined"),
        (dict(memory=0, xml=None), InvalidInput, "memory"),
        (dict(vcpus=-1), InvalidInput, "vcpus"),
        (dict(xml="<domain type='test'><name>y</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid></domain>"),
         InvalidInput, "names the domain"),
    ],
)  # fmt: skip
def test_bad_input_changes_nothing(conn, name, params, error, text):
    before = sorted(d.name() for d in conn.listAllDomains(0))
    with pytest.raises(error) as exc:
        run(name, **params)
    assert text in exc.value.message
    assert sorted(d.name() for d in conn.listAllDomains(0)) == before


def test_uuid_of_another_domain_is_a_conflict(conn, name):
    other = conn.lookupByName("test").UUIDString()
    text = xml(name).replace(f"<name>{name}</name>", f"<name>{name}</name><uuid>{other}</uuid>")
    with pytest.raises(Conflict, match="belongs to domain test"):
        run(name, xml=text)
    run(name, xml=xml(name))
    with pytest.raises(Conflict, match="exists with UUID"):
        run(name, xml=text)


def _qcow2(path, backing=None):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing:
        argv += ["-b", str(backing), "-F", "qcow2"]
    subprocess.run([*argv, str(path), *([] if backing else ["1M"])], check=True)
    return str(path)


def test_a_clone_base_is_not_started(conn, name, tmp_path):
    base = _qcow2(tmp_path / "base.qcow2")
    overlay = _qcow2(tmp_path / "clone.qcow2", base)
    run(name, xml=xml(name, disk=base))
    clone = name + "-c"
    try:
        run(clone, xml=xml(clone, disk=overlay))
        for state in ("running", "paused", "rebooted"):
            with pytest.raises(Conflict) as exc:
                run(name, state=state)
            assert overlay in exc.value.message and clone in exc.value.message
            assert state_of(conn, name) == "shutoff"
        r = run(name, state="running", allow_base_start=True)
        assert r["changed"] and state_of(conn, name) == "running"
    finally:
        run(clone, state="absent", force=True)


def test_base_with_an_undefined_overlay_next_to_it_is_not_started(conn, name, tmp_path):
    base = _qcow2(tmp_path / "base.qcow2")
    _qcow2(tmp_path / "loose.qcow2", base)
    run(name, xml=xml(name, disk=base))
    with pytest.raises(Conflict, match=r"loose\.qcow2"):
        run(name, state="running")


def _with_provenance(text, created):
    meta = (
        f"<metadata><v:clone xmlns:v='{dx.NS}' template='t' mode='overlay' created-by='virtops.kvm'>"
        f"<v:disk path='{created}' mode='overlay'/></v:clone></metadata>"
    )
    return text.replace("</vcpu>", "</vcpu>" + meta)


def test_remove_storage_none_overlays_all(conn, name, tmp_path):
    base = _qcow2(tmp_path / "base.qcow2")
    # none: nothing deleted
    overlay = _qcow2(tmp_path / "a.qcow2", base)
    run(name, xml=_with_provenance(xml(name, disk=overlay), overlay))
    r = run(name, state="absent")
    assert r["removed_files"] == [] and (tmp_path / "a.qcow2").exists()
    # overlays: the recorded overlay goes, the base stays; four ways
    run(name, xml=_with_provenance(xml(name, disk=overlay), overlay))
    results = four(name, state="absent", remove_storage="overlays")
    assert_four(results)
    assert results[0]["removed_files"] == results[1]["removed_files"] == [overlay]
    assert not (tmp_path / "a.qcow2").exists() and (tmp_path / "base.qcow2").exists()
    # overlays: a disk not recorded as created is kept
    plain = _qcow2(tmp_path / "b.qcow2", base)
    run(name, xml=xml(name, disk=plain))
    assert run(name, state="absent", remove_storage="overlays")["removed_files"] == []
    assert (tmp_path / "b.qcow2").exists()
    # all: the domain's own disk goes
    run(name, xml=xml(name, disk=plain))
    assert run(name, state="absent", remove_storage="all")["removed_files"] == [plain]
    assert (tmp_path / "base.qcow2").exists()


def test_remove_storage_refuses_shared_and_base_files(conn, name, tmp_path):
    base = _qcow2(tmp_path / "base.qcow2")
    shared = _qcow2(tmp_path / "shared.qcow2", base)
    other = name + "-o"
    try:
        run(name, xml=_with_provenance(xml(name, disk=shared), shared))
        run(other, xml=xml(other, disk=shared))
        for mode in ("overlays", "all"):
            with pytest.raises(StorageError, match=f"used by {other}"):
                run(name, state="absent", remove_storage=mode)
            assert name in [d.name() for d in conn.listAllDomains(0)] and (tmp_path / "shared.qcow2").exists()
        run(other, state="absent")
        # a disk that backs another (undefined) overlay is refused too
        _qcow2(tmp_path / "child.qcow2", shared)
        with pytest.raises(StorageError, match=r"child\.qcow2"):
            run(name, state="absent", remove_storage="all")
        assert (tmp_path / "shared.qcow2").exists()
        # the base of the domain's disk is never a candidate
        (tmp_path / "child.qcow2").unlink()
        assert run(name, state="absent", remove_storage="all")["removed_files"] == [shared]
        assert (tmp_path / "base.qcow2").exists()
    finally:
        run(other, state="absent")


def test_info_lists_and_filters(conn, name):
    run(name, xml=xml(name), title="t1")
    domains, missing = list_domains(conn, URI, names=[name, "nope"], with_xml=True)
    assert [d["name"] for d in domains] == [name] and missing == ["nope"]
    assert domains[0]["state"] == "shutoff" and domains[0]["title"] == "t1" and "<domain" in domains[0]["xml"]
    running = list_domains(conn, URI, states=["running"])[0]
    assert name not in [d["name"] for d in running] and "test" in [d["name"] for d in running]
    off = list_domains(conn, URI, states=["shutdown"])[0]
    assert name in [d["name"] for d in off]


def test_config_file_paths():
    assert config_file("qemu:///system", "a") == "/etc/libvirt/qemu/a.xml"
    assert config_file("qemu+ssh://root@h/system", "a") == "/etc/libvirt/qemu/a.xml"
    assert config_file("test:///default", "a") is None


def test_domain_info_carries_the_clone_provenance(conn, name, tmp_path):
    # A fleet role tells its clones from other domains by this record, not by parsing XML.
    overlay = str(tmp_path / "c.qcow2")
    r = run(name, xml=_with_provenance(xml(name, disk=overlay), overlay))
    assert r["domain"]["provenance"] == dict(
        template="t",
        mode="overlay",
        created_by="virtops.kvm",
        created_disks=[dict(path=overlay, base=None, mode="overlay", format=None)],
        identity=None,  # no identity reset recorded in this hand-made record
        identity_source=None,  # nor which path gave the clone its identity
    )
    listed, missing = list_domains(conn, URI, names=[name])
    assert missing == [] and listed[0]["provenance"]["template"] == "t"
    run(name, state="absent")
    run(name, xml=xml(name, disk=overlay))
    assert run(name)["domain"]["provenance"] is None


def test_info_manager_is_read_only_and_reports_missing(conn, name):
    run(name, xml=xml(name))
    manager = DomainInfoManager({"name": [name, "nope"], "uri": URI})
    try:
        assert manager.READONLY and manager.connection.readonly
        r = manager.run()
    finally:
        manager.connection.close()
    assert r["changed"] is False and r["missing"] == ["nope"]
    assert [d["name"] for d in r["domains"]] == [name] and "xml" not in r["domains"][0]


def test_a_domain_undefined_while_listed_is_not_listed(conn, name, monkeypatch):
    run(name, xml=xml(name))
    scan = HostScan.take(conn)
    conn.lookupByName(name).undefine()

    class Taken:
        @staticmethod
        def take(_conn):
            return scan

    monkeypatch.setattr(info, "HostScan", Taken)
    domains, missing = list_domains(conn, URI, names=[name, "test"])
    assert [d["name"] for d in domains] == ["test"] and missing == []


def test_manager_defaults_come_from_the_argument_spec(conn, name):
    run(name, xml=xml(name))
    manager = DomainManager({"name": name, "uri": URI})  # the Manager opens (and the caller closes) its connection
    try:
        assert (manager.p["state"], manager.p["shutdown_timeout"], manager.p["remove_storage"]) == (
            "present",
            120,
            "none",
        )
        r = manager.run()
    finally:
        manager.connection.close()
    assert r["changed"] is False and r["domain"]["name"] == name and manager.warnings == []


def test_shutdown_timeout_must_be_given(name):
    with pytest.raises(InvalidInput, match="shutdown_timeout"):
        run(name, xml=xml(name), shutdown_timeout=None)


class _DeafDomain:
    """A guest that ignores the ACPI power button (the test driver always obeys it)."""

    def __init__(self):
        self.active = True

    def isActive(self):
        return self.active

    def shutdown(self):
        pass

    def destroy(self):
        self.active = False


@pytest.mark.parametrize("force", [False, True])
def test_shutdown_waits_with_the_clock_seam(force):
    clock = FakeClock()
    ctx = DomainContext(Connection(URI), "deaf", check_mode=False)
    machine = Transitions(ctx, 3, force, clock=clock)
    dom = _DeafDomain()
    if force:
        machine.stop(dom, 1)
        assert ctx.changes == ["shutdown", "destroy after timeout"] and not dom.active
    else:
        with pytest.raises(TimeoutExpired, match="did not shut down within 3 s"):
            machine.stop(dom, 1)
        assert dom.active
    assert clock.now() == pytest.approx(3.0)


def test_one_host_scan_per_run_and_only_when_needed(conn, name, tmp_path, monkeypatch):
    taken = []
    real_take = HostScan.take

    class Counted:
        @staticmethod
        def take(c):
            taken.append(1)
            return real_take(c)

    monkeypatch.setattr(scan_module, "HostScan", Counted)
    a, b = _qcow2(tmp_path / "a.qcow2"), _qcow2(tmp_path / "b.qcow2")
    second = f"<disk type='file' device='disk'><source file='{b}'/><target dev='vdb' bus='virtio'/></disk>"
    run(name, xml=xml(name, disk=a).replace("<interface", second + "<interface"))
    run(name, state="running")  # two writable disks checked for overlays: one scan
    assert len(taken) == 1
    run(name, state="destroyed")
    run(name, state="absent", remove_storage="none")  # nothing to delete: no scan
    assert len(taken) == 1
    run(name, xml=xml(name, disk=a).replace("<interface", second + "<interface"))
    assert run(name, state="absent", remove_storage="all")["removed_files"] == [a, b]
    assert len(taken) == 2
