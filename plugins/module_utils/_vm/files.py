# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A VM's own files: where each disk lives, what must be made, every refusal, and the making.

Each disk of ``disks`` becomes one file: an ``overlay`` on its ``image`` (the
default; the image becomes a protected base, as kvm_clone's template disk:
recorded with its identity, chmod a-w), a ``copy`` of it, the image itself
(``as_is``) or a ``blank`` qcow2/raw file of ``size``. The files made are
the VM's own, recorded in its provenance (``created``) and the only ones
``state: absent`` deletes; an image is never deleted or written.

``plan_disks`` answers everything from one ``HostScan`` and the file system
before anything is made, and refuses (nothing changed): a missing image, a
size smaller than the image, an ``as_is`` image that another disk, clone or
snapshot layer stands on or another domain uses, a file that exists but is
not this VM's, a file two VMs (or two disks) claim. ``make`` creates the
planned files (qemu-img through the runner) and leaves nothing behind on
failure.
"""

from __future__ import annotations

import os
import stat

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import space
from ansible_collections.virtops.kvm.plugins.module_utils._connection import call_or_none
from ansible_collections.virtops.kvm.plugins.module_utils._drift import fingerprint
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

DEFAULT_DIR = "/var/lib/libvirt/images"
_PREFIX = {"virtio": "vd", "ide": "hd"}  # every other bus names its disks sdX
_EXT = {"qcow2": "qcow2", "raw": "img"}


def pool_dir(conn, name: str, cache: dict, default_dir: str = DEFAULT_DIR) -> str:
    """The directory of libvirt pool ``name`` (a dir-like pool); 'default' missing means ``default_dir``
    (/var/lib/libvirt/images, where libvirt's own default pool would be)."""
    if name in cache:
        return cache[name]
    lv = _deps.libvirt
    pool = call_or_none(
        f"Looking up storage pool {name}", lv.VIR_ERR_NO_STORAGE_POOL, conn.storagePoolLookupByName, name
    )
    if pool is None:
        if name != "default":
            raise InvalidInput(
                f"Storage pool {name!r} does not exist.",
                hint="Create it with virtops.kvm.kvm_pool, or give the disk a path.",
            )
        cache[name] = default_dir
        return default_dir
    root = _deps.etree.fromstring(pool.XMLDesc(0).encode())
    path = root.findtext("target/path")
    if root.get("type") not in ("dir", "fs", "netfs") or not path:
        raise InvalidInput(
            f"Storage pool {name!r} is a {root.get('type')} pool; kvm_vm makes its files in a directory pool.",
            hint="Give a dir, fs or netfs pool, or the disk's path.",
        )
    cache[name] = path
    return path


def assign_targets(disks: list[dict], default_bus: str) -> list[dict]:
    """Each disk's bus and target device (vda, vdb, ... per bus prefix), explicit targets kept."""
    out = [dict(d, bus=d["bus"] or default_bus) for d in disks]
    used = {d["target"] for d in out if d["target"]}
    for d in out:
        if d["target"]:
            continue
        prefix = _PREFIX.get(d["bus"], "sd")
        free = [f"{prefix}{c}" for c in "abcdefghijklmnopqrstuvwxyz" if f"{prefix}{c}" not in used]
        if not free:
            raise InvalidInput(f"No free {d['bus']} target is left ({prefix}a to {prefix}z are taken).")
        d["target"] = free[0]
        used.add(d["target"])
    return out


def _virtual_size(path: str, fmt: str) -> int:
    return space.virtual_size(path, fmt)


def plan_disks(vm: dict, disks: list[dict], dirs: dict, existing_root, scan: HostScan) -> list[dict]:
    """Every disk of VM ``vm`` as a plan entry: the disk's options plus path, format, source_format, create, created
    and top (the snapshot layer the VM writes to above ``path``, or None).

    ``dirs``: the directory of each disk (by index) for the files made; ``existing_root``: the VM's current
    definition (or None), whose provenance says which files are already its own.
    """
    name = vm["name"]
    prov = dx.provenance(existing_root) if existing_root is not None else None
    ours = {os.path.realpath(c["path"]): c for c in (prov or {}).get("created_disks", []) if c.get("path")}
    current = {d["path"] for d in dx.disks(existing_root)} if existing_root is not None else set()
    out = []
    for i, d in enumerate(disks):
        where = f"disks[{i}] of VM {name}"
        e = dict(d, source=d["image"], source_format=None, create=False, created=None, base_fingerprint=None)
        if d["image"] is not None:
            if not os.path.isfile(d["image"]):
                raise StorageError(
                    f"The image {d['image']} of {where} does not exist (or is not a file).",
                    hint="Give an existing disk image file (kvm_image puts one on the host).",
                )
            e["source_format"] = st.detect_format(d["image"])
        if d["mode"] == "as_is":
            e["path"], e["format"] = d["image"], e["source_format"]
        else:
            e["format"] = "qcow2" if d["mode"] == "overlay" else d["format"] or e["source_format"] or "qcow2"
            e["path"] = d["path"] or os.path.join(dirs[i], f"{name}-{d['target']}.{_EXT[e['format']]}")
            if d["image"] is not None and os.path.realpath(e["path"]) == os.path.realpath(d["image"]):
                raise InvalidInput(f"{where}: the path of the disk made is its image {d['image']}.")
        real = os.path.realpath(e["path"])
        if d["image"] is not None and d["size"] is not None:
            have = _virtual_size(d["image"], e["source_format"])
            if d["size"] < have:
                raise InvalidInput(
                    f"{where}: size {d['size']} bytes is smaller than the image {d['image']} ({have} bytes).",
                    hint="A disk is never shrunk: give a size at least the image's virtual size, or leave size out.",
                )
        if d["mode"] == "as_is":
            _check_as_is(scan, e["path"], name, where)
        elif real in ours:
            e["created"] = ours[real]
        elif os.path.lexists(e["path"]):
            if e["path"] not in current:
                raise Conflict(
                    f"The file {e['path']} for {where} exists and was not made by kvm_vm for this VM; "
                    "it is left alone.",
                    hint="Give the disk another path, remove the file, or use it with image and mode: as_is.",
                )
        else:
            e["create"] = True
        e["top"] = _top_layer(existing_root, d["target"], e["path"])
        out.append(e)
    return out


def _top_layer(existing_root, target: str, path: str) -> str | None:
    """The file the VM's disk ``target`` uses now when it is a layer above ``path`` (an external snapshot), else None.

    After kvm_snapshot (or virsh snapshot-create --disk-only) the domain writes to a new overlay and the planned
    file is frozen beneath it: the XML must keep the top layer, or the next start would write into a file a
    snapshot layer stands on.
    """
    if existing_root is None:
        return None
    now = next((d for d in dx.disks(existing_root) if d["target"] == target), None)
    if now is None or not now["path"] or os.path.realpath(now["path"]) == os.path.realpath(path):
        return None
    try:
        below = [os.path.realpath(c["path"]) for c in st.backing_chain(now["path"])[1:]]
    except StorageError:
        return None
    return now["path"] if os.path.realpath(path) in below else None


def _check_as_is(scan: HostScan, path: str, name: str, where: str) -> None:
    """An image used as the VM's own writable disk: nobody else may use it or stand on it."""
    others = sorted({u["domain"] for u in scan.users([path])[path] if u["domain"] and u["domain"] != name})
    if others:
        raise Conflict(
            f"The image {path} of {where} (mode as_is) is already a disk of {', '.join(others)}.",
            hint="Use mode overlay (the default) to give this VM its own layer on it, or mode copy.",
        )
    scan.guard([path], f"use {path} as the writable disk of VM {name} (mode as_is)", domain=name)


def claims(plans: dict[str, list[dict]], scan: HostScan, seeds: dict[str, str | None]) -> None:
    """No file claimed twice (two VMs, two disks, a seed and a disk), nor one another domain uses."""
    seen: dict[str, str] = {}
    problems = []
    for name, disks in plans.items():
        files = [(d["path"], f"VM {name} disk {d['target']}") for d in disks]
        if seeds.get(name):
            files.append((seeds[name], f"VM {name}'s cloud-init seed"))
        for path, who in files:
            real = os.path.realpath(path)
            if real in seen:
                problems.append(f"{path} is claimed by {seen[real]} and {who}")
            seen[real] = who
    # an as_is image is written by its VM: no disk of the batch may be made on it (a copy reads it once, fine)
    bases = {os.path.realpath(d["source"]): (n, d) for n, ds in plans.items() for d in ds if d["mode"] == "overlay"}
    for name, disks in plans.items():
        for d in disks:
            if d["mode"] == "as_is" and os.path.realpath(d["path"]) in bases:
                other, over = bases[os.path.realpath(d["path"])]
                problems.append(
                    f"{d['path']} is VM {name}'s writable disk {d['target']} (mode as_is) and the base of "
                    f"VM {other} disk {over['target']}"
                )
    paths = {path: name for name, disks in plans.items() for path in [d["path"] for d in disks]}
    for path, users in scan.users(list(paths)).items():
        others = sorted({u["domain"] for u in users if u["domain"] and u["domain"] != paths[path]})
        if others and not any(d["mode"] == "as_is" and d["path"] == path for d in plans[paths[path]]):
            problems.append(f"{path} is used by {', '.join(others)}")
    if problems:
        raise Conflict(
            f"Refusing to make the VMs, nothing was changed: {'; '.join(problems)}.",
            hint="Give each VM's disks their own paths (or leave path out: NAME-TARGET.qcow2 in the pool).",
        )


def make(runner, name: str, disk: dict) -> None:
    """Create one planned file (overlay, copy or blank) and grow it to ``size``; nothing left behind on failure."""
    path = disk["path"]
    if disk["mode"] == "copy" and disk["format"] != disk["source_format"]:
        _convert(runner, name, disk)
    elif disk["mode"] in ("overlay", "copy"):
        space.make_disk(runner, name, dict(disk, mode=disk["mode"]))
    else:
        if os.path.lexists(path):
            raise Conflict(f"Disk file {path} for VM {name!r} appeared after the plan was made; it was left alone.")
        rc, out, err = runner(["qemu-img", "create", "-q", "-f", disk["format"], path, str(disk["size"])])
        if rc != 0:
            _remove(path)
            raise StorageError(f"Creating the blank disk {path} failed: {err.strip() or out.strip()}")
        return
    if disk["size"] is not None and disk["size"] > _virtual_size(path, disk["format"]):
        rc, out, err = runner(["qemu-img", "resize", "-q", "-f", disk["format"], path, str(disk["size"])])
        if rc != 0:
            _remove(path)
            raise StorageError(f"Growing {path} to {disk['size']} bytes failed: {err.strip() or out.strip()}")


def _convert(runner, name: str, disk: dict) -> None:
    """A copy in another format than its image's (space.make_disk copies in the image's own format)."""
    path = disk["path"]
    if os.path.lexists(path):
        raise Conflict(f"Disk file {path} for VM {name!r} appeared after the plan was made; it was left alone.")
    argv = ["qemu-img", "convert", "-q", "-f", disk["source_format"], "-O", disk["format"], disk["source"], path]
    rc, out, err = runner(argv)
    if rc != 0:
        _remove(path)
        raise StorageError(f"Copying {disk['source']} to {path} failed: {err.strip() or out.strip()}")


def _remove(path: str) -> None:
    if os.path.lexists(path):
        st.unlink(path)


def record(disk: dict) -> dict | None:
    """The provenance entry of a disk the VM owns (None for an as_is image): kept from before, or new."""
    if disk["mode"] == "as_is":
        return None
    if disk["created"] is not None:
        return disk["created"]
    entry = dict(path=disk["path"], mode=disk["mode"], format=disk["format"])
    if disk["mode"] == "overlay":
        entry.update(base=disk["source"], base_fingerprint=disk["base_fingerprint"])
    return entry


def fingerprint_bases(disks: list[dict]) -> None:
    """The identity of each new overlay's base, read before the overlay is made (what drift checks compare)."""
    for d in disks:
        if d["create"] and d["mode"] == "overlay":
            d["base_fingerprint"] = fingerprint(d["source"])


def protect(disks: list[dict], check_mode: bool, originals: dict | None = None) -> list[str]:
    """chmod a-w each overlay's base (the course's 'never modify a base'); the bases changed (or to change).

    ``originals`` gets each changed base's mode before (``unprotect`` puts it back)."""
    changed = []
    for base in dict.fromkeys(d["source"] for d in disks if d["mode"] == "overlay"):
        mode = stat.S_IMODE(os.stat(base).st_mode)
        if mode & 0o222:
            if not check_mode:
                os.chmod(base, mode & ~0o222)
            if originals is not None:
                originals[base] = mode
            changed.append(base)
    return changed


def unprotect(base: str, mode: int) -> bool:
    """Give ``base`` back its mode ``mode`` from before ``protect``, unless it changed since; whether it did."""
    try:
        now = stat.S_IMODE(os.stat(base).st_mode)
    except FileNotFoundError:
        return False
    if now != mode & ~0o222:
        return False
    os.chmod(base, mode)
    return True
