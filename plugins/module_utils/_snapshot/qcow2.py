# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What a qcow2 file says about its own data, read directly (no subprocess, cheap enough per run).

Two questions decide whether a domain still *is* at a snapshot, so that a
revert that is not needed is not made:

* is an overlay still empty (no cluster of its own: nothing written since the
  external snapshot or the revert that made it)? Its active L1 table is all zero;
* is an image still at one of its internal snapshots (nothing written since
  it was taken or reverted to)? Its active L1 table equals the snapshot's: any
  write after the snapshot copies an L2 table shared with it, which changes
  the L1 entry.

Both compare L1 entries without their flag bits. Any doubt (not qcow2, an
unreadable table) answers "no", which only means a revert is made.
"""

from __future__ import annotations

import struct

from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError

_MAGIC = b"QFI\xfb"
# Bits 9..55 of an L1 entry hold the L2 table's offset; the rest are flags (COPIED) or reserved.
_L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
# An L1 table larger than this (entries) is not read (a 64 TiB image with 64 KiB clusters has 1 Mi).
_MAX_L1 = 4 * 1024 * 1024
# A snapshot table entry: L1 offset and size, id and name lengths, date (s, ns), VM clock, VM state size, extra size.
_SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")


def _read_l1(f, offset: int, size: int) -> list[int]:
    if size > _MAX_L1:
        raise ValueError("L1 table too large")
    f.seek(offset)
    raw = f.read(size * 8)
    if len(raw) != size * 8:
        raise ValueError("short L1 table")
    return [e & _L1_OFFSET_MASK for e in struct.unpack(f">{size}Q", raw)]


def _header(f) -> dict | None:
    head = f.read(72)
    if len(head) < 72 or head[:4] != _MAGIC:
        return None
    l1_size, l1_offset = struct.unpack(">IQ", head[36:48])
    nb_snapshots, snapshots_offset = struct.unpack(">IQ", head[60:72])
    return dict(l1_size=l1_size, l1_offset=l1_offset, nb_snapshots=nb_snapshots, snapshots_offset=snapshots_offset)


def _open(path: str):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise StorageError(f"Cannot read disk image {path}: {exc.strerror}.") from exc


def active_l1(path: str) -> list[int] | None:
    """The active L1 table's L2 offsets, or None when ``path`` is not a readable qcow2 image."""
    with _open(path) as f:
        hdr = _header(f)
        if hdr is None:
            return None
        try:
            return _read_l1(f, hdr["l1_offset"], hdr["l1_size"])
        except (ValueError, struct.error):
            return None


def internal_snapshots(path: str) -> dict[str, list[int]]:
    """``{name: its L1 table's L2 offsets}`` of the internal snapshots in ``path`` (empty if none or not qcow2)."""
    out: dict[str, list[int]] = {}
    with _open(path) as f:
        hdr = _header(f)
        if hdr is None or not hdr["nb_snapshots"]:
            return out
        offset = hdr["snapshots_offset"]
        entries = []
        try:
            for _index in range(min(hdr["nb_snapshots"], 65536)):
                offset = (offset + 7) & ~7
                f.seek(offset)
                raw = f.read(_SNAPSHOT_HEADER.size)
                l1_offset, l1_size, id_len, name_len, _s, _ns, _clock, _vm, extra = _SNAPSHOT_HEADER.unpack(raw)
                f.seek(offset + _SNAPSHOT_HEADER.size + extra + id_len)
                name = f.read(name_len).decode("utf-8", "replace")
                entries.append((name, l1_offset, l1_size))
                offset += _SNAPSHOT_HEADER.size + extra + id_len + name_len
            for name, l1_offset, l1_size in entries:
                out[name] = _read_l1(f, l1_offset, l1_size)
        except (ValueError, struct.error):
            return {}
    return out


def is_empty(path: str) -> bool:
    """Whether a qcow2 image has no cluster of its own (a fresh overlay: every read goes to its backing)."""
    l1 = active_l1(path)
    return l1 is not None and not any(l1)


def at_internal(path: str, name: str) -> bool:
    """Whether ``path`` is unchanged since its internal snapshot ``name`` was taken or reverted to."""
    active = active_l1(path)
    snap = internal_snapshots(path).get(name)
    if active is None or snap is None:
        return False
    size = max(len(active), len(snap))
    return active + [0] * (size - len(active)) == snap + [0] * (size - len(snap))
