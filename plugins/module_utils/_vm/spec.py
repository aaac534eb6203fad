# Private to the virtops.kvm collection: not a public API, may change without notice.
"""kvm_vm's options: the one spec, and each VM's options checked and normalized before libvirt is read.

A VM is described by the module's top-level options or by an item of ``vms``
(whose keys left out come from the top-level options of the same name). The
list and dict options (``disks``, ``networks``, ``boot``, ``cloud_init``) are
validated here, not by Ansible's sub-option machinery, so an item of ``vms``
gets the same checks and messages as the top level, and a wrong type is a
clear error instead of a traceback.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import check_cloud_init
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

STATES = ("present", "running", "shutdown", "destroyed", "absent")
FIRMWARES = ("bios", "uefi", "uefi-secure")
GRAPHICS = ("none", "vnc")
DISK_MODES = ("overlay", "copy", "as_is")
DISK_FORMATS = ("qcow2", "raw")
DISK_BUSES = ("virtio", "sata", "scsi", "ide", "usb")
NIC_MODELS = ("virtio", "e1000e", "e1000", "rtl8139")
CPU_MODES = ("host-model", "host-passthrough", "maximum")

# The options one VM takes (the top level, or an item of vms). Defaults live in VM_DEFAULTS, applied by vm_params.
VM_OPTIONS = dict(
    name=dict(type="str"),
    memory=dict(type="int"),
    max_memory=dict(type="int"),
    vcpus=dict(type="int"),
    max_vcpus=dict(type="int"),
    cpu=dict(type="str"),
    machine=dict(type="str"),
    firmware=dict(type="str", choices=list(FIRMWARES)),
    os_variant=dict(type="str"),
    disks=dict(type="list", elements="dict"),
    networks=dict(type="list", elements="dict"),
    cloud_init=dict(type="dict"),
    boot=dict(type="dict"),
    console=dict(type="bool"),
    console_log=dict(type="path"),
    graphics=dict(type="str", choices=list(GRAPHICS)),
    pool=dict(type="str"),
    autostart=dict(type="bool"),
    state=dict(type="str", choices=list(STATES)),
    remove_detached=dict(type="bool"),
)
VM_KEYS = tuple(VM_OPTIONS)
# The top level's defaults (the module's ARGUMENT_SPEC carries them; an item's None takes the top level's value).
VM_DEFAULTS = dict(
    disks=[],
    networks=[],
    console=True,
    graphics="none",
    pool="default",
    state="present",
    remove_detached=False,
)
DISK_KEYS = ("image", "mode", "size", "format", "bus", "path", "pool", "target")
NETWORK_KEYS = ("network", "bridge", "mac", "model")
BOOT_KEYS = ("kernel", "initrd", "cmdline")
_TYPES = dict(str=str, int=int, bool=bool, path=str, dict=dict, list=list)


def _keys(value, allowed: tuple, where: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a dict ({', '.join(allowed)}), not {type(value).__name__}.")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise InvalidInput(f"{where} has unknown key(s) {', '.join(unknown)}.", hint=f"Allowed: {', '.join(allowed)}.")
    return value


def _text(value, where: str):
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{where} must be a string, not {type(value).__name__}.")
    return value


def _choice(value, choices: tuple, where: str):
    if value is not None and value not in choices:
        raise InvalidInput(f"{where} must be one of {', '.join(choices)}, not {value!r}.")
    return value


def _file(value, where: str) -> str:
    vd.path(value, where)
    if not os.path.isabs(value):
        raise InvalidInput(f"{where} must be an absolute path on the host, not {value!r}.")
    return os.path.normpath(value)


def check_disk(raw, where: str) -> dict:
    """One item of ``disks``, normalized: image/mode/size (bytes)/format/bus/path/pool/target."""
    d = _keys(raw, DISK_KEYS, where)
    out = {k: d.get(k) for k in DISK_KEYS}
    for key in ("image", "path"):
        if out[key] is not None:
            out[key] = _file(out[key], f"{where}.{key}")
    if out["image"] is None and out["size"] is None:
        raise InvalidInput(
            f"{where} has neither image nor size.", hint="Give image (a disk made from a file) or size (a blank disk)."
        )
    if out["image"] is None and out["mode"] is not None:
        raise InvalidInput(f"{where}.mode is for a disk made from an image; this one has no image.")
    out["mode"] = _choice(out["mode"], DISK_MODES, f"{where}.mode") or ("overlay" if out["image"] else "blank")
    if out["size"] is not None:
        out["size"] = vd.size(out["size"], f"{where}.size", minimum=1024**2)
        if out["mode"] == "as_is":
            raise InvalidInput(
                f"{where}: mode as_is uses the image itself, which is never resized here.",
                hint="Use mode overlay or copy to grow the disk, or leave size out.",
            )
    _choice(out["format"], DISK_FORMATS, f"{where}.format")
    if out["format"] == "raw" and out["mode"] == "overlay":
        raise InvalidInput(f"{where}: an overlay is a qcow2 file; format raw is for mode copy or a blank disk.")
    _choice(out["bus"], DISK_BUSES, f"{where}.bus")
    if out["path"] is not None and out["pool"] is not None:
        raise InvalidInput(f"{where} has both path and pool.", hint="Give one: where the file goes, or in which pool.")
    if out["mode"] == "as_is" and (out["path"] is not None or out["pool"] is not None):
        raise InvalidInput(f"{where}: mode as_is uses the image where it is; path and pool are for the files made.")
    if out["pool"] is not None:
        vd.existing_name(out["pool"], f"{where}.pool")
    if out["target"] is not None:
        _text(out["target"], f"{where}.target")
        if not out["target"].isalnum() or not out["target"].islower():
            raise InvalidInput(f"{where}.target must be a device name like vda or sdb, not {out['target']!r}.")
    return out


def check_network(raw, where: str) -> dict:
    n = _keys(raw, NETWORK_KEYS, where)
    out = {k: _text(n.get(k), f"{where}.{k}") for k in NETWORK_KEYS}
    if (out["network"] is None) == (out["bridge"] is None):
        raise InvalidInput(f"{where} needs exactly one of network (a libvirt network) or bridge (a host bridge).")
    vd.existing_name(out["network"] or out["bridge"], f"{where}.{'network' if out['network'] else 'bridge'}")
    if out["mac"] is not None:
        mac = out["mac"].lower()
        parts = mac.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
            raise InvalidInput(f"{where}.mac must look like 52:54:00:12:34:56, not {out['mac']!r}.")
        if int(parts[0], 16) & 1:
            raise InvalidInput(
                f"{where}.mac {out['mac']} is a multicast address.", hint="Use a unicast one (52:54:00:...)."
            )
        out["mac"] = mac
    _choice(out["model"], NIC_MODELS, f"{where}.model")
    return out


def check_boot(raw, where: str) -> dict | None:
    if raw is None:
        return None
    b = _keys(raw, BOOT_KEYS, where)
    out = {k: b.get(k) for k in BOOT_KEYS}
    if out["kernel"] is None:
        raise InvalidInput(f"{where} needs kernel (direct kernel boot); initrd and cmdline are optional.")
    for key in ("kernel", "initrd"):
        if out[key] is not None:
            out[key] = _file(out[key], f"{where}.{key}")
    if out["cmdline"] is not None:
        vd.xml_text(out["cmdline"], f"{where}.cmdline", single_line=True)
    return out


def vm_params(top: dict, item, where: str) -> dict:
    """The options of one VM: an item of ``vms`` over the top level (``item`` None: the top level itself)."""
    if item is None:
        out = {k: top.get(k) for k in VM_KEYS}
    else:
        _keys(item, VM_KEYS, where)
        out = {k: (item[k] if item.get(k) is not None else top.get(k)) for k in VM_KEYS}
        out["name"] = item.get("name")
    for key, value in VM_DEFAULTS.items():
        if out[key] is None:
            out[key] = value
    return out


def _typed(value, opt: dict, where: str):
    """``value`` as the option's type (an item of vms is not converted by Ansible: '512' is taken as 512)."""
    if value is None:
        return None
    kind = opt["type"]
    if kind == "int" and isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    ok = isinstance(value, bool) if kind == "bool" else isinstance(value, _TYPES[kind]) and not isinstance(value, bool)
    if not ok:
        raise InvalidInput(f"{where} must be of type {kind}, not {type(value).__name__} ({value!r}).")
    if opt.get("choices"):
        _choice(value, tuple(opt["choices"]), where)
    return value


