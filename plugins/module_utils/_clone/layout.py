# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Where a batch's guest filesystems mount, found once on its first clone and used for every clone.

libguestfs's OS inspection looks at every filesystem of every drive of the
appliance: under software emulation it cost ~8 s per clone disk here (164 s
for 20), more than the rest of the reset together. The new clones of a task
are copies or overlays of the same template disks, untouched yet, so they
share one layout: this finds it on the first clone alone (its partitions'
filesystem types, the one holding /etc, that root's /etc/fstab) and hands
the result, named as the guest's own devices (its first disk is /dev/sda),
to every clone's mount (``Part.own`` moves it to that clone's drives).

What it does not recognise (LVM, RAID, encrypted or unusual filesystems) is
a clear error asking for ``identity.mounts``.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import GuestfsError

ROOT_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs")
_MOUNTS_HINT = (
    "Give identity.mounts (devices as the guest's own, its first disk /dev/sda: for example {'/dev/sda1': '/'})."
)


def find_layout(g, part) -> dict[str, str]:
    """``{device: mountpoint}`` of the guest whose drives are ``part`` (the batch's first clone)."""
    candidates = [d for d in g.list_partitions() if part.owns(d)]
    candidates += [d for d in g.list_devices() if part.owns(d) and not any(p.startswith(d) for p in candidates)]
    types = {}
    for dev in candidates:
        try:
            types[dev] = g.vfs_type(dev)
        except RuntimeError:
            types[dev] = ""
    for dev, fstype in types.items():
        if fstype not in ROOT_FILESYSTEMS:
            continue
        fstab = _root_fstab(g, dev)
        if fstab is None:
            continue
        mounts = {dev: "/"}
        ids = _identities(g, types)
        for spec, mountpoint in fstab:
            if mountpoint == "/" or mountpoint in mounts.values():
                continue
            other = ids.get(spec) or (spec if spec in types else None)
            if other is not None and types.get(other) in (*ROOT_FILESYSTEMS, "vfat"):
                mounts[other] = mountpoint
        return mounts
    found = ", ".join(f"{d} ({t or 'unknown'})" for d, t in types.items()) or "none"
    raise GuestfsError(
        f"No Linux root filesystem (one holding /etc) on the first new clone's disks; filesystems: {found}.",
        hint=_MOUNTS_HINT,
    )


def _root_fstab(g, dev: str) -> list[tuple[str, str]] | None:
    """Mount ``dev`` read-only; if it holds /etc, its fstab's ``(spec, mountpoint)`` lines, else None."""
    try:
        g.mount_ro(dev, "/")
    except RuntimeError:
        return None
    try:
        if not g.is_dir("/etc"):
            return None
        if not g.is_file("/etc/fstab"):
            return []
        out = []
        for line in g.cat("/etc/fstab").splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 3 and fields[1].startswith("/") and fields[2] not in ("swap", "none", "proc", "tmpfs"):
                out.append((fields[0], fields[1]))
        return out
    finally:
        g.umount_all()


def _identities(g, types: dict[str, str]) -> dict[str, str]:
    """``UUID=``, ``LABEL=`` and the guest's own ``/dev/vdXN``/``/dev/sdXN`` names -> the appliance device."""
    out = {}
    for dev in types:
        for kind, call in (("UUID", g.vfs_uuid), ("LABEL", g.vfs_label)):
            try:
                value = call(dev)
            except RuntimeError:
                continue
            if value:
                out[f"{kind}={value}"] = dev
        m = re.match(r"^/dev/sd([a-z]+\d*)$", dev)
        if m:  # the guest names its virtio disks vda, its SCSI/SATA ones sda
            out[f"/dev/vd{m.group(1)}"] = dev
    return out
