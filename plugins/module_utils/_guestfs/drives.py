# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What a run opens, and whether it may: drives, formats, mounts, running users, force_tcg.

Safety is the point of kvm_guestfs. libguestfs's own documentation says a
disk that a running guest may write must only ever be opened read-only, and
the existing Ansible libguestfs modules open everything read-write. Here
every drive is opened read-only (see session.py and mount.py), and, before
anything is launched, the drives are checked: absolute paths, known
formats, existing images and backing files, and no running domain writing
them unless the caller opts in (``running_users`` / ``running_refusal``).

``decide_force_tcg`` turns the ``force_tcg`` option into a decision, asking
the host verdict (the one kvm_host gives) only for ``auto``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import GuestfsError, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._host.probe import usable_domain_type
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

# Image formats qemu (and so libguestfs) can open; anything else is a typo.
KNOWN_FORMATS = ("raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc", "parallels", "dmg", "bochs", "cloop")

TCG_HINT = (
    "If this host cannot run KVM guests (nested virtualisation, no vmx/svm CPU flags), set force_tcg: yes "
    "(or LIBGUESTFS_BACKEND_SETTINGS=force_tcg); run 'libguestfs-test-tool' on the host for the full log."
)

RUNNING_WARNING = (
    "Reading the disks of running domain(s) {names} (allow_running: true): opened read-only, but files the "
    "guest is writing may be inconsistent or stale."
)


