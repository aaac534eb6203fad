"""_vm.spec: one VM's options over the top level, and every refusal with its message (no libvirt)."""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._vm import spec

MIB = 1024**2


def top(**kw):
    """The top-level options as Ansible gives them (defaults filled, the rest None)."""
    out = {k: None for k in spec.VM_KEYS}
    out.update(spec.VM_DEFAULTS)
    out.update(kw)
    return out


def vm(**kw):
    """A checked top-level VM: a blank disk unless told otherwise."""
    kw.setdefault("name", "web1")
    kw.setdefault("disks", [dict(size="1G")])
    return spec.check_vm(spec.vm_params(top(**kw), None, ""), "")


def item(it, **top_kw):
    return spec.check_vm(spec.vm_params(top(**top_kw), it, "vms[0]"), "vms[0]")


def refused(fn, *args, **kw) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kw)
    return info.value


# ---------------------------------------------------------------- vm_params


def test_vm_params_top_level_fills_defaults():
    p = spec.vm_params({"name": "a", "memory": 512}, None, "")
    assert p["name"] == "a" and p["memory"] == 512
    assert p["firmware"] is None and p["graphics"] == "none" and p["pool"] == "default"  # None: the OS decides
    assert p["state"] == "present" and p["console"] is True and p["remove_detached"] is False
    assert p["disks"] == [] and p["networks"] == []
    assert set(p) == set(spec.VM_KEYS)


def test_vm_params_item_over_top_level():
    t = top(memory=2048, vcpus=2, os_variant="debian12", console=True, name=None)
    p = spec.vm_params(t, dict(name="b", vcpus=4, console=False), "vms[1]")
    assert p["name"] == "b"
    assert p["vcpus"] == 4, "the item's value wins"
    assert p["memory"] == 2048 and p["os_variant"] == "debian12", "left out: the top level's"
    assert p["console"] is False, "an item's false is a value, not a missing key"


def test_vm_params_item_does_not_inherit_the_name():
    p = spec.vm_params(top(name="top"), dict(memory=1), "vms[0]")
    assert p["name"] is None
    e = refused(spec.check_vm, dict(p, disks=[dict(size="1G")]), "vms[0]")
    assert "vms[0] needs a name" in e.message


def test_vm_params_item_unknown_key_and_not_a_dict():
    e = refused(spec.vm_params, top(), dict(name="a", memroy=1), "vms[2]")
    assert "vms[2] has unknown key(s) memroy" in e.message and "memory" in e.hint
    e = refused(spec.vm_params, top(), "web1", "vms[0]")
    assert "vms[0] must be a dict" in e.message and "not str" in e.message


# ---------------------------------------------------------------- check_vm: types and numbers


def test_item_string_numbers_are_taken_as_ints():
    v = item(dict(name="a", memory="512", vcpus=" 2 ", max_memory="1024", disks=[dict(size="1G")]))
    assert (v["memory"], v["vcpus"], v["max_memory"]) == (512, 2, 1024)


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        ("memory", "lots", "int"),
        ("memory", True, "int"),
        ("memory", 1.5, "int"),
        ("vcpus", [2], "int"),
        ("console", "yes", "bool"),
        ("autostart", 1, "bool"),
        ("cpu", 3, "str"),
        ("disks", dict(size="1G"), "list"),
        ("boot", "vmlinuz", "dict"),
        ("cloud_init", "#cloud-config", "dict"),
    ],
)
def test_item_bad_types_are_refused_by_name(key, value, kind):
    it = dict(name="a", disks=[dict(size="1G")])
    it[key] = value
    e = refused(item, it)
    assert f"vms[0].{key} must be of type {kind}" in e.message, e.message


@pytest.mark.parametrize(("key", "value"), [("firmware", "efi"), ("state", "started"), ("graphics", "spice")])
def test_item_bad_choices(key, value):
    e = refused(item, dict(name="a", disks=[dict(size="1G")], **{key: value}))
    assert f"vms[0].{key} must be one of" in e.message and repr(value) in e.message


@pytest.mark.parametrize("key", ["memory", "vcpus", "max_memory", "max_vcpus"])
def test_numbers_out_of_range(key):
    e = refused(vm, **{key: 0})
    assert key in e.message


