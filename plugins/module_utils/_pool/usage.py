# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Who uses a storage pool or one of its volumes, asked before anything is removed, resized or overwritten.

The one rule is ``HostScan.dependants`` (a domain's disk, a file below a disk in a
backing chain, a hand-made overlay beside it, a snapshot layer of any domain). Pools add what that rule, made
for file paths, does not see:

* a domain disk that names the pool and volume (``<disk type='volume'>``);
* a domain disk anywhere inside the pool's directory, even a file libvirt does
  not list as a volume (a subdirectory, a missing file);
* a block device disk on a logical volume (``<disk type='block'>``);
* a volume of any active pool whose backing store is the volume.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils._pool import handles
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan
from ansible_collections.virtops.kvm.plugins.module_utils._scan import describe as describe_dependant


def inside(path: str | None, folder: str | None) -> bool:
    if not path or not folder or not path.startswith("/"):
        return False
    folder = os.path.realpath(folder)
    return os.path.realpath(path).startswith(folder.rstrip("/") + "/")


def _domain_disks(scan: HostScan):
    """(domain, disk) for every disk of every domain, inactive and live config, without repeats."""
    for d in scan.domains.values():
        for disk in d.all_disks():
            yield d, disk


def _entry(d, disk, relation: str) -> dict:
    where = f"{disk['pool']}/{disk['path']}" if disk["type"] == "volume" else disk["path"]
    return dict(domain=d.name, disk=where, target=disk["target"], relation=relation, active=d.active)


def disks_in_pool(scan: HostScan, pool_name: str, target: str | None) -> list[dict]:
    """The domain disks in a pool: named by pool (type='volume') or inside its target directory."""
    out = []
    for d, disk in _domain_disks(scan):
        if disk["type"] == "volume" and disk["pool"] == pool_name:
            out.append(_entry(d, disk, "disk"))
        elif disk["type"] in ("file", "block") and inside(disk["path"], target):
            out.append(_entry(d, disk, "disk"))
    return out


def volume_users(scan: HostScan, pool_name: str, vol: dict) -> list[dict]:
    """Everything that uses one volume (``vol`` as from ``handles.volume_info``)."""
    path = vol["path"]
    out = []
    if path and vol.get("type") in ("file", None):
        out.extend(scan.dependants(path))
    real = os.path.realpath(path) if path else None
    for d, disk in _domain_disks(scan):
        if disk["type"] == "volume" and disk["pool"] == pool_name and disk["path"] == vol["name"]:
            out.append(_entry(d, disk, "disk"))
        elif disk["type"] == "block" and real and disk["path"] and os.path.realpath(disk["path"]) == real:
            out.append(_entry(d, disk, "disk"))
    return out


def backing_index(conn) -> dict[str, list[tuple[str, str]]]:
    """Real path of a backing file -> (``pool/volume``, path) of each volume of an active pool backed by it."""
    index: dict[str, list[tuple[str, str]]] = {}
    for pool, name in handles.pool_names(conn):
        if not pool.isActive():
            continue
        for _vol, info in handles.volumes_of(pool):
            backing = info["backing"]
            if backing and backing["path"]:
                entry = (f"{name}/{info['name']}", info["path"])
                index.setdefault(os.path.realpath(backing["path"]), []).append(entry)
    return index


def backed_by(conn, path: str, index: dict | None = None) -> list[tuple[str, str]]:
    """(``pool/volume``, path) of the volumes of every active pool whose backing store is ``path``."""
    index = backing_index(conn) if index is None else index
    return list(index.get(os.path.realpath(path), []))


def describe(users: list[dict]) -> list[str]:
    """Readable one-liners, for error messages and return values."""
    out = []
    for u in users:
        if u["relation"] == "snapshot":
            text = describe_dependant(u)
        elif u["domain"] is None:
            kind = "backed by it" if u["disk"].startswith("volume ") else "an image file backed by it"
            text = f"{u['disk']} ({kind})"
        elif u["relation"] == "backing":
            text = f"domain {u['domain']} (its disk {u['disk']} is backed by it)"
        else:
            state = "running" if u["active"] else "defined"
            text = f"domain {u['domain']} ({state}, disk {u['target'] or '?'}: {u['disk']})"
        if text not in out:
            out.append(text)
    return out
