# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Disk images: qcow2 headers, backing chains, overlays and copies, deletion, fsync.

The course's rule sits on top of this file: once overlays exist, their base
must never change. Who uses an image (the question asked before anything is
written or deleted) is answered by ``_scan.HostScan.users`` from the chains
read here.

External programs (qemu-img) run through an injected ``runner(argv) ->
(rc, stdout, stderr)``, in modules ``module.run_command``, so this stays
testable and never touches a shell.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable

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


def unlink(path: str) -> None:
    """Delete a file that may already be gone; any other failure is a StorageError."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StorageError(f"Cannot delete {path}: {exc.strerror}.") from exc


def fsync(path: str) -> None:
    """Flush a file, or a directory's entries (a rename or link in it), to the disk before going on."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
