# Private to the virtops.kvm collection: not a public API, may change without notice.
"""SnapshotManager, the kvm_snapshot module's work: compare, then act, then report.

One ``run()`` per task: validate the names, read the domain and its
snapshots, then create (``create``), revert (``revert``) or delete
(``delete``), each refusing what is unsafe before anything changes and noting
its changes in check mode as in a real run. The diff (the domain's state,
current snapshot, snapshot list and disk chains, before and after) is
predicted from the same plan either way, so check mode and a real run report
the same ``changed``, ``changes`` and diff.
"""

from __future__ import annotations

from functools import cached_property

from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import state_name
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import create, delete, info, layers, revert
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import xml as sx
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.blockjob import BlockJobs
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.context import SnapshotContext


def view(state: str, current: str | None, snapshots: list[tuple[str, str]], chains: dict[str, list[str]]) -> str:
    """The diff's text: domain state, current snapshot, the snapshots and each disk's chain."""
    lines = [f"state: {state}", f"current snapshot: {current or '(none)'}", "snapshots:"]
    lines += [f"  - {n} ({kind})" for n, kind in snapshots] or ["  (none)"]
    lines.append("disks:")
    lines += [f"  {t}: {' <- '.join(files)}" for t, files in sorted(chains.items())]
    return "\n".join(lines) + "\n"


class SnapshotManager(Manager):
    """Bring one snapshot of one domain to the requested state (see the kvm_snapshot module)."""

    ARGUMENT_SPEC = dict(
        domain=dict(type="str", required=True),
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "current", "absent"]),
        kind=dict(type="str", default="internal", choices=["internal", "external"]),
        description=dict(type="str"),
        quiesce=dict(type="str", default="auto", choices=["auto", "agent", "pause", "none"]),
        drop_later_state=dict(type="bool", default=False),
        timeout=dict(type="int", default=300),
    )

    @cached_property
    def ctx(self) -> SnapshotContext:
        """The run's domain, journal and reads (made on first use)."""
        return SnapshotContext(self.connection, self.p["domain"], self.check_mode, self.runner)

    def _validate(self) -> None:
        vd.validate_name(self.p["domain"], "domain")
        vd.validate_name(self.p["name"], "name")
        if self.p["description"] is not None:
            vd.xml_text(self.p["description"], "description")
        if self.p["timeout"] < 1:
            raise InvalidInput("timeout must be at least 1 second.")

    def _now(self, snapshots: dict) -> tuple:
        """(state, current, [(name, kind)], {target: [paths]}) of the domain as it is."""
        chains = {t: [c["path"] for c in files] for t, files in info.readable_chains(self.ctx).items()}
        current = next((n for n, s in snapshots.items() if s["current"]), None)
        return (
            state_name(self.ctx.state()[0]),
            current,
            [(n, s["kind"]) for n, s in snapshots.items()],
            chains,
        )

    def run(self) -> dict:
        self._validate()
        ctx, name, state = self.ctx, self.p["name"], self.p["state"]
        snapshots = ctx.snapshots()
        before = self._now(snapshots)
        after = list(before)
        snap = snapshots.get(name)
        out = dict(created_files=[], removed_files=[], kept_files=[], merged=[])
        if state == "present":
            if snap is None:
                after = self._create(snapshots, after, out)
            else:
                self._update(snap)
        elif state == "current":
            if snap is None:
                known = ", ".join(snapshots) or "none"
                raise InvalidInput(
                    f"Domain {ctx.name} has no snapshot named {name!r} to revert to (it has: {known}).",
                    hint="Check the name (virtops.kvm.kvm_snapshot_info lists them).",
                )
            after = self._revert(snap, snapshots, after, out)
        elif snap is not None:
            after = self._delete(snap, snapshots, after, out)
        final = ctx.snapshots() if ctx.changed and not self.check_mode else snapshots
        result_snap = final.get(name)
        header = f"{ctx.name} (snapshots and disks)"
        return dict(
            changed=ctx.changed,
            changes=ctx.changes,
            snapshot=info.snapshot_info(result_snap, final, info.readable_chains(ctx)) if result_snap else None,
            **out,
            diff=dict(
                before_header=header,
                after_header=header,
                before=view(*before),
                after=view(*after) if ctx.changed else view(*before),
            ),
        )

    def _update(self, snap: dict) -> None:
        kind, description = self.p["kind"], self.p["description"]
        if snap["kind"] != kind:
            raise Conflict(
                f"Snapshot {snap['name']!r} of domain {self.ctx.name} exists and is {snap['kind']}, not {kind}.",
                hint="Use another name, or delete it first (state=absent).",
            )
        if description is not None and description != (snap["description"] or ""):
            self.ctx.note(f"set the description of snapshot {snap['name']}")
            if not self.check_mode:
                self.ctx.redefine(snap, sx.redefine_xml(snap["xml"], description=description))

    def _create(self, snapshots: dict, after: list, out: dict) -> list:
        name = self.p["name"]
        p = create.plan(self.ctx, name, self.p["kind"], self.p["description"], self.p["quiesce"], snapshots)
        create.create(self.ctx, name, p)
        state, _current, listed, chains = after
        if p["kind"] == "external":
            out["created_files"] = [d["file"] for d in p["disks"]]
            for d in p["disks"]:
                chains = dict(chains, **{d["target"]: [d["file"], *chains.get(d["target"], [])]})
        return [state, name, [*listed, (name, p["kind"])], chains]

    def _revert(self, snap: dict, snapshots: dict, after: list, out: dict) -> list:
        p = revert.plan(self.ctx, snap, snapshots, self.p["drop_later_state"])
        if not p["needed"]:
            return after
        out["removed_files"] = revert.revert(self.ctx, snap, p)
        out["created_files"] = [d["file"] for d in p["disks"]]
        out["kept_files"] = [f for d in p["disks"] for f in d["keep"]]
        verb = "Would keep" if self.check_mode else "Kept"
        for f in out["kept_files"]:
            self.warn(
                f"{verb} {f}: it holds the state after snapshot {snap['name']} and is no longer the domain's disk "
                "(drop_later_state=true deletes such files when reverting)."
            )
        _state, _current, listed, chains = after
        for d in p["disks"]:
            chains = dict(chains, **{d["target"]: [d["file"], *(c["path"] for c in layers.chain(d["base"]))]})
        return [p["state_after"], snap["name"], listed, chains]

    def _delete(self, snap: dict, snapshots: dict, after: list, out: dict) -> list:
        p = delete.plan(self.ctx, snap, snapshots)
        out["removed_files"] = delete.delete(self.ctx, snap, snapshots, p, BlockJobs(self.ctx, self.p["timeout"]))
        out["merged"] = [
            dict(target=m["target"], method=m["method"], base=m["base"], layer=m["layer"]) for m in p["merges"]
        ]
        state, current, listed, chains = after
        for m in p["merges"]:
            files = chains.get(m["target"], [])
            gone = m["layer"] if m["method"] == "commit" else m["base"]
            chains = dict(chains, **{m["target"]: [f for f in files if f != gone]})
        parent = snap["parent"] if current == snap["name"] else current
        return [state, parent, [x for x in listed if x[0] != snap["name"]], chains]