def test_max_below_current_is_refused():
    e = refused(vm, memory=2048, max_memory=1024)
    assert e.message == "max_memory (1024) is smaller than memory (2048)."
    e = refused(item, dict(name="a", vcpus=4, max_vcpus=2, disks=[dict(size="1G")]))
    assert e.message == "vms[0].max_vcpus (2) is smaller than vcpus (4)."
    assert vm(memory=1024, max_memory=1024)["max_memory"] == 1024


@pytest.mark.parametrize("name", ["-web", "a b", "a/b", "a..b", "x" * 65, "", "wéb"])
def test_names_breaking_the_rule(name):
    e = refused(vm, name=name)
    assert "name" in e.message


def test_name_missing_at_top_level():
    e = refused(spec.check_vm, top(disks=[dict(size="1G")]), "")
    assert e.message == "the task needs a name."


@pytest.mark.parametrize(("key", "value"), [("cpu", "-host"), ("machine", "pc q35"), ("os_variant", "-x")])
def test_command_line_arguments_refused(key, value):
    e = refused(vm, **{key: value})
    assert key in e.message


def test_no_disk_and_no_kernel_cannot_boot():
    e = refused(vm, disks=[])
    assert "VM web1 has no disk and no boot kernel" in e.message and "boot.kernel" in e.hint
    assert vm(disks=[], state="absent")["disks"] == [], "absent needs nothing to boot"
    assert vm(disks=[], boot=dict(kernel="/boot/vmlinuz"))["boot"]["kernel"] == "/boot/vmlinuz"


def test_console_log_and_pool():
    assert vm(console_log="/var/log/x/../web.log")["console_log"] == "/var/log/web.log"
    assert "console_log must be an absolute path" in refused(vm, console_log="web.log").message
    assert "pool" in refused(vm, pool="a/b").message


# ---------------------------------------------------------------- check_disk


def test_disk_defaults_and_normalization():
    d = spec.check_disk(dict(image="/img//deb.qcow2"), "disks[0]")
    assert d == dict(
        image="/img/deb.qcow2", mode="overlay", size=None, format=None, bus=None, path=None, pool=None, target=None
    )
    d = spec.check_disk(dict(size="2G", format="raw", bus="sata", target="sdb"), "disks[1]")
    assert (d["mode"], d["size"], d["format"], d["target"]) == ("blank", 2 * 1024**3, "raw", "sdb")
    d = spec.check_disk(dict(image="/i.raw", mode="copy", format="raw", path="/vm/a.img", size=1073741824), "d")
    assert (d["mode"], d["size"], d["path"]) == ("copy", 1024**3, "/vm/a.img")


@pytest.mark.parametrize(
    ("disk", "says"),
    [
        ("vda", "disks[0] must be a dict"),
        (dict(size="1G", colour="red"), "disks[0] has unknown key(s) colour"),
        (dict(), "disks[0] has neither image nor size"),
        (dict(format="qcow2"), "disks[0] has neither image nor size"),
        (dict(size="1G", mode="copy"), "disks[0].mode is for a disk made from an image"),
        (dict(image="/i.qcow2", mode="as_is", size="20G"), "mode as_is uses the image itself"),
        (dict(image="/i.qcow2", mode="as_is", path="/vm/a.qcow2"), "mode as_is uses the image where it is"),
        (dict(image="/i.qcow2", mode="as_is", pool="fast"), "mode as_is uses the image where it is"),
        (dict(image="/i.qcow2", format="raw"), "an overlay is a qcow2 file"),
        (dict(image="/i.qcow2", mode="overlay", format="raw"), "an overlay is a qcow2 file"),
        (dict(size="1G", path="/vm/a.qcow2", pool="default"), "disks[0] has both path and pool"),
        (dict(image="images/deb.qcow2"), "disks[0].image must be an absolute path"),
        (dict(size="1G", path="a.qcow2"), "disks[0].path must be an absolute path"),
        (dict(image=5), "disks[0].image"),
        (dict(size="1G", target="VDA"), "disks[0].target must be a device name"),
        (dict(size="1G", target="vd-a"), "disks[0].target must be a device name"),
        (dict(size="1G", target="1"), "disks[0].target must be a device name"),
        (dict(size="1G", target=3), "disks[0].target must be a string"),
        (dict(size="1G", mode="blank"), "disks[0].mode is for a disk made from an image"),
        (dict(image="/i", mode="clone"), "disks[0].mode must be one of overlay, copy, as_is"),
        (dict(size="1G", format="vmdk"), "disks[0].format must be one of qcow2, raw"),
        (dict(size="1G", bus="nvme"), "disks[0].bus must be one of"),
        (dict(size="ten gigs"), "disks[0].size"),
        (dict(size="1K"), "disks[0].size"),
        (dict(size="1G", pool="a/b"), "disks[0].pool"),
    ],
)
def test_disk_refusals(disk, says):
    e = refused(spec.check_disk, disk, "disks[0]")
    assert says in e.message, e.message


