# Private to the virtops.kvm collection: not a public API, may change without notice.
"""DomainRun: one domain brought to the requested config and state, compare then act, with its result.

What a kvm_domain task does to one domain, and to each item of a batch: read
the domain, refuse what is unsafe (a clone base to start, storage in use to
delete, a wait for a boot with no log to read) before anything changes, then
config (``config``), state (``transitions``) or removal (``removal``), each
noting its changes in check mode as in a real run. The result's
``changed``, ``changes``, ``pending_restart`` and diff (state, autostart and
inactive XML, before and after) are therefore the same either way.

Given the run's ``HostScan`` (``from_scan``), the domain's handle, state and
XML come from that scan until the run changes the domain: a batch plans and
starts acting on every item from one read of the host. A batch also defers the wait for the boot marker
(``defer_boot_wait``): it waits for all of its domains at once, after every
start.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _xml_compare as xc
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._domain.boot import (
    BootWatch,
    compile_marker,
    no_log,
    serial_log,
)
from ansible_collections.virtops.kvm.plugins.module_utils._domain.config import Config, not_defined
from ansible_collections.virtops.kvm.plugins.module_utils._domain.context import DomainContext
from ansible_collections.virtops.kvm.plugins.module_utils._domain.disks import refuse_base_start
from ansible_collections.virtops.kvm.plugins.module_utils._domain.info import domain_info, scanned_info
from ansible_collections.virtops.kvm.plugins.module_utils._domain.removal import absent
from ansible_collections.virtops.kvm.plugins.module_utils._domain.restart import restart_differences
from ansible_collections.virtops.kvm.plugins.module_utils._domain.transitions import Transitions
from ansible_collections.virtops.kvm.plugins.module_utils._drift import Bases, dependents, refusal, rerecord
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, state_name
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock

STATES = ["present", "running", "shutdown", "destroyed", "paused", "absent", "rebooted"]

# The state each requested state leaves the domain in (for the diff; "present" keeps it).
_TARGET_STATE_NAME = {
    "running": "running",
    "rebooted": "running",
    "shutdown": "shutoff",
    "destroyed": "shutoff",
    "paused": "paused",
    "absent": None,
}
# The changes after which the guest boots (and a boot_marker is waited for).
_BOOTS = ("start", "reboot", "reset after timeout")


def snapshot(state: str, autostart: bool, root) -> str:
    """The diff's text: state, autostart flag and inactive XML."""
    return f"state: {state}\nautostart: {str(autostart).lower()}\n\n" + (dx.tostring(root) if root is not None else "")


