# Private to the virtops.kvm collection: not a public API, may change without notice.
"""state=absent: delete a snapshot; an external one is merged back first, so no orphan layer is left.

Internal: libvirt deletes it from the images (``virsh snapshot-delete``).

External, per covered disk whose chain still holds the snapshot's base: the
layer above the base and the base become one, by the cheapest merge the rule
allows (``layers.others``, asked before anything is written):

* **commit** the layer above into the base, then delete that layer: it costs
  what the layer holds, not the disk's size. Only when no one else stands on
  either file (no other domain, clone, overlay or snapshot);
* **pull** the base into the layer above (its data copied up, the base leaves
  the chain but stays): when others stand on the base (a clone's base is never
  written by a snapshot delete), and no one on the layer above;
* otherwise refused, with nothing changed.

A running domain is merged live (``blockjob``); a shut-off one with
``qemu-img commit`` / ``qemu-img rebase``. Snapshots based on a deleted layer
are redefined onto the file that now holds its data; then libvirt forgets the
snapshot (metadata only: the files were dealt with here).
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import layers
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import xml as sx
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.blockjob import BlockJobs
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.context import SnapshotContext


def _refuse_internal(ctx: SnapshotContext, snap: dict) -> None:
    targets = [d["target"] for d in snap["disks"] if d["snapshot"] == "internal"]
    ctx.guard(targets, f"delete internal snapshot {snap['name']} (it lives inside the file)")


def _based_on(snapshots: dict, path: str, but: str) -> list[str]:
    """Snapshots (other than ``but``) whose base is ``path``."""
    real = layers.real(path)
    return sorted(
        n for n, s in snapshots.items() if n != but and any(layers.real(b["path"]) == real for b in s["bases"].values())
    )


def _merge(ctx: SnapshotContext, snap: dict, snapshots: dict, target: str, base: dict, files: list, live: bool):
    """How disk ``target`` loses the snapshot's boundary: a dict, or None when its chain no longer has it."""
    k = layers.position(files, base["path"])
    if not k:
        return None
    above, here = files[k - 1], files[k]
    own = {c["real"] for c in files}
    scan = ctx.scan()
    base_users = layers.others(scan, ctx.name, target, here["path"], own)
    base_users += [f"snapshot {n}" for n in _based_on(snapshots, here["path"], snap["name"])]
    above_users = layers.others(scan, ctx.name, target, above["path"], own)
    below = files[k + 1] if k + 1 < len(files) else None
    merge = dict(
        target=target,
        base=here["path"],
        base_format=here["format"],
        layer=above["path"],
        active=k == 1,
        child=files[k - 2]["path"] if k >= 2 else None,
        below=below["path"] if below else None,
        below_format=below["format"] if below else None,
        users=base_users,
    )
    if above_users:
        also = f", and its base {here['path']} by {', '.join(base_users)}" if base_users else ""
        raise StorageError(
            f"Cannot merge snapshot {snap['name']!r} of disk {target}: its layer {above['path']} is used by "
            f"{', '.join(above_users)}{also}.",
            hint="Delete or revert what stands on them first (kvm_snapshot_info shows the snapshots).",
        )
    if not base_users:
        merge["method"] = "commit"
    elif live and k != 1:
        raise StorageError(
            f"Cannot merge snapshot {snap['name']!r} of disk {target} while domain {ctx.name} runs: its base "
            f"{here['path']} is used by {', '.join(base_users)}, so it must be pulled into {above['path']}, and "
            "libvirt pulls live only into the disk's current file.",
            hint="Shut the domain down and run again (offline, qemu-img can pull into any layer).",
        )
    else:
        merge["method"] = "pull"
    return merge


def plan(ctx: SnapshotContext, snap: dict, snapshots: dict) -> dict:
    """``{kind, live, merges: [{target, method, base, layer, ...}]}``; refuses before anything changes."""
    live = ctx.active()
    if snap["kind"] == "internal":
        _refuse_internal(ctx, snap)
        return dict(kind="internal", live=live, merges=[])
    chains = ctx.chains()
    merges = []
    for target, base in sorted(snap["bases"].items()):
        if target in chains:
            m = _merge(ctx, snap, snapshots, target, base, chains[target], live)
            if m is not None:
                merges.append(m)
    return dict(kind="external", live=live, merges=merges)


