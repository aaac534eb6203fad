"""_vm.build: the domain XML of a VM from its checked options (pure), and test:///default taking it."""

from __future__ import annotations

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._vm import build, spec
from tests import fakes

# what osinfo.lookup("win11") gives (the shape of the real database's answer)
WINDOWS = dict(
    short_id="win11",
    family="winnt",
    virtio=False,
    virtio_net=False,
    disk_bus="sata",
    nic_model="e1000e",
    memory_mib=4096,
    min_memory_mib=4096,
    vcpus=2,
    firmware="efi",
    secure_boot=False,
    machine="q35",
)
LINUX = dict(short_id="linux2022", virtio=True, virtio_net=True, disk_bus="virtio", nic_model="virtio", machine=None)
FP = dict(size=16777216, mtime=1700000000, digest="ab" * 16)


def vm(**kw):
    kw.setdefault("name", "ut-vm")
    kw.setdefault("disks", [dict(size="1G")])
    p = {k: None for k in spec.VM_KEYS}
    p.update(spec.VM_DEFAULTS)
    p.update(kw)
    return spec.check_vm(p, "")


def disk(target="vda", path="/vm/ut-vm-vda.qcow2", fmt="qcow2", bus="virtio"):
    return dict(target=target, path=path, format=fmt, bus=bus)


def xml(v=None, disks=None, os_info=None, domain_type="qemu", uuid=None, seed=None, created=()):
    return build.domain_xml(
        v or vm(), [disk()] if disks is None else disks, os_info, domain_type, uuid, seed, list(created)
    )


def one(root, path):
    found = root.findall(path)
    assert len(found) == 1, (path, etree.tostring(root).decode())
    return found[0]


# ---------------------------------------------------------------- boot and firmware


def test_disk_boot():
    root = xml()
    assert root.get("type") == "qemu" and root.findtext("name") == "ut-vm"
    assert one(root, "os/boot").get("dev") == "hd"
    assert root.find("os/kernel") is None
    t = one(root, "os/type")
    assert (t.text, t.get("arch"), t.get("machine")) == ("hvm", "x86_64", None)
    assert root.find("os").get("firmware") is None and root.find("os/loader") is None
    d = one(root, "devices/disk")
    assert (d.get("type"), d.get("device")) == ("file", "disk")
    assert one(d, "driver").get("type") == "qcow2" and one(d, "source").get("file") == "/vm/ut-vm-vda.qcow2"
    assert dict(one(d, "target").attrib) == dict(dev="vda", bus="virtio")


def test_direct_kernel_boot():
    v = vm(disks=[], boot=dict(kernel="/k/vmlinuz", initrd="/k/initrd.img", cmdline="console=ttyS0"))
    root = xml(v, disks=[])
    assert root.find("os/boot") is None, "a kernel boots, not a disk"
    assert (root.findtext("os/kernel"), root.findtext("os/initrd"), root.findtext("os/cmdline")) == (
        "/k/vmlinuz",
        "/k/initrd.img",
        "console=ttyS0",
    )
    root = xml(vm(disks=[], boot=dict(kernel="/k/vmlinuz")), disks=[])
    assert root.find("os/initrd") is None and root.find("os/cmdline") is None


def test_uefi():
    root = xml(vm(firmware="uefi"))
    assert root.find("os").get("firmware") == "efi"
    assert root.find("os/loader") is None and root.find("features/smm") is None
    assert root.find("os/type").get("machine") is None, "libvirt's default machine"


def test_uefi_secure_boot():
    root = xml(vm(firmware="uefi-secure"))
    assert root.find("os").get("firmware") == "efi"
    assert one(root, "os/loader").get("secure") == "yes"
    assert one(root, "features/smm").get("state") == "on"
    assert root.find("os/type").get("machine") == "q35", "SMM needs q35"
    root = xml(vm(firmware="uefi-secure", machine="pc-q35-8.0"))
    assert root.find("os/type").get("machine") == "pc-q35-8.0", "a given machine is kept"


# ---------------------------------------------------------------- cpu


def test_cpu_default_per_domain_type():
    assert dict(one(xml(domain_type="kvm"), "cpu").attrib) == {"mode": "host-model"}
    assert xml(domain_type="qemu").find("cpu") is None, "TCG: QEMU's default model, which always runs"


@pytest.mark.parametrize("mode", ["host-model", "host-passthrough", "maximum"])
def test_cpu_modes(mode):
    cpu = one(xml(vm(cpu=mode), domain_type="qemu"), "cpu")
    assert dict(cpu.attrib) == {"mode": mode} and len(cpu) == 0


