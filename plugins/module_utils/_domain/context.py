# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One run on one domain: its name, check mode, the journal of changes and the libvirt calls on it.

The parts of a kvm_domain run (config, transitions, removal) share this object:
each notes what it changes (``note``), in check mode as in a real run, and makes
its libvirt calls through ``call``, so a failure names the action and the domain.

A batch gives the context the run's ``HostScan`` (``scan``): the domain's
handle, state and XML then come from that one read of the host instead of a
read per question, until the run changes the domain (``note`` outside check
mode): from then on every read is a fresh one.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._manager import DomainJournal
from ansible_collections.virtops.kvm.plugins.module_utils._scan import SHUTOFF, HostScan, lookup_domain


class DomainContext(DomainJournal):
    """The domain's name, the connection, check mode and what changed so far."""

    def __init__(self, connection: Connection, name: str, check_mode: bool, scan: HostScan | None = None):
        super().__init__(connection, name, check_mode)
        # answers from the run's one scan, as long as this run has not changed the domain
        self.scanned = scan.get(name) if scan is not None else None
        self.from_scan = scan is not None
        self._autostart: bool | None = None

    def note(self, what: str) -> None:
        """Record a change (made, or in check mode to be made); a real one ends the answers from the scan."""
        super().note(what)
        if not self.check_mode:
            self.scanned = None
            self.from_scan = False

    def _scanned(self, dom):
        """The scan's view of ``dom`` when this context answers from the scan, else None."""
        if self.scanned is not None and dom is self.scanned.dom:
            return self.scanned
        return None

    def lookup(self):
        """The domain, or None when it is not defined."""
        if self.from_scan:
            return self.scanned.dom if self.scanned is not None else None
        return lookup_domain(self.conn, self.name)

    def inactive_root(self, dom):
        """The persistent config (the live one for a transient domain), parsed."""
        seen = self._scanned(dom)
        if seen is not None:
            return seen.inactive
        flags = _deps.libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
        return dx.parse(self.call("Reading the XML", dom.XMLDesc, flags))

    def live_root(self, dom):
        seen = self._scanned(dom)
        if seen is not None and seen.live is not None:
            return seen.live
        return dx.parse(self.call("Reading the live XML", dom.XMLDesc, 0))

    def state(self, dom) -> int:
        """The domain's state code (SHUTOFF for a domain not defined yet)."""
        if dom is None:
            return SHUTOFF
        seen = self._scanned(dom)
        if seen is not None:
            return seen.state
        return self.call("Reading the state", dom.state)[0]

    def active(self, dom) -> bool:
        if dom is None:
            return False
        seen = self._scanned(dom)
        return seen.active if seen is not None else bool(dom.isActive())

    def persistent(self, dom) -> bool:
        seen = self._scanned(dom)
        return seen.persistent if seen is not None else bool(dom.isPersistent())

    def autostart(self, dom) -> bool:
        """Whether the domain starts with the daemon (a transient one never does); read once from a scanned one."""
        seen = self._scanned(dom)
        if seen is None:
            return bool(dom.autostart()) if dom.isPersistent() else False
        if self._autostart is None:
            self._autostart = bool(dom.autostart()) if seen.persistent else False
        return self._autostart
