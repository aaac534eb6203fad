# Private to the virtops.kvm collection: not a public API, may change without notice.
"""state=absent: plan the storage removal, shut the domain down, undefine it, delete the planned files.

The plan (``disks.storage_plan``) refuses before anything changed; only then is
a running domain stopped like ``state=shutdown`` (it may time out and leave the
domain defined), undefined with its managed save image and snapshot and
checkpoint metadata, and its planned files deleted.
"""

from __future__ import annotations

from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._domain.context import DomainContext
from ansible_collections.virtops.kvm.plugins.module_utils._domain.disks import storage_plan
from ansible_collections.virtops.kvm.plugins.module_utils._domain.transitions import Transitions
from ansible_collections.virtops.kvm.plugins.module_utils._scan import NOSTATE, SHUTOFF, HostScan


def undefine(ctx: DomainContext, dom, nvram: bool) -> None:
    """Undefine with everything libvirt keeps beside the config; ``nvram`` deletes the NVRAM file too."""
    lv = _deps.libvirt
    keep = lv.VIR_DOMAIN_UNDEFINE_NVRAM if nvram else lv.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
    base = lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    # older drivers know fewer flags: try the full set, then less
    for flags in (base | keep | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA, base | keep, base):
        try:
            dom.undefineFlags(flags)
            return
        except lv.libvirtError as exc:
            if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
                raise libvirt_failed(exc, f"Undefining domain {ctx.name}") from exc
    ctx.call("Undefining", dom.undefine)


def absent(ctx: DomainContext, dom, transitions: Transitions, mode: str, scan: Callable[[], HostScan]) -> list[str]:
    """Remove the domain (if defined); returns the files deleted (in check mode: to be deleted)."""
    if dom is None:
        return []
    plan = storage_plan(ctx.inactive_root(dom), ctx.name, mode, scan)
    state = ctx.state(dom)
    if state not in (SHUTOFF, NOSTATE):
        transitions.stop(dom, state)
    ctx.note("undefine")
    if ctx.check_mode:
        return plan
    if dom.isPersistent():
        undefine(ctx, dom, nvram=mode in ("overlays", "all"))
    removed = []
    for path in plan:
        _disk_files.unlink(path)
        removed.append(path)
    return removed
