"""Rules of the semantic domain XML comparison (pure lxml, no daemon)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _xml_compare as xc
from ansible_collections.virtops.kvm.plugins.module_utils._domain.restart import restart_differences

# What the user writes (like the test guest's template).
USER = """<domain type="qemu">
  <name>g1</name>
  <memory unit="MiB">256</memory>
  <currentMemory unit="MiB">256</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <kernel>/img/vmlinuz</kernel>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="qcow2"/>
      <source file="/img/g1.qcow2"/>
      <target dev="vda" bus="virtio"/>
    </disk>
    <interface type="user"><model type="virtio"/></interface>
    <serial type="file"><source path="/img/serial.log" append="on"/><target port="0"/></serial>
  </devices>
</domain>"""

# What libvirt 9.0 stores for it (virsh dumpxml --inactive).
LIBVIRT = """<domain type='qemu'>
  <name>g1</name>
  <uuid>16A16955-5bad-4175-b74c-78069b24e361</uuid>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/img/vmlinuz</kernel>
    <cmdline>console=ttyS0</cmdline>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
  </features>
  <cpu mode='custom' match='exact' check='none'>
    <model fallback='forbid'>qemu64</model>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/g1.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <controller type='usb' index='0' model='piix3-uhci'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x01' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pci-root'/>
    <interface type='user'>
      <mac address='52:54:00:E3:1e:96'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0'/>
    </interface>
    <serial type='file'>
      <source path='/img/serial.log' append='on'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <console type='file'>
      <source path='/img/serial.log' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <audio id='1' type='none'/>
    <memballoon model='virtio'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </memballoon>
  </devices>