def test_cpu_named_model():
    cpu = one(xml(vm(cpu="Haswell-noTSX"), domain_type="kvm"), "cpu")
    assert dict(cpu.attrib) == dict(mode="custom", match="exact")
    model = one(cpu, "model")
    assert (model.text, model.get("fallback")) == ("Haswell-noTSX", "forbid")


# ---------------------------------------------------------------- sizes and OS defaults


def test_memory_and_vcpus_defaults():
    root = xml()
    assert root.findtext("memory") == str(1024 * 1024) and root.findtext("currentMemory") == str(1024 * 1024)
    assert root.find("memory").get("unit") == "KiB"
    v = one(root, "vcpu")
    assert (v.text, v.get("current"), v.get("placement")) == ("1", "1", "static")


def test_vcpu_current_and_max_memory():
    root = xml(vm(memory=512, max_memory=2048, vcpus=2, max_vcpus=8))
    assert root.findtext("memory") == str(2048 * 1024)
    assert root.findtext("currentMemory") == str(512 * 1024)
    v = one(root, "vcpu")
    assert (v.text, v.get("current")) == ("8", "2")


def test_max_alone_caps_the_os_default():
    """max_memory/max_vcpus below the OS's recommendation, memory/vcpus left out: the default is capped."""
    root = xml(vm(max_memory=2048, max_vcpus=1), os_info=WINDOWS)
    assert root.findtext("memory") == str(2048 * 1024)
    assert int(root.findtext("currentMemory")) <= int(root.findtext("memory"))
    v = one(root, "vcpu")
    assert int(v.get("current")) <= int(v.text) == 1


def test_windows_like_os_defaults():
    v = vm(networks=[dict(network="default")])
    root = xml(v, disks=[disk("sda", bus="sata")], os_info=WINDOWS)
    assert root.findtext("currentMemory") == str(4096 * 1024) and one(root, "vcpu").get("current") == "2"
    assert one(root, "devices/interface/model").get("type") == "e1000e"
    assert one(root, "devices/memballoon").get("model") == "none"
    assert root.find("devices/channel") is None and root.find("devices/rng") is None, "no virtio devices"
    assert root.find("os/type").get("machine") == "q35"
    assert build.defaults(v, WINDOWS)["disk_bus"] == "sata"


def test_virtio_os_defaults():
    root = xml(vm(networks=[dict(bridge="br0", mac="52:54:00:00:00:07")]), os_info=LINUX)
    assert one(root, "devices/memballoon").get("model") == "virtio"
    assert one(root, "devices/channel/target").get("name") == build.AGENT_CHANNEL
    assert one(root, "devices/rng/backend").text == "/dev/urandom"
    nic = one(root, "devices/interface")
    assert nic.get("type") == "bridge" and one(nic, "source").get("bridge") == "br0"
    assert one(nic, "mac").get("address") == "52:54:00:00:00:07" and one(nic, "model").get("type") == "virtio"


def test_option_wins_over_os():
    v = vm(memory=768, vcpus=3, machine="pc", networks=[dict(network="default", model="rtl8139")])
    root = xml(v, os_info=WINDOWS)
    assert root.findtext("currentMemory") == str(768 * 1024) and one(root, "vcpu").get("current") == "3"
    assert root.find("os/type").get("machine") == "pc"
    nic = one(root, "devices/interface")
    assert one(nic, "model").get("type") == "rtl8139" and nic.find("mac") is None


# ---------------------------------------------------------------- graphics and console


def test_no_graphics_by_default_and_vnc_on_localhost_only():
    assert xml().find("devices/graphics") is None
    g = one(xml(vm(graphics="vnc")), "devices/graphics")
    assert (g.get("type"), g.get("listen"), g.get("autoport")) == ("vnc", "127.0.0.1", "yes")
    assert [dict(x.attrib) for x in g.findall("listen")] == [dict(type="address", address="127.0.0.1")]


def test_console_logged_on_serial_and_console():
    root = xml()
    serial, console = one(root, "devices/serial"), one(root, "devices/console")
    assert serial.get("type") == "pty" and console.get("type") == "pty"
    log = f"{build.LOG_DIR}/ut-vm-console.log"
    assert dict(one(serial, "log").attrib) == dict(file=log, append="on")
    assert dict(one(console, "log").attrib) == dict(one(serial, "log").attrib)
    assert one(console, "target").get("type") == "serial"
    assert build.console_log(vm()) == log
    root = xml(vm(console_log="/srv/logs/web.log"))
    assert {e.get("file") for e in root.findall("devices/*/log")} == {"/srv/logs/web.log"}


def test_console_off():
    root = xml(vm(console=False))
    assert root.find("devices/serial") is None and root.find("devices/console") is None
    assert build.console_log(vm(console=False)) is None


# ---------------------------------------------------------------- seed, uuid, provenance


