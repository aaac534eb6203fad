# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Image files of one hypervisor seen through its libvirt storage API only (no local file access).

kvm_migrate may run on either host, or on neither: every file it reads, makes or
deletes on a host goes through that host's libvirt connection. A file is found
by path (``storageVolLookupByPath``) once a pool covers its directory; where no
pool does, a transient ``dir`` pool is made for it (virStoragePoolCreateXML) and
destroyed at the end of the run; destroying a pool never deletes its files.
An inactive pool that covers the directory is started for the run and stopped
again. Bytes move through volume streams (virStorageVolDownload/Upload),
hashed on the way; a base's fingerprint (_drift's sampled digest) is read the
same way, 16 pieces of 64 KiB.
"""

from __future__ import annotations

import hashlib
import posixpath
import secrets

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _drift, _stream
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError

#: pool types whose files every host of a cluster sees (storage: auto does not copy them)
SHARED_POOL_TYPES = ("netfs", "gluster", "rbd", "sheepdog", "iscsi", "iscsi-direct", "mpath", "vstorage")


def _int(root, path: str) -> int | None:
    el = root.find(path)
    return int(el.text) if el is not None and el.text and el.text.strip().isdigit() else None


def _ns(text: str | None) -> int | None:
    """A volume XML timestamp (``SECONDS[.NANOSECONDS]``) in nanoseconds, as ``os.stat``'s ``st_mtime_ns``."""
    sec, _dot, frac = (text or "").strip().partition(".")
    if not sec.isdigit() or (frac and not frac.isdigit()):
        return None
    return int(sec) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


def vol_facts(xml: str) -> dict:
    """path, format, capacity, allocation, physical (file size), mtime (ns), backing and its format, from volume
    XML."""
    root = _deps.etree.fromstring(xml.encode())
    fmt = root.find("target/format")
    bfmt = root.find("backingStore/format")
    return dict(
        path=root.findtext("target/path"),
        format=fmt.get("type") if fmt is not None else None,
        capacity=_int(root, "capacity"),
        allocation=_int(root, "allocation"),
        physical=_int(root, "physical") or _int(root, "capacity"),
        mtime=_ns(root.findtext("target/timestamps/mtime")),
        backing=root.findtext("backingStore/path") or None,
        backing_format=bfmt.get("type") if bfmt is not None else None,
    )


