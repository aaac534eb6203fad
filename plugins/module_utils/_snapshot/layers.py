# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The layer files of external snapshots: their names, a disk's chain, and who else uses a layer.

An external snapshot puts a new qcow2 overlay on a disk's current file; that
file (the snapshot's *base*) is never written again while anything stands on
it. Before a merge writes a file, or a revert drops one, ``others`` asks the
host scan (``HostScan.users``, the collection's one rule) who uses it besides
this domain's own disk chain: another domain, a clone, an overlay file made by
hand or kept from an earlier revert. Any such user refuses the write.

File names are fixed, so check mode and a real run name the same files:
``<domain>.<target>.<snapshot>.qcow2`` for a snapshot's overlay and
``<domain>.<target>.<snapshot>@<n>.qcow2`` for the fresh overlay of a revert
(``@`` is never in a name, so the two never collide).
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan


def real(path: str) -> str:
    return os.path.realpath(path)


def overlay_path(disk_path: str, domain: str, target: str, snapshot: str) -> str:
    """Where snapshot ``snapshot`` puts the new overlay of disk ``target`` (beside its current file)."""
    return os.path.join(os.path.dirname(disk_path), f"{domain}.{target}.{snapshot}.qcow2")


def revert_path(base_path: str, domain: str, target: str, snapshot: str, taken: set[str] | None = None) -> str:
    """The first free ``<domain>.<target>.<snapshot>@<n>.qcow2`` beside the snapshot's base."""
    folder = os.path.dirname(base_path)
    n = 1
    while True:
        path = os.path.join(folder, f"{domain}.{target}.{snapshot}@{n}.qcow2")
        if not os.path.lexists(path) and path not in (taken or set()):
            return path
        n += 1


def chain(path: str) -> list[dict]:
    """The disk's file and every file below it: ``[{path, format, real}]`` (top first)."""
    return [dict(path=c["path"], format=c["format"], real=real(c["path"])) for c in _disk_files.backing_chain(path)]


def position(files: list[dict], path: str) -> int | None:
    """Where ``path`` is in a chain (0 is the top), or None."""
    wanted = real(path)
    for i, c in enumerate(files):
        if c["real"] == wanted:
            return i
    return None


def others(scan: HostScan, domain: str, target: str, path: str, own: set[str]) -> list[str]:
    """Who stands on ``path`` besides disk ``target`` of ``domain`` and the files in ``own`` (real paths).

    The host's one write guard (``HostScan.stands_on``): other domains, overlay files, other
    domains' snapshot layers. This domain's own snapshots are weighed by the caller.
    """
    return scan.stands_on(path, domain, target, own)
