# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The lifecycle state machine: from the domain's state to the requested one, with bounded waits.

``Transitions.to(dom, target)`` walks from the current state (running, paused,
pmsuspended, in_shutdown, shutoff, crashed) to ``running``, ``shutdown``,
``destroyed``, ``paused`` or ``rebooted``: a paused domain is resumed and a
suspended one woken before it can act on ACPI, a crashed one destroyed before
it starts. A shutdown waits up to ``timeout`` seconds (then fails, or with
``force`` powers off); a reboot waits for libvirt's reboot event (then fails,
or with ``force`` resets). In check mode every step is noted, none is made.

Several domains may move at once (a kvm_domain batch runs one ``Transitions``
per domain in its own thread): libvirt's default event loop may only be run
by one thread at a time, so the reboot waits take turns at it (``_PUMP``) and
each reads the events of its own domain.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._domain.context import DomainContext
from ansible_collections.virtops.kvm.plugins.module_utils._errors import LibvirtFailed, TimeoutExpired
from ansible_collections.virtops.kvm.plugins.module_utils._scan import (
    BLOCKED,
    CRASHED,
    IN_SHUTDOWN,
    NOSTATE,
    PAUSED,
    PMSUSPENDED,
    RUNNING,
    SHUTOFF,
)
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock, Deadline, wait_until

# Seconds between two looks at a domain that is shutting down (and the event loop's tick).
POLL = 0.25

# Held by the thread that runs an iteration of libvirt's default event loop.
_PUMP = threading.Lock()


def register_events() -> None:
    """Reboot completion is an event: the loop must exist before the connection opens."""
    _deps.libvirt.virEventRegisterDefaultImpl()


def pump_events() -> None:
    """One iteration of libvirt's event loop, unless another thread is running one (then wait a tick)."""
    if _PUMP.acquire(timeout=POLL):
        try:
            _deps.libvirt.virEventRunDefaultImpl()
        finally:
            _PUMP.release()


