# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The module result of a run: one entry per clone, the bases and their dependents, the diff.

Built from the plan and the outcomes alone (in check mode, every planned
action counted as done), so check mode and a real run report the same shape.
A base's dependents come from the run's one host scan, corrected by what the
run itself created and removed, so no second scan is needed after acting.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils._clone import identity
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import CREATE, REMOVE, Item, Outcome, Plan
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

_DISK_KEYS = ("target", "path", "format", "backing_file", "backing_format", "mode")


def build(plan: Plan, outcomes: dict[str, Outcome], bases: list[dict], removed: list[str], kept: list[dict]) -> dict:
    """``{changed, clones, bases, identity_appliances, diff[, domain_type_reason, removed_files, kept_files]}``."""
    clones, before, after = [], {}, {}
    for item in plan.items:
        o = outcomes.get(item.name, Outcome(ok=True, changed=False))
        entry = _entry(item, o)
        clones.append(entry)
        before[item.name] = _before(item)
        after[item.name] = (
            dict(state="absent") if entry["state"] == "absent" else dict(_identity(item), state=entry["state"])
        )
    base_changed = [b.pop("changed") for b in bases]
    changed = any(c["changed"] for c in clones) or any(base_changed)
    resets = [i for i in plan.items if i.action == CREATE and i.identity]
    result = dict(
        changed=changed,
        clones=clones,
        bases=bases,
        # an appliance takes at most 255 drives: the new clones' disks are cut over as few as that allows
        identity_appliances=len(identity.chunks(resets)),
        diff=dict(before=dict(clones=before), after=dict(clones=after)),
    )
    if plan.template is not None and plan.domain_type_reason:
        result["domain_type_reason"] = plan.domain_type_reason
    if removed:
        result["removed_files"] = removed
    if kept:
        result["kept_files"] = kept
    return result


def _state_after(item: Item, o: Outcome) -> str:
    """present, running or absent: the clone's state after the run (or after it, in check mode)."""
    if item.action == CREATE:
        want = "running" if item.spec["state"] == "running" else "present"
        return want if o.ok else "absent"
    if item.absent:
        return "absent" if o.ok else "present"
    running = item.active or ("start" in item.actions and o.ok)
    return "running" if running else "present"


def _entry(item: Item, o: Outcome) -> dict:
    entry = dict(
        name=item.name,
        uuid=item.uuid,
        macs=item.macs,
        disks=[{k: d.get(k) for k in _DISK_KEYS} for d in item.disks],
        changed=bool(o.changed),
        state=_state_after(item, o),
    )
    if item.xml_path:
        entry["xml_file"] = item.xml_path
    if o.identity or item.identity_record:
        entry["identity"] = o.identity or item.identity_record
    if item.identity_source:
        entry["identity_source"] = item.identity_source
    seed = item.seed["path"] if item.seed else item.seed_file
    if seed and entry["state"] != "absent":
        entry["seed"] = seed
    if not o.ok:
        entry["failed"] = True
        entry["msg"] = o.error
    return entry


def _identity(item: Item) -> dict:
    return dict(uuid=item.uuid, macs=item.macs, disks=[d["path"] for d in item.disks])


def _before(item: Item) -> dict:
    """The clone as the run found it (for the diff)."""
    if item.action == CREATE:
        return dict(state="absent")
    if item.absent:
        state = "running" if item.active else ("present" if item.action == REMOVE else "absent")
    else:
        state = "running" if item.active else "present"
    return dict(state=state, **_identity(item))


def bases_report(
    plan: Plan, outcomes: dict[str, Outcome], scan: HostScan, protect_base: bool, check_mode: bool
) -> list[dict]:
    """Per base: path, read_only, dependents (domain names), and a ``changed`` flag ``build`` pops.

    Dependents are the domains that had the base in a disk's backing chain when
    the run began, without the clones it removed, with the clones it created.
    """
    if not plan.bases:
        return []
    users = scan.users(plan.bases)
    done = {i.name: i.action for i in plan.items if i.name in outcomes and outcomes[i.name].ok}
    created = {n for n, action in done.items() if action == CREATE}
    removed = {n for n, action in done.items() if action == REMOVE}
    out = []
    for base in plan.bases:
        deps = ({u["domain"] for u in users[base] if u["relation"] == "backing"} - removed) | created
        writable = bool(os.stat(base).st_mode & 0o222)
        will_protect = protect_base and bool(deps)
        out.append(
            dict(
                path=base,
                read_only=not writable or (check_mode and will_protect),
                dependents=sorted(deps),
                changed=check_mode and will_protect and writable,
            )
        )
    return out
