# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The identity-reset phase of a run: after the new clones' files are made, before any is defined.

The manager hands it the clones whose files exist and that no domain uses
yet; it checks them with the host's write guard, resets them in as few
appliances as libguestfs's drive limit allows (identity.py), and records each
report in the clone's XML (its provenance). It returns what the define phase
and the result need: name -> error for the clones that must not be defined,
name -> report for the others, and libguestfs's warnings.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import identity
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import Item
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import decide_force_tcg, kvm_usable
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan


def reset_identities(
    conn, ready: list[Item], cfg: dict, handle_factory=None
) -> tuple[dict[str, str], dict[str, dict], list[str]]:
    """The batch's appliances over every new clone disk: (name -> error, name -> report, warnings)."""
    todo = [i for i in ready if i.identity]
    if not todo:
        return {}, {}, []
    if handle_factory is None and _deps.guestfs is None:
        why = (
            "the identity reset needs the libguestfs Python binding, which is not installed: "
            f"{_deps.install_hint('guestfs')} Or set identity.operations to [] (and no files) to clone without it."
        )
        return {i.name: why for i in todo}, {}, []
    refused = _guard_disks(conn, todo)
    todo = [i for i in todo if i.name not in refused]
    if not todo:
        return refused, {}, []
    force_tcg, _why = decide_force_tcg(cfg["force_tcg"], lambda: kvm_usable(conn))
    done: dict = {}
    warnings: list[str] = []
    for chunk in identity.chunks(todo):  # an appliance takes at most 255 drives
        got, said = identity.reset_batch(chunk, cfg, force_tcg, handle_factory)
        done.update(got)
        warnings.extend(said)
    reports = {}
    for item in todo:
        o = done[item.name]
        if not o["ok"]:
            refused[item.name] = o["error"]
            continue
        reports[item.name] = o["report"]
        root = dx.parse(item.xml)
        identity.record(root, o["report"])
        item.xml = dx.tostring(root)
    return refused, reports, warnings


def _guard_disks(conn, items: list[Item]) -> dict[str, str]:
    """The host's write guard before the appliance writes into new clone disks: name -> refusal."""
    scan = HostScan.take(conn)
    refused = {}
    for item in items:
        try:
            scan.guard([d["path"] for d in item.disks], f"reset the identity of clone {item.name} offline")
        except StorageError as exc:
            refused[item.name] = exc.message
    return refused