@dataclass(eq=False)
class Transitions:
    """Start, stop, pause, wake, reboot and destroy one domain (see the module doc)."""

    ctx: DomainContext
    #: shutdown_timeout: how long a graceful stop may take
    timeout: float
    #: force: destroy a domain that did not stop in time
    force: bool
    clock: Clock = SYSTEM

    def wait_inactive(self, dom, timeout: float) -> bool:
        """Whether the domain is off within ``timeout`` seconds."""
        return bool(wait_until(lambda: not dom.isActive(), Deadline(timeout, self.clock), POLL))

    def _destroy(self, dom) -> None:
        lv = _deps.libvirt
        try:
            dom.destroy()
        except lv.libvirtError as exc:
            if dom.isActive():
                raise libvirt_failed(exc, f"Destroying domain {self.ctx.name}") from exc

    def destroy(self, dom) -> None:
        self.ctx.note("destroy")
        if not self.ctx.check_mode:
            self._destroy(dom)

    def wake(self, dom, state: int) -> None:
        """A paused domain is resumed, a suspended one woken (it cannot act on ACPI otherwise)."""
        ctx = self.ctx
        if state == PAUSED:
            ctx.note("resume")
            if not ctx.check_mode:
                ctx.call("Resuming", dom.resume)
        elif state == PMSUSPENDED:
            ctx.note("wake up")
            if not ctx.check_mode:
                ctx.call("Waking up", dom.pMWakeup, 0)

    def stop(self, dom, state: int) -> None:
        """Graceful ACPI shutdown with a bounded wait; ``force`` destroys after the timeout."""
        ctx, timeout, force = self.ctx, self.timeout, self.force
        if state == CRASHED or (force and timeout == 0):
            self.destroy(dom)
            return
        self.wake(dom, state)
        ctx.note("shutdown")
        if ctx.check_mode:
            return
        lv = _deps.libvirt
        try:
            dom.shutdown()
        except lv.libvirtError as exc:
            if not dom.isActive():
                return
            if not force:
                raise LibvirtFailed(
                    f"Shutting down domain {ctx.name} failed: {exc.get_error_message()}",
                    hint="Set force: true to power it off instead (like 'virsh destroy').",
                ) from exc
        if self.wait_inactive(dom, timeout):
            return
        if force:
            ctx.note("destroy after timeout")
            self._destroy(dom)
            return
        raise TimeoutExpired(
            f"Domain {ctx.name} did not shut down within {timeout} s of the ACPI power button request "
            "(the request was sent; the guest may still act on it).",
            hint="The guest may ignore ACPI (no acpid, acpi=off, or still booting). Set force: true to power it "
            "off after the timeout (like 'virsh destroy'), or raise shutdown_timeout.",
        )

    def start(self, dom, paused: bool = False) -> None:
        lv = _deps.libvirt
        ctx = self.ctx
        ctx.note("start paused" if paused else "start")
        if ctx.check_mode:
            return
        if not paused:
            ctx.call("Starting", dom.create)
            return
        try:
            dom.createWithFlags(lv.VIR_DOMAIN_START_PAUSED)
        except lv.libvirtError as exc:
            if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
                raise libvirt_failed(exc, f"Starting domain {ctx.name} paused") from exc
            # drivers without START_PAUSED (the test driver): start, then pause at once
            ctx.call("Starting", dom.create)
            ctx.call("Pausing", dom.suspend)

    def reboot(self, dom, state: int) -> None:
        """ACPI reboot, waited for until libvirt reports the reset (``register_events`` first)."""
        lv = _deps.libvirt
        ctx = self.ctx
        if state in (PAUSED, PMSUSPENDED):
            self.wake(dom, state)
        ctx.note("reboot")
        if ctx.check_mode:
            return
        conn = ctx.conn
        if conn.getType().lower() == "test":
            # the test driver reboots synchronously and emits no reboot event
            ctx.call("Rebooting", dom.reboot, 0)
            return
        seen: list = []
        cbs = [
            conn.domainEventRegisterAny(dom, lv.VIR_DOMAIN_EVENT_ID_REBOOT, lambda *_a: seen.append("reboot"), None),
            conn.domainEventRegisterAny(
                dom,
                lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lambda _c, _d, event, _detail, _o: seen.append(event),
                None,
            ),
        ]
        timer = lv.virEventAddTimeout(int(POLL * 1000), lambda *_a: None, None)
        timeout = self.timeout
        try:
            ctx.call("Rebooting", dom.reboot, 0)
            # between two looks the event loop runs (it delivers the events; nothing is seen before it ran)
            pumping = Clock(self.clock.now, lambda _s: pump_events())
            rebooted = wait_until(
                lambda: (
                    "reboot" in seen or (lv.VIR_DOMAIN_EVENT_STOPPED in seen and lv.VIR_DOMAIN_EVENT_STARTED in seen)
                ),
                Deadline(timeout, pumping),
            )
            if not rebooted:
                if self.force:
                    ctx.note("reset after timeout")
                    ctx.call("Resetting", dom.reset, 0)
                    return
                raise TimeoutExpired(
                    f"Domain {ctx.name} did not reboot within {timeout} s of the ACPI reboot request.",
                    hint="The guest may ignore ACPI. Set force: true to reset it after the timeout "
                    "(like 'virsh reset'), or raise shutdown_timeout.",
                )
        finally:
            lv.virEventRemoveTimeout(timer)
            for cb in cbs:
                conn.domainEventDeregisterAny(cb)
        if not dom.isActive():
            raise LibvirtFailed(
                f"Domain {ctx.name} stopped instead of rebooting (its <on_reboot> is not 'restart').",
            )

    def to(self, dom, target: str) -> None:
        """Bring ``dom`` (None: defined only in check mode) to ``target``."""
        ctx = self.ctx
        state = ctx.state(dom)
        active = state not in (SHUTOFF, NOSTATE) if dom is not None else False
        if target == "running":
            if state in (RUNNING, BLOCKED):
                return
            if state in (PAUSED, PMSUSPENDED):
                self.wake(dom, state)
                return
            if state == IN_SHUTDOWN and not ctx.check_mode:
                self.wait_inactive(dom, self.timeout)
            if state == CRASHED:
                self.destroy(dom)
            self.start(dom)
        elif target == "shutdown":
            if active:
                self.stop(dom, state)
        elif target == "destroyed":
            if active:
                self.destroy(dom)
        elif target == "paused":
            if state == PAUSED:
                return
            if state in (RUNNING, BLOCKED, PMSUSPENDED):
                self.wake(dom, state)
                ctx.note("suspend")
                if not ctx.check_mode:
                    ctx.call("Pausing", dom.suspend)
                return
            if state == CRASHED:
                self.destroy(dom)
            elif state == IN_SHUTDOWN and not ctx.check_mode:
                self.wait_inactive(dom, self.timeout)
            self.start(dom, paused=True)
        elif target == "rebooted":
            if active and state != CRASHED:
                self.reboot(dom, state)
            else:
                if state == CRASHED:
                    self.destroy(dom)
                self.start(dom)
