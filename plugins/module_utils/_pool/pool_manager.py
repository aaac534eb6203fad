# Private to the virtops.kvm collection: not a public API, may change without notice.
"""PoolManager, the kvm_pool module's work: compare the definition, then define, autostart, start or stop.

One ``run()`` per task: validate the options, read the pool, compare the
requested definition with the persistent one (``pool_xml``), refuse a type
change or a directory another pool has, then act, noting each change in check
mode exactly as in a real run. A changed definition of an active pool takes
effect when the pool restarts (libvirt keeps the running one until then):
``pending_restart`` says so and ``restart: true`` does it. ``state=absent`` is
``pool_removal``'s.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._pool import handles
from ansible_collections.virtops.kvm.plugins.module_utils._pool import pool_xml as px
from ansible_collections.virtops.kvm.plugins.module_utils._pool.pool_removal import remove
from ansible_collections.virtops.kvm.plugins.module_utils._pool.usage import disks_in_pool
from ansible_collections.virtops.kvm.plugins.module_utils._scan import ScansHost

STATES = ["present", "active", "inactive", "absent"]
_DEFINITION = ("type", "path", "source_host", "source_path", "source_format", "source_devices", "source_name")


def snapshot(state: str | None, autostart: bool, root) -> str:
    """The diff's text: state, autostart flag and the definition (without measured sizes)."""
    if root is None:
        return ""
    return f"state: {state}\nautostart: {str(autostart).lower()}\n\n" + px.tostring(px.canonical(root))


