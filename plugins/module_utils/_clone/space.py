# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Free space for a batch of new clones: what each new file needs, the precheck, and ENOSPC.

Before anything is created, ``check_space`` adds up what every new clone's
files need on each filesystem they land on and refuses the whole batch when
it does not fit (so a batch that cannot fit changes nothing). What a file
needs was measured with qemu-img 7.2 on tmpfs and ext4:

- a copy is what ``qemu-img convert`` writes. For qcow2 that is
  ``qemu-img measure``'s "required": the whole backing chain flattened, and
  compressed clusters uncompressed (the top file's "actual-size" is far too
  low for both). For raw it is the source's data extents (``qemu-img map``);
  convert leaves the holes and unwritten extents sparse;
- an overlay is an empty qcow2: three 64 KiB clusters (header, refcount
  table, refcount block) plus its L1 table, 8 bytes per 512 MiB of virtual
  size (192 KiB for a 128 MiB..100 GiB base, 208 KiB for 1 TiB);
- NVRAM is a copy of its template file; a cloud-init seed about 380 KiB;
- each file gets ``SLACK`` on top (filesystem metadata, page rounding, an
  overlay's first writes).

An overlay grows later, as its guest writes, up to the base's virtual size;
the precheck covers only what a clone needs at creation. A guest whose
overlay cannot grow gets an I/O error (libvirt pauses it). ``headroom_warnings``
says when the space left after the batch is less than one guest could write.

Space can still run out during a copy (something else writes to the same
filesystem meanwhile): ``make_disk`` creates one disk, removes what
qemu-img left of it on failure, and turns "No space left on device" into a
message that names the directory and the clone (``enospc_message``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, StorageError

KiB = 1 << 10
MiB = 1 << 20

#: added to every new file: filesystem metadata, rounding to pages/blocks, an overlay's first writes
SLACK = 1 * MiB
#: qemu-img create's default qcow2 cluster size (overlays are made with it)
CLUSTER = 64 * KiB
#: measured size of a cloud-init seed ISO with two small documents (xorriso/genisoimage: 372 KiB)
SEED_BASE = 512 * KiB

_ENOSPC_TEXTS = ("No space left on device", "Disk quota exceeded")

StatVfs = Callable[[str], os.statvfs_result]


def human(n: int) -> str:
    """``n`` bytes in binary units with one decimal ("41.6 MiB"); exact below 1 KiB."""
    if n < KiB:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def _roundup(n: int, to: int) -> int:
    return -(-n // to) * to


def overlay_bytes(virtual_size: int) -> int:
    """What ``qemu-img create -f qcow2 -b BASE`` writes for a base of ``virtual_size``, plus SLACK."""
    l1_entries = -(-virtual_size // (CLUSTER * (CLUSTER // 8)))
    return 3 * CLUSTER + _roundup(max(l1_entries, 1) * 8, CLUSTER) + SLACK


def virtual_size(path: str, fmt: str) -> int:
    """A base's virtual size, read without a subprocess (qcow2 header, or a raw file's length)."""
    if fmt == "qcow2":
        hdr = st.qcow2_header(path)
        if hdr is None:
            raise StorageError(f"{path} was declared qcow2 but has no qcow2 header.")
        return hdr["virtual_size"]
    try:
        with open(path, "rb") as f:
            return f.seek(0, os.SEEK_END)
    except OSError as exc:
        raise StorageError(f"Cannot read disk image {path}: {exc.strerror}.") from exc


def _image_opts(path: str, fmt: str) -> str:
    # force-share: measuring must not need the write lock a running template holds (the copy itself will)
    return f"driver={fmt},file.filename={path.replace(',', ',,')},force-share=on,read-only=on"


def copy_bytes(runner, src: str, fmt: str) -> int:
    """What ``qemu-img convert -f FMT -O FMT SRC`` writes (chain flattened, sparse), plus SLACK."""
    if fmt == "qcow2":
        argv = ["qemu-img", "measure", "--output=json", "-O", "qcow2", "--image-opts", _image_opts(src, fmt)]
        key = "required"
    else:
        argv = ["qemu-img", "map", "--output=json", "-U", "-f", fmt, src]
        key = None
    rc, out, err = runner(argv)
    if rc != 0:
        raise StorageError(
            f"Cannot measure how much space a copy of {src} needs: {(err or out or '').strip()}",
            hint="Check that the template's disk is readable by qemu-img.",
        )
    try:
        data = json.loads(out)
        if key is not None:
            return int(data[key]) + SLACK
        return sum(int(e["length"]) for e in data if e.get("data") and not e.get("zero")) + SLACK
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"qemu-img printed an unexpected answer measuring {src}: {exc}.") from None


def needed_bytes(disk: dict, runner, cache: dict | None = None) -> int:
    """Bytes a new clone disk (an item of a create plan's ``disks``) needs at creation.

    ``cache`` (keyed by mode and source) lets a batch measure each template disk once.
    """
    key = (disk["mode"], disk["source"])
    if cache is not None and key in cache:
        return cache[key]
    if disk["mode"] == "overlay":
        n = overlay_bytes(virtual_size(disk["source"], disk["source_format"]))
    else:
        n = copy_bytes(runner, disk["source"], disk["source_format"])
    if cache is not None:
        cache[key] = n
    return n


def seed_bytes(documents: dict) -> int:
    """A cloud-init seed: the ISO plus its documents written beside it while it is made."""
    return SEED_BASE + 2 * sum(_roundup(len(d), 4 * KiB) for d in documents.values()) + SLACK


def item_needs(item: dict, runner, cache: dict | None = None) -> list[dict]:
    """Every file a planned ``create`` item makes and the bytes it needs.

    ``[{path, clone, kind, source, bytes[, grows_to]}]``; ``grows_to`` is an
    overlay's virtual size, what it can grow to as its guest writes.
    """
    out = []
    for d in item["disks"]:
        need = dict(path=d["path"], clone=item["name"], kind="copy", source=d["source"])
        if d["mode"] == "overlay":
            need.update(kind="overlay", grows_to=virtual_size(d["source"], d["source_format"]))
        need["bytes"] = needed_bytes(d, runner, cache)
        out.append(need)
    if item.get("nvram"):
        src, dst = item["nvram"]
        size = os.path.getsize(src)
        out.append(dict(path=dst, clone=item["name"], kind="NVRAM copy", source=src, bytes=size + SLACK))
    if item.get("seed"):
        n = seed_bytes(item["seed"]["documents"])
        out.append(dict(path=item["seed"]["path"], clone=item["name"], kind="cloud-init seed", source=None, bytes=n))
    return out


def _free(directory: str, statvfs: StatVfs) -> int:
    s = statvfs(directory)
    return s.f_bavail * s.f_frsize


_PLURAL = {"copy": "copies", "overlay": "overlays", "NVRAM copy": "NVRAM copies", "cloud-init seed": "cloud-init seeds"}


def _describe(needs: list[dict]) -> str:
    """'2 copies of /x/tpl.qcow2 at 41.6 MiB each, 1 cloud-init seed at 1.5 MiB'."""
    groups: dict[tuple, list[int]] = {}
    for n in needs:
        groups.setdefault((n["kind"], n["source"]), []).append(n["bytes"])
    parts = []
    for (kind, source), sizes in groups.items():
        noun = _PLURAL.get(kind, kind) if len(sizes) > 1 else kind
        where = f" of {source}" if source else ""
        each = " each" if len(sizes) > 1 else ""
        parts.append(f"{len(sizes)} {noun}{where} at {human(max(sizes))}{each}")
    return ", ".join(parts)


def check_space(items: list[dict], runner, statvfs: StatVfs = os.statvfs) -> list[dict]:
    """Refuse the batch (a StorageError, before anything exists) if its new files do not fit.

    ``items`` are the plan's ``create`` items, each as ``{name, disks, nvram,
    seed}`` (``model.Item.files_view``). The needs are added up per
    filesystem (files in several directories on one filesystem share its free
    space) and compared with what an unprivileged writer may use (``f_bavail``).
    Returns, per filesystem: ``{directory, needed, free, after, overlay_virtual}``
    (``overlay_virtual``: the largest virtual size one new overlay can grow to).
    Space the same run frees by removing clones is not counted.
    """
    cache: dict = {}
    by_fs: dict[int, dict] = {}
    order: list[str] = []
    for item in items:
        order.append(item["name"])
        for need in item_needs(item, runner, cache):
            directory = os.path.dirname(need["path"])
            try:
                dev = os.stat(directory).st_dev
            except OSError:
                continue  # a missing directory fails the creation itself, with its own message
            fs = by_fs.setdefault(dev, dict(directories=[], needs=[]))
            if directory not in fs["directories"]:
                fs["directories"].append(directory)
            fs["needs"].append(need)
    summary = []
    for fs in by_fs.values():
        directory = fs["directories"][0]
        free = _free(directory, statvfs)
        needed = sum(n["bytes"] for n in fs["needs"])
        if needed > free:
            raise _refusal(fs, needed, free, order)
        grows = max((n.get("grows_to", 0) for n in fs["needs"]), default=0)
        summary.append(dict(directory=directory, needed=needed, free=free, after=free - needed, overlay_virtual=grows))
    return summary


def _refusal(fs: dict, needed: int, free: int, order: list[str]) -> StorageError:
    where = " and ".join(fs["directories"])
    clones = []
    for n in fs["needs"]:
        if n["clone"] not in clones:
            clones.append(n["clone"])
    fit, used = 0, 0
    for name in [c for c in order if c in clones]:
        used += sum(n["bytes"] for n in fs["needs"] if n["clone"] == name)
        if used > free:
            break
        fit += 1
    fewer = f"the first {fit} of these {len(clones)} clones would fit" if fit else "not even one of these clones fits"
    return StorageError(
        f"Not enough free space in {where} for this batch: its {len(fs['needs'])} new file(s) need "
        f"{human(needed)} ({needed} bytes: {_describe(fs['needs'])}) and {human(free)} ({free} bytes) is free "
        f"there. Nothing was created.",
        hint=f"Free at least {human(needed - free)} there, choose another dest_dir, or clone fewer at a time "
        f"({fewer}).",
        directory=where,
        needed_bytes=needed,
        free_bytes=free,
    )


def headroom_warnings(summary: list[dict]) -> list[str]:
    """Warnings for filesystems where, after the batch, one new overlay's guest could fill what is left."""
    out = []
    for fs in summary:
        if fs["overlay_virtual"] and fs["after"] < fs["overlay_virtual"]:
            out.append(
                f"{fs['directory']} will have {human(max(fs['after'], 0))} free after this batch, less than one "
                f"overlay can grow to ({human(fs['overlay_virtual'])}): overlays grow as their guests write, and a "
                "guest whose disk cannot grow gets I/O errors (libvirt pauses it)."
            )
    return out


def is_enospc(text: str) -> bool:
    """Whether an error text (qemu-img's stderr, an OSError's strerror) says the filesystem is full."""
    return any(t in (text or "") for t in _ENOSPC_TEXTS)


def enospc_message(
    error: str, path: str, dest_dir: str, clone: str, needed: int | None = None, statvfs: StatVfs = os.statvfs
) -> str | None:
    """A message naming the directory and the clone for an out-of-space failure, or None for other errors."""
    if not is_enospc(error):
        return None
    try:
        free = f"{human(_free(dest_dir, statvfs))} is free there now"
    except OSError:
        free = "its free space could not be read"
    need = f"; it needs about {human(needed)}" if needed else ""
    return (
        f"Out of space in {dest_dir} while creating disk {os.path.basename(path)} of clone {clone!r}{need}; {free}. "
        f"The partial file was removed and no domain was defined for {clone!r}. "
        f"Free space in {dest_dir} (or choose another dest_dir) and run again. ({error.strip()})"
    )


def make_disk(runner, clone: str, disk: dict, statvfs: StatVfs = os.statvfs) -> None:
    """Create one clone disk (overlay or copy); on failure nothing of it is left, and ENOSPC is explained.

    The path was planned free under the host lock; something there now was
    put by someone else, so it is refused and never touched. What qemu-img
    leaves behind on failure (``convert`` keeps a partial file) is ours and
    deleted.
    """
    path = disk["path"]
    if os.path.lexists(path):
        raise Conflict(f"Disk file {path} for clone {clone!r} appeared after the plan was made; it was left alone.")
    try:
        if disk["mode"] == "overlay":
            st.create_overlay(runner, disk["source"], path, disk["source_format"])
        else:
            st.copy_image(runner, disk["source"], path, disk["source_format"])
    except StorageError as exc:
        left = _remove_partial(path)
        directory = os.path.dirname(path)
        needed = None
        if is_enospc(exc.msg):
            try:
                needed = needed_bytes(disk, runner)
            except StorageError:
                needed = None
        better = enospc_message(exc.msg, path, directory, clone, needed, statvfs)
        kept = dict(partial_file=path) if left else {}
        if better is None:
            raise StorageError(exc.msg + left, hint=exc.hint, **kept) from None
        if left:
            better = better.replace("The partial file was removed", f"The partial file {path} was NOT removed")
        raise StorageError(better + left, directory=directory, **kept) from None


def explain_failure(message: str, item: dict) -> str:
    """A clone's file-making error, with the directories named when it says the filesystem is full.

    ``make_disk``'s own messages already name them; an NVRAM copy, a seed or
    an XML file that hit ENOSPC says only "No space left on device".
    """
    if not is_enospc(message) or message.startswith("Out of space in "):
        return message
    files = [d["path"] for d in item["disks"]]
    files += [item["nvram"][1]] if item.get("nvram") else []
    files += [item["seed"]["path"]] if item.get("seed") else []
    dirs = sorted({os.path.dirname(f) for f in files})
    return (
        f"Out of space in {' or '.join(dirs)} while creating the files of clone {item['name']!r}; free space there "
        f"(or choose another dest_dir) and run again. ({message.strip()})"
    )


def _remove_partial(path: str) -> str:
    """Delete what qemu-img left at ``path``: '' when nothing is left, else the rollback note for the message.

    A file left is also named in the error's ``partial_file`` detail: act.py
    then keeps the clone's intent journal open, so a rerun removes the file.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        return f" (rollback: cannot delete {path}: {exc.strerror})"
    return ""