class HostFiles:
    """The image files of one host (one libvirt connection); ``close()`` undoes the run's pools."""

    def __init__(self, conn, uri: str):
        self.conn = conn
        self.uri = uri
        self._pools: dict[str, tuple] = {}  # directory -> (pool, pool type)
        self._ours: list = []  # pools this run made or started: (pool, made)

    # ------------------------------------------------------------------ pools
    def _pool_for(self, directory: str):
        if directory in self._pools:
            return self._pools[directory][0]
        lv = _deps.libvirt
        found = None
        for pool in self.conn.listAllStoragePools(0):
            root = _deps.etree.fromstring(pool.XMLDesc(0).encode())
            if posixpath.normpath(root.findtext("target/path") or "") == directory:
                found = (pool, root.get("type"))
                break
        try:
            if found is None:
                etree = _deps.etree
                el = etree.Element("pool", type="dir")
                etree.SubElement(el, "name").text = f"virtops-migrate-{secrets.token_hex(4)}"
                etree.SubElement(etree.SubElement(el, "target"), "path").text = directory
                pool = self.conn.storagePoolCreateXML(etree.tostring(el, encoding="unicode"), 0)
                self._ours.append((pool, True))
                found = (pool, "dir")
            elif not found[0].isActive():
                found[0].create(0)
                self._ours.append((found[0], False))
            else:
                found[0].refresh(0)  # files copied in by hand since the pool was last read
        except lv.libvirtError as exc:
            if "no such file or directory" in (exc.get_error_message() or "").lower():
                self._pools[directory] = (None, None)  # no such directory: no file in it either
                return None
            raise libvirt_failed(exc, f"Reading directory {directory} on {self.uri} through a storage pool") from exc
        self._pools[directory] = found
        return found[0]

    def directory_exists(self, path: str) -> bool:
        """Whether the directory of ``path`` exists on this host."""
        return self._pool_for(posixpath.dirname(posixpath.normpath(path))) is not None

    def pool_type(self, path: str) -> str:
        directory = posixpath.dirname(posixpath.normpath(path))
        self._pool_for(directory)
        return self._pools[directory][1] or "dir"

    def volume(self, path: str):
        """The virStorageVol of the file at ``path``, or None when there is no such file."""
        lv = _deps.libvirt
        path = posixpath.normpath(path)
        try:
            return self.conn.storageVolLookupByPath(path)
        except lv.libvirtError as exc:
            if exc.get_error_code() != lv.VIR_ERR_NO_STORAGE_VOL:
                raise libvirt_failed(exc, f"Looking up {path} on {self.uri}") from exc
        pool = self._pool_for(posixpath.dirname(path))
        if pool is None:
            return None
        try:
            return pool.storageVolLookupByName(posixpath.basename(path))
        except lv.libvirtError as exc:
            if exc.get_error_code() != lv.VIR_ERR_NO_STORAGE_VOL:
                raise libvirt_failed(exc, f"Looking up {path} on {self.uri}") from exc
            return None

    def facts(self, path: str) -> dict | None:
        vol = self.volume(path)
        return vol_facts(vol.XMLDesc(0)) if vol is not None else None

    def close(self) -> list[str]:
        """Stop the pools this run made or started; the problems, as warnings (files are never touched)."""
        problems = []
        for pool, _made in reversed(self._ours):
            try:
                pool.destroy()  # a transient pool is gone; a defined one that was inactive is inactive again
            except _deps.libvirt.libvirtError as exc:
                problems.append(f"Could not stop storage pool {pool.name()} on {self.uri}: {exc.get_error_message()}")
        self._ours.clear()
        self._pools.clear()
        return problems

    # ------------------------------------------------------------------ files
    def create(self, path: str, fmt: str, capacity: int, backing: str | None = None, backing_fmt: str | None = None):
        """A new, empty volume at ``path`` (a qcow2 overlay of ``backing`` when given); it must not exist."""
        path = posixpath.normpath(path)
        pool = self._pool_for(posixpath.dirname(path))
        if pool is None:
            raise StorageError(f"Cannot create {path} on {self.uri}: its directory does not exist there.")
        etree = _deps.etree
        vol = etree.Element("volume")
        etree.SubElement(vol, "name").text = posixpath.basename(path)
        etree.SubElement(vol, "capacity", unit="bytes").text = str(capacity)
        etree.SubElement(vol, "allocation", unit="bytes").text = "0"
        etree.SubElement(etree.SubElement(vol, "target"), "format", type=fmt)
        if backing:
            bs = etree.SubElement(vol, "backingStore")
            etree.SubElement(bs, "path").text = backing
            etree.SubElement(bs, "format", type=backing_fmt or "raw")
        try:
            return pool.createXML(etree.tostring(vol, encoding="unicode"), 0)
        except _deps.libvirt.libvirtError as exc:
            raise libvirt_failed(exc, f"Creating {path} on {self.uri}") from exc

    def delete(self, path: str) -> bool:
        """Delete the file at ``path`` through its pool; whether it was there."""
        vol = self.volume(path)
        if vol is None:
            return False
        try:
            vol.delete(0)
        except _deps.libvirt.libvirtError as exc:
            raise libvirt_failed(exc, f"Deleting {path} on {self.uri}") from exc
        return True

    def fingerprint_digest(self, path: str, size: int) -> str:
        """_drift's digest of the file at ``path`` (``size`` bytes long), read through volume streams."""
        vol = self.volume(path)
        if vol is None:
            raise StorageError(f"{path} is not on {self.uri}.")
        h = hashlib.sha256()
        for off in _drift.sample_offsets(size):
            length = min(_drift.CHUNK, max(size - off, 0))
            if length:
                for data in _read(self.conn, vol, off, length, f"Reading {path} on {self.uri}"):
                    h.update(data)
        return _drift.digest_text(h)

    def digest(self, path: str, length: int) -> str:
        """sha256 of the first ``length`` bytes of the file at ``path``."""
        vol = self.volume(path)
        h = hashlib.sha256()
        for data in _read(self.conn, vol, 0, length, f"Reading {path} on {self.uri}"):
            h.update(data)
        return h.hexdigest()


def _read(conn, vol, offset: int, length: int, what: str):
    """The bytes of ``vol`` from ``offset``, ``length`` of them, in chunks."""
    stream = conn.newStream(0)
    with _stream.guarded(stream, lambda exc: libvirt_failed(exc, what)):
        vol.download(stream, offset, length, 0)
        yield from _stream.received(stream)


def copy(src: HostFiles, src_path: str, dst: HostFiles, dst_vol, length: int, progress: list, started) -> dict:
    """Stream the file ``src_path`` of ``src`` into ``dst_vol``; sha256 checked by reading the copy back."""
    src_vol = src.volume(src_path)
    what = f"Copying {src_path} from {src.uri} to {dst.uri}"
    h = hashlib.sha256()
    sent = 0

    def moved(data: bytes) -> None:
        nonlocal sent
        h.update(data)
        sent += len(data)
        progress.append(dict(seconds=started(), bytes=sent, path=src_path))

    out = dst.conn.newStream(0)
    with _stream.guarded(out, lambda exc: libvirt_failed(exc, what)):
        dst_vol.upload(out, 0, length, 0)
        chunks = _read(src.conn, src_vol, 0, length, what)
        _stream.send_all(out, chunks, moved, f"{what} failed: the destination's stream accepted no data.")
    if sent != length:
        raise StorageError(f"{what}: {sent} of {length} bytes arrived; the source changed meanwhile.")
    want = h.hexdigest()
    got = dst.digest(dst_vol.path(), length)
    if got != want:
        raise StorageError(f"{what}: the copy's sha256 {got} is not the source's {want}.")
    return dict(bytes=sent, sha256=want)