class PoolManager(ScansHost, Manager):
    """Bring one storage pool to the requested definition and state (see the kvm_pool module)."""

    ARGUMENT_SPEC = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=STATES),
        type=dict(type="str", choices=list(px.POOL_TYPES)),
        path=dict(type="str"),
        source_host=dict(type="str"),
        source_path=dict(type="str"),
        source_format=dict(type="str"),
        source_devices=dict(type="list", elements="str"),
        source_name=dict(type="str"),
        xml=dict(type="str"),
        autostart=dict(type="bool"),
        build=dict(type="bool", default=True),
        restart=dict(type="bool", default=False),
        refresh=dict(type="bool", default=False),
        delete=dict(type="bool", default=False),
    )
    MODULE_OPTIONS = dict(mutually_exclusive=[("xml", option) for option in _DEFINITION])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = self.p["name"]

    # ------------------------------------------------------------------ checks

    def _refuse_conflicts(self, wanted) -> None:
        """Another pool on the same directory or devices: libvirt would refuse the define."""
        info = px.read(wanted)
        mine = {os.path.normpath(info["path"])} if info["path"] and info["type"] != "logical" else set()
        devices = set(info["source"]["devices"])
        for pool, name in handles.pool_names(self.conn):
            if name == self.name:
                continue
            other = px.read(handles.definition(pool))
            if other["path"] and other["type"] != "logical" and os.path.normpath(other["path"]) in mine:
                raise Conflict(
                    f"Storage pool {name!r} already uses the directory {other['path']}.",
                    hint="Two pools on one directory would list the same files: use that pool, or another path.",
                )
            if devices & set(other["source"]["devices"]):
                raise Conflict(f"Storage pool {name!r} already uses the device(s) {sorted(devices)}.")

    def _needs_build(self, root) -> bool:
        info = px.read(root)
        return (
            bool(self.p["build"])
            and info["type"] in ("dir", "netfs")
            and bool(info["path"])
            and not os.path.isdir(info["path"])
        )

    # ------------------------------------------------------------------ steps

    def _define(self, pool, current, wanted) -> tuple:
        """Define or update the persistent config.

        Returns (the pool, None for a new one in check mode; the definition after; whether it changed).
        Making a transient pool persistent with the same definition is a change, but not a new definition.
        """
        if pool is None:
            if wanted is None:
                raise InvalidInput(
                    f"Storage pool {self.name!r} is not defined, and the options do not describe it.",
                    hint="Give path (and type, default dir), or xml, to define it.",
                )
            px.require_complete(wanted)
            self._refuse_conflicts(wanted)
            after = px.predict(wanted)
            facts = px.read(after)
            where = facts["path"] or ", ".join(facts["source"]["devices"]) or facts["source"]["name"] or self.name
            if self.note(f"define ({after.get('type')} pool on {where})"):
                pool = handles.call(
                    f"Defining storage pool {self.name}", self.conn.storagePoolDefineXML, px.tostring(after), 0
                )
            return pool, after, True
        if wanted is None:
            wanted = current
        if wanted.get("type") != current.get("type"):
            raise InvalidInput(
                f"Storage pool {self.name!r} is a {current.get('type')} pool; it cannot become a "
                f"{wanted.get('type')} pool.",
                hint="Remove it (state=absent; its files stay) and define it again with the new type.",
            )
        wanted_uuid, current_uuid = dx.text(wanted, "uuid"), dx.text(current, "uuid")
        if wanted_uuid and current_uuid and wanted_uuid.lower() != current_uuid.lower():
            raise InvalidInput(f"The xml gives UUID {wanted_uuid}, but pool {self.name!r} has {current_uuid}.")
        diffs = px.differences(wanted, current)
        persistent = bool(pool.isPersistent())
        if not diffs and persistent:
            return pool, current, False
        if diffs:
            self._refuse_conflicts(wanted)
        after = px.predict(wanted, current)
        what = "; ".join(diffs) if diffs else "make the transient pool persistent"
        if self.note(f"define: {what}"):
            pool = handles.call(
                f"Defining storage pool {self.name}", self.conn.storagePoolDefineXML, px.tostring(after), 0
            )
        return pool, after, bool(diffs)

    def _autostart(self, pool, before: bool) -> bool:
        wanted = self.p["autostart"]
        if wanted is None or bool(wanted) == before:
            return before
        if self.note("autostart" if wanted else "no autostart"):
            handles.call(f"Setting the autostart flag of pool {self.name}", pool.setAutostart, int(wanted))
        return bool(wanted)

    def _start(self, pool, root) -> None:
        if self._needs_build(root) and self.note("build (create the directory)"):
            handles.call(f"Building storage pool {self.name}", pool.build, 0)
        if self.note("start"):
            handles.call(f"Starting storage pool {self.name}", pool.create, 0)

    def _stop(self, pool, what: str = "stop") -> None:
        if self.note(what):
            handles.call(f"Stopping storage pool {self.name}", pool.destroy)

    def _pending_before(self, pool) -> bool:
        """An active pool running with an older definition than its persistent one."""
        if not (pool.isActive() and pool.isPersistent()):
            return False
        return bool(px.differences(handles.definition(pool), handles.live(pool)))

    def _warn_named_disks(self) -> None:
        """Domains with ``<disk type='volume'>`` from this pool cannot start while it is stopped."""
        names = sorted({u["domain"] for u in disks_in_pool(self.scan(), self.name, None)})
        if names:
            self.warn(
                f"Domain(s) {', '.join(names)} take disks from pool {self.name} by name (type='volume'); "
                "they cannot start while the pool is inactive."
            )

    # ------------------------------------------------------------------ run

    def _converge(self, pool, current, wanted, was_active: bool, autostart_before: bool) -> tuple:
        """Every state but absent. Returns (after text, pending_restart, refreshed)."""
        p = self.p
        state = p["state"]
        pending_before = self._pending_before(pool) if pool is not None else False
        pool, after_root, redefined = self._define(pool, current, wanted)
        autostart = self._autostart(pool, autostart_before)
        # a definition the running pool does not have yet
        pending = pending_before or (redefined and was_active)
        active_after = was_active
        if state == "active" and not was_active:
            self._start(pool, after_root)
            active_after = True
        elif state == "inactive" and was_active:
            self._stop(pool)
            self._warn_named_disks()
            active_after = False
        elif was_active and pending and p["restart"]:
            self._stop(pool, "restart")
            self._start(pool, after_root)
            pending = False
        refreshed = False
        if p["refresh"] and active_after and was_active and not self.check_mode:
            handles.call(f"Refreshing storage pool {self.name}", pool.refresh, 0)
            refreshed = True
        after = snapshot("running" if active_after else "inactive", autostart, after_root)
        return after, bool(active_after and pending), refreshed

    def run(self) -> dict:
        vd.validate_name(self.name, "name")
        pool = handles.lookup_pool(self.conn, self.name)
        current = handles.definition(pool) if pool is not None else None
        wanted = px.from_options(self.p, current.get("type") if current is not None else None)
        was_active = bool(pool.isActive()) if pool is not None else False
        autostart_before = bool(pool.autostart()) if pool is not None and pool.isPersistent() else False
        state_before = handles.POOL_STATES.get(pool.info()[0], "unknown") if pool is not None else None
        header = f"{self.name} (state, autostart and definition)"
        before = snapshot(state_before, autostart_before, current)
        deleted: list[str] = []
        pending = refreshed = False
        if self.p["state"] == "absent":
            deleted = remove(self, pool, current)
            after = ""
        else:
            after, pending, refreshed = self._converge(pool, current, wanted, was_active, autostart_before)
        changed = bool(self.changes)
        final = handles.lookup_pool(self.conn, self.name)
        return dict(
            changed=changed,
            changes=self.changes,
            pending_restart=pending,
            refreshed=refreshed,
            deleted_volumes=deleted,
            pool=handles.pool_info(final) if final is not None else None,
            diff=dict(before_header=header, after_header=header, before=before, after=after if changed else before),
        )
