# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Reading snapshots, never changing them: the per-snapshot dicts (list, tree, current) and kvm_snapshot_info.

``snapshot_info`` is the dict kvm_snapshot (RV ``snapshot``) and
kvm_snapshot_info (RV ``snapshots``) both return: what ``virsh snapshot-info``
and ``snapshot-dumpxml`` say, the tree (parent, children) and, for external
snapshots, each disk's overlay and base, and whether the domain's disk still
stands on that base (``in_chain``: a delete then merges a layer).
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import layers
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.context import SnapshotContext


def snapshot_info(snap: dict, snapshots: dict, chains: dict[str, list[dict]]) -> dict:
    """One snapshot as kvm_snapshot_info returns it."""
    disks = []
    for d in snap["disks"]:
        base = snap["bases"].get(d["target"])
        files = chains.get(d["target"]) or []
        disks.append(
            dict(
                target=d["target"],
                snapshot=d["snapshot"],
                file=d["file"],
                base=base["path"] if base else None,
                in_chain=bool(base) and bool(layers.position(files, base["path"])),
            )
        )
    return dict(
        name=snap["name"],
        description=snap["description"],
        kind=snap["kind"],
        state=snap["state"],
        memory=snap["memory"] != "no",
        creation_time=snap["creation_time"],
        parent=snap["parent"],
        children=[n for n, s in snapshots.items() if s["parent"] == snap["name"]],
        current=snap["current"],
        disks=disks,
    )


def readable_chains(ctx: SnapshotContext) -> dict[str, list[dict]]:
    """The domain's disk chains, or what can be read of them (a broken chain is not an error when reading)."""
    out = {}
    for d in ctx.disks():
        if d["type"] != "file" or not d["path"]:
            continue
        try:
            out[d["target"]] = layers.chain(d["path"])
        except StorageError:
            out[d["target"]] = []
    return out


def all_info(ctx: SnapshotContext, snapshots: dict) -> list[dict]:
    chains = readable_chains(ctx)
    return [snapshot_info(s, snapshots, chains) for s in snapshots.values()]


class SnapshotInfoManager(Manager):
    """kvm_snapshot_info: a domain's snapshots, read-only."""

    ARGUMENT_SPEC = dict(
        domain=dict(type="str", required=True),
        name=dict(type="list", elements="str", aliases=["names"]),
    )
    READONLY = True

    def run(self) -> dict:
        vd.existing_name(self.p["domain"], "domain")
        ctx = SnapshotContext(self.connection, self.p["domain"], True, self.runner)
        snapshots = ctx.snapshots()
        infos = all_info(ctx, snapshots)
        wanted = self.p["name"]
        if wanted:
            by_name = {i["name"]: i for i in infos}
            infos = [by_name[n] for n in wanted if n in by_name]
        current = next((n for n, s in snapshots.items() if s["current"]), None)
        return dict(
            changed=False,
            snapshots=infos,
            current=current,
            roots=[n for n, s in snapshots.items() if not s["parent"]],
            missing=[n for n in wanted or [] if n not in snapshots],
            disks=[
                dict(target=t, chain=[c["path"] for c in files]) for t, files in sorted(readable_chains(ctx).items())
            ],
        )