def test_disk_refusals_carry_hints():
    assert "image" in refused(spec.check_disk, dict(), "d").hint
    assert "overlay or copy" in refused(spec.check_disk, dict(image="/i", mode="as_is", size="1G"), "d").hint


def test_duplicate_targets_refused():
    e = refused(vm, disks=[dict(size="1G", target="vdb"), dict(size="1G", target="vdb")])
    assert "disks name a target twice: vdb, vdb" in e.message


def test_disk_errors_are_named_in_an_item():
    e = refused(item, dict(name="a", disks=[dict(size="1G"), dict(mode="copy")]))
    assert e.message.startswith("vms[0].disks[1]")


# ---------------------------------------------------------------- check_network


def test_network_normalized():
    n = spec.check_network(dict(network="default", mac="52:54:00:AB:cd:01", model="e1000e"), "networks[0]")
    assert n == dict(network="default", bridge=None, mac="52:54:00:ab:cd:01", model="e1000e")
    assert spec.check_network(dict(bridge="br0"), "n")["bridge"] == "br0"


@pytest.mark.parametrize(
    ("net", "says"),
    [
        (["default"], "networks[0] must be a dict"),
        (dict(network="default", vlan=3), "networks[0] has unknown key(s) vlan"),
        (dict(network="default", bridge="br0"), "needs exactly one of network"),
        (dict(mac="52:54:00:00:00:01"), "needs exactly one of network"),
        (dict(network=7), "networks[0].network must be a string"),
        (dict(network="a/b"), "networks[0].network"),
        (dict(bridge="br 0 "), "networks[0].bridge"),
        (dict(network="default", mac="52:54:00:00:00"), "networks[0].mac must look like"),
        (dict(network="default", mac="52-54-00-00-00-01"), "networks[0].mac must look like"),
        (dict(network="default", mac="52:54:00:00:00:0g"), "networks[0].mac must look like"),
        (dict(network="default", mac="525:4:00:00:00:01"), "networks[0].mac must look like"),
        (dict(network="default", mac="01:00:5e:00:00:01"), "is a multicast address"),
        (dict(network="default", mac="ff:ff:ff:ff:ff:ff"), "is a multicast address"),
        (dict(network="default", model="ne2k"), "networks[0].model must be one of"),
    ],
)
def test_network_refusals(net, says):
    e = refused(spec.check_network, net, "networks[0]")
    assert says in e.message, e.message


def test_duplicate_macs_refused_whatever_the_case():
    nets = [dict(network="default", mac="52:54:00:00:00:0A"), dict(bridge="br0", mac="52:54:00:00:00:0a")]
    assert "networks give a MAC address twice" in refused(vm, networks=nets).message


# ---------------------------------------------------------------- check_boot


def test_boot():
    assert spec.check_boot(None, "boot") is None
    b = spec.check_boot(dict(kernel="/k//vmlinuz", cmdline="console=ttyS0 root=/dev/vda1"), "boot")
    assert b == dict(kernel="/k/vmlinuz", initrd=None, cmdline="console=ttyS0 root=/dev/vda1")


@pytest.mark.parametrize(
    ("boot", "says"),
    [
        ("/vmlinuz", "boot must be a dict"),
        (dict(kernel="/k", append="x"), "boot has unknown key(s) append"),
        (dict(initrd="/i"), "boot needs kernel"),
        (dict(kernel="vmlinuz"), "boot.kernel must be an absolute path"),
        (dict(kernel="/k", initrd="initrd.img"), "boot.initrd must be an absolute path"),
        (dict(kernel="/k", cmdline="a\nb"), "boot.cmdline"),
    ],
)
def test_boot_refusals(boot, says):
    e = refused(spec.check_boot, boot, "boot")
    assert says in e.message, e.message


def test_cloud_init_checked():
    assert vm(cloud_init={})["cloud_init"] is not None
    assert "cloud_init has unknown keys" in refused(vm, cloud_init=dict(userdata="x")).message
