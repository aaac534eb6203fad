"""The pure parts of kvm_clone: input validation and the per-clone XML transform (lxml only)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import spec, transform
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

TEMPLATE = """
<domain type='kvm' id='7'>
  <name>centos7</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <metadata><other:x xmlns:other="urn:other">keep me</other:x></metadata>
  <memory unit='KiB'>1048576</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='1'>2</vcpu>
  <sysinfo type='smbios'><system>
    <entry name='manufacturer'>ACME</entry>
    <entry name='uuid'>11111111-2222-3333-4444-555555555555</entry>
  </system></sysinfo>
  <os><type arch='x86_64'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/centos7_VARS.fd</nvram>
  </os>
  <cpu><topology sockets='1' cores='2' threads='1'/></cpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/centos7.qcow2' index='2'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/data.img'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/iso/centos.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/shared/cluster.img'/>
      <target dev='vdc' bus='virtio'/>
      <shareable/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:aa:bb:cc'/>
      <source network='default'/>
      <target dev='vnet3'/>
      <alias name='net0'/>
    </interface>
    <interface type='bridge'>
      <source bridge='br0'/>
      <alias name='ua-mynic'/>
    </interface>
    <serial type='file'><source path='/var/log/centos7-serial.log'/><target port='0'/></serial>
    <console type='file'><source path='/var/log/centos7-serial.log'/><target type='serial' port='0'/></console>
    <console type='pty' tty='/dev/pts/3'><source path='/dev/pts/3'/><target type='virtio' port='1'/></console>
    <channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-7-centos7/org.qemu'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' port='5901' autoport='no' websocket='5701'/>
    <graphics type='spice' port='5902' tlsPort='5903' autoport='no'/>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'><label>+64055:+64055</label>
    <imagelabel>+64055:+64055</imagelabel></seclabel>
