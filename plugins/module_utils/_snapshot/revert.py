# Private to the virtops.kvm collection: not a public API, may change without notice.
"""state=current: bring the domain back to a snapshot, unless it still is at it.

*At* a snapshot means nothing happened since it was taken or reverted to:

* a memory snapshot (internal, taken running or paused): it is libvirt's
  current snapshot and the domain still runs (or is paused) from it
  (state reason ``from_snapshot``);
* a disk-only internal snapshot: the domain is shut off and every covered
  image is unchanged since the snapshot (``qcow2.at_internal``);
* an external snapshot: the domain is shut off and every covered disk is an
  empty overlay directly on the snapshot's base.

An internal revert is libvirt's (``virsh snapshot-revert``); the domain's
current state is discarded, as there. An external revert powers the domain
off (a disk-only snapshot holds no memory), makes each covered disk a fresh
overlay ``<domain>.<target>.<snapshot>@<n>.qcow2`` on the snapshot's base and
makes the snapshot libvirt's current one. The files that held the state after
the snapshot are kept (and reported) unless ``drop`` says to delete them;
files another snapshot, domain or overlay still stands on are always kept.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, KvmError, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import PAUSED, RUNNING
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import layers, qcow2
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import xml as sx
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.context import SnapshotContext


def _at_internal(ctx: SnapshotContext, snap: dict, chains: dict) -> bool:
    lv = _deps.libvirt
    state, reason = ctx.state()
    if snap["memory"] == "internal":
        from_snapshot = (state == RUNNING and reason == lv.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT) or (
            state == PAUSED and reason == lv.VIR_DOMAIN_PAUSED_FROM_SNAPSHOT
        )
        return snap["current"] and from_snapshot
    if ctx.active():
        return False
    targets = [d["target"] for d in snap["disks"] if d["snapshot"] == "internal"]
    return all(t in chains and qcow2.at_internal(chains[t][0]["path"], snap["name"]) for t in targets)


def _at_external(ctx: SnapshotContext, snap: dict, chains: dict) -> bool:
    if ctx.active():
        return False
    for target, base in snap["bases"].items():
        files = chains.get(target)
        if not files or len(files) < 2 or files[1]["real"] != layers.real(base["path"]):
            return False
        if not qcow2.is_empty(files[0]["path"]):
            return False
    return True


def needed_files(snapshots: dict) -> set[str]:
    """Real paths of every file some snapshot's base stands on (they are never dropped)."""
    out: set[str] = set()
    for s in snapshots.values():
        for base in s["bases"].values():
            if os.path.exists(base["path"]):
                out |= {c["real"] for c in layers.chain(base["path"])}
    return out


def plan(ctx: SnapshotContext, snap: dict, snapshots: dict, drop: bool) -> dict:
    """``{kind, needed, live, state_after, disks: [{target, base, base_format, file, drop, keep}]}``."""
    chains = ctx.chains()
    live = ctx.active()
    if snap["kind"] == "internal":
        needed = not _at_internal(ctx, snap, chains)
        if needed:  # libvirt rewrites each covered file in place: nobody else may stand on it
            ctx.guard(sorted(chains), f"revert to internal snapshot {snap['name']} (libvirt rewrites the file)")
        state_after = snap["state"] if snap["state"] in ("running", "paused") else "shutoff"
        return dict(kind="internal", needed=needed, live=live, state_after=state_after, disks=[])
    if not ctx.persistent():
        raise InvalidInput(f"Domain {ctx.name} is transient; an external revert redefines its disks.")
    out = dict(kind="external", needed=not _at_external(ctx, snap, chains), live=live, state_after="shutoff", disks=[])
    if not out["needed"]:
        return out
    keep_always = needed_files(snapshots)
    scan = ctx.scan()
    taken: set[str] = set()
    for target, base in sorted(snap["bases"].items()):
        if not os.path.isfile(base["path"]):
            raise StorageError(
                f"The base image {base['path']} of snapshot {snap['name']!r} (disk {target}) is missing; "
                "the snapshot cannot be reverted to.",
                hint="Restore the file, or delete the snapshot (state=absent).",
            )
        files = chains.get(target)
        if files is None:
            raise InvalidInput(
                f"Snapshot {snap['name']!r} covers disk {target}, which domain {ctx.name} no longer has.",
                hint="Add the disk back (any file) so it can be pointed at the snapshot's base.",
            )
        below = {c["real"] for c in layers.chain(base["path"])}
        later = [c for c in files if c["real"] not in below]
        own = {c["real"] for c in later}
        droppable, stays = [], False
        for c in later:  # top first: what a kept file stands on is kept too
            stays = stays or c["real"] in keep_always or bool(layers.others(scan, ctx.name, target, c["path"], own))
            if not stays:
                droppable.append(c["path"])
        new = layers.revert_path(base["path"], ctx.name, target, snap["name"], taken)
        taken.add(new)
        out["disks"].append(
            dict(
                target=target,
                base=base["path"],
                base_format=base["format"] or _disk_files.detect_format(base["path"]),
                file=new,
                drop=droppable if drop else [],
                keep=[] if drop else droppable,
            )
        )
    return out


def revert(ctx: SnapshotContext, snap: dict, p: dict) -> list[str]:
    """Revert as planned (nothing in check mode); returns the files deleted (in check mode: to be deleted)."""
    if p["kind"] == "internal":
        ctx.note(f"revert to internal snapshot {snap['name']} (the domain's current state is discarded)")
        if not ctx.check_mode:
            ctx.call(f"Reverting to snapshot {snap['name']}", ctx.dom.revertToSnapshot, snap["handle"], 0)
        return []
    if p["live"]:
        ctx.note("power off (a disk-only snapshot holds no memory to return to)")
        if not ctx.check_mode:
            ctx.call("Powering off", ctx.dom.destroy)
    for d in p["disks"]:
        ctx.note(f"disk {d['target']}: new overlay {d['file']} on {d['base']}")
    ctx.note(f"make {snap['name']} the current snapshot")
    dropped = [f for d in p["disks"] for f in d["drop"]]
    for f in dropped:
        ctx.note(f"delete {f} (the state after the snapshot)")
    if ctx.check_mode:
        return dropped
    root = dx.parse(ctx.inactive_xml())
    made = []
    try:
        for d in p["disks"]:
            _disk_files.create_overlay(ctx.runner, d["base"], d["file"], d["base_format"])
            made.append(d["file"])
            sx.set_disk_source(root, d["target"], d["file"], "qcow2")
        ctx.define(root)
    except KvmError:
        for f in made:  # the domain still has its old disks: the new overlays are nobody's
            _disk_files.unlink(f)
        raise
    ctx.make_current(snap)
    for f in dropped:
        _disk_files.unlink(f)
    return dropped