def test_seed_cdrom_and_provenance():
    base = "/img/deb.qcow2"
    created = [
        dict(path="/vm/ut-vm-vda.qcow2", mode="overlay", format="qcow2", base=base, base_fingerprint=FP),
        dict(path="/vm/ut-vm-vdb.img", mode="blank", format="raw"),
        dict(path="/vm/ut-vm-cidata.iso", mode="seed", format="raw"),
    ]
    disks = [disk(), disk("vdb", "/vm/ut-vm-vdb.img", "raw")]
    root = xml(vm(disks=[dict(image=base), dict(size="1G")]), disks=disks, seed="/vm/ut-vm-cidata.iso", created=created)
    cd = [d for d in root.findall("devices/disk") if d.get("device") == "cdrom"]
    assert len(cd) == 1 and cd[0].find("source").get("file") == "/vm/ut-vm-cidata.iso"
    assert cd[0].find("readonly") is not None
    prov = dx.provenance(root)
    assert prov["template"] == base and prov["mode"] == "vm" and prov["created_by"] == "virtops.kvm"
    assert [(c["path"], c["mode"], c["format"]) for c in prov["created_disks"]] == [
        (c["path"], c["mode"], c["format"]) for c in created
    ]
    assert prov["created_disks"][0]["base"] == base and prov["created_disks"][0]["base_fingerprint"] == FP
    assert "base_fingerprint" not in prov["created_disks"][1]


def test_seed_on_a_sata_vm_does_not_take_a_disk_target():
    root = xml(disks=[disk("sda", bus="sata")], os_info=WINDOWS, seed="/vm/s-cidata.iso")
    targets = [t.get("dev") for t in root.findall("devices/disk/target")]
    assert targets == ["sda", "sdb"]


def test_uuid_only_when_given():
    assert xml().find("uuid") is None
    assert xml(uuid="8e8b4f8a-4b0d-4d35-9a44-6b1f5ea6a001").findtext("uuid") == "8e8b4f8a-4b0d-4d35-9a44-6b1f5ea6a001"


def test_no_image_no_template():
    prov = dx.provenance(xml(created=[dict(path="/vm/ut-vm-vda.qcow2", mode="blank", format="qcow2")]))
    assert prov["template"] == "" and len(prov["created_disks"]) == 1


# ---------------------------------------------------------------- libvirt takes it


@pytest.fixture
def tconn():
    c, close = fakes.open_conn()
    yield c
    close()


@pytest.mark.parametrize(
    ("name", "kw", "os_info", "domain_type"),
    [
        ("ut-vm-plain", dict(networks=[dict(network="default")]), LINUX, "qemu"),
        ("ut-vm-kvm", dict(cpu="host-passthrough", graphics="vnc", max_vcpus=4, max_memory=2048), None, "kvm"),
        ("ut-vm-win", dict(firmware="uefi-secure", networks=[dict(bridge="br0")]), WINDOWS, "kvm"),
        ("ut-vm-capped", dict(max_memory=2048, max_vcpus=1), WINDOWS, "qemu"),
        ("ut-vm-kernel", dict(disks=[], boot=dict(kernel="/k/vmlinuz", cmdline="console=ttyS0")), None, "qemu"),
    ],
)
def test_test_driver_defines_the_xml(tconn, name, kw, os_info, domain_type):
    v = vm(name=name, **kw)
    disks = [] if not v["disks"] else [disk(bus=build.defaults(v, os_info)["disk_bus"])]
    disks = [dict(d, target="sda") if d["bus"] == "sata" else d for d in disks]
    created = [dict(path=d["path"], mode="blank", format="qcow2") for d in disks]
    root = xml(v, disks=disks, os_info=os_info, domain_type=domain_type, seed="/vm/s-cidata.iso", created=created)
    dom = tconn.defineXML(etree.tostring(root).decode())
    back = dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert back.get("type") == domain_type and back.findtext("name") == name
    assert back.findtext("currentMemory") == root.findtext("currentMemory")
    assert back.findtext("vcpu") == root.findtext("vcpu")
    assert [c["path"] for c in dx.provenance(back)["created_disks"]] == [c["path"] for c in created]
    assert len(back.findall("devices/disk")) == len(disks) + 1


def test_firmware_default_follows_the_os():
    from ansible_collections.virtops.kvm.plugins.module_utils._vm import build as b

    vm = dict(memory=None, vcpus=None, machine=None, firmware=None, max_memory=None, max_vcpus=None)
    assert b.defaults(vm, {"firmware": "efi", "machine": "q35"})["firmware"] == "uefi"
    assert b.defaults(vm, {"firmware": None})["firmware"] == "bios"
    assert b.defaults(vm, None)["firmware"] == "bios"
    assert b.defaults(dict(vm, firmware="bios"), {"firmware": "efi"})["firmware"] == "bios", "the option wins"
