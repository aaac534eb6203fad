# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Live block commit and pull of a running domain's disk, through libvirt, with bounded waits.

A commit of the active layer runs until both sides hold the same data and is
then pivoted (the disk switches to the base); a commit of a layer below it, or
a pull into the active layer, ends by itself. Either way the job is polled
(``blockJobInfo``) until it is gone or ``timeout`` seconds have passed; at the
timeout the job is cancelled, which leaves the chain as it was.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtFailed, TimeoutExpired
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.context import SnapshotContext
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock, Deadline, backoff, wait_until

# Seconds between two looks at a block job: from FIRST_POLL, doubling up to POLL (small jobs end in ms).
FIRST_POLL = 0.01
POLL = 0.25


class BlockJobs:
    """Commit and pull on the disks of ``ctx``'s running domain."""

    def __init__(self, ctx: SnapshotContext, timeout: float, clock: Clock = SYSTEM):
        self.ctx = ctx
        self.timeout = timeout
        self.clock = clock

    def _info(self, target: str) -> dict:
        return self.ctx.call(f"Reading the block job of disk {target}", self.ctx.dom.blockJobInfo, target, 0) or {}

    def _give_up(self, target: str, what: str) -> None:
        lv = _deps.libvirt
        try:
            self.ctx.dom.blockJobAbort(target, 0)
        except lv.libvirtError:
            pass  # it may have ended meanwhile; the error below says what to check
        raise TimeoutExpired(
            f"The {what} of disk {target} of domain {self.ctx.name} did not finish within {self.timeout} s; "
            "it was cancelled and the disk's chain is as it was.",
            hint="Raise the timeout option (a large layer on a busy host takes longer).",
        )

    def _wait_gone(self, target: str, what: str) -> None:
        if not wait_until(
            lambda: not self._info(target), Deadline(self.timeout, self.clock), backoff(FIRST_POLL, POLL)
        ):
            self._give_up(target, what)

    def _pivot(self, target: str) -> None:
        """Wait until the active commit is ready, then switch the disk to the base."""
        lv = _deps.libvirt

        def pivoted() -> bool:
            info = self._info(target)
            if not info:
                raise LibvirtFailed(
                    f"The block commit of disk {target} of domain {self.ctx.name} ended before it could be "
                    "completed; the disk keeps its chain.",
                    hint="Look for the reason in the domain's log (/var/log/libvirt/qemu/<domain>.log).",
                )
            if info.get("cur") == info.get("end"):
                try:
                    self.ctx.dom.blockJobAbort(target, lv.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    return True
                except lv.libvirtError:
                    pass  # not ready for the pivot yet: look again
            return False

        if not wait_until(pivoted, Deadline(self.timeout, self.clock), backoff(FIRST_POLL, POLL)):
            self._give_up(target, "block commit")
        self._wait_gone(target, "block commit")

    def commit(self, target: str, base: str, top: str, active: bool) -> None:
        """Merge ``top`` into ``base`` (its backing file); ``active``: ``top`` is the disk's current file."""
        lv = _deps.libvirt
        what = f"Committing {top} into {base} (disk {target})"
        if active:
            self.ctx.call(what, self.ctx.dom.blockCommit, target, base, None, 0, lv.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
            self._pivot(target)
        else:
            self.ctx.call(what, self.ctx.dom.blockCommit, target, base, top, 0, 0)
            self._wait_gone(target, "block commit")

    def pull(self, target: str, base: str | None) -> None:
        """Copy into the disk's current file what lies above ``base`` (None: everything) and drop those layers."""
        what = f"Pulling into disk {target} from above {base or 'nothing'}"
        self.ctx.call(what, self.ctx.dom.blockRebase, target, base, 0, 0)
        self._wait_gone(target, "block pull")