</domain>"""


def _p(text):
    return dx.parse(text)


def _edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


def test_what_libvirt_fills_in_is_not_a_difference():
    assert xc.differences(_p(USER), _p(LIBVIRT)) == []


def test_live_xml_extras_are_ignored():
    live = _edit(LIBVIRT, "<domain type='qemu'>", "<domain type='qemu' id='7'>")
    live = _edit(live, "<model type='virtio'/>", "<model type='virtio'/><alias name='net0'/>")
    assert xc.differences(_p(USER), _p(live)) == []


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        ('<memory unit="MiB">256</memory>', '<memory unit="MiB">512</memory>', "/domain/memory"),
        ("<vcpu>1</vcpu>", "<vcpu>2</vcpu>", "/domain/vcpu"),
        ('<domain type="qemu">', '<domain type="kvm">', "/domain/@type"),
        ('machine="pc"', 'machine="q35"', "/domain/os/type/@machine"),
        ("<cmdline>console=ttyS0</cmdline>", "<cmdline>console=ttyS0 quiet</cmdline>", "/domain/os/cmdline"),
        ('file="/img/g1.qcow2"', 'file="/img/other.qcow2"', "/domain/devices/disk[vda]/source/@file"),
        ('bus="virtio"/>', 'bus="virtio"/><readonly/>', "/domain/devices/disk[vda]/readonly: added"),
        ("<features><acpi/></features>", "", "/domain/features: removed"),
        ("<features><acpi/></features>", "<features><acpi/><apic/></features>", "/domain/features/apic: added"),
        ('<model type="virtio"/>', '<model type="e1000"/>', "/domain/devices/interface/model/@type"),
        ("</name>", "</name><title>web</title>", "/domain/title: added"),
        ('<target port="0"/></serial>', '<target port="0"/></serial><serial type="pty"/>', "serial: added"),
    ],
)
def test_a_real_change_is_seen(old, new, expect):
    diffs = xc.differences(_p(_edit(USER, old, new)), _p(LIBVIRT))
    assert any(expect in d for d in diffs), diffs


def test_removed_device_and_flags_are_changes():
    current = _edit(LIBVIRT, "<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><readonly/>")
    current = _edit(
        current,
        "<controller type='usb'",
        "<disk type='file' device='disk'><source file='/img/b'/><target dev='vdb'/></disk><controller type='usb'",
    )
    current = _edit(current, "<on_crash>", "<description>old</description><on_crash>")
    diffs = xc.differences(_p(USER), _p(current))
    assert "/domain/devices/disk[vda]/readonly: removed" in diffs
    assert "/domain/devices/disk[vdb]: removed" in diffs
    assert "/domain/description: removed" in diffs


def test_generated_parts_may_be_omitted_or_given():
    given = _edit(USER, "<name>g1</name>", "<name>g1</name><uuid>16a16955-5bad-4175-b74c-78069b24e361</uuid>")
    given = _edit(given, '<interface type="user">', '<interface type="user"><mac address="52:54:00:e3:1e:96"/>')
    addr = '<address type="pci" slot="0x4"/>'
    given = _edit(given, '<target dev="vda" bus="virtio"/>', '<target dev="vda" bus="virtio"/>' + addr)
    assert xc.differences(_p(given), _p(LIBVIRT)) == []


def test_a_different_explicit_mac_is_a_new_interface():
    given = _edit(USER, '<interface type="user">', '<interface type="user"><mac address="52:54:00:00:00:01"/>')
    diffs = xc.differences(_p(given), _p(LIBVIRT))
    assert "/domain/devices/interface[52:54:00:00:00:01]: added" in diffs
    assert "/domain/devices/interface[52:54:00:e3:1e:96]: removed" in diffs


@pytest.mark.parametrize(
    ("unit", "value"), [("KiB", "262144"), ("k", "262144"), ("M", "256"), ("GiB", "0.25"), ("bytes", "268435456")]
)
def test_memory_units(unit, value):
    text = _edit(USER, '<memory unit="MiB">256</memory>', f'<memory unit="{unit}">{value}</memory>')
    diffs = xc.differences(_p(text), _p(LIBVIRT))
    if value == "0.25":  # libvirt refuses fractions: never equal, never a crash
        assert "/domain/memory" in " ".join(diffs)
    else:
        assert diffs == []


def test_memory_without_unit_is_kib():
    text = _edit(USER, '<memory unit="MiB">256</memory>', "<memory>262144</memory>")
    assert xc.differences(_p(text), _p(LIBVIRT)) == []


def test_carry_identity_keeps_uuid_macs_and_metadata():
    current = _edit(
        LIBVIRT,
        "<on_crash>destroy</on_crash>",
        f'<on_crash>destroy</on_crash><metadata><v:clone xmlns:v="{dx.NS}" template="t" mode="overlay"/></metadata>',
    )
    wanted = _p(USER)
    carried = xc.carry_identity(wanted, _p(current))
    assert dx.uuid_of(wanted) == "16A16955-5bad-4175-b74c-78069b24e361"
    assert dx.interfaces(wanted)[0]["mac"] == "52:54:00:E3:1e:96"
    assert dx.provenance(wanted)["template"] == "t"
    assert carried[0] == "uuid"
    # what the user gave is never overwritten
    wanted2 = _p(_edit(USER, '<interface type="user">', '<interface type="user"><mac address="52:54:00:00:00:09"/>'))
    xc.carry_identity(wanted2, _p(LIBVIRT))
    assert [i["mac"] for i in dx.interfaces(wanted2)] == ["52:54:00:00:00:09"]


def test_second_interface_gets_no_borrowed_mac():
    two = _edit(USER, "</interface>", '</interface><interface type="user"><model type="e1000"/></interface>')
    wanted = _p(two)
    xc.carry_identity(wanted, _p(LIBVIRT))
    macs = [i["mac"] for i in dx.interfaces(wanted)]
    assert macs == ["52:54:00:E3:1e:96", None]


def test_predict_changes_only_what_differs():
    after = xc.predict(_p(_edit(USER, "<vcpu>1</vcpu>", "<vcpu>4</vcpu>")), _p(LIBVIRT))
    assert after.find("vcpu").text == "4"
    assert after.find("vcpu").get("placement") == "static"
    assert after.find("uuid").text == "16a16955-5bad-4175-b74c-78069b24e361"
    assert len(after.findall("devices/controller")) == 2
    # the prediction satisfies the request and differs from the current XML exactly there
    assert xc.differences(_p(USER.replace("<vcpu>1</vcpu>", "<vcpu>4</vcpu>")), after) == []
    before = xc.canonical(_p(LIBVIRT))
    # all vCPUs online before and after: current= follows the count (canonical spells it out)
    assert xc.differences(before, after) == ["/domain/vcpu/@current: '4' -> '1'", "/domain/vcpu: '4' -> '1'"]


def test_going_back_to_all_vcpus_online_is_a_change():
    partly = _p("<domain><name>x</name><vcpu placement='static' current='1'>2</vcpu></domain>")
    assert xc.differences(_p("<domain><name>x</name><vcpu>2</vcpu></domain>"), partly) == [
        "/domain/vcpu/@current: '1' -> '2'"
    ]
    assert (
        xc.differences(
            _p("<domain><name>x</name><vcpu current='2'>2</vcpu></domain>"),
            _p("<domain><name>x</name><vcpu placement='static'>2</vcpu></domain>"),
        )
        == []
    )


def test_predict_removes_what_the_user_dropped():
    current = _edit(LIBVIRT, "<on_crash>", "<title>t</title><on_crash>")
    after = xc.predict(_p(USER), _p(current))
    assert after.find("title") is None
    assert after.find("uuid") is not None


def test_restart_differences():
    live = _edit(LIBVIRT, "<domain type='qemu'>", "<domain type='qemu' id='3'>")
    assert restart_differences(_p(LIBVIRT), _p(live)) == []
    bigger = _edit(LIBVIRT, "<memory unit='KiB'>262144</memory>", "<memory unit='MiB'>512</memory>")
    assert restart_differences(_p(bigger), _p(live)) == ["memory"]
    titled = _edit(LIBVIRT, "<on_crash>", "<title>t</title><on_crash>")
    assert restart_differences(_p(titled), _p(live)) == []
