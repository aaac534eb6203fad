# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Moving a volume's bytes through libvirt streams (virStorageVolUpload/Download), hashed on the way.

The stream goes over the libvirt connection itself, so with ``qemu+ssh://``
an image moves between hosts with nothing else to set up. Every transfer
hashes what passes (sha256) and records progress: a ``{bytes, seconds}``
entry each time another ``every`` bytes have gone by.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError

# One read/send per MiB: big enough to keep Python out of the way, small for the RPC layer.
CHUNK = 1024 * 1024
# virStreamRecv/Send return this when a non-blocking stream would block.
_WOULD_BLOCK = -2


class Meter:
    """Bytes, time and a progress entry every ``every`` bytes (0: no entries)."""

    def __init__(self, every: int = 0, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self.clock = clock
        self.started = clock()
        self.bytes = 0
        self.progress: list[dict] = []
        self._next = every

    def add(self, n: int) -> None:
        self.bytes += n
        while self.every and self.bytes >= self._next:
            self.progress.append(dict(bytes=self.bytes, seconds=round(self.clock() - self.started, 3)))
            self._next += self.every

    def result(self, direction: str, sha256: str) -> dict:
        seconds = max(self.clock() - self.started, 0.0)
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


def _abort(stream) -> None:
    try:
        stream.abort()
    except _deps.libvirt.libvirtError:
        pass  # the stream is already broken; the first error is the one reported


def _send_all(stream, data: bytes) -> None:
    view = memoryview(data)
    while len(view):
        sent = stream.send(bytes(view))
        if sent == _WOULD_BLOCK:
            continue
        if sent <= 0:
            raise StorageError("The libvirt stream accepted no data.")
        view = view[sent:]


@contextlib.contextmanager
def _guarded(stream, what: str):
    """Abort the stream on any failure inside, and report it as a StorageError saying ``what`` failed."""
    lv = _deps.libvirt
    try:
        yield
    except lv.libvirtError as exc:
        _abort(stream)
        raise StorageError(f"{what} failed: {exc.get_error_message() or exc}") from exc
    except OSError as exc:
        _abort(stream)
        raise StorageError(f"{what} failed: {exc.strerror or exc}.") from exc
    except StorageError:
        _abort(stream)
        raise


def upload(conn, vol, path: str, length: int, meter: Meter) -> str:
    """Write the first ``length`` bytes of file ``path`` into ``vol`` from offset 0; returns their sha256."""
    h = hashlib.sha256()
    stream = conn.newStream(0)
    with _guarded(stream, f"Uploading {path} to volume {vol.name()}"):
        vol.upload(stream, 0, length, 0)
        with open(path, "rb") as f:
            left = length
            while left > 0:
                data = f.read(min(CHUNK, left))
                if not data:
                    raise StorageError(f"{path} ended after {length - left} of {length} bytes: it changed meanwhile.")
                h.update(data)
                _send_all(stream, data)
                meter.add(len(data))
                left -= len(data)
        stream.finish()
    return h.hexdigest()


def download(conn, vol, out, length: int, meter: Meter) -> str:
    """Read the first ``length`` bytes of ``vol`` (0: all) into file object ``out`` (None: only hash them)."""
    h = hashlib.sha256()
    stream = conn.newStream(0)
    with _guarded(stream, f"Downloading volume {vol.name()}"):
        vol.download(stream, 0, length, 0)
        while True:
            data = stream.recv(CHUNK)
            if data == _WOULD_BLOCK:
                continue
            if not data:
                break
            h.update(data)
            if out is not None:
                out.write(data)
            meter.add(len(data))
        stream.finish()
    return h.hexdigest()
