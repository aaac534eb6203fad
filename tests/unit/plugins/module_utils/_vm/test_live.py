"""_vm.live: the live plan (pure, hand-written XML pairs) and its application (test:///default and a fake guest)."""

from __future__ import annotations

import secrets

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtFailed, TimeoutExpired
from ansible_collections.virtops.kvm.plugins.module_utils._vm.live import DETACH_TIMEOUT, apply_live, plan_live
from ansible_collections.virtops.kvm.plugins.module_utils._wait import FakeClock
from tests import fakes

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
MAC1 = "52:54:00:00:00:01"
MAC2 = "52:54:00:00:00:02"


def disk(dev="vda", src="/guest/a.img", bus="virtio", device="disk", extra=""):
    ro = "<readonly/>" if device == "cdrom" else ""
    bus_attr = f" bus='{bus}'" if bus else ""
    return (
        f"<disk type='file' device='{device}'><source file='{src}'/><target dev='{dev}'{bus_attr}/>{ro}{extra}</disk>"
    )


def nic(mac=MAC1, model="virtio", net="default", extra=""):
    return (
        f"<interface type='network'><mac address='{mac}'/><source network='{net}'/>"
        f"<model type='{model}'/>{extra}</interface>"
    )


def domain(mem=512, cur=None, vcpu=2, online=None, devices=None, balloon="virtio", extra="", name="vm", kind="kvm"):
    """A domain root: ``mem``/``cur`` in MiB, ``vcpu`` maximum, ``online`` current; one disk and one NIC by default."""
    devs = (disk() + nic()) if devices is None else devices
    cur_el = f"<currentMemory unit='MiB'>{cur}</currentMemory>" if cur is not None else ""
    cur_attr = f" current='{online}'" if online is not None else ""
    bal = f"<memballoon model='{balloon}'/>" if balloon else ""
    return dx.parse(
        f"<domain type='{kind}'><name>{name}</name><memory unit='MiB'>{mem}</memory>{cur_el}"
        f"<vcpu{cur_attr}>{vcpu}</vcpu>"
        f"<os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>{extra}<devices>{devs}{bal}</devices></domain>"
    )


def test_same_config_plans_nothing():
    plan = plan_live(domain(cur=384, online=1), domain(cur=384, online=1))
    assert (plan.steps, plan.pending, plan.changes) == ([], [], [])


def test_memory_within_the_live_maximum_is_set_live():
    plan = plan_live(domain(cur=384), domain(cur=512))
    assert plan.steps == [dict(what="live memory: 512 -> 384 MiB", kind="memory", kib=384 * 1024)]
    assert plan.pending == []


def test_memory_without_current_memory_compares_the_maximum_as_current():
    plan = plan_live(domain(mem=512, cur=256), domain(mem=512))
    assert plan.changes == ["live memory: 512 -> 256 MiB"]


def test_memory_not_in_whole_mib_is_said_in_kib():
    wanted = domain(cur=384)
    wanted.find("currentMemory").attrib.pop("unit")
    wanted.find("currentMemory").text = "393000"
    assert plan_live(wanted, domain(cur=512)).changes == ["live memory: 524288 -> 393000 KiB"]


def test_memory_above_the_live_maximum_is_pending():
    plan = plan_live(domain(mem=1024, cur=768), domain(mem=512, cur=512))
    assert plan.steps == []
    assert plan.pending == ["memory 768 MiB: above the running maximum of 512 MiB", "maximum memory"]


@pytest.mark.parametrize("balloon", [None, "none"])
def test_memory_without_a_balloon_is_pending(balloon):
    plan = plan_live(domain(cur=256, balloon=balloon), domain(cur=512, balloon=balloon))
    assert plan.steps == []
    assert plan.pending == ["memory 256 MiB: the running domain has no memory balloon"]


def test_vcpus_within_the_live_maximum_are_set_live():
    plan = plan_live(domain(vcpu=4, online=3), domain(vcpu=4, online=1))
    assert plan.steps == [dict(what="live vcpus: 1 -> 3", kind="vcpus", count=3)]
    assert plan.pending == []


