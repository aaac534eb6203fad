# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One run on one domain: its name, check mode, the journal of changes and the libvirt calls on it.

The parts of a kvm_domain run (config, transitions, removal) share this object:
each notes what it changes (``note``), in check mode as in a real run, and makes
its libvirt calls through ``call``, so a failure names the action and the domain.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection, libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._scan import SHUTOFF, gone


class DomainContext:
    """The domain's name, the connection, check mode and what changed so far."""

    def __init__(self, connection: Connection, name: str, check_mode: bool):
        self.connection = connection
        self.name = name
        self.check_mode = check_mode
        self.changes: list[str] = []

    @property
    def conn(self):
        return self.connection.conn

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def note(self, what: str) -> None:
        """Record a change (made, or in check mode to be made)."""
        self.changes.append(what)

    def call(self, what: str, fn, *args):
        """Run a libvirt call, translating its error into LibvirtFailed naming the action."""
        lv = _deps.libvirt
        try:
            return fn(*args)
        except lv.libvirtError as exc:
            raise libvirt_failed(exc, f"{what} of domain {self.name}") from exc

    def lookup(self):
        """The domain, or None when it is not defined."""
        lv = _deps.libvirt
        try:
            return self.conn.lookupByName(self.name)
        except lv.libvirtError as exc:
            if gone(exc):
                return None
            raise libvirt_failed(exc, f"Looking up domain {self.name}") from exc

    def inactive_root(self, dom):
        """The persistent config (the live one for a transient domain), parsed."""
        flags = _deps.libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
        return dx.parse(self.call("Reading the XML", dom.XMLDesc, flags))

    def live_root(self, dom):
        return dx.parse(self.call("Reading the live XML", dom.XMLDesc, 0))

    def state(self, dom) -> int:
        """The domain's state code (SHUTOFF for a domain not defined yet)."""
        if dom is None:
            return SHUTOFF
        return self.call("Reading the state", dom.state)[0]
