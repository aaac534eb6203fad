# Private to the virtops.kvm collection: not a public API, may change without notice.
"""kvm_pool state=absent: refuse while the pool is used, stop and undefine it, delete its volumes only if told.

Refused before anything changes, with or without ``delete``: a defined domain
with a disk in the pool (named by pool, or a file inside its directory). With
``delete: true`` also refused: a volume that a domain uses through a backing
chain, or that backs a volume of another pool, and a directory with entries
libvirt does not list as volumes (they would stop the directory's removal
half-way). Only then: stop, delete each volume and the pool's own storage
(``virsh pool-delete``: the directory, or the volume group), undefine.
"""

from __future__ import annotations

import os
import stat

from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._pool import handles, usage
from ansible_collections.virtops.kvm.plugins.module_utils._pool import pool_xml as px


def _local_entries(target: str | None) -> list[dict]:
    """What a dir pool's directory holds, seen from this host: [{name, path, type}]."""
    if not target or not os.path.isdir(target):
        return []
    out = []
    for entry in sorted(os.listdir(target)):
        path = os.path.join(target, entry)
        mode = os.lstat(path).st_mode
        kind = "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"
        out.append(dict(name=entry, path=path, type=kind))
    return out


def _planned_volumes(pool, info: dict) -> list[dict]:
    """The volumes ``delete`` removes: libvirt's list, and for a dir pool also its directory's entries."""
    if info["type"] != "dir" and not pool.isActive():
        raise StorageError(
            f"Cannot delete the volumes of the inactive {info['type']} pool {info['name']!r}: "
            "they cannot be listed (and checked) while it is stopped.",
            hint="Start it first (state=active), then remove it with delete=true.",
        )
    seen: dict[str, dict] = {}
    if pool.isActive():
        for _vol, vol in handles.volumes_of(pool):
            seen[vol["path"]] = vol
    if info["type"] == "dir":
        for entry in _local_entries(info["path"]):
            seen.setdefault(entry["path"], entry)
            if entry["type"] == "other":
                raise StorageError(
                    f"{entry['path']} in pool {info['name']!r} is neither a file nor a directory, so "
                    "libvirt cannot delete it and the directory could not be removed.",
                    hint="Remove it by hand, or remove the pool without delete=true.",
                )
            if entry["type"] == "dir" and os.listdir(entry["path"]):
                raise StorageError(
                    f"The directory {entry['path']} in pool {info['name']!r} is not empty; libvirt deletes "
                    "only empty directories, so the pool would be removed half-way.",
                    hint="Empty or move it first, or remove the pool without delete=true.",
                )
    return [seen[path] for path in sorted(seen)]


def _users(mgr, pool_name: str, target: str | None, volumes: list[dict]) -> list[str]:
    scan = mgr.scan()
    users = usage.disks_in_pool(scan, pool_name, target)
    index = usage.backing_index(mgr.conn) if volumes else {}
    outside = []
    for vol in volumes:
        for u in usage.volume_users(scan, pool_name, vol):
            # an overlay inside the pool goes with it
            if not (u["relation"] == "file" and usage.inside(u["disk"], target)):
                users.append(u)
        outside += [
            f"volume {label} (backed by {vol['name']})"
            for label, path in usage.backed_by(mgr.conn, vol["path"], index)
            if not usage.inside(path, target) and not label.startswith(pool_name + "/")
        ]
    return usage.describe(users) + outside


def _delete(mgr, pool, info: dict, planned: list[dict]) -> list[str]:
    """Start if needed, delete every planned volume, stop, delete the pool's storage."""
    name = info["name"]
    if not pool.isActive():
        handles.call(f"Starting storage pool {name} to delete its volumes", pool.create, 0)
    handles.call(f"Refreshing storage pool {name}", pool.refresh, 0)
    listed = handles.volumes_of(pool)
    known = {v["path"] for v in planned}
    new = [v["path"] for _h, v in listed if v["path"] not in known]
    if new:
        raise StorageError(f"Pool {name!r} has volumes that appeared while this task ran: {', '.join(new)}.")
    deleted = []
    for handle, vol in listed:
        handles.call(f"Deleting volume {vol['path']}", handle.delete, 0)
        deleted.append(vol["path"])
    handles.call(f"Stopping storage pool {name}", pool.destroy)
    if info["type"] != "dir" or os.path.isdir(info["path"] or ""):
        handles.call(f"Deleting the storage of pool {name}", pool.delete, 0)
    return sorted(deleted)  # in path order, as check mode plans them (libvirt lists volumes in any order)


def remove(mgr, pool, current) -> list[str]:
    """Remove the pool (if defined); returns the volumes deleted (in check mode: to be deleted)."""
    if pool is None:
        return []
    info = px.read(current)
    info["name"] = mgr.name
    delete = bool(mgr.p["delete"])
    planned = _planned_volumes(pool, info) if delete else []
    blockers = _users(mgr, mgr.name, info["path"], planned)
    if blockers:
        raise Conflict(
            f"Storage pool {mgr.name!r} is in use, so it is not removed: {'; '.join(blockers)}.",
            hint="Remove those domains or move their disks out first; state=inactive stops the pool "
            "without removing it.",
            users=blockers,
        )
    active, persistent = bool(pool.isActive()), bool(pool.isPersistent())
    paths = [v["path"] for v in planned]
    if delete:
        mgr.note(f"delete {len(paths)} volume(s) and the pool's storage ({info['path'] or info['type']})")
    elif active:
        mgr.note("stop")
    if persistent:
        mgr.note("undefine")
    if mgr.check_mode:
        return paths
    deleted = _delete(mgr, pool, info, planned) if delete else []
    if not delete and active:
        handles.call(f"Stopping storage pool {mgr.name}", pool.destroy)
    if persistent:
        handles.call(f"Undefining storage pool {mgr.name}", pool.undefine)
    return sorted(deleted)  # in path order, as check mode plans them (libvirt lists volumes in any order)