def _describe(m: dict) -> str:
    if m["method"] == "commit":
        return f"disk {m['target']}: commit {m['layer']} into {m['base']}, then delete {m['layer']}"
    users = ", ".join(m["users"])
    return f"disk {m['target']}: pull {m['base']} into {m['layer']} ({m['base']} stays: used by {users})"


def _commit_offline(ctx: SnapshotContext, m: dict) -> None:
    rc, out, err = ctx.runner(["qemu-img", "commit", "-q", "-f", "qcow2", "-b", m["base"], m["layer"]])
    if rc != 0:
        raise StorageError(f"qemu-img commit of {m['layer']} into {m['base']} failed: {err.strip() or out.strip()}")
    if m["active"]:
        root = dx.parse(ctx.inactive_xml())
        sx.set_disk_source(root, m["target"], m["base"], m["base_format"])
        ctx.define(root)
        return
    argv = ["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-b", m["base"], "-F", m["base_format"], m["child"]]
    rc, out, err = ctx.runner(argv)
    if rc != 0:
        raise StorageError(f"Pointing {m['child']} at {m['base']} failed: {err.strip() or out.strip()}")


def _pull_offline(ctx: SnapshotContext, m: dict) -> None:
    argv = ["qemu-img", "rebase", "-q", "-f", "qcow2", "-b", m["below"] or ""]
    if m["below"]:
        argv += ["-F", m["below_format"]]
    rc, out, err = ctx.runner([*argv, m["layer"]])
    if rc != 0:
        why = err.strip() or out.strip()
        raise StorageError(f"qemu-img rebase of {m['layer']} (pulling {m['base']} into it) failed: {why}")


def _sync_config(ctx: SnapshotContext, target: str) -> None:
    """After a live pivot, the persistent config's disk follows the live one (if libvirt did not already)."""
    if not ctx.persistent():
        return
    live = {d["target"]: d for d in dx.disks(ctx.root())}.get(target)
    root = dx.parse(ctx.inactive_xml())
    config = {d["target"]: d for d in dx.disks(root)}.get(target)
    if live and config and live["path"] != config["path"]:
        sx.set_disk_source(root, target, live["path"], live["format"] or _disk_files.detect_format(live["path"]))
        ctx.define(root)


def delete(ctx: SnapshotContext, snap: dict, snapshots: dict, p: dict, jobs: BlockJobs) -> list[str]:
    """Delete as planned (nothing in check mode); returns the layer files deleted (in check mode: to be)."""
    name = snap["name"]
    if p["kind"] == "internal":
        ctx.note(f"delete internal snapshot {name}")
        if not ctx.check_mode:
            ctx.call(f"Deleting snapshot {name}", snap["handle"].delete, 0)
        return []
    removed = []
    for m in p["merges"]:
        ctx.note(_describe(m))
        moved = _based_on(snapshots, m["layer"], name) if m["method"] == "commit" else []
        for other in moved:
            ctx.note(f"snapshot {other}: its base is now {m['base']}")
        if m["method"] == "commit":
            removed.append(m["layer"])
        if ctx.check_mode:
            continue
        if m["method"] == "commit":
            if p["live"]:
                jobs.commit(m["target"], m["base"], m["layer"], m["active"])
                _sync_config(ctx, m["target"])
            else:
                _commit_offline(ctx, m)
            for other in moved:
                s = snapshots[other]
                new = dict(path=m["base"], format=m["base_format"])
                ctx.redefine(s, sx.redefine_xml(s["xml"], bases={t: new for t in s["bases"] if _same(s, t, m)}))
            _disk_files.unlink(m["layer"])
        elif p["live"]:
            jobs.pull(m["target"], m["below"])
        else:
            _pull_offline(ctx, m)
    ctx.note(f"forget snapshot {name}")
    if not ctx.check_mode:
        ctx.forget(snap)
    return removed


def _same(s: dict, target: str, m: dict) -> bool:
    return layers.real(s["bases"][target]["path"]) == layers.real(m["layer"])