def check_vm(p: dict, where: str) -> dict:
    """Every option of one VM checked, without libvirt; the normalized options (a new dict)."""
    prefix = f"{where}." if where else ""
    out = dict(p)
    for key, opt in VM_OPTIONS.items():
        out[key] = _typed(out.get(key), opt, prefix + key)
    if out["name"] is None:
        raise InvalidInput(f"{where or 'the task'} needs a name.")
    vd.validate_name(out["name"], prefix + "name")
    for key in ("memory", "max_memory", "vcpus", "max_vcpus"):
        if out[key] is not None:
            vd.number(out[key], prefix + key, *vd.limit(key.replace("max_", "")))
    for small, big in (("memory", "max_memory"), ("vcpus", "max_vcpus")):
        if out[big] is not None and out[small] is not None and out[big] < out[small]:
            raise InvalidInput(f"{prefix}{big} ({out[big]}) is smaller than {small} ({out[small]}).")
    if out["cpu"] is not None:
        vd.argument(out["cpu"], prefix + "cpu", "libvirt")
    if out["machine"] is not None:
        vd.argument(out["machine"], prefix + "machine", "qemu")
    if out["os_variant"] is not None:
        vd.argument(out["os_variant"], prefix + "os_variant", "osinfo")
    out["disks"] = [check_disk(d, f"{prefix}disks[{i}]") for i, d in enumerate(out["disks"])]
    out["networks"] = [check_network(n, f"{prefix}networks[{i}]") for i, n in enumerate(out["networks"])]
    out["boot"] = check_boot(out["boot"], prefix + "boot")
    out["cloud_init"] = check_cloud_init(out["cloud_init"], prefix + "cloud_init")
    if out["console_log"] is not None:
        out["console_log"] = _file(out["console_log"], prefix + "console_log")
    vd.existing_name(out["pool"], prefix + "pool")
    targets = [d["target"] for d in out["disks"] if d["target"]]
    if len(set(targets)) != len(targets):
        raise InvalidInput(f"{prefix}disks name a target twice: {', '.join(sorted(targets))}.")
    macs = [n["mac"] for n in out["networks"] if n["mac"]]
    if len(set(macs)) != len(macs):
        raise InvalidInput(f"{prefix}networks give a MAC address twice.")
    if out["state"] != "absent" and not out["disks"] and out["boot"] is None:
        raise InvalidInput(
            f"VM {out['name']} has no disk and no boot kernel: it could not boot.",
            hint="Give disks (an image, or a size for a blank disk) or boot.kernel.",
        )
    return out