class DomainRun:
    """One domain to its config and state (see the module doc); ``run()`` returns its result."""

    def __init__(
        self,
        connection: Connection,
        p: dict,
        name: str,
        wanted_root,
        check_mode: bool,
        *,
        scan: Callable[[], HostScan],
        warn: Callable[[str], None],
        clock: Clock = SYSTEM,
        from_scan: HostScan | None = None,
        defer_boot_wait: bool = False,
    ):
        self.connection = connection
        self.p = p
        self.name = name
        self.wanted_root = wanted_root
        self.check_mode = check_mode
        self.scan = scan
        self.clock = clock
        self.ctx = DomainContext(connection, name, check_mode, from_scan)
        self.config = Config(self.ctx, p, warn)
        self.transitions = Transitions(self.ctx, p["shutdown_timeout"], p["force"], clock)
        # a batch waits for the boots of all its domains in one loop, after every start
        self.defer_boot_wait = defer_boot_wait
        self.boot_watch: BootWatch | None = None

    def _autostart_of(self, dom) -> bool:
        return self.ctx.autostart(dom) if dom is not None else False

    def _boot_watch(self, dom, root, state: str, was_active: bool) -> BootWatch | None:
        """The wait for boot_marker when this run may boot the guest; refused up front without a log."""
        marker = compile_marker(self.p.get("boot_marker"))
        if marker is None or state not in ("running", "rebooted") or (was_active and state == "running"):
            return None
        if root is None:
            root = self.ctx.inactive_root(dom)
        path = serial_log(root)
        if path is None:
            raise no_log(self.name)
        timeout = self.p.get("boot_timeout")
        return BootWatch(self.name, path, marker, 180 if timeout is None else timeout, self.clock)

    def _check_base_drift(self, dom, root) -> None:
        """A clone whose overlay's base changed is not started (or, accepted, its base is re-recorded first)."""
        bases = Bases()
        drifts = bases.drifts(root)
        if not drifts:
            return
        if not self.p.get("accept_base_change"):
            deps = sorted({n for d in drifts for n in dependents(self.scan().domains.values(), d["base"])})
            raise refusal(f"Refusing to start domain {self.name}", drifts, deps)
        self.ctx.note("accept base change")
        if not self.check_mode and dom is not None:
            rerecord(dom, copy.deepcopy(root), bases)

    def _converge(self, dom, state: str, before_state: str | None) -> tuple[str, bool]:
        """Every state but absent: config, autostart, live metadata, transition. Returns (after text, pending)."""
        ctx = self.ctx
        wanted_root = self.wanted_root
        if dom is None and wanted_root is None:
            raise not_defined(self.name)
        was_active = ctx.active(dom)
        live_before = ctx.live_root(dom) if was_active else None
        if state in ("running", "paused", "rebooted") and not was_active:
            # refuse before anything changes, not after a define
            root = wanted_root if wanted_root is not None else ctx.inactive_root(dom)
            if not self.p["allow_base_start"]:
                refuse_base_start(root, self.name, self.scan)
            self._check_base_drift(dom, root)
        watch = self._boot_watch(dom, wanted_root, state, was_active)
        defined_now = dom is None
        dom, after_root = self.config.apply(dom, wanted_root)
        self.config.autostart(dom)
        self.config.live_metadata(dom)
        if state != "present":
            if watch is not None and not self.check_mode:
                watch.mark()
            self.transitions.to(None if (defined_now and self.check_mode) else dom, state)
            if watch is not None and not self.check_mode and any(c in _BOOTS for c in ctx.changes):
                if self.defer_boot_wait:
                    self.boot_watch = watch
                else:
                    watch.wait()
        autostart = self.p["autostart"]
        if autostart is None:
            autostart = self._autostart_of(dom)
        after_text = snapshot(_TARGET_STATE_NAME.get(state) or (before_state or "shutoff"), bool(autostart), after_root)
        stays_up = was_active and state in ("present", "running", "paused", "rebooted")
        if self.check_mode:
            pending = bool(stays_up and restart_differences(after_root, live_before))
        else:
            pending = bool(dom is not None and dom.isActive() and dom.isPersistent() and stays_up) and bool(
                restart_differences(ctx.inactive_root(dom), ctx.live_root(dom))
            )
        return after_text, pending

    def _info(self, dom, pending: bool) -> dict | None:
        if dom is None:
            return None
        if self.ctx.scanned is not None and dom is self.ctx.scanned.dom:
            return scanned_info(self.ctx.scanned, self.connection.uri, pending_restart=pending)
        return domain_info(dom, self.connection.uri, pending_restart=pending)

    def run(self) -> dict:
        ctx = self.ctx
        state = self.p["state"]
        dom = ctx.lookup()
        before_state = state_name(ctx.state(dom)) if dom is not None else None
        before_text = ""
        if dom is not None:
            before_text = snapshot(before_state, self._autostart_of(dom), xc.canonical(ctx.inactive_root(dom)))
        removed: list[str] = []
        if state == "absent":
            removed = absent(ctx, dom, self.transitions, self.p["remove_storage"], self.scan)
            after_text, pending = "", False
        else:
            after_text, pending = self._converge(dom, state, before_state)
        final = ctx.lookup() if state != "absent" or self.check_mode else None
        header = f"{self.name} (state and inactive XML)"
        return dict(
            changed=ctx.changed,
            pending_restart=pending,
            removed_files=removed,
            changes=ctx.changes,
            diff=dict(
                before_header=header,
                after_header=header,
                before=before_text,
                after=after_text if ctx.changed else before_text,
            ),
            domain=self._info(final, pending),
        )