def require_absolute(path: str, what: str) -> str:
    """Guest and host paths are always absolute: a relative one has no meaning inside an image."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInput(
            f"The {what} {path!r} is not an absolute path.",
            hint=f"Give the full path starting with '/' (for example /etc/hosts), not {path!r}.",
        )
    if "\0" in path:
        raise InvalidInput(f"The {what} {path!r} contains a NUL byte.")
    return path


# --------------------------------------------------------------------------- drives


def _check_format(path: str, fmt: str | None, where: str) -> str:
    if fmt is None:
        return _disk_files.detect_format(path)
    if fmt not in KNOWN_FORMATS:
        raise InvalidInput(
            f"Unknown disk image format {fmt!r} for {path} ({where}).",
            hint=f"Use one of {', '.join(KNOWN_FORMATS)}, or leave the format out to detect it "
            "(qcow2 is recognised by its header, anything else is read as raw).",
        )
    return fmt


def _check_image(path: str, fmt: str | None) -> None:
    """Fail before the 20 s launch when the image or a file of its backing chain is missing."""
    if not os.path.exists(path):
        raise StorageError(
            f"Disk image {path} does not exist.",
            hint="Check the path (on the managed host), or the domain's disk source with 'virsh domblklist'.",
        )
    if os.path.isdir(path):
        raise InvalidInput(f"Disk image {path} is a directory.", hint="Give the image file itself.")
    if fmt == "qcow2":
        _disk_files.backing_chain(path)  # raises StorageError naming the missing backing file


def resolve_drives(disks: Iterable) -> list[dict]:
    """The ``disks`` option as drives: absolute, existing, format given or detected."""
    if not disks:
        raise InvalidInput("disks is empty: give the disk images to open (or domain).")
    drives = []
    for i, item in enumerate(disks):
        if not isinstance(item, (str, dict)):
            raise InvalidInput(
                f"disks[{i}] is {item!r}: give a path, or a dict with path (and format).",
                hint="For example disks: [/var/lib/libvirt/images/web1.qcow2].",
            )
        spec = {"path": item} if isinstance(item, str) else dict(item)
        path = require_absolute(spec.get("path"), "disk path")
        if os.path.exists(path):
            fmt = _check_format(path, spec.get("format"), "disks option")
        else:
            fmt = spec.get("format")
        _check_image(path, fmt)
        drives.append({"path": path, "format": fmt})
    if not drives:
        raise InvalidInput("The disks option is empty.", hint="List at least one disk image path.")
    return drives


def domain_drives(root) -> tuple[list[dict], list[str]]:
    """A domain's disks (from its XML) as drives, plus warnings for the ones skipped.

    Only real disks are added (no CD-ROM or floppy), in the domain's order so
    the appliance names them /dev/sda, /dev/sdb... as the guest's vda, vdb.
    libguestfs follows each qcow2's backing chain itself, so only the top image
    is added, with its format.
    """
    drives, skipped = [], []
    name = dx.name_of(root)
    for d in dx.disks(root):
        label = d["target"] or d["path"] or "?"
        if d["device"] != "disk":
            skipped.append(f"disk {label} of {name} is a {d['device']}; not added.")
            continue
        if d["type"] not in ("file", "block") or not d["path"]:
            skipped.append(f"disk {label} of {name} has source type {d['type']!r}; only file and block disks are read.")
            continue
        path = d["path"]
        fmt = _check_format(path, d["format"], f"disk {label} of domain {name}") if os.path.exists(path) else None
        _check_image(path, fmt)
        drives.append({"path": path, "format": fmt, "target": d["target"]})
    if not drives:
        raise InvalidInput(
            f"Domain {name} has no file or block disk to read.",
            hint="Check its XML with 'virsh dumpxml'; network disks and CD-ROMs are not read.",
        )
    return drives, skipped


# --------------------------------------------------------------------------- mounts


def check_mounts(mounts: dict | None) -> dict | None:
    """The ``mounts`` option (device -> mountpoint) with both sides absolute, or None when not given."""
    if not mounts:
        return None
    out = {}
    for dev, mp in mounts.items():
        require_absolute(str(dev), "device in mounts")
        out[str(dev)] = require_absolute(str(mp), f"mountpoint for {dev} in mounts")
    return out


def mount_order(mounts: dict) -> list[tuple[str, str]]:
    """(mountpoint, device) with / before /boot before /boot/efi: by mountpoint length, as guestmount -i does."""
    return sorted(((mp, dev) for dev, mp in mounts.items()), key=lambda x: (len(x[0]), x[0]))


# --------------------------------------------------------------------------- running domains


def running_users(scan: HostScan, paths: Iterable[str]) -> list[dict]:
    """Running domains that may write one of ``paths`` (as their own writable disk)."""
    return [
        dict(u, path=p)
        for p, us in scan.users(list(paths)).items()
        for u in us
        if u["active"] and u["relation"] == "disk" and u["writable"]
    ]


def running_refusal(what: str, domains: Iterable[str]) -> GuestfsError:
    names = ", ".join(sorted(set(domains)))
    return GuestfsError(
        f"Refusing to read {what}: it is in use by the running domain(s) {names}, whose content may change "
        "while it is read.",
        hint="Shut the domain down first (virtops.kvm.kvm_domain state=shutdown), or set allow_running: true to "
        "read it anyway (still read-only; the content may be inconsistent).",
    )


# --------------------------------------------------------------------------- TCG


def kvm_usable(conn=None) -> tuple[bool, str]:
    """The host verdict (kvm_host's code): may libguestfs's qemu use KVM here?"""
    dtype, reason = usable_domain_type(conn)
    return dtype == "kvm", reason


def decide_force_tcg(mode: str, verdict: Callable[[], tuple[bool, str]] = kvm_usable) -> tuple[bool, str]:
    """``force_tcg`` option -> (force software emulation?, why)."""
    if mode in ("yes", True, "true"):
        return True, "force_tcg: yes"
    if mode in ("no", False, "false"):
        return False, "force_tcg: no"
    usable, reason = verdict()
    if usable:
        return False, f"KVM is usable ({reason})"
    return True, f"KVM is not usable here ({reason}); libguestfs runs under software emulation (TCG)"


def backend_env(force_tcg: bool, environ: dict | None = None) -> dict:
    """Environment for guestmount: LIBGUESTFS_BACKEND_SETTINGS with force_tcg merged in."""
    environ = os.environ if environ is None else environ
    settings = [s for s in environ.get("LIBGUESTFS_BACKEND_SETTINGS", "").split(":") if s]
    if force_tcg and "force_tcg" not in settings:
        settings.append("force_tcg")
    return {"LIBGUESTFS_BACKEND_SETTINGS": ":".join(settings)} if settings else {}
