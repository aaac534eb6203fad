# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The domain's disk files against everything else on the host: what kvm_domain refuses, and why.

Two rules, both answered from one ``HostScan`` of the host (``users`` and
``dependents``), both raised before anything changed:

* a domain whose writable disk is the backing file of other disks (a clone
  base) is not started: writing to a base corrupts every overlay on it;
* ``remove_storage`` deletes only files no other domain uses and nothing else
  is built on; the plan lists what ``state=absent`` may delete.

``scan`` is a callable so that the host is scanned only when a disk needs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

REMOVE_STORAGE = ("none", "overlays", "all")


def refuse_base_start(root, name: str, scan: Callable[[], HostScan]) -> None:
    """Raise Conflict when a writable disk of domain ``name`` (XML ``root``) backs other disks."""
    disks = dx.writable_file_disks(root)
    problems = []
    for d in disks:
        deps = scan().dependents(d["path"], exclude=name)
        if deps:
            problems.append(f"{d['path']} backs {', '.join(deps)}")
    if problems:
        raise Conflict(
            f"Refusing to start domain {name}: its writable disk is the base of other disks "
            f"({'; '.join(problems)}). Writing to a base corrupts every overlay on it.",
            hint="Start a clone instead, or mark the disk <readonly/>; allow_base_start: true overrides "
            "this (dangerous).",
        )


def candidates(root, mode: str) -> list[str]:
    """The existing files ``remove_storage: mode`` names for deletion, before any check."""
    if mode not in ("overlays", "all"):
        return []
    disks = [d["path"] for d in dx.writable_file_disks(root)]
    if mode == "overlays":
        prov = dx.provenance(root)
        created = {os.path.realpath(d["path"]) for d in (prov or {}).get("created_disks", []) if d.get("path")}
        disks = [p for p in disks if os.path.realpath(p) in created]
    return [p for p in dict.fromkeys(disks) if os.path.exists(p)]


def storage_plan(root, name: str, mode: str, scan: Callable[[], HostScan]) -> list[str]:
    """The files ``state=absent`` deletes; raises StorageError (nothing changed) on any refusal."""
    disks = candidates(root, mode)
    if not disks:
        return []
    host = scan()
    users = host.users(disks)
    refusals = []
    for path in disks:
        others = sorted({f"{u['domain']} ({u['relation']})" for u in users[path] if u["domain"] not in (None, name)})
        deps = host.dependents(path, exclude=name)
        if others:
            refusals.append(f"{path} is used by {', '.join(others)}")
        elif deps:
            refusals.append(f"{path} is the backing file of {', '.join(deps)}")
    if refusals:
        raise StorageError(
            f"Refusing to remove the storage of domain {name}, nothing was changed: {'; '.join(refusals)}.",
            hint="Remove the domains that depend on these files first, or use remove_storage: none.",
        )
    return disks