def test_vcpus_lowered_live_only_down_to_those_hot_plugged_since_the_start():
    # 2 online at the start, none hot-plugged (libvirt lists no <vcpus>): QEMU cannot unplug them
    plan = plan_live(domain(vcpu=4, online=1), domain(vcpu=4, online=2))
    assert plan.steps == []
    assert plan.pending == ["vCPUs 1: below the 2 the running domain cannot unplug"]
    # 1 at the start, 2 hot-plugged since: those 2 can go
    ids = "".join(
        f"<vcpu id='{i}' enabled='{'yes' if i < 3 else 'no'}' hotpluggable='{'no' if i == 0 else 'yes'}'/>"
        for i in range(4)
    )
    plan = plan_live(domain(vcpu=4, online=1), domain(vcpu=4, online=3, extra=f"<vcpus>{ids}</vcpus>"))
    assert plan.steps == [dict(what="live vcpus: 3 -> 1", kind="vcpus", count=1)]
    assert plan.pending == []


def test_vcpus_above_the_live_maximum_are_pending():
    plan = plan_live(domain(vcpu=8), domain(vcpu=4))
    assert plan.steps == []
    assert plan.pending == ["vCPUs 8: above the running maximum of 4", "maximum vCPUs"]


def test_added_disk_is_hot_plugged_with_the_wanted_element():
    wanted = domain(devices=disk() + disk("vdb", "/guest/b.img") + nic())
    plan = plan_live(wanted, domain())
    assert plan.changes == ["hot-plug disk vdb"]
    step = plan.steps[0]
    assert (step["kind"], step["device"], step["key"]) == ("attach", "disk", "vdb")
    sent = etree.fromstring(step["xml"])
    assert dx.disk_source(sent) == "/guest/b.img" and sent.find("target").get("dev") == "vdb"
    assert plan.pending == []


def test_removed_disk_is_hot_unplugged_with_the_live_element():
    alias = "<alias name='virtio-disk1'/><address type='pci' domain='0x0000' bus='0x05' slot='0x00'/>"
    live = domain(devices=disk() + disk("vdb", "/guest/b.img", extra=alias) + nic())
    plan = plan_live(domain(), live)
    assert plan.changes == ["hot-unplug disk vdb"]
    sent = etree.fromstring(plan.steps[0]["xml"])
    assert sent.find("alias").get("name") == "virtio-disk1"  # libvirt finds the device by what it reported
    assert plan.steps[0]["kind"] == "detach" and plan.pending == []


@pytest.mark.parametrize(
    "changed",
    [
        disk("vdb", "/guest/other.img"),
        disk("vdb", "/guest/b.img", bus="scsi"),
        disk("vdb", "/guest/b.img", device="lun"),
    ],
    ids=["source", "bus", "device"],
)
def test_a_changed_disk_is_pending_not_replaced(changed):
    plan = plan_live(domain(devices=disk() + changed), domain(devices=disk() + disk("vdb", "/guest/b.img")))
    assert plan.steps == []
    assert plan.pending == ["disk vdb: changed"]


def test_a_cdrom_media_change_is_neither_a_step_nor_pending():
    wanted = domain(devices=disk() + disk("sda", "/iso/new.iso", bus="sata", device="cdrom"))
    live = domain(devices=disk() + disk("sda", "/iso/old.iso", bus="sata", device="cdrom"))
    plan = plan_live(wanted, live)
    assert (plan.steps, plan.pending) == ([], [])


def test_a_cdrom_moved_to_another_bus_is_pending():
    wanted = domain(devices=disk() + disk("sda", "/iso/a.iso", bus="scsi", device="cdrom"))
    live = domain(devices=disk() + disk("sda", "/iso/a.iso", bus="sata", device="cdrom"))
    assert plan_live(wanted, live).pending == ["disk sda: changed"]


@pytest.mark.parametrize("dev,bus", [("hdb", None), ("sdb", "sata"), ("fda", "fdc")])
def test_a_disk_on_a_bus_without_hot_plug_is_pending(dev, bus):
    implied = bus or "ide"
    plan = plan_live(domain(devices=disk() + disk(dev, "/guest/b.img", bus=bus)), domain(devices=disk()))
    assert plan.steps == []
    assert plan.pending == [f"disk {dev}: added (bus {implied} is not hot-pluggable)"]
    back = plan_live(domain(devices=disk()), domain(devices=disk() + disk(dev, "/guest/b.img", bus=bus)))
    assert back.pending == [f"disk {dev}: removed (bus {implied} is not hot-pluggable)"]


