# Private to the virtops.kvm collection: not a public API, may change without notice.
"""kvm_volume's upload and download: idempotent by checksum, verified at the end.

Upload: the file's sha256 decides. A volume that already holds exactly the
file's bytes is left alone; one that holds other bytes is replaced only with
``force`` (and never while a running domain uses it or anything is backed by
it). A new or replaced volume is created empty (raw, 0 bytes, in file pools:
libvirt then sees the format of what was uploaded), filled through a stream,
and read back through a stream to compare the checksums.

Download: the volume's bytes go to a temporary file beside the destination,
which is re-read and compared with the stream's checksum (and ``checksum``)
before it replaces the destination. An existing destination with the same
bytes is left alone; one with other bytes is replaced only with ``force``.
"""

from __future__ import annotations

import os
import tempfile

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._pool import handles, transfer
from ansible_collections.virtops.kvm.plugins.module_utils._pool import volume_xml as vx

_MIB = 1024**2
_FILE_POOLS = ("dir", "fs", "netfs")


def _size_of(info: dict) -> int | None:
    """The bytes a download of the whole volume yields: the file's size, or the device's."""
    if info["type"] == "file":
        return info["physical"] if info["physical"] is not None else info["capacity"]
    return info["capacity"]


class Content:
    """One upload or download for a VolumeManager (its options, pool, notes and scan)."""

    def __init__(self, mgr, vol, info: dict | None, checksum: str | None):
        self.m = mgr
        self.p = mgr.p
        self.vol = vol
        self.info = info
        self.checksum = checksum
        self.every = (self.p["progress_mib"] or 0) * _MIB
        self.transfer: dict | None = None
        self.sha256: str | None = None

    def _volume_digest(self, vol, length: int) -> str:
        return transfer.download(self.m.conn, vol, None, length, transfer.Meter())

    def _holds(self, size: int, digest: str) -> tuple[bool, str]:
        """Whether the volume's first ``size`` bytes (and only those, for a file) are the file's."""
        info = self.info
        have = _size_of(info)
        if (info["type"] == "file" and have != size) or (have is not None and have < size):
            return False, f"{have} bytes (other content)"
        got = self._volume_digest(self.vol, size)
        return got == digest, f"sha256:{got}"

    # ------------------------------------------------------------------ upload

    def upload(self) -> tuple:
        """Returns (predicted facts after, diff extras before, diff extras after)."""
        p, m = self.p, self.m
        path = p["upload"]
        digest, size = transfer.file_digest(path)
        if self.checksum and digest != self.checksum:
            raise InvalidInput(f"{path} has sha256 {digest}, not the expected checksum {self.checksum}.")
        self.sha256 = digest
        header = _disk_files.qcow2_header(path)
        fmt = "qcow2" if header else "raw"
        if p["format"] and p["format"] != fmt:
            raise InvalidInput(f"{path} is a {fmt} image, not {p['format']}: the format is what the file holds.")
        if fmt == "qcow2" and m.pool_type not in _FILE_POOLS:
            raise InvalidInput(f"A {m.pool_type} pool holds raw volumes only; {path} is qcow2.")
        if header and header["backing_file"]:
            m.warn(
                f"{path} is a qcow2 overlay of {header['backing_file']}; the uploaded volume needs that backing "
                "file at that path on the libvirt host."
            )
        before: dict = {}
        replace = False
        if self.vol is not None:
            same, have = self._holds(size, digest)
            before = {"content": have}
            if same:
                return self.info, before, before
            if not p["force"]:
                raise Conflict(
                    f"Volume {p['pool']}/{p['name']} exists with other content than {path} ({have}).",
                    hint="Set force=true to replace it, or upload to another volume name.",
                )
            users = m.refuse_if_based_or_running(
                self.info, "replaced", "Stop the domains using it, and keep volumes other disks are backed by."
            )
            if users:
                names = ", ".join(sorted({u["domain"] for u in users}))
                m.warn(f"The replaced volume is a disk of the shut off domain(s) {names}.")
            replace = True
        backing = None
        if header and header["backing_file"]:
            backing = dict(path=header["backing_file"], format=header["backing_format"])
        after = dict(
            name=p["name"],
            format=fmt,
            capacity=header["virtual_size"] if header else size,
            backing=backing,
        )
        verb = "replace the content with" if replace else "create from"
        if m.note(f"{verb} {path} ({vx.human(size)}, sha256:{digest})"):
            self._upload(path, size, replace)
        return after, before, {"content": f"sha256:{digest}"}

    def _upload(self, path: str, size: int, replace: bool) -> None:
        m, name = self.m, self.p["name"]
        if replace:
            handles.call(f"Deleting volume {name} to replace it", self.vol.delete, 0)
        if m.pool_type in _FILE_POOLS:
            vol = m.create(vx.build(name, 0, "raw", allocation=0))
        else:
            vol = m.create(vx.build(name, size, "raw", allocation=None))
        meter = transfer.Meter(self.every)
        sent = transfer.upload(m.conn, vol, path, size, meter)
        if sent != self.sha256:
            raise StorageError(f"{path} changed while it was uploaded (sha256 {self.sha256} before, {sent} sent).")
        # libvirt reads the new format and size of the file on a refresh
        handles.call(f"Refreshing storage pool {self.p['pool']}", m.pool.refresh, 0)
        self.transfer = meter.result("upload", sent)
        self.transfer["verified"] = False
        if self.p["verify"]:
            vol = handles.lookup_volume(m.pool, name)
            info = handles.volume_info(vol, self.p["pool"])
            got = self._volume_digest(vol, size)
            extra = info["type"] == "file" and _size_of(info) != size
            if got != sent or extra:
                raise StorageError(
                    f"Volume {self.p['pool']}/{name} does not hold what was uploaded: sha256 {got} "
                    f"({_size_of(info)} bytes) against {sent} ({size} bytes).",
                    hint="Run the task again with force=true to replace it.",
                )
            self.transfer["verified"] = True

    # ------------------------------------------------------------------ download

    def download(self) -> tuple:
        """Returns (facts after, diff extras before, diff extras after)."""
        p, m = self.p, self.m
        dest = p["download"]
        if self.vol is None:
            raise StorageError(f"Volume {p['pool']}/{p['name']} does not exist, so there is nothing to download.")
        size = _size_of(self.info)
        before: dict = {"file": f"{dest} (absent)"}
        if os.path.exists(dest):
            local, local_size = transfer.file_digest(dest)
            before = {"file": dest, "file content": f"sha256:{local}"}
            if local_size == size:
                self.sha256 = self._volume_digest(self.vol, 0)
                if self.sha256 == local:
                    if self.checksum and local != self.checksum:
                        raise StorageError(
                            f"Volume {p['pool']}/{p['name']} has sha256 {local}, not the expected checksum."
                        )
                    return self.info, before, before
            if not p["force"]:
                raise Conflict(
                    f"{dest} exists with other content than volume {p['pool']}/{p['name']}.",
                    hint="Set force=true to replace the file, or download to another path.",
                )
            m.scan().guard([dest], f"download volume {p['pool']}/{p['name']} over {dest}")
        writers = [u for u in m.users(self.info) if u["active"] and u["relation"] == "disk"]
        if writers:
            names = ", ".join(sorted({u["domain"] for u in writers}))
            m.warn(f"Domain(s) {names} run with this volume as a disk: the copy may be inconsistent.")
        after = {"file": dest, "file content": f"volume {p['pool']}/{p['name']} ({vx.human(size)})"}
        if m.note(f"download to {dest} ({vx.human(size)})"):
            self._download(dest)
        return self.info, before, after

    def _download(self, dest: str) -> None:
        folder = os.path.dirname(os.path.abspath(dest))
        fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".part", dir=folder)
        try:
            meter = transfer.Meter(self.every)
            with os.fdopen(fd, "wb") as out:
                got = transfer.download(self.m.conn, self.vol, out, 0, meter)
                out.flush()
                os.fsync(out.fileno())
            if self.checksum and got != self.checksum:
                raise StorageError(f"The volume's content has sha256 {got}, not the expected checksum {self.checksum}.")
            self.transfer = meter.result("download", got)
            self.transfer["verified"] = False
            if self.p["verify"]:
                written, _n = transfer.file_digest(temp)
                if written != got:
                    raise StorageError(f"{temp} does not hold what was received (sha256 {written}, not {got}).")
                self.transfer["verified"] = True
            os.replace(temp, dest)
            self.sha256 = got
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
