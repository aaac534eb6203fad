# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The one libvirt stream copy loop: a file or another stream into a virStream, a virStream out, in chunks.

kvm_volume's upload and download (_pool/transfer.py) and kvm_migrate's copy of
image files between two hosts (_migrate/volumes.py) move bytes the same way:
one chunk size, the same retry when a stream would block, the same short
writes sent again, one ``on_chunk(data)`` callback per chunk (hashing,
progress) and one abort path (``guarded``): a failure inside aborts the
stream, so the other side drops what it got, and is reported in the
caller's words.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError

# One read/send per MiB: big enough to keep Python out of the way, small for the RPC layer.
CHUNK = 1024 * 1024
# virStreamRecv/Send return this when a non-blocking stream would block.
WOULD_BLOCK = -2

OnChunk = Callable[[bytes], None]


def abort(stream) -> None:
    """Abort ``stream``; an error doing so is dropped (the first error is the one reported)."""
    try:
        stream.abort()
    except _deps.libvirt.libvirtError:
        pass  # the stream is already broken


@contextlib.contextmanager
def guarded(stream, failed: Callable[[Exception], Exception]):
    """Abort ``stream`` on a failure inside: a libvirt or OS error is raised as ``failed(exc)``, ours as it is."""
    try:
        yield
    except (_deps.libvirt.libvirtError, OSError) as exc:
        abort(stream)
        raise failed(exc) from exc
    except StorageError:
        abort(stream)
        raise


def send(stream, data: bytes, refused: str) -> None:
    """All of ``data`` into ``stream`` (a short write is sent on); StorageError(``refused``) if it takes nothing."""
    view = memoryview(data)
    while len(view):
        sent = stream.send(bytes(view))
        if sent == WOULD_BLOCK:
            continue
        if sent <= 0:
            raise StorageError(refused)
        view = view[sent:]


def received(stream) -> Iterator[bytes]:
    """What ``stream`` gives, a chunk at a time, until its end; the stream is finished after the last."""
    while True:
        data = stream.recv(CHUNK)
        if data == WOULD_BLOCK:
            continue
        if not data:
            break
        yield data
    stream.finish()


def receive(stream, on_chunk: OnChunk) -> None:
    """Everything ``stream`` gives, each chunk handed to ``on_chunk``."""
    for data in received(stream):
        on_chunk(data)


def file_chunks(path: str, length: int) -> Iterator[bytes]:
    """The first ``length`` bytes of file ``path``; StorageError if it is shorter (it changed meanwhile)."""
    with open(path, "rb") as f:
        left = length
        while left > 0:
            data = f.read(min(CHUNK, left))
            if not data:
                raise StorageError(f"{path} ended after {length - left} of {length} bytes: it changed meanwhile.")
            yield data
            left -= len(data)


def send_all(stream, chunks: Iterable[bytes], on_chunk: OnChunk, refused: str) -> None:
    """Every chunk into ``stream`` (from a file, or ``received`` from another stream), then finish it."""
    for data in chunks:
        send(stream, data, refused)
        on_chunk(data)
    stream.finish()
