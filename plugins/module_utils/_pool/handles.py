# Private to the virtops.kvm collection: not a public API, may change without notice.
"""libvirt lookups for pools and volumes, named calls, and the facts kvm_pool and kvm_volume return.

``call`` is _connection's, the collection's one wrapper of a libvirt call; the pool files take it from here.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._connection import call, call_or_none, libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._pool import pool_xml as px
from ansible_collections.virtops.kvm.plugins.module_utils._pool import volume_xml as vx

# virStoragePoolState (stable ABI).
POOL_STATES = {0: "inactive", 1: "building", 2: "running", 3: "degraded", 4: "inaccessible"}


def lookup_pool(conn, name: str):
    """The pool named ``name``, or None."""
    lv = _deps.libvirt
    return call_or_none(
        f"Looking up storage pool {name}", lv.VIR_ERR_NO_STORAGE_POOL, conn.storagePoolLookupByName, name
    )


def definition(pool):
    """The pool's persistent definition (the live one on drivers that keep no separate one)."""
    lv = _deps.libvirt
    try:
        return px.parse(pool.XMLDesc(lv.VIR_STORAGE_XML_INACTIVE), "pool's XML")
    except lv.libvirtError as exc:
        if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
            raise libvirt_failed(exc, f"Reading storage pool {pool.name()}") from exc
    return live(pool)


def live(pool):
    return px.parse(call(f"Reading storage pool {pool.name()}", pool.XMLDesc, 0), "pool's XML")


def pool_names(conn) -> list:
    """Every pool (defined or transient) as (handle, name)."""
    return [(p, p.name()) for p in call("Listing storage pools", conn.listAllStoragePools, 0)]


def pool_info(pool) -> dict:
    """kvm_pool's RV(pool): definition facts, state, autostart, sizes and volume names."""
    active = bool(pool.isActive())
    persistent = bool(pool.isPersistent())
    state, capacity, allocation, available = call(f"Reading storage pool {pool.name()}", pool.info)
    facts = px.read(live(pool) if active else definition(pool))
    volumes = None
    if active:
        volumes = sorted(call(f"Listing the volumes of pool {pool.name()}", pool.listVolumes))
    return dict(
        facts,
        state=POOL_STATES.get(state, "unknown"),
        active=active,
        persistent=persistent,
        autostart=bool(pool.autostart()) if persistent else False,
        capacity=capacity if active else None,
        allocation=allocation if active else None,
        available=available if active else None,
        volumes=volumes,
    )


def pool_type(pool) -> str:
    return definition(pool).get("type")


def active_pool(conn, name: str):
    """The named pool, which must exist and be active (volumes are only reachable then)."""
    pool = lookup_pool(conn, name)
    if pool is None:
        raise StorageError(
            f"Storage pool {name!r} does not exist.",
            hint="Define it first (virtops.kvm.kvm_pool), or check the pool option.",
        )
    if not pool.isActive():
        raise StorageError(
            f"Storage pool {name!r} is not active, so its volumes cannot be reached.",
            hint="Start it first: virtops.kvm.kvm_pool with state=active (virsh pool-start).",
        )
    return pool


def lookup_volume(pool, name: str):
    """The volume ``name`` of an active pool, or None; a miss refreshes the pool's list once.

    libvirt lists a pool's volumes when the pool starts or is refreshed, so a file
    copied in by hand is seen only after a refresh (which changes nothing on disk).
    """
    lv = _deps.libvirt
    for attempt in (0, 1):
        try:
            return pool.storageVolLookupByName(name)
        except lv.libvirtError as exc:
            if exc.get_error_code() != lv.VIR_ERR_NO_STORAGE_VOL:
                raise libvirt_failed(exc, f"Looking up volume {name} in pool {pool.name()}") from exc
        if attempt == 0:
            call(f"Refreshing storage pool {pool.name()}", pool.refresh, 0)
    return None


def volume_by_path(conn, path: str):
    """The volume libvirt knows at ``path`` (in any active pool), or None."""
    lv = _deps.libvirt
    try:
        return conn.storageVolLookupByPath(path)
    except lv.libvirtError as exc:
        if exc.get_error_code() in (lv.VIR_ERR_NO_STORAGE_VOL, lv.VIR_ERR_NO_STORAGE_POOL):
            return None
        raise libvirt_failed(exc, f"Looking up the volume at {path}") from exc


def volume_info(vol, pool_name: str) -> dict:
    """kvm_volume's RV(volume)."""
    return dict(vx.read(call(f"Reading volume {vol.name()}", vol.XMLDesc, 0)), pool=pool_name)


def volumes_of(pool) -> list:
    """Every volume of an active pool as (handle, facts)."""
    name = pool.name()
    return [(v, volume_info(v, name)) for v in call(f"Listing the volumes of pool {name}", pool.listAllVolumes, 0)]
