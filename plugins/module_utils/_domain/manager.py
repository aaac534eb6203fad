# Private to the virtops.kvm collection: not a public API, may change without notice.
"""DomainManager, the kvm_domain module's work: one domain (``name``/``xml``) or a batch (``domains``).

One domain is one ``DomainRun`` (converge.py): compare, then act, then
report. A batch (batch.py) plans every item from one scan of the host and
acts on the items that change concurrently. Either way the host is scanned
at most once per run, and only when a rule needs it (``scan``).
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._domain.batch import ITEM_OPTIONS, run_batch
from ansible_collections.virtops.kvm.plugins.module_utils._domain.boot import check_options
from ansible_collections.virtops.kvm.plugins.module_utils._domain.config import validate
from ansible_collections.virtops.kvm.plugins.module_utils._domain.converge import STATES, DomainRun
from ansible_collections.virtops.kvm.plugins.module_utils._domain.disks import REMOVE_STORAGE
from ansible_collections.virtops.kvm.plugins.module_utils._domain.transitions import register_events
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import ScansHost
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM


class DomainManager(ScansHost, Manager):
    """Bring one domain, or a batch of them, to the requested config and state (see the kvm_domain module)."""

    ARGUMENT_SPEC = dict(
        name=dict(type="str"),
        domains=dict(type="list", elements="dict", options=ITEM_OPTIONS),
        parallel=dict(type="int", default=32),
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
        accept_base_change=dict(type="bool", default=False),
        boot_marker=dict(type="str"),
        boot_timeout=dict(type="int", default=180),
    )
    MODULE_OPTIONS = dict(
        required_one_of=[("name", "xml", "domains")],
        mutually_exclusive=[("name", "domains"), ("xml", "domains")],
    )

    #: clock: the waits' time source (unit tests give a fake one)
    SEAMS = dict(clock=SYSTEM)

    def domain_run(
        self, p: dict, name: str, root, check_mode: bool, warn=None, from_scan=None, defer_boot_wait=False
    ) -> DomainRun:
        """The run of one domain over this manager's connection and scan."""
        return DomainRun(
            self.connection,
            p,
            name,
            root,
            check_mode,
            scan=self.scan,
            warn=warn or self.warn,
            clock=self.clock,
            from_scan=from_scan,
            defer_boot_wait=defer_boot_wait,
        )

    def run(self) -> dict:
        if self.p["domains"] is not None:
            return run_batch(self)
        name, root = validate(self.p)
        check_options(self.p)
        if self.p["state"] == "rebooted":
            register_events()
        return self.domain_run(self.p, name, root, self.check_mode).run()
