# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The domain XML of a VM from its typed options: what virt-install writes, built with lxml.

Pure: no connection, no files. The caller gives the VM's checked options, its
planned disks (``files.plan_disks``), the OS defaults (``osinfo.lookup``, or
None), the domain type the host can run (``kvm`` or ``qemu``, as kvm_host
decides) and the seed file, and gets the ``<domain>`` root with the
collection's provenance in ``<metadata>``. What the user left out is left to
libvirt where libvirt fills it the same way every time (machine version,
PCI addresses, controllers), so the semantic compare of a rerun sees no
change.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import attach_cdrom

DEFAULT_MEMORY_MIB = 1024
DEFAULT_VCPUS = 1
LOG_DIR = "/var/log/libvirt/qemu"
VNC_LISTEN = "127.0.0.1"
AGENT_CHANNEL = "org.qemu.guest_agent.0"


def console_log(vm: dict) -> str | None:
    """Where the serial console is logged (None with console: false)."""
    if not vm["console"]:
        return None
    return vm["console_log"] or f"{LOG_DIR}/{vm['name']}-console.log"


def defaults(vm: dict, os_info: dict | None) -> dict:
    """memory (MiB), vcpus, disk bus, NIC model, machine and firmware of a VM: its options, else the OS's, else ours."""
    os_info = os_info or {}
    virtio = os_info.get("virtio", True) if os_info else True
    machine = vm["machine"] or os_info.get("machine")
    firmware = vm["firmware"] or ("uefi" if os_info.get("firmware") == "efi" else "bios")
    if firmware == "uefi-secure" and not machine:
        machine = "q35"  # Secure Boot needs SMM, which QEMU has on q35 only
    # a default (the OS's or ours) never exceeds the given maximum (a given value above it is refused in spec.py)
    memory = vm["memory"] or min(os_info.get("memory_mib") or DEFAULT_MEMORY_MIB, vm["max_memory"] or 1 << 62)
    vcpus = vm["vcpus"] or min(os_info.get("vcpus") or DEFAULT_VCPUS, vm["max_vcpus"] or 1 << 62)
    return dict(
        memory=memory,
        vcpus=vcpus,
        disk_bus=os_info.get("disk_bus") or ("virtio" if virtio else "sata"),
        nic_model=os_info.get("nic_model") or ("virtio" if os_info.get("virtio_net", virtio) else "e1000e"),
        machine=machine,
        virtio=virtio,
        firmware=firmware,
    )


def _sub(parent, tag: str, text: str | None = None, **attrib):
    el = _deps.etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrib.items() if v is not None})
    if text is not None:
        el.text = text
    return el


def _os(root, vm: dict, d: dict) -> None:
    os_el = _sub(root, "os")
    if d["firmware"] in ("uefi", "uefi-secure"):
        os_el.set("firmware", "efi")
    _sub(os_el, "type", "hvm", arch="x86_64", machine=d["machine"])
    if d["firmware"] == "uefi-secure":
        _sub(os_el, "loader", secure="yes")
    boot = vm["boot"]
    if boot is not None:
        _sub(os_el, "kernel", boot["kernel"])
        if boot["initrd"]:
            _sub(os_el, "initrd", boot["initrd"])
        if boot["cmdline"]:
            _sub(os_el, "cmdline", boot["cmdline"])
    else:
        _sub(os_el, "boot", dev="hd")


def _cpu(root, vm: dict, domain_type: str) -> None:
    """The CPU: the option; else host-model under KVM, and QEMU's default model under TCG (always runs)."""
    wanted = vm["cpu"]
    if wanted is None:
        if domain_type == "kvm":
            _sub(root, "cpu", mode="host-model")
        return
    if wanted in ("host-model", "host-passthrough", "maximum"):
        _sub(root, "cpu", mode=wanted)
    else:
        cpu = _sub(root, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", wanted, fallback="forbid")


def _disk(devices, disk: dict) -> None:
    el = _sub(devices, "disk", type="file", device="disk")
    top = disk.get("top")  # an external snapshot's layer above the disk's file: the VM writes there
    _sub(el, "driver", name="qemu", type="qcow2" if top else disk["format"])
    _sub(el, "source", file=top or disk["path"])
    _sub(el, "target", dev=disk["target"], bus=disk["bus"])


def _interface(devices, net: dict, model: str) -> None:
    if net["network"] is not None:
        el = _sub(devices, "interface", type="network")
        if net["mac"]:
            _sub(el, "mac", address=net["mac"])
        _sub(el, "source", network=net["network"])
    else:
        el = _sub(devices, "interface", type="bridge")
        if net["mac"]:
            _sub(el, "mac", address=net["mac"])
        _sub(el, "source", bridge=net["bridge"])
    _sub(el, "model", type=net["model"] or model)


def _consoles(devices, vm: dict) -> None:
    log = console_log(vm)
    if log is None:
        return
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")  # serial0's alias: libvirt gives it the same log
    _sub(console, "log", file=log, append="on")
    _sub(console, "target", type="serial", port="0")


def domain_xml(
    vm: dict,
    disks: list[dict],
    os_info: dict | None,
    domain_type: str,
    uuid: str | None,
    seed: str | None,
    created: list[dict],
):
    """The ``<domain>`` root of VM ``vm`` (see the module doc); ``created``: its provenance entries."""
    d = defaults(vm, os_info)
    root = _deps.etree.Element("domain", type=domain_type)
    _sub(root, "name", vm["name"])
    if uuid:
        _sub(root, "uuid", uuid)
    _sub(root, "memory", str((vm["max_memory"] or d["memory"]) * 1024), unit="KiB")
    _sub(root, "currentMemory", str(d["memory"] * 1024), unit="KiB")
    max_vcpus = vm["max_vcpus"] or d["vcpus"]
    _sub(root, "vcpu", str(max_vcpus), placement="static", current=str(d["vcpus"]))
    _os(root, vm, d)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if d["firmware"] == "uefi-secure":
        _sub(features, "smm", state="on")
    _cpu(root, vm, domain_type)
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    for disk in disks:
        _disk(devices, disk)
    if seed:
        attach_cdrom(root, seed)
    for net in vm["networks"]:
        _interface(devices, net, d["nic_model"])
    _consoles(devices, vm)
    if d["virtio"]:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)
        rng = _sub(devices, "rng", model="virtio")
        _sub(rng, "backend", "/dev/urandom", model="random")
    if vm["graphics"] == "vnc":
        graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen=VNC_LISTEN)
        _sub(graphics, "listen", type="address", address=VNC_LISTEN)
    _sub(devices, "memballoon", model="virtio" if d["virtio"] else "none")
    image = next((c.get("base") for c in created if c.get("base")), "")
    dx.set_provenance(root, image or "", "vm", created)
    return root
