# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The hardware probe and the kvm/qemu verdict: can guests of this host use KVM?

Cheap and read-only: no package manager, no daemon start, nothing about
domains. This is the only part of ``_host`` that other packages import
(``usable_domain_type(conn)``).
"""

from __future__ import annotations

import os
import re
from xml.etree import ElementTree

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._host.files import host_path, read_text

_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "hygon", "CentaurHauls": "centaur"}
NESTED_MODULES = ("kvm_intel", "kvm_amd")


def parse_cpuinfo(text: str) -> dict:
    """CPU vendor, model, count and the hardware virtualization flag from /proc/cpuinfo."""
    vendor_id = model = None
    count = 0
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            count += 1
        elif key == "vendor_id" and vendor_id is None:
            vendor_id = value
        elif key == "model name" and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    virt_flag = "vmx" if "vmx" in flags else "svm" if "svm" in flags else "none"
    return {
        "cpu_vendor_id": vendor_id,
        "cpu_vendor": _VENDORS.get(vendor_id or "", (vendor_id or "unknown").lower()),
        "cpu_model": model,
        "cpu_count": count,
        "virt_flag": virt_flag,
    }


def kvm_modules(root: str = "/") -> list[str]:
    """Loaded kvm modules (kvm, kvm_intel, kvm_amd, kvm_pvm, ...) from /proc/modules or /sys/module."""
    found: set[str] = set()
    text = read_text(root, "/proc/modules")
    if text:
        found.update(line.split()[0] for line in text.splitlines() if line.split())
    try:
        found.update(os.listdir(host_path(root, "/sys/module")))
    except OSError:
        pass
    return sorted(m for m in found if m == "kvm" or m.startswith("kvm_"))


def nested_setting(root: str = "/") -> bool | None:
    """The kvm_intel / kvm_amd ``nested`` parameter; None when neither module exposes it."""
    for mod in NESTED_MODULES:
        text = read_text(root, f"/sys/module/{mod}/parameters/nested")
        if text is not None:
            return text.strip().upper() in ("Y", "1")
    return None


def memory_mib(root: str = "/") -> int | None:
    """The host's RAM (MemTotal of /proc/meminfo) in MiB."""
    text = read_text(root, "/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(m.group(1)) // 1024 if m else None


def caps_domain_types(caps_xml: str) -> list[str]:
    """The domain types libvirt offers for guests (``<guest><arch><domain type=...>``)."""
    # Without lxml the stdlib parser reads these few attributes just as well.
    etree = _deps.etree if _deps.etree is not None else ElementTree
    root = etree.fromstring(caps_xml.encode() if isinstance(caps_xml, str) else caps_xml)
    types = {d.get("type") for d in root.findall("./guest/arch/domain") if d.get("type")}
    return sorted(types)


def probe_hardware(caps_xml: str | None = None, root: str = "/") -> dict:
    """Read what the host offers for virtualization; cheap, read-only, no daemon needed."""
    facts = parse_cpuinfo(read_text(root, "/proc/cpuinfo") or "")
    dev_kvm = host_path(root, "/dev/kvm")
    facts["dev_kvm_exists"] = os.path.exists(dev_kvm)
    facts["dev_kvm_accessible"] = facts["dev_kvm_exists"] and os.access(dev_kvm, os.R_OK | os.W_OK)
    facts["kvm_modules"] = kvm_modules(root)
    facts["nested"] = nested_setting(root)
    facts["memory_mib"] = memory_mib(root)
    facts["libvirt_domain_types"] = caps_domain_types(caps_xml) if caps_xml else None
    return facts


def verdict(facts: dict) -> dict:
    """Decide whether guests can use KVM here; a pure function of ``probe_hardware()`` facts.

    libvirt's capability list alone is not trusted: a paravirtual/nested KVM (for
    example kvm_pvm) offers /dev/kvm and libvirt lists ``kvm``, yet full
    virtualization guests hang there. The CPU flag is what tells them apart.
    """

    def no(reason: str) -> dict:
        return {
            "kvm_usable": False,
            "reason": reason + " Use domain type 'qemu' (TCG software emulation).",
            "recommended_domain_type": "qemu",
        }

    flag = facts.get("virt_flag") or "none"
    types = facts.get("libvirt_domain_types")
    modules = facts.get("kvm_modules") or []
    if not facts.get("dev_kvm_exists"):
        if flag == "none":
            return no("/dev/kvm does not exist and the CPU exposes no vmx/svm flag (no hardware virtualization).")
        return no(
            f"/dev/kvm does not exist although the CPU has the {flag} flag: load the kvm module "
            f"(modprobe {'kvm_intel' if flag == 'vmx' else 'kvm_amd'}) or enable virtualization in the firmware."
        )
    if flag == "none":
        extra = [m for m in modules if m not in ("kvm", *NESTED_MODULES)]
        via = f" (kernel module {', '.join(extra)})" if extra else ""
        return no(
            "The CPU exposes no vmx/svm flag, so /dev/kvm is a paravirtual/nested KVM"
            f"{via} that cannot run full-virtualization guests."
        )
    if types is not None and "kvm" not in types:
        return no(
            f"The CPU has {flag} and /dev/kvm exists, but libvirt does not list the kvm domain type "
            f"(it lists: {', '.join(types) or 'nothing'}); check that the QEMU driver is installed and "
            "that /dev/kvm is accessible to the QEMU user."
        )
    if not facts.get("dev_kvm_accessible") and types is None:
        return no(
            f"The CPU has {flag} but /dev/kvm is not readable and writable by this user "
            "(run as root or join the kvm group), and libvirt was not asked."
        )
    checked = "libvirt lists the kvm domain type" if types is not None else "libvirt was not asked"
    return {
        "kvm_usable": True,
        "reason": f"The CPU has the {flag} flag, /dev/kvm exists and {checked}.",
        "recommended_domain_type": "kvm",
    }


def usable_domain_type(conn=None) -> tuple[str, str]:
    """``(domain_type, reason)`` for this host: cheap, no package manager, no daemon start."""
    caps = conn.getCapabilities() if conn is not None else None
    v = verdict(probe_hardware(caps))
    return v["recommended_domain_type"], v["reason"]
