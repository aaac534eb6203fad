# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What changes per clone: its file names and its domain XML (pure lxml, no connection).

The course clones by hand: dump the template's XML, change name, UUID, disk
path and MAC (and for a fleet on a network, where the first NIC attaches), and
define. ``transform`` does that on a copy of the template's element tree,
and also drops what libvirt generates per domain (tap device names, aliases,
ports, pty paths, dynamic labels) so two clones never collide on it. The
file names a clone's disks get are decided here too, so that the plan for a
new clone and the check of an existing one agree.
"""

from __future__ import annotations

import copy
import os
import re

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import seal

# File extension of a clone's disk per image format.
EXTENSIONS = {"qcow2": "qcow2", "raw": "img"}

_GENERATED_TAP = re.compile(r"^(vnet|macvtap|macvlan|vif)\d+")


def disk_file_name(clone: str, target: str | None, index: int, ext: str) -> str:
    """``<clone>.<ext>`` for the first disk (the course's stu01.qcow2), ``<clone>-<target>.<ext>`` after."""
    return f"{clone}.{ext}" if index == 0 else f"{clone}-{target or index}.{ext}"


def clone_format(mode: str, source_format: str) -> str:
    """The format of a clone's disk: an overlay is always qcow2, a copy keeps its source's format."""
    return "qcow2" if mode == "overlay" else source_format


def clone_disk_path(dest_dir: str, clone: str, index: int, tpl_disk: dict, mode: str) -> str:
    """Where clone ``clone`` keeps its copy or overlay of the template's ``index``-th writable disk."""
    ext = EXTENSIONS[clone_format(mode, tpl_disk["format"])]
    return os.path.join(dest_dir, disk_file_name(clone, tpl_disk["target"], index, ext))


def derived_path(path: str, template: str, clone: str) -> str:
    """A per-clone file path (serial log, NVRAM) derived from the template's one."""
    d, base = os.path.split(path)
    if template and template in base:
        return os.path.join(d, base.replace(template, clone))
    return os.path.join(d, f"{clone}-{base}")


def transform(
    template_root,
    *,
    name: str,
    uuid: str,
    macs: list[str],
    disk_map: dict[str, dict],
    domain_type: str | None,
    template_name: str,
    mode: str,
    created: list[dict],
    nvram_path: str | None = None,
    memory_mib: int | None = None,
    vcpus: int | None = None,
    network: str | None = None,
):
    """The clone's domain XML (a new element tree; the template's is not modified).

    ``disk_map`` maps a template disk path to ``{path, format}`` of the clone's
    disk; disks not in it (CD-ROMs, read-only and shareable disks) are shared.
    ``macs`` gives one MAC per interface, in document order. With ``network``,
    the first interface is attached to that libvirt network.
    """
    root = copy.deepcopy(template_root)
    if "id" in root.attrib:
        del root.attrib["id"]
    if domain_type:
        root.set("type", domain_type)
    _set_child(root, "name", name)
    _set_child(root, "uuid", uuid)
    for entry in root.findall("sysinfo/system/entry"):
        if entry.get("name") == "uuid":
            entry.text = uuid
    if memory_mib is not None:
        _set_memory(root, memory_mib)
    if vcpus is not None:
        _set_vcpus(root, vcpus)
    # NVRAM: a copy per clone (virt-clone does the same)
    nv = root.find("os/nvram")
    if nv is not None:
        if nvram_path:
            nv.text = nvram_path
        elif nv.text:
            nv.text = None  # libvirt makes a fresh one from the template at first start
    devices = root.find("devices")
    if devices is not None:
        _set_disks(devices, disk_map)
        _set_interfaces(devices, macs)
        if network:
            attach_network(devices, network)
        _set_char_devices(devices, template_name, name)
        for g in devices.findall("graphics"):
            if g.get("type") in ("vnc", "spice"):
                for attr in ("port", "tlsPort", "websocket"):
                    if attr in g.attrib:
                        del g.attrib[attr]
                g.set("autoport", "yes")
        for alias in devices.iter("alias"):
            if not (alias.get("name") or "").startswith("ua-"):
                alias.getparent().remove(alias)
    for sec in root.findall("seclabel"):
        if sec.get("type") == "dynamic":
            for child in sec.findall("label") + sec.findall("imagelabel"):
                sec.remove(child)
    for el in root.findall(f"metadata/{{{seal.NS}}}seal"):  # the template's seal is the template's alone
        el.getparent().remove(el)
    dx.set_provenance(root, template_name, mode, created)
    return root


def _set_child(root, tag: str, value: str) -> None:
    el = root.find(tag)
    if el is None:
        el = _deps.etree.Element(tag)
        root.insert(0 if tag == "name" else 1, el)
    el.text = value


def _set_memory(root, memory_mib: int) -> None:
    """<memory> (made if missing) and <currentMemory> (only if there) to ``memory_mib``, in KiB."""
    for tag in ("memory", "currentMemory"):
        el = root.find(tag)
        if el is None and tag == "currentMemory":
            continue
        el = el if el is not None else _deps.etree.SubElement(root, tag)
        el.text = str(memory_mib * 1024)
        el.set("unit", "KiB")


def _set_vcpus(root, vcpus: int) -> None:
    """<vcpu>, dropping a CPU topology that no longer adds up and any per-vCPU <vcpus> list."""
    el = root.find("vcpu")
    if el is None:
        el = _deps.etree.SubElement(root, "vcpu")
    el.text = str(vcpus)
    if "current" in el.attrib:
        del el.attrib["current"]
    topo = root.find("cpu/topology")
    if topo is not None:
        try:
            n = 1
            for k in ("sockets", "dies", "cores", "threads"):
                n *= int(topo.get(k, "1"))
        except ValueError:
            n = -1
        if n != vcpus:
            topo.getparent().remove(topo)
    vcpus_el = root.find("vcpus")
    if vcpus_el is not None:
        root.remove(vcpus_el)


def _set_disks(devices, disk_map: dict[str, dict]) -> None:
    """Point each mapped disk at the clone's file and format; its old backing chain goes."""
    for d in devices.findall("disk"):
        src = d.find("source")
        path = src.get("file") if src is not None else None
        if path is None or path not in disk_map:
            continue
        dx.set_disk_file(d, disk_map[path]["path"], disk_map[path]["format"])


def _set_interfaces(devices, macs: list[str]) -> None:
    """One MAC per interface, in order; tap device names libvirt generated go."""
    for i, iface in enumerate(devices.findall("interface")):
        mac = iface.find("mac")
        if mac is None:
            mac = _deps.etree.Element("mac")
            iface.insert(0, mac)
        mac.set("address", macs[i])
        tgt = iface.find("target")
        if tgt is not None and _GENERATED_TAP.match(tgt.get("dev", "")):
            iface.remove(tgt)


# What an interface keeps when it moves to a libvirt network: the rest belongs to its old type.
_IFACE_KEEP = frozenset(
    {"mac", "model", "driver", "boot", "rom", "mtu", "link", "address", "alias", "coalesce", "tune", "bandwidth"}
)


def attach_network(devices, network: str) -> None:
    """Put the first interface on libvirt network ``network`` (``<interface type='network'>``)."""
    iface = devices.find("interface")
    iface.set("type", "network")
    for child in list(iface):
        if isinstance(child.tag, str) and child.tag not in _IFACE_KEEP:
            iface.remove(child)
    src = _deps.etree.Element("source", network=network)
    mac = iface.find("mac")
    (mac.addnext(src) if mac is not None else iface.insert(0, src))


def _set_char_devices(devices, template_name: str, name: str) -> None:
    """Log files per clone (one file stays one file), generated pty paths and sockets dropped."""
    mapped: dict[str, str] = {}
    for kind in ("serial", "console", "parallel", "channel"):
        for dev in devices.findall(kind):
            src = dev.find("source")
            if "tty" in dev.attrib:
                del dev.attrib["tty"]
            if src is None:
                continue
            if dev.get("type") == "file" and src.get("path"):
                old = src.get("path")
                mapped.setdefault(old, derived_path(old, template_name, name))
                src.set("path", mapped[old])
            elif dev.get("type") == "pty" and "path" in src.attrib:
                del src.attrib["path"]
            elif dev.get("type") == "unix" and src.get("mode") == "bind" and "path" in src.attrib:
                del src.attrib["path"]  # libvirt generates a per-domain socket
