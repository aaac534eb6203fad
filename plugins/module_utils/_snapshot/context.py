# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One run on one domain's snapshots: the handle, check mode, the journal, named libvirt calls, the reads.

Create, revert and delete share this object: each notes what it changes
(``note``), in check mode as in a real run, makes its libvirt calls through
``call`` (a failure names the action and the domain), and reads the domain,
its snapshots and its disk chains from here, the host scan once per run.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection, libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import DomainNotFound, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._manager import DomainJournal
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, gone
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import layers
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import xml as sx


def covered(d: dict) -> bool:
    """Whether a snapshot covers disk ``d``: one the guest writes to (not a CD-ROM, read-only or shared disk)."""
    return d["device"] == "disk" and not d["readonly"] and not d["shareable"]


class SnapshotContext(DomainJournal):
    """The domain, check mode, runner and what changed so far."""

    def __init__(self, connection: Connection, domain: str, check_mode: bool, runner):
        super().__init__(connection, domain, check_mode)
        self.runner = runner
        self._dom = None
        self._scan: HostScan | None = None

    def is_test_driver(self) -> bool:
        return self.conn.getType().lower() == "test"

    # ------------------------------------------------------------------ the domain

    @property
    def dom(self):
        """The domain (DomainNotFound when it is not defined)."""
        if self._dom is None:
            lv = _deps.libvirt
            try:
                self._dom = self.conn.lookupByName(self.name)
            except lv.libvirtError as exc:
                if gone(exc):
                    raise DomainNotFound(
                        f"The domain {self.name!r} is not defined.",
                        hint="Check the domain option (virtops.kvm.kvm_domain_info lists the domains).",
                    ) from exc
                raise libvirt_failed(exc, f"Looking up domain {self.name}") from exc
        return self._dom

    def state(self) -> tuple[int, int]:
        """(state, reason) codes of the domain."""
        return tuple(self.call("Reading the state", self.dom.state))

    def active(self) -> bool:
        return bool(self.call("Reading the state", self.dom.isActive))

    def persistent(self) -> bool:
        return bool(self.call("Reading the state", self.dom.isPersistent))

    def inactive_xml(self) -> str:
        flags = _deps.libvirt.VIR_DOMAIN_XML_INACTIVE if self.persistent() else 0
        return self.call("Reading the XML", self.dom.XMLDesc, flags)

    def root(self):
        """The definition in effect: the live one when the domain runs, else the persistent one."""
        if self.active():
            return dx.parse(self.call("Reading the live XML", self.dom.XMLDesc, 0))
        return dx.parse(self.inactive_xml())

    def disks(self) -> list[dict]:
        """The disks a snapshot covers (writable, not CD-ROMs or shared disks), from ``root()``."""
        return [d for d in dx.disks(self.root()) if covered(d)]

    def file_disks(self) -> list[dict]:
        """``disks()``, refusing the ones that are not files (a snapshot here covers files only)."""
        out = []
        for d in self.disks():
            if d["type"] != "file" or not d["path"]:
                raise InvalidInput(
                    f"Disk {d['target']} of domain {self.name} is a {d['type']} disk; kvm_snapshot snapshots "
                    "file-backed disks only.",
                    hint="Mark it <readonly/> or <shareable/> to leave it out, or convert it to a file.",
                )
            out.append(d)
        return out

    def chains(self) -> dict[str, list[dict]]:
        """``{target: its chain}`` for every disk a snapshot covers (top first)."""
        return {d["target"]: layers.chain(d["path"]) for d in self.file_disks()}

    def guard(self, targets, action: str) -> None:
        """The host's write guard for the current file of each disk in ``targets`` (StorageError, nothing changed).

        The domain's own chain under each disk is its own; everyone else who stands on the file refuses.
        """
        chains = self.chains()
        for target in targets:
            files = chains.get(target)
            if files:
                own = {c["real"] for c in files}
                label = f"disk {target} of domain {self.name}"
                self.scan().guard([files[0]["path"]], action, self.name, target, own, label)

    def scan(self) -> HostScan:
        """Every domain of the host, read once per run (for the who-uses-this-file rule)."""
        if self._scan is None:
            self._scan = HostScan.take(self.conn)
        return self._scan

    # ------------------------------------------------------------------ its snapshots

    def snapshots(self) -> dict[str, dict]:
        """``{name: snapshot dict (xml.read) + current, handle, xml}``, oldest first."""
        handles = self.call("Listing the snapshots", self.dom.listAllSnapshots, 0)
        out = []
        for h in handles:
            xml = self.call("Reading a snapshot", h.getXMLDesc, 0)
            s = sx.read(xml)
            s.update(current=bool(self.call("Reading a snapshot", h.isCurrent, 0)), handle=h, xml=xml)
            out.append(s)
        parents = {s["name"]: s["parent"] for s in out}

        def depth(name: str | None) -> int:
            seen = set()
            while parents.get(name) and name not in seen:
                seen.add(name)
                name = parents[name]
            return len(seen)

        # creation times have whole seconds: within one, a parent comes before its children
        out.sort(key=lambda s: (s["creation_time"] or 0, depth(s["name"]), s["name"]))
        return {s["name"]: s for s in out}

    def redefine(self, snap: dict, xml: str) -> None:
        """Replace a snapshot's metadata (libvirt's REDEFINE), keeping it current if it was."""
        lv = _deps.libvirt
        flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if snap["current"]:
            flags |= lv.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        self.call(f"Updating snapshot {snap['name']}", self.dom.snapshotCreateXML, xml, flags)

    def make_current(self, snap: dict) -> None:
        """Make ``snap`` libvirt's current snapshot (what a revert by libvirt itself would do)."""
        lv = _deps.libvirt
        flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | lv.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        self.call(f"Making snapshot {snap['name']} current", self.dom.snapshotCreateXML, snap["xml"], flags)

    def forget(self, snap: dict) -> None:
        """Delete a snapshot's metadata only (its files were dealt with by the caller)."""
        lv = _deps.libvirt
        # the test driver has no METADATA_ONLY and keeps no files anyway
        flags = 0 if self.is_test_driver() else lv.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
        self.call(f"Deleting snapshot {snap['name']}", snap["handle"].delete, flags)

    def define(self, root) -> None:
        """Define the domain's persistent config from ``root``."""
        self.call("Defining", self.conn.defineXML, dx.tostring(root))
        self._dom = None
