# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What a running VM takes without a restart: live memory, vCPUs, hot-plugged disks and NICs, planned then applied.

kvm_vm defines the VM's persistent config first; a running VM keeps the config
it started with. ``plan_live`` compares that new persistent XML with the live
XML (pure lxml, so check mode predicts exactly what a real run does) and splits
the difference into steps libvirt can do live and ``pending`` settings that
only a restart applies: never a silent restart. ``apply_live`` performs the
steps on the live domain only (``VIR_DOMAIN_AFFECT_LIVE``: the persistent config
already has them), each libvirt call named for its failure message.

Rules (semantic parts only; libvirt's addresses and aliases are ignored):

* memory: the wanted ``<currentMemory>`` is set live when it is within the live
  ``<memory>`` maximum and the live domain has a memory balloon; else pending.
* vCPUs: the wanted online count is set live when it is within the live
  ``<vcpu>`` maximum and, when lower, no lower than the live vCPUs that are not
  hot-pluggable (those the domain started with: QEMU cannot unplug them); else
  pending.
* disks by target, interfaces by MAC: one that is wanted and not live is
  hot-plugged, one live and not wanted is hot-unplugged (its live element is
  what libvirt is given). One that exists on both sides but differs (a disk's
  source, bus or device, an interface's type, source or model) is pending, not
  replaced. A CD-ROM's media is not pending (as in ``restart``). A disk on a bus
  that cannot be hot-plugged (IDE, SATA, floppy) is pending.
* everything else ``restart_differences`` finds (type, OS, CPU mode, maximum
  memory or vCPUs, kernel) is pending.

A hot-unplug is asynchronous: the guest must release the device. ``apply_live``
waits for it (``DETACH_TIMEOUT`` s) and raises TimeoutExpired when the guest did
not: a failure, not a pending entry, because nothing else would tell the user
that the guest ignores unplug requests (the persistent config no longer has the
device, so a restart removes it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from ansible_collections.virtops.kvm.plugins.module_utils import _connection, _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._domain.restart import restart_differences
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtFailed, TimeoutExpired
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock, Deadline, backoff, wait_until

#: seconds a guest gets to release a hot-unplugged device
DETACH_TIMEOUT = 30.0

# the bus a disk target's prefix implies when <target> names none (libvirt's own rule)
_BUS_OF_PREFIX = {"hd": "ide", "sd": "scsi", "vd": "virtio", "fd": "fdc", "xv": "xen", "ub": "usb"}
# buses libvirt refuses to hot-plug a disk on
_COLD_BUSES = frozenset({"ide", "sata", "fdc"})
# restart_differences' keys, as the result's pending list says them
_LABELS = {
    "type": "domain type",
    "os": "OS type or machine",
    "cpu_mode": "CPU mode",
    "memory": "maximum memory",
    "vcpu": "maximum vCPUs",
    "os/kernel": "kernel",
    "os/initrd": "initrd",
    "os/cmdline": "kernel command line",
}

_HINTS = {
    "memory": "Changing memory live needs the guest's balloon driver (virtio_balloon) to be loaded.",
    "vcpus": "Changing vCPUs live needs guest support for CPU hot-plug (and hot-unplug to lower the count).",
    "attach": (
        "The guest must accept the device live: a q35 machine needs a free PCIe root port (define spare "
        "pcie-root-port controllers), an i440fx machine ACPI PCI hot-plug. The persistent config already has "
        "the device: a restart of the domain adds it."
    ),
    "detach": (
        "A hot-unplug needs the guest's cooperation (a running OS with ACPI or PCIe hot-plug). The persistent "
        "config no longer has the device: a restart of the domain removes it."
    ),
}


@dataclass
class LivePlan:
    """Ordered steps (dicts with ``what`` and ``kind``) libvirt can do live, and what only a restart applies."""

    steps: list[dict] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def changes(self) -> list[str]:
        """The steps' texts, for the result's ``changes``."""
        return [s["what"] for s in self.steps]


def _size(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib % 1024 == 0 else f"{kib} KiB"


def _kib(root, tags: tuple) -> int | None:
    for tag in tags:
        el = root.find(tag)
        if el is not None:
            kib = dx.to_kib(el.text, el.get("unit"))
            if kib is not None:
                return kib
    return None


def _bus(disk_el) -> str | None:
    tgt = disk_el.find("target")
    bus = tgt.get("bus") if tgt is not None else None
    return bus or _BUS_OF_PREFIX.get((tgt.get("dev") or "")[:2] if tgt is not None else "")


def _disks(root) -> dict:
    """``{target: (element, (device, source, bus, readonly))}``."""
    out = {}
    for d in root.findall("devices/disk"):
        tgt = d.find("target")
        if tgt is not None and tgt.get("dev"):
            facts = (d.get("device", "disk"), dx.disk_source(d), _bus(d), d.find("readonly") is not None)
            out[tgt.get("dev")] = (d, facts)
    return out


def _interfaces(root) -> dict:
    """``{mac: (element, (type, source, model))}`` (MACs lower-cased; one without a MAC is left out)."""
    out = {}
    for el, info in zip(root.findall("devices/interface"), dx.interfaces(root)):
        if info["mac"]:
            out[info["mac"].lower()] = (el, (info["type"], info["source"], info["model"]))
    return out


def _memory(wanted, live, plan: LivePlan) -> None:
    want, have = _kib(wanted, ("currentMemory", "memory")), _kib(live, ("currentMemory", "memory"))
    if want is None or have is None or want == have:
        return
    top = _kib(live, ("memory",)) or 0
    balloon = live.find("devices/memballoon")
    whole = want % 1024 == have % 1024 == 0
    text = f"live memory: {have // 1024} -> {want // 1024} MiB" if whole else f"live memory: {have} -> {want} KiB"
    if want > top:
        plan.pending.append(f"memory {_size(want)}: above the running maximum of {_size(top)}")
    elif balloon is None or balloon.get("model") == "none":
        plan.pending.append(f"memory {_size(want)}: the running domain has no memory balloon")
    else:
        plan.steps.append(dict(what=text, kind="memory", kib=want))


def _vcpus(wanted, live, plan: LivePlan) -> None:
    want, have, top = dx.online_vcpus(wanted), dx.online_vcpus(live), dx.vcpus(live)
    if want is None or have is None or want == have:
        return
    unpluggable = len(live.findall("vcpus/vcpu[@enabled='yes'][@hotpluggable='yes']"))
    if top is None or want > top:
        plan.pending.append(f"vCPUs {want}: above the running maximum of {top}")
    elif want < have - unpluggable:
        # QEMU cannot unplug the vCPUs a domain started with (libvirt marks them hotpluggable='no', or lists no
        # <vcpus> at all when none was ever hot-plugged): only those hot-plugged since can go live
        plan.pending.append(f"vCPUs {want}: below the {have - unpluggable} the running domain cannot unplug")
    else:
        plan.steps.append(dict(what=f"live vcpus: {have} -> {want}", kind="vcpus", count=want))


def _step(kind: str, device: str, key: str, el) -> dict:
    verb = "hot-plug" if kind == "attach" else "hot-unplug"
    if kind == "attach":
        # the persistent config's PCI address may be taken in the running guest: libvirt picks a free one
        el = copy.deepcopy(el)
        for child in el.findall("address") + el.findall("alias"):
            el.remove(child)
    xml = _deps.etree.tostring(el, encoding="unicode", with_tail=False)
    return dict(what=f"{verb} {device} {key}", kind=kind, device=device, key=key, xml=xml)


def _devices(device: str, wanted: dict, live: dict, plan: LivePlan, detach: list, attach: list) -> None:
    for key in sorted(set(wanted) | set(live)):
        want, have = wanted.get(key), live.get(key)
        if want is not None and have is not None:
            if want[1] == have[1]:
                continue
            cdrom_media = device == "disk" and want[1][0] == have[1][0] == "cdrom"
            if not (cdrom_media and want[1][2:] == have[1][2:]):
                plan.pending.append(f"{device} {key}: changed")
            continue
        el, facts = want or have
        if device == "disk" and facts[2] in _COLD_BUSES:
            change = "added" if want else "removed"
            plan.pending.append(f"{device} {key}: {change} (bus {facts[2]} is not hot-pluggable)")
        elif want is not None:
            attach.append(_step("attach", device, key, el))
        else:
            detach.append(_step("detach", device, key, el))


def plan_live(wanted, live) -> LivePlan:
    """The steps bringing the ``live`` domain XML to the ``wanted`` persistent one, and what stays pending."""
    plan = LivePlan()
    detach: list = []
    attach: list = []
    _devices("disk", _disks(wanted), _disks(live), plan, detach, attach)
    _devices("interface", _interfaces(wanted), _interfaces(live), plan, detach, attach)
    plan.steps.extend(detach)  # unplug first: it frees the slots a hot-plug may need
    plan.steps.extend(attach)
    _memory(wanted, live, plan)
    _vcpus(wanted, live, plan)
    for key in restart_differences(wanted, live):
        if not key.startswith("disk ") and key != "interfaces":
            plan.pending.append(_LABELS.get(key, key))
    return plan


def _present(root, device: str, key: str) -> bool:
    return key in (_disks(root) if device == "disk" else _interfaces(root))


def _act(step: dict, name: str):
    """(what the call does, for its failure message; the bound method's name; its first argument)."""
    kind = step["kind"]
    if kind == "memory":
        return f"Setting the live memory of domain {name} to {_size(step['kib'])}", "setMemoryFlags", step["kib"]
    if kind == "vcpus":
        return f"Setting the live vCPUs of domain {name} to {step['count']}", "setVcpusFlags", step["count"]
    if kind == "attach":
        return f"Hot-plugging {step['device']} {step['key']} into domain {name}", "attachDeviceFlags", step["xml"]
    return f"Hot-unplugging {step['device']} {step['key']} from domain {name}", "detachDeviceFlags", step["xml"]


def apply_live(
    dom, plan: LivePlan, call=_connection.call, clock: Clock = SYSTEM, timeout: float = DETACH_TIMEOUT
) -> None:
    """Perform ``plan``'s steps on the running ``dom`` (live only); ``call(what, fn, *args)`` makes each libvirt call.

    A libvirt failure raises LibvirtFailed naming the step, with a hint; a device
    the guest did not release within ``timeout`` s raises TimeoutExpired.
    """
    name = dom.name()
    live_flag = _deps.libvirt.VIR_DOMAIN_AFFECT_LIVE
    for step in plan.steps:
        what, method, arg = _act(step, name)
        try:
            call(what, getattr(dom, method), arg, live_flag)
        except LibvirtFailed as exc:
            raise LibvirtFailed(exc.msg, hint=_HINTS[step["kind"]], **exc.details) from exc
        if step["kind"] == "detach":
            _wait_released(dom, step, name, call, Deadline(timeout, clock))


def _wait_released(dom, step: dict, name: str, call, deadline: Deadline) -> None:
    """Wait until the guest released the unplugged device (gone from the live XML), or raise TimeoutExpired."""

    def gone() -> bool:
        root = dx.parse(call(f"Reading the live XML of domain {name}", dom.XMLDesc, 0))
        return not _present(root, step["device"], step["key"])

    if wait_until(gone, deadline, backoff(0.25, 2.0), cap=True):
        return
    raise TimeoutExpired(
        f"The guest of domain {name} did not release {step['device']} {step['key']} within "
        f"{deadline.elapsed():.0f} s of the hot-unplug request: it stays attached until the guest releases it "
        "or the domain restarts (its persistent config no longer has it).",
        hint="Check that the guest OS is up and handles ACPI/PCIe hot-unplug (a guest still booting ignores it).",
    )