def test_nics_are_plugged_and_unplugged_by_mac():
    plan = plan_live(domain(devices=disk() + nic(MAC2)), domain(devices=disk() + nic(MAC1)))
    assert plan.changes == [f"hot-unplug interface {MAC1}", f"hot-plug interface {MAC2}"]  # unplug first
    assert [dx.macs(etree.fromstring(f"<domain><devices>{s['xml']}</devices></domain>")) for s in plan.steps] == [
        [MAC1],
        [MAC2],
    ]
    assert plan.pending == []


@pytest.mark.parametrize("changed", [nic(model="e1000"), nic(net="other")], ids=["model", "source"])
def test_a_changed_nic_is_pending(changed):
    plan = plan_live(domain(devices=disk() + changed), domain())
    assert plan.steps == []
    assert plan.pending == [f"interface {MAC1}: changed"]  # restart's own "interfaces" key is not repeated


def test_a_mac_in_capitals_is_the_same_nic():
    plan = plan_live(domain(devices=disk() + nic(MAC1.upper())), domain())
    assert (plan.steps, plan.pending) == ([], [])


def test_what_libvirt_fills_in_is_ignored():
    filled_disk = disk(extra="<alias name='virtio-disk0'/><address type='pci' bus='0x04' slot='0x00'/>")
    filled_nic = nic(extra="<target dev='vnet3'/><alias name='net0'/><address type='pci' bus='0x01' slot='0x00'/>")
    plan = plan_live(domain(), domain(devices=filled_disk + filled_nic))
    assert (plan.steps, plan.pending) == ([], [])


def test_cpu_and_machine_changes_are_pending():
    wanted = domain(extra="<cpu mode='host-passthrough'/>")
    live = domain()
    live.find("os/type").set("machine", "pc-i440fx-7.2")
    assert plan_live(wanted, live).pending == ["OS type or machine", "CPU mode"]


def test_steps_are_ordered_unplug_plug_memory_vcpus():
    wanted = domain(cur=256, vcpu=4, online=2, devices=disk("vdb", "/guest/b.img") + nic())
    plan = plan_live(wanted, domain(cur=512, vcpu=4, online=1))
    assert [s["kind"] for s in plan.steps] == ["detach", "attach", "memory", "vcpus"]


# ---- apply_live on test:///default: memory and vCPUs live; it has no device hot-plug ----


@pytest.fixture
def running():
    """A running test:///default domain (256 MiB max, 128 current, 4 vCPUs max, 1 online) and its connection."""
    c, close = fakes.open_conn()
    name = f"ut-{secrets.token_hex(4)}"
    dom = c.defineXML(dx.tostring(domain(256, 128, 4, 1, devices=disk(), name=name, kind="test")))
    dom.create()
    yield c, dom
    close()


def redefine(conn, root, **changes):
    """Define ``root`` again with ``changes`` (currentMemory MiB, online vCPUs, devices) as its persistent config."""
    if "cur" in changes:
        root.find("currentMemory").text = str(changes["cur"] * 1024)
    if "online" in changes:
        root.find("vcpu").set("current", str(changes["online"]))
    conn.defineXML(dx.tostring(root))


def inactive(dom):
    return dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_default_driver_sets_memory_and_vcpus_live_then_plans_nothing(running):
    conn, dom = running
    redefine(conn, inactive(dom), cur=192, online=3)
    wanted = inactive(dom)
    plan = plan_live(wanted, dx.parse(dom.XMLDesc(0)))
    assert plan.changes == ["live memory: 128 -> 192 MiB", "live vcpus: 1 -> 3"] and plan.pending == []
    apply_live(dom, plan)
    after = dx.parse(dom.XMLDesc(0))
    assert (dx.current_memory_mib(after), dx.online_vcpus(after)) == (192, 3)
    assert dom.info()[2] == 192 * 1024  # the running domain's current memory, not only its XML
    again = plan_live(wanted, after)
    assert (again.steps, again.pending) == ([], [])
    assert inactive(dom).find("currentMemory").text == str(192 * 1024)  # live only: the persistent one untouched


