# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What needs a restart: the settings a running domain only takes at its next start.

A running domain keeps the config it was started with; a define changes only
its persistent (inactive) XML. ``restart_differences`` compares the two on the
settings that matter for that (type, OS, CPU mode, memory, vCPUs, kernel,
disks, interfaces) and ignores what libvirt applies live or rewrites (title,
description, addresses, a CD-ROM's media). Pure lxml, no connection.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _xml_compare as xc

_DIGEST_TEXT = ("memory", "vcpu", "os/kernel", "os/initrd", "os/cmdline")


def restart_digest(root) -> dict:
    """The settings that only take effect when the domain starts, for live/inactive comparison."""
    root = xc.canonical(root)
    ostype = root.find("os/type")
    cpu = root.find("cpu")
    digest = {
        "type": root.get("type"),
        "os": None if ostype is None else (ostype.text, ostype.get("arch"), ostype.get("machine")),
        "cpu_mode": None if cpu is None else cpu.get("mode", "custom"),
    }
    for path in _DIGEST_TEXT:
        el = root.find(path)
        digest[path] = None if el is None else (el.text or "")
    disks = {}
    for d in root.findall("devices/disk"):
        tgt = d.find("target")
        if tgt is None:
            continue
        disks[tgt.get("dev")] = (d.get("device", "disk"), dx.disk_source(d), d.find("readonly") is not None)
    digest["disks"] = disks
    ifaces = {}
    for i in root.findall("devices/interface"):
        mac = i.find("mac")
        model = i.find("model")
        ifaces[mac.get("address") if mac is not None else None] = (
            i.get("type"),
            None if model is None else model.get("type"),
        )
    digest["interfaces"] = ifaces
    return digest


def restart_differences(inactive, live) -> list[str]:
    """Settings of the persistent config that the running domain does not have yet."""
    a, b = restart_digest(inactive), restart_digest(live)
    out = []
    for key in a:
        if key == "disks":
            for tgt in sorted(set(a[key]) | set(b[key]), key=str):
                if a[key].get(tgt) != b[key].get(tgt):
                    # a CD-ROM with media changed live only is not a pending restart
                    if (a[key].get(tgt) or ("",))[0] == "cdrom" and (b[key].get(tgt) or ("",))[0] == "cdrom":
                        continue
                    out.append(f"disk {tgt}")
        elif a[key] != b[key]:
            out.append(key)
    return out