</domain>
"""

NEW_UUID = "9b2f2a0e-1d0c-4f7e-8a61-0c1d2e3f4a5b"
DISK_MAP = {
    "/var/lib/libvirt/images/centos7.qcow2": dict(path="/kvmfile/stu01.qcow2", format="qcow2"),
    "/var/lib/libvirt/images/data.img": dict(path="/kvmfile/stu01-vdb.qcow2", format="qcow2"),
}
CREATED = [
    dict(path="/kvmfile/stu01.qcow2", base="/var/lib/libvirt/images/centos7.qcow2", mode="overlay", format="qcow2"),
    dict(path="/kvmfile/stu01-vdb.qcow2", base="/var/lib/libvirt/images/data.img", mode="overlay", format="qcow2"),
]


def make(**kw):
    args = dict(
        name="stu01",
        uuid=NEW_UUID,
        macs=["52:54:00:01:02:03", "52:54:00:04:05:06"],
        disk_map=DISK_MAP,
        domain_type="qemu",
        template_name="centos7",
        mode="overlay",
        created=CREATED,
        nvram_path="/var/lib/libvirt/qemu/nvram/stu01_VARS.fd",
    )
    args.update(kw)
    tpl = dx.parse(TEMPLATE)
    return tpl, transform.transform(tpl, **args)


def test_identity_changes_and_template_untouched():
    tpl, root = make()
    assert dx.name_of(root) == "stu01"
    assert dx.uuid_of(root) == NEW_UUID
    sysinfo = {e.get("name"): e.text for e in root.findall("sysinfo/system/entry")}
    assert sysinfo == {"manufacturer": "ACME", "uuid": NEW_UUID}
    assert root.get("type") == "qemu"
    assert "id" not in root.attrib
    # the template element is a different tree and still the template
    assert dx.name_of(tpl) == "centos7" and tpl.get("type") == "kvm"
    assert dx.uuid_of(tpl) == "11111111-2222-3333-4444-555555555555"


def test_disks_replaced_shared_ones_kept():
    root = make()[1]
    by_target = {d["target"]: d for d in dx.disks(root)}
    assert by_target["vda"]["path"] == "/kvmfile/stu01.qcow2"
    assert by_target["vda"]["format"] == "qcow2"
    assert by_target["vdb"]["path"] == "/kvmfile/stu01-vdb.qcow2"
    assert by_target["vdb"]["format"] == "qcow2"  # a <driver> was added where the template had none
    assert by_target["hdc"]["path"] == "/iso/centos.iso"  # CD-ROM shared
    assert by_target["vdc"]["path"] == "/shared/cluster.img"  # shareable disk shared
    vda = root.find("devices/disk")
    assert vda.find("backingStore") is None
    assert "index" not in vda.find("source").attrib


def test_macs_and_generated_names():
    root = make()[1]
    assert [i["mac"] for i in dx.interfaces(root)] == ["52:54:00:01:02:03", "52:54:00:04:05:06"]
    first = root.find("devices/interface")
    assert first.find("target") is None  # vnet3 is generated by libvirt
    aliases = [a.get("name") for a in root.iter("alias")]
    assert aliases == ["ua-mynic"]  # generated aliases dropped, user aliases kept


def test_consoles_graphics_nvram_seclabel():
    root = make()[1]
    cons = dx.consoles(root)
    file_paths = {c["path"] for c in cons if c["type"] == "file"}
    assert file_paths == {"/var/log/stu01-serial.log"}  # serial and console stay one file
    pty = next(c for c in cons if c["type"] == "pty")
    assert pty["path"] is None
    chan = root.find("devices/channel/source")
    assert "path" not in chan.attrib
    for g in root.findall("devices/graphics"):
        assert g.get("autoport") == "yes"
        assert not {"port", "tlsPort", "websocket"} & set(g.attrib)
    assert root.find("os/nvram").text == "/var/lib/libvirt/qemu/nvram/stu01_VARS.fd"
    assert root.find("seclabel/label") is None and root.find("seclabel/imagelabel") is None


def test_provenance_written_and_other_metadata_kept():
    root = make()[1]
    prov = dx.provenance(root)
    assert prov["template"] == "centos7" and prov["mode"] == "overlay" and prov["created_by"] == "virtops.kvm"
    assert [c["path"] for c in prov["created_disks"]] == ["/kvmfile/stu01.qcow2", "/kvmfile/stu01-vdb.qcow2"]
    assert root.find("metadata/{urn:other}x").text == "keep me"
    # cloning a clone replaces, not stacks, the record
    again = transform.transform(
        root,
        name="stu02",
        uuid=NEW_UUID,
        macs=["52:54:00:00:00:0a", "52:54:00:00:00:0b"],
        disk_map={},
        domain_type=None,
        template_name="stu01",
        mode="copy",
        created=[],
    )
    assert len(again.findall(f"metadata/{{{dx.NS}}}clone")) == 1
    assert dx.provenance(again)["template"] == "stu01"


def test_memory_vcpus_overrides():
    _xml, root = make(memory_mib=2048, vcpus=4)
    assert dx.memory_mib(root) == 2048
    assert root.find("currentMemory").text == str(2048 * 1024)
    assert dx.vcpus(root) == 4
    assert "current" not in root.find("vcpu").attrib
    assert root.find("cpu/topology") is None  # 1x2x1 no longer adds up to 4
    _xml, root = make(vcpus=2)
    assert root.find("cpu/topology") is not None


def test_nvram_without_source_file_is_regenerated():
    _xml, root = make(nvram_path=None)
    assert root.find("os/nvram").text is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/var/log/centos7.log", "/var/log/stu01.log"),
        ("/var/log/serial.log", "/var/log/stu01-serial.log"),
    ],
)
def test_derived_path(path, expected):
    assert transform.derived_path(path, "centos7", "stu01") == expected


@pytest.mark.parametrize("bad", ["../x", "/", "a b", "x" * 65, "", "a/b", ".hidden", None])
def test_unsafe_names_refused(bad):
    with pytest.raises(InvalidInput):
        spec.normalize_clones(None, [bad])


def test_names_and_overrides_normalised():
    specs = spec.normalize_clones(
        None,
        ["stu01", {"name": "stu02", "memory": "512", "vcpus": 2, "macs": "52-54-00-AA-BB-CC", "state": "running"}],
    )
    assert specs[0] == dict(name="stu01", memory=None, vcpus=None, autostart=None, macs=[], uuid=None, state="present")
    assert specs[1]["memory"] == 512 and specs[1]["macs"] == ["52:54:00:aa:bb:cc"] and specs[1]["state"] == "running"
    assert spec.normalize_clones("one", None)[0]["name"] == "one"


@pytest.mark.parametrize(
    ("clones", "match"),
    [
        (["a", "a"], "more than once"),
        ([{"name": "a", "colour": "red"}], "unknown key"),
        ([{"name": "a", "macs": ["01:00:5e:00:00:01"]}], "multicast"),
        ([{"name": "a", "macs": ["nope"]}], "not of the form"),
        ([{"name": "a", "macs": ["52:54:00:00:00:01"]}, {"name": "b", "macs": ["52:54:00:00:00:01"]}], "both"),
        ([{"name": "a", "uuid": "x"}], "not a valid UUID"),
        ([{"name": "a", "uuid": NEW_UUID}, {"name": "b", "uuid": NEW_UUID}], "both"),
        ([{"name": "a", "memory": 0}], "memory of clone .a. is 0: allowed are 1 to"),
        ([{"name": "a", "state": "paused"}], "state of clone"),
        ([], "No clones"),
    ],
)
def test_bad_batches_refused(clones, match):
    with pytest.raises(InvalidInput, match=match):
        spec.normalize_clones(None, clones)


def test_new_mac_unique_and_in_qemu_range():
    used = {"52:54:00:00:00:01"}
    macs = [spec.new_mac(used) for _i in range(500)]
    assert len(set(macs)) == 500
    assert all(m.startswith("52:54:00:") for m in macs)
    assert "52:54:00:00:00:01" not in macs
    assert len(used) == 501


@pytest.mark.parametrize(
    ("index", "fmt", "mode", "expected"),
    [
        (0, "qcow2", "overlay", "/kvmfile/stu01.qcow2"),
        (1, "raw", "overlay", "/kvmfile/stu01-vdb.qcow2"),  # an overlay is qcow2 whatever its base
        (0, "raw", "copy", "/kvmfile/stu01.img"),
        (1, "qcow2", "copy", "/kvmfile/stu01-vdb.qcow2"),
    ],
)
def test_clone_disk_path(index, fmt, mode, expected):
    disk = dict(target="vda" if index == 0 else "vdb", path="/images/centos7", format=fmt)
    assert transform.clone_disk_path("/kvmfile", "stu01", index, disk, mode) == expected
