"""HostInfoManager (kvm_host_info) against libvirt's test:///default driver.

That driver's node has 16 logical CPUs and 3072 MiB, and one running domain,
``test`` (2 vCPUs, 2 GiB current of 8 GiB ``<memory>``). The sums are checked
as differences from a first reading, so what other domains exist does not matter.

An active domain counts its live vCPUs and current memory, an inactive one the
vCPUs it boots with and all of ``<memory>`` (what QEMU gives it at start). The
test driver has no balloon: a started domain keeps ``<currentMemory>`` as its
current memory, so these tests see both numbers of one domain.
"""

from __future__ import annotations

import hashlib
import os
import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtFailed
from ansible_collections.virtops.kvm.plugins.module_utils._host import info
from ansible_collections.virtops.kvm.plugins.module_utils._host.info import HostInfoManager

URI = "test:///default"
SUMS = (
    "domains_total",
    "domains_running",
    "vcpus_allocated",
    "memory_allocated_mib",
    "vcpus_defined",
    "memory_defined_mib",
)


@pytest.fixture
def name(conn):
    n = f"ut-hi-{secrets.token_hex(4)}"
    yield n
    try:
        dom = conn.lookupByName(n)
    except libvirt.libvirtError:
        return
    persistent = dom.isPersistent()  # a transient domain is gone once destroyed
    if dom.isActive():
        dom.destroy()
    if persistent:
        dom.undefine()


def grows(name: str) -> str:
    """A domain that boots with 1 of 3 vCPUs online, and 512 MiB of which a balloon may give back 256."""
    return f"""<domain type='test'><name>{name}</name>
      <memory unit='MiB'>512</memory><currentMemory unit='MiB'>256</currentMemory>
      <vcpu current='1'>3</vcpu><os><type>hvm</type></os></domain>"""


def run(check: bool = False, **params) -> dict:
    manager = HostInfoManager(dict(params, uri=URI), Connection(URI, readonly=True), check)
    try:
        return manager.run()
    finally:
        manager.connection.close()


def delta(after: dict, before: dict) -> dict:
    return {k: after["host"][k] - before["host"][k] for k in SUMS}


def test_capacity_is_the_node_info_and_nothing_changes(conn):
    r = run()
    host = r["host"]
    assert r["changed"] is False
    assert host["hostname"] == conn.getHostname() and host["uri"] == URI
    # the test driver's node: 16 CPUs, 3 GiB (getInfo's fields 2 and 1)
    assert host["cpus"] == 16 and host["memory_total_mib"] == 3072
    assert host["memory_free_mib"] == conn.getFreeMemory() // (1024 * 1024)
    assert 0 <= host["memory_free_mib"] <= host["memory_total_mib"]
    assert r["domains"] == sorted(d.name() for d in conn.listAllDomains(0)) and "test" in r["domains"]
    assert host["domains_total"] == len(r["domains"])
    assert run(check=True) == r


def test_the_default_domain_counts_current_memory_running_and_all_memory_stopped(conn):
    test = conn.lookupByName("test")
    assert test.isActive() and test.info()[1:4] == [8 * 1024 * 1024, 2 * 1024 * 1024, 2]
    running = run()
    test.destroy()
    try:
        stopped = run()
    finally:
        test.create()
    assert delta(stopped, running) == dict(
        domains_total=0,
        domains_running=-1,
        vcpus_allocated=-2,
        memory_allocated_mib=-2048,
        vcpus_defined=0,
        memory_defined_mib=8192 - 2048,
    )
    assert "test" in stopped["domains"]


