# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Moving a volume's bytes through libvirt streams (virStorageVolUpload/Download), hashed on the way.

The stream goes over the libvirt connection itself, so with ``qemu+ssh://``
an image moves between hosts with nothing else to set up. Every transfer
hashes what passes (sha256) and records progress: a ``{bytes, seconds}``
entry each time another ``every`` bytes have gone by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _stream
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock

# One read per MiB, as the streams move them.
CHUNK = _stream.CHUNK


class Meter:
    """Bytes, time and a progress entry every ``every`` bytes (0: no entries)."""

    def __init__(self, every: int = 0, clock: Clock = SYSTEM):
        self.every = every
        self.clock = clock
        self.started = clock.now()
        self.bytes = 0
        self.progress: list[dict] = []
        self._next = every

    def add(self, n: int) -> None:
        self.bytes += n
        while self.every and self.bytes >= self._next:
            self.progress.append(dict(bytes=self.bytes, seconds=round(self.clock.now() - self.started, 3)))
            self._next += self.every

    def result(self, direction: str, sha256: str) -> dict:
        seconds = max(self.clock.now() - self.started, 0.0)
        rate = self.bytes / 1024**2 / seconds if seconds > 0 else None
        return dict(
            direction=direction,
            bytes=self.bytes,
            seconds=round(seconds, 3),
            mib_per_second=round(rate, 1) if rate is not None else None,
            sha256=sha256,
            progress=self.progress,
        )


def file_digest(path: str, limit: int | None = None) -> tuple[str, int]:
    """(sha256 hex, bytes read) of a local file, or of its first ``limit`` bytes."""
    h = hashlib.sha256()
    total = 0
    try:
        with open(path, "rb") as f:
            while limit is None or total < limit:
                data = f.read(CHUNK if limit is None else min(CHUNK, limit - total))
                if not data:
                    break
                h.update(data)
                total += len(data)
    except OSError as exc:
        raise StorageError(f"Cannot read {path}: {exc.strerror}.") from exc
    return h.hexdigest(), total


def _failed(what: str) -> Callable[[Exception], StorageError]:
    """A libvirt or OS error of a transfer as the StorageError saying ``what`` failed."""

    def failed(exc: Exception) -> StorageError:
        if isinstance(exc, OSError):
            return StorageError(f"{what} failed: {exc.strerror or exc}.")
        return StorageError(f"{what} failed: {exc.get_error_message() or exc}")

    return failed


def upload(conn, vol, path: str, length: int, meter: Meter) -> str:
    """Write the first ``length`` bytes of file ``path`` into ``vol`` from offset 0; returns their sha256."""
    h = hashlib.sha256()

    def sent(data: bytes) -> None:
        h.update(data)
        meter.add(len(data))

    stream = conn.newStream(0)
    with _stream.guarded(stream, _failed(f"Uploading {path} to volume {vol.name()}")):
        vol.upload(stream, 0, length, 0)
        _stream.send_all(stream, _stream.file_chunks(path, length), sent, "The libvirt stream accepted no data.")
    return h.hexdigest()


def download(conn, vol, out, length: int, meter: Meter) -> str:
    """Read the first ``length`` bytes of ``vol`` (0: all) into file object ``out`` (None: only hash them)."""
    h = hashlib.sha256()

    def got(data: bytes) -> None:
        h.update(data)
        if out is not None:
            out.write(data)
        meter.add(len(data))

    stream = conn.newStream(0)
    with _stream.guarded(stream, _failed(f"Downloading volume {vol.name()}")):
        vol.download(stream, 0, length, 0)
        _stream.receive(stream, got)
    return h.hexdigest()
