# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Disk images: qcow2 headers, backing chains, overlays, and who uses a file.

The course's rule is the centre of this file: once overlays exist, their base
must never change. So everything that could write to or delete an image asks
first which domains use it, directly or as a backing file.

External programs (qemu-img) run through an injected ``runner(argv) ->
(rc, stdout, stderr)``, in modules ``module.run_command``, so this stays
testable and never touches a shell.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError

Runner = Callable[[list], tuple]

QCOW2_MAGIC = b"QFI\xfb"
_EXT_BACKING_FORMAT = 0xE2792ACA
SUPPORTED_FORMATS = ("qcow2", "raw")


def qcow2_header(path: str) -> dict | None:
    """Read a qcow2 header without a subprocess: backing file and its format.

    Returns None when the file is not qcow2 (for example raw). Cheap enough to
    call for every disk of every domain on a host.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(104)
            if len(head) < 72 or head[:4] != QCOW2_MAGIC:
                return None
            version = struct.unpack(">I", head[4:8])[0]
            bf_offset, bf_size = struct.unpack(">QI", head[8:20])
            size = struct.unpack(">Q", head[24:32])[0]
            backing = None
            if bf_offset and bf_size:
                f.seek(bf_offset)
                backing = f.read(bf_size).decode("utf-8", "replace")
            backing_format = None
            if version >= 3 and len(head) >= 104:
                header_length = struct.unpack(">I", head[100:104])[0]
                f.seek(header_length)
            else:
                f.seek(72)
            # header extensions: (type u32, length u32, data padded to 8)
            for _ext_index in range(64):
                ext = f.read(8)
                if len(ext) < 8:
                    break
                etype, elen = struct.unpack(">II", ext)
                if etype == 0:
                    break
                data = f.read((elen + 7) & ~7)
                if etype == _EXT_BACKING_FORMAT:
                    backing_format = data[:elen].decode("ascii", "replace")
    except OSError as exc:
        raise StorageError(f"Cannot read disk image {path}: {exc.strerror}.") from exc
    if backing and not os.path.isabs(backing):
        backing = os.path.normpath(os.path.join(os.path.dirname(path), backing))
    return dict(format="qcow2", version=version, virtual_size=size, backing_file=backing, backing_format=backing_format)


def detect_format(path: str) -> str:
    return "qcow2" if qcow2_header(path) is not None else "raw"


def backing_chain(path: str) -> list[dict]:
    """The image and every file below it: [{path, format, backing_file, backing_format}, ...]."""
    chain, seen = [], set()
    current = path
    while current:
        real = os.path.realpath(current)
        if real in seen:
            raise StorageError(f"The backing chain of {path} loops at {current}.")
        seen.add(real)
        if not os.path.exists(current):
            raise StorageError(
                f"Disk image {current} does not exist"
                + (f" (it is in the backing chain of {path})." if current != path else "."),
                hint="Restore the file or fix the domain's disk path.",
            )
        hdr = qcow2_header(current)
        if hdr is None:
            chain.append(dict(path=current, format="raw", backing_file=None, backing_format=None))
            break
        chain.append(
            dict(path=current, format="qcow2", backing_file=hdr["backing_file"], backing_format=hdr["backing_format"])
        )
        current = hdr["backing_file"]
    return chain


def image_info(runner: Runner, path: str) -> dict:
    """``qemu-img info`` as a dict (used where the header reader is not enough)."""
    rc, out, err = runner(["qemu-img", "info", "--output=json", "-U", path])
    if rc != 0:
        raise StorageError(f"qemu-img info {path} failed: {err.strip() or out.strip()}")
    return json.loads(out)


def create_overlay(runner: Runner, base: str, path: str, base_format: str | None = None) -> None:
    """``qemu-img create -f qcow2 -b BASE -F FMT PATH`` (the backing format always explicit)."""
    fmt = base_format or detect_format(base)
    if fmt not in SUPPORTED_FORMATS:
        raise StorageError(f"Unsupported base format {fmt!r} for {base}; supported: {', '.join(SUPPORTED_FORMATS)}.")
    rc, out, err = runner(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", fmt, path])
    if rc != 0:
        raise StorageError(f"Creating overlay {path} on {base} failed: {err.strip() or out.strip()}")


def copy_image(runner: Runner, src: str, path: str, fmt: str | None = None) -> None:
    """A full, independent, sparse copy (the course's ``cp``), flattening any backing chain."""
    fmt = fmt or detect_format(src)
    rc, out, err = runner(["qemu-img", "convert", "-q", "-f", fmt, "-O", fmt, src, path])
    if rc != 0:
        raise StorageError(f"Copying {src} to {path} failed: {err.strip() or out.strip()}")


def _inactive_and_live_xml(dom) -> list:
    lv = _deps.libvirt
    docs = [dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)]
    if dom.isActive():
        docs.append(dom.XMLDesc(0))
    return docs


def disk_users(conn, paths: Iterable[str]) -> dict[str, list[dict]]:
    """For each path, the domains that use it: as their own disk or in a disk's backing chain.

    Returns {path: [{domain, disk, relation: 'disk'|'backing', active, writable}]}.
    Paths are compared after realpath, so links and '..' do not hide a user.
    """
    wanted = {os.path.realpath(p): p for p in paths}
    users: dict[str, list[dict]] = {p: [] for p in wanted.values()}
    for dom in conn.listAllDomains(0):
        active = bool(dom.isActive())
        seen = set()
        for doc in _inactive_and_live_xml(dom):
            root = dx.parse(doc)
            for d in dx.disks(root):
                if d["type"] != "file" or not d["path"]:
                    continue
                writable = not d["readonly"] and not d["shareable"] and d["device"] == "disk"
                try:
                    chain = backing_chain(d["path"]) if os.path.exists(d["path"]) else [dict(path=d["path"])]
                except StorageError:
                    chain = [dict(path=d["path"])]
                for depth, link in enumerate(chain):
                    real = os.path.realpath(link["path"])
                    if real in wanted and (dom.name(), d["target"], real) not in seen:
                        seen.add((dom.name(), d["target"], real))
                        users[wanted[real]].append(
                            dict(
                                domain=dom.name(),
                                disk=d["path"],
                                target=d["target"],
                                relation="disk" if depth == 0 else "backing",
                                active=active,
                                writable=writable and depth == 0,
                            )
                        )
    return users


def remove_file(path: str, conn=None) -> None:
    """Delete one disk file, refusing any file another domain uses or that backs a disk."""
    if conn is not None:
        users = disk_users(conn, [path])[path]
        if users:
            names = ", ".join(sorted({f"{u['domain']} ({u['relation']})" for u in users}))
            raise StorageError(f"Refusing to delete {path}: it is used by {names}.")
    unlink(path)


def unlink(path: str) -> None:
    """Delete a file that may already be gone; any other failure is a StorageError."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"Cannot delete {path}: {exc.strerror}.") from exc
