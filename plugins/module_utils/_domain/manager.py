# Private to the virtops.kvm collection: not a public API, may change without notice.
"""DomainManager, the kvm_domain module's work: compare, then act, then report.

One ``run()`` per task: validate the options, read the domain, refuse what is
unsafe (a clone base to start, storage in use to delete) before anything
changes, then config (``config``), state (``transitions``) or removal
(``removal``), each noting its changes in check mode as in a real run. The
result's ``changed``, ``changes``, ``pending_restart`` and diff (state,
autostart and inactive XML, before and after) are therefore the same either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _xml_compare as xc
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._domain.config import Config, not_defined, validate
from ansible_collections.virtops.kvm.plugins.module_utils._domain.context import DomainContext
from ansible_collections.virtops.kvm.plugins.module_utils._domain.disks import REMOVE_STORAGE, refuse_base_start
from ansible_collections.virtops.kvm.plugins.module_utils._domain.info import domain_info
from ansible_collections.virtops.kvm.plugins.module_utils._domain.removal import absent
from ansible_collections.virtops.kvm.plugins.module_utils._domain.restart import restart_differences
from ansible_collections.virtops.kvm.plugins.module_utils._domain.transitions import Transitions, register_events
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager, Runner, Which
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, state_name

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


def _snapshot(state: str, autostart: bool, root) -> str:
    """The diff's text: state, autostart flag and inactive XML."""
    return f"state: {state}\nautostart: {str(autostart).lower()}\n\n" + (dx.tostring(root) if root is not None else "")


class DomainManager(Manager):
    """Bring one domain to the requested config and state (see the kvm_domain module)."""

    ARGUMENT_SPEC = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=STATES),
        xml=dict(type="str"),
        domain_type=dict(type="str", choices=["auto", "kvm", "qemu"]),
        memory=dict(type="int"),
        vcpus=dict(type="int"),
        autostart=dict(type="bool"),
        title=dict(type="str"),
        description=dict(type="str"),
        shutdown_timeout=dict(type="int", default=120),
        force=dict(type="bool", default=False),
        remove_storage=dict(type="str", default="none", choices=list(REMOVE_STORAGE)),
        allow_base_start=dict(type="bool", default=False),
    )

    def __init__(
        self,
        params: dict,
        connection: Connection | None = None,
        check_mode: bool = False,
        *,
        runner: Runner | None = None,
        which: Which | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(params, connection, check_mode, runner=runner, which=which)
        self.name = self.p["name"]
        self.ctx = DomainContext(self.connection, self.name, check_mode)
        self.config = Config(self.ctx, self.p, self.warn)
        self.transitions = Transitions(self.ctx, self.p["shutdown_timeout"], self.p["force"], sleep, clock)
        self._scan: HostScan | None = None

    def scan(self) -> HostScan:
        """The host's domains and disk users, read once per run and only when a rule needs them."""
        if self._scan is None:
            self._scan = HostScan.take(self.conn)
        return self._scan

    def _autostart_of(self, dom) -> bool:
        return bool(dom.autostart()) if dom is not None and dom.isPersistent() else False

    def _converge(self, dom, wanted_root, state: str, before_state: str | None) -> tuple[str, bool]:
        """Every state but absent: config, autostart, live metadata, transition. Returns (after text, pending)."""
        ctx = self.ctx
        if dom is None and wanted_root is None:
            raise not_defined(self.name)
        was_active = dom is not None and bool(dom.isActive())
        live_before = ctx.live_root(dom) if was_active else None
        if state in ("running", "paused", "rebooted") and not was_active and not self.p["allow_base_start"]:
            # refuse before anything changes, not after a define
            root = wanted_root if wanted_root is not None else ctx.inactive_root(dom)
            refuse_base_start(root, self.name, self.scan)
        defined_now = dom is None
        dom, after_root = self.config.apply(dom, wanted_root)
        self.config.autostart(dom)
        self.config.live_metadata(dom)
        if state != "present":
            self.transitions.to(None if (defined_now and self.check_mode) else dom, state)
        autostart = self.p["autostart"]
        if autostart is None:
            autostart = self._autostart_of(dom)
        after_text = _snapshot(
            _TARGET_STATE_NAME.get(state) or (before_state or "shutoff"), bool(autostart), after_root
        )
        stays_up = was_active and state in ("present", "running", "paused", "rebooted")
        if self.check_mode:
            pending = bool(stays_up and restart_differences(after_root, live_before))
        else:
            pending = bool(dom is not None and dom.isActive() and dom.isPersistent() and stays_up) and bool(
                restart_differences(ctx.inactive_root(dom), ctx.live_root(dom))
            )
        return after_text, pending

    def run(self) -> dict:
        ctx = self.ctx
        wanted_root = validate(self.p)
        state = self.p["state"]
        if state == "rebooted":
            register_events()
        dom = ctx.lookup()
        before_state = state_name(ctx.state(dom)) if dom is not None else None
        before_text = ""
        if dom is not None:
            before_text = _snapshot(before_state, self._autostart_of(dom), xc.canonical(ctx.inactive_root(dom)))
        removed: list[str] = []
        if state == "absent":
            removed = absent(ctx, dom, self.transitions, self.p["remove_storage"], self.scan)
            after_text, pending = "", False
        else:
            after_text, pending = self._converge(dom, wanted_root, state, before_state)
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
            domain=domain_info(final, self.uri, pending_restart=pending) if final else None,
        )