def test_running_and_defined_sums_follow_a_domain_through_its_states(conn, name):
    before = run()
    dom = conn.defineXML(grows(name))
    defined = run()
    # inactive: it counts what it starts with: 1 vCPU (not the 3 it could hot-plug), all 512 MiB
    assert delta(defined, before) == dict(
        domains_total=1,
        domains_running=0,
        vcpus_allocated=0,
        memory_allocated_mib=0,
        vcpus_defined=1,
        memory_defined_mib=512,
    )
    assert name in defined["domains"] and defined["domains"] == sorted(defined["domains"])

    dom.create()
    started = run()
    # active: its current memory counts (256 MiB here: the test driver starts it at <currentMemory>)
    assert delta(started, defined) == dict(
        domains_total=0,
        domains_running=1,
        vcpus_allocated=1,
        memory_allocated_mib=256,
        vcpus_defined=0,
        memory_defined_mib=-256,
    )

    # active: its live values count, in both sums (the config still says 1 vCPU, 256 MiB)
    dom.setVcpusFlags(3, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    dom.setMemoryFlags(448 * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    dom.suspend()  # a paused domain still holds its vCPUs and memory
    grown = run()
    assert delta(grown, started) == dict(
        domains_total=0,
        domains_running=0,
        vcpus_allocated=2,
        memory_allocated_mib=192,
        vcpus_defined=2,
        memory_defined_mib=192,
    )

    dom.destroy()  # back to its config
    assert run()["host"] == defined["host"]
    dom.undefine()
    gone = run()
    assert gone["host"] == before["host"] and name not in gone["domains"]


def test_a_transient_domain_counts_while_it_runs(conn, name):
    before = run()
    dom = conn.createXML(grows(name), 0)
    assert not dom.isPersistent()
    r = run()
    assert delta(r, before) == dict(  # active: live values (256 MiB current), in both sums
        domains_total=1,
        domains_running=1,
        vcpus_allocated=1,
        memory_allocated_mib=256,
        vcpus_defined=1,
        memory_defined_mib=256,
    )
    assert name in r["domains"]


class Stale:
    """The connection, with a domain list read before a change (what a run sees when it races)."""

    def __init__(self, conn, listed):
        self._conn = conn
        self._listed = listed

    def __getattr__(self, attr):
        return getattr(self._conn, attr)

    def listAllDomains(self, flags=0):
        return self._listed if flags == 0 else self._conn.listAllDomains(flags)


def test_a_domain_undefined_while_listed_is_left_out(conn, name):
    conn.defineXML(grows(name))
    listed = conn.listAllDomains(0)
    with_it, names = info.host_info(conn)
    conn.lookupByName(name).undefine()
    host, names_after = info.host_info(Stale(conn, listed))
    assert name in names and name not in names_after
    assert host["domains_total"] == with_it["domains_total"] - 1
    assert host["vcpus_defined"] == with_it["vcpus_defined"] - 1
    assert host["memory_defined_mib"] == with_it["memory_defined_mib"] - 512


def test_a_libvirt_failure_names_what_was_read(conn):
    class Broken(Stale):
        def getInfo(self):
            raise libvirt.libvirtError("this node has no info today")

    with pytest.raises(LibvirtFailed, match=r"node info failed: this node has no info today"):
        info.host_info(Broken(conn, conn.listAllDomains(0)))


def test_the_module_takes_the_uri_and_images_and_a_read_only_connection():
    kwargs = HostInfoManager.module_kwargs()
    assert set(kwargs["argument_spec"]) == {"uri", "images"} and kwargs["supports_check_mode"] is True
    assert HostInfoManager.READONLY and HostInfoManager.needs({}) == ("libvirt",)


def test_the_drain_marker_says_drained_and_where_domains_went(tmp_path):
    from ansible_collections.virtops.kvm.plugins.module_utils._host.info import drain_state

    marker = tmp_path / "drained.json"
    assert drain_state(str(marker)) == {"drained": False, "drained_moved": {}}
    marker.write_text('{"drained": true, "moved": {"stu-01": "hv1"}}')
    assert drain_state(str(marker)) == {"drained": True, "drained_moved": {"stu-01": "hv1"}}
    marker.write_text("not json")
    assert drain_state(str(marker)) == {"drained": True, "drained_moved": {}}


def test_the_domains_come_from_the_host_scan_and_need_no_lxml(conn, name, monkeypatch):
    from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _scan

    conn.defineXML(grows(name))
    taken = []
    real = _scan.HostScan.take.__func__

    def counting(cls, c):
        taken.append(c)
        return real(cls, c)

    monkeypatch.setattr(_scan.HostScan, "take", classmethod(counting))
    monkeypatch.setattr(_deps, "etree", None)  # kvm_host_info needs libvirt-python only
    host, names = info.host_info(conn)
    assert taken == [conn] and name in names and host["domains_total"] == len(names)


def test_images_say_which_bases_kvm_image_would_leave_alone_in_order(tmp_path):
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    from ansible_collections.virtops.kvm.plugins.module_utils import _image

    data = b"base image"
    sha = hashlib.sha256(data).hexdigest()
    base = tmp_path / "base.qcow2"
    base.write_bytes(data)
    base.chmod(0o444)
    if not _image.write_record(str(base), sha, os.stat(base)):
        pytest.skip("the tmp file system has no user extended attributes")
    asked = [dict(dest=str(tmp_path / "gone.qcow2"), sha256=sha), dict(dest=str(base), sha256=sha)]
    # the module's own argument spec fills each image's defaults (mode 0444), as AnsibleModule would
    spec = HostInfoManager.module_kwargs()["argument_spec"]
    params = ArgumentSpecValidator(spec).validate(dict(uri=URI, images=asked)).validated_parameters
    assert params["images"][1]["mode"] == "0444"
    before = os.stat(base).st_ctime_ns
    r = run(images=params["images"])
    assert r["changed"] is False
    assert [(i["dest"], i["settled"], i["reason"]) for i in r["images"]] == [
        (asked[0]["dest"], False, "missing"),
        (str(base), True, ""),
    ]
    assert r["images"][1]["sha256"] == sha and r["images"][1]["size"] == len(data)
    assert os.stat(base).st_ctime_ns == before  # read only
    assert run()["images"] == []