def test_default_driver_refuses_hot_plug_and_the_error_names_the_step(running):
    conn, dom = running
    root = inactive(dom)
    root.find("devices").append(etree.fromstring(disk("vdb", "/guest/b.img")))
    redefine(conn, root)
    plan = plan_live(inactive(dom), dx.parse(dom.XMLDesc(0)))
    assert plan.changes == ["hot-plug disk vdb"]
    with pytest.raises(LibvirtFailed) as err:
        apply_live(dom, plan)
    assert err.value.msg.startswith(f"Hot-plugging disk vdb into domain {dom.name()} failed: ")
    assert "not supported" in err.value.msg
    assert "restart of the domain adds it" in err.value.hint


class Guest:
    """A running domain whose guest releases an unplugged device after ``release_after`` looks (None: never)."""

    def __init__(self, root, release_after: int | None = 0):
        self.root = root
        self.release_after = release_after
        self.calls: list[tuple] = []
        self.unplugging: list = []
        self.countdown = release_after

    def name(self) -> str:
        return "vm"

    def XMLDesc(self, _flags):
        if self.unplugging and self.release_after is not None:
            if self.countdown == 0:
                for el in self.unplugging:
                    self.root.find("devices").remove(el)
                self.unplugging = []
            self.countdown -= 1
        return dx.tostring(self.root)

    def attachDeviceFlags(self, xml, flags):
        self.calls.append(("attach", xml, flags))
        self.root.find("devices").append(etree.fromstring(xml))
        return 0

    def detachDeviceFlags(self, xml, flags):
        self.calls.append(("detach", xml, flags))
        self.countdown = self.release_after
        sent = etree.fromstring(xml)
        ident = "mac" if sent.tag == "interface" else "target"
        key = sent.find(ident).attrib
        self.unplugging += [e for e in self.root.find("devices") if e.tag == sent.tag and e.find(ident).attrib == key]
        return 0


def test_hot_plug_and_unplug_live_only_waiting_for_the_guest():
    wanted = domain(devices=disk() + nic(MAC2))
    guest = Guest(domain(devices=disk() + disk("vdb", "/guest/b.img") + nic(MAC1)), release_after=3)
    clock = FakeClock()
    plan = plan_live(wanted, guest.root)
    apply_live(guest, plan, clock=clock)
    assert [(c[0], c[2]) for c in guest.calls] == [("detach", LIVE), ("detach", LIVE), ("attach", LIVE)]
    assert dx.macs(guest.root) == [MAC2]
    assert [d["target"] for d in dx.disks(guest.root)] == ["vda"]
    assert 0 < sum(clock.sleeps) < DETACH_TIMEOUT  # it waited for the release, and no longer
    again = plan_live(wanted, guest.root)
    assert (again.steps, again.pending) == ([], [])


def test_a_device_the_guest_keeps_is_a_timeout_after_the_bound():
    guest = Guest(domain(devices=disk() + nic(MAC1) + nic(MAC2)), release_after=None)
    clock = FakeClock()
    plan = plan_live(domain(devices=disk() + nic(MAC1)), guest.root)
    with pytest.raises(TimeoutExpired) as err:
        apply_live(guest, plan, clock=clock, timeout=10)
    assert f"did not release interface {MAC2} within 10 s" in err.value.msg
    assert "persistent config no longer has it" in err.value.msg
    assert clock.time == pytest.approx(10)  # capped at the deadline
    assert dx.macs(guest.root) == [MAC1, MAC2]


def test_the_call_seam_names_every_step():
    seen = []

    def call(what, fn, *args):
        seen.append((what, args))
        return fn(*args)

    guest = Guest(domain(devices=disk()))
    apply_live(guest, plan_live(domain(devices=disk() + nic(MAC2)), guest.root), call=call)
    assert seen[0][0] == f"Hot-plugging interface {MAC2} into domain vm" and seen[0][1][1] == LIVE
