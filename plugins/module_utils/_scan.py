# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One scan of a host's domains per run, and the one rule for "who uses this file".

kvm_clone, kvm_domain, kvm_domain_info and kvm_guestfs ask the same questions
before they write, start, read or delete: which domains exist (names, UUIDs,
MACs, states), and which domains or image files use a given file. A
``HostScan`` answers all of them from one pass over every domain, taken once
per run (under the clone lock where one is held). A domain undefined by
someone else while the scan reads it is simply not in the scan. The
inventory, kvm_host_info and kvm_migrate read their domains from a scan too:
there is one way to list a host's domains, and one to say who uses a file.

The rule, in ``HostScan.users``: a file is used by

* a domain that has it as a disk (``relation: disk``, inactive or live XML);
* a domain that has it anywhere below a disk in the qcow2 backing chain
  (``relation: backing``);
* an image file in the same directory whose backing chain contains it, and
  which no domain uses as a disk (``relation: file``): an overlay somebody
  made by hand with ``qemu-img create -b`` is as dependent as a defined clone.

``dependants`` adds every domain's snapshot layers (the write guard, ``guard``);
``held`` adds the disks and recorded bases of the other domains (what
kvm_migrate never deletes from the source).
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError

# virDomainState values (stable ABI) and the names this collection reports everywhere.
NOSTATE, RUNNING, BLOCKED, PAUSED, IN_SHUTDOWN, SHUTOFF, CRASHED, PMSUSPENDED = range(8)
STATE_NAMES = {
    NOSTATE: "nostate",
    RUNNING: "running",
    BLOCKED: "blocked",
    PAUSED: "paused",
    IN_SHUTDOWN: "in_shutdown",
    SHUTOFF: "shutoff",
    CRASHED: "crashed",
    PMSUSPENDED: "pmsuspended",
}
_REASONS = {
    RUNNING: (
        "unknown booted migrated restored from_snapshot unpaused migration_canceled save_canceled wakeup crashed "
        "postcopy postcopy_failed"
    ).split(),
    BLOCKED: ["unknown"],
    PAUSED: (
        "unknown user migration save dump ioerror watchdog from_snapshot shutting_down snapshot crashed "
        "starting_up postcopy postcopy_failed api_error"
    ).split(),
    IN_SHUTDOWN: ["unknown", "user"],
    SHUTOFF: "unknown shutdown destroyed crashed migrated saved failed from_snapshot daemon".split(),
    CRASHED: ["unknown", "panicked"],
    PMSUSPENDED: ["unknown"],
    NOSTATE: ["unknown"],
}

# Directories with more entries than this are not searched for hand-made overlays.
_MAX_NEIGHBOURS = 5000


def state_name(code: int) -> str:
    return STATE_NAMES.get(code, "nostate")


def reason_name(state: int, reason: int) -> str:
    names = _REASONS.get(state, ["unknown"])
    return names[reason] if 0 <= reason < len(names) else "unknown"


def gone(exc) -> bool:
    """Whether a libvirtError says the domain was undefined under us."""
    return exc.get_error_code() == _deps.libvirt.VIR_ERR_NO_DOMAIN


def lookup_domain(conn, name: str):
    """The domain called ``name`` on ``conn``, or None when it is not defined."""
    try:
        return conn.lookupByName(name)
    except _deps.libvirt.libvirtError as exc:
        if gone(exc):
            return None
        raise libvirt_failed(exc, f"Looking up domain {name}") from exc


def _states(conn) -> dict:
    """UUID -> (state, reason, active, persistent) of every domain, read in three calls for all of them.

    A scan of 100 domains then costs 3 calls instead of 300 (each a round trip to libvirtd, ~1 ms on
    a busy host) before the XML. Not atomic, as the per-domain calls were not either. A domain missing
    here (defined meanwhile), or a driver without bulk stats, is asked on its own.
    """
    lv = _deps.libvirt
    try:
        stats = conn.getAllDomainStats(lv.VIR_DOMAIN_STATS_STATE)
    except lv.libvirtError as exc:
        if exc.get_error_code() == lv.VIR_ERR_NO_SUPPORT:
            return {}
        raise
    active = {d.UUIDString() for d in conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    persistent = {d.UUIDString() for d in conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)}
    out = {}
    for dom, record in stats:
        state, reason = record.get("state.state"), record.get("state.reason")
        if isinstance(state, int) and isinstance(reason, int):
            uuid = dom.UUIDString()
            out[uuid] = (state, reason, uuid in active, uuid in persistent)
    return out


class ScannedDomain:
    """One domain as the scan saw it: handle, identity, state and its XML (parsed when first read).

    Both XML documents are fetched with the rest (the scan is one moment); lxml parses them only
    when asked, so a reader of states and counts (kvm_host_info) needs libvirt-python alone.
    """

    __slots__ = ("_docs", "_xml", "active", "dom", "name", "persistent", "reason", "state", "uuid")

    def __init__(self, dom, known: tuple | None = None):
        """``known``: (state, reason, active, persistent) as ``HostScan.take`` read them for every domain at once."""
        lv = _deps.libvirt
        self.dom = dom
        self.name = dom.name()
        self.uuid = dom.UUIDString()
        if known is None:
            self.state, self.reason = dom.state()
            self.active = bool(dom.isActive())
            self.persistent = bool(dom.isPersistent())
        else:
            self.state, self.reason, self.active, self.persistent = known
        live = dom.XMLDesc(0) if self.active else None
        self._xml = (live, dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE) if self.persistent else None)
        self._docs: dict = {}

    def _doc(self, which: int):
        if which not in self._docs:
            text = self._xml[which]
            self._docs[which] = dx.parse(text) if text is not None else None
        return self._docs[which]

    @property
    def live(self):
        """The running domain's XML, or None when it is not active."""
        return self._doc(0)

    @property
    def inactive(self):
        """Its persistent definition (a transient domain's: the live XML)."""
        return self._doc(1) if self.persistent else self.live

    @property
    def current(self):
        """The XML in force now: live when it runs, else the definition."""
        return self.live if self.live is not None else self.inactive

    @property
    def macs(self) -> set[str]:
        out = set(dx.macs(self.inactive))
        if self.live is not None:
            out |= set(dx.macs(self.live))
        return out

    def all_disks(self) -> list[dict]:
        """Its disks in the definition and the live XML, a disk in both once (as ``dx.disks`` reads them)."""
        out, seen = [], set()
        for root in (self.inactive, self.live):
            for disk in dx.disks(root) if root is not None else ():
                key = (disk["target"], disk["type"], disk["pool"], disk["path"])
                if key not in seen:
                    seen.add(key)
                    out.append(disk)
        return out

    def disk_paths(self) -> list[str]:
        """The source paths of its disks now (``current``), in XML order."""
        return [d["path"] for d in dx.disks(self.current) if d["path"]]


class HostScan:
    """Every domain of one connection, read once; ``users()`` answers from it."""

    def __init__(self, domains: dict[str, ScannedDomain]):
        self.domains = domains
        self._chains: dict[str, list[str]] = {}
        self._neighbours: dict[str, list[tuple[str, list[str]]]] = {}
        self._layers: dict[str, list[tuple[str, str]]] | None = None

    @classmethod
    def take(cls, conn) -> HostScan:
        lv = _deps.libvirt
        try:
            handles = conn.listAllDomains(0)
            known = _states(conn)
        except lv.libvirtError as exc:
            raise libvirt_failed(exc, "Listing domains") from exc
        domains = {}
        for dom in handles:
            try:
                scanned = ScannedDomain(dom, known.get(dom.UUIDString()))
            except lv.libvirtError as exc:
                if gone(exc):
                    continue
                raise libvirt_failed(exc, "Reading a domain") from exc
            domains[scanned.name] = scanned
        return cls(domains)

    def __contains__(self, name: str) -> bool:
        return name in self.domains

    def get(self, name: str) -> ScannedDomain | None:
        return self.domains.get(name)

    def uuids(self) -> dict[str, str]:
        """UUID -> domain name."""
        return {d.uuid: d.name for d in self.domains.values()}

    def macs(self) -> dict[str, str]:
        """MAC (inactive or live config) -> the first domain that has it."""
        out: dict[str, str] = {}
        for d in self.domains.values():
            for mac in sorted(d.macs):
                out.setdefault(mac, d.name)
        return out

    # ------------------------------------------------------------------ the rule

    def _chain(self, path: str) -> list[str]:
        """Real paths of ``path`` and every file below it (a broken chain stops where it breaks)."""
        real = os.path.realpath(path)
        if real not in self._chains:
            try:
                chain = [os.path.realpath(c["path"]) for c in _disk_files.backing_chain(path)]
            except StorageError:
                chain = [real]
            self._chains[real] = chain
        return self._chains[real]

    def _files_in(self, folder: str) -> list[tuple[str, list[str]]]:
        """(file, its backing chain below it) for every qcow2 overlay in ``folder``."""
        if folder not in self._neighbours:
            out = []
            try:
                entries = sorted(os.listdir(folder))[:_MAX_NEIGHBOURS]
            except OSError:
                entries = []
            for entry in entries:
                candidate = os.path.join(folder, entry)
                if not os.path.isfile(candidate):
                    continue
                try:
                    hdr = _disk_files.qcow2_header(candidate)
                except StorageError:
                    continue
                if hdr and hdr["backing_file"]:
                    out.append((candidate, self._chain(candidate)[1:]))
            self._neighbours[folder] = out
        return self._neighbours[folder]

    def users(self, paths) -> dict[str, list[dict]]:
        """For each path: [{domain, disk, target, relation, active, writable}] (see the module doc).

        Paths are compared after realpath, so links and '..' hide no user.
        ``domain`` is None for a hand-made overlay file (relation ``file``).
        """
        wanted = {os.path.realpath(p): p for p in paths}
        users: dict[str, list[dict]] = {p: [] for p in wanted.values()}
        domain_disks: set[str] = set()
        for d in self.domains.values():
            seen = set()
            for disk in d.all_disks():
                if disk["type"] != "file" or not disk["path"]:
                    continue
                domain_disks.add(os.path.realpath(disk["path"]))
                writable = not disk["readonly"] and not disk["shareable"] and disk["device"] == "disk"
                for depth, real in enumerate(self._chain(disk["path"])):
                    key = (disk["target"], real)
                    if real not in wanted or key in seen:
                        continue
                    seen.add(key)
                    users[wanted[real]].append(
                        dict(
                            domain=d.name,
                            disk=disk["path"],
                            target=disk["target"],
                            relation="disk" if depth == 0 else "backing",
                            active=d.active,
                            writable=writable and depth == 0,
                        )
                    )
        for real, path in wanted.items():
            for candidate, below in self._files_in(os.path.dirname(real)):
                if real in below and os.path.realpath(candidate) not in domain_disks:
                    users[path].append(
                        dict(domain=None, disk=candidate, target=None, relation="file", active=False, writable=False)
                    )
        return users

    def snapshot_layers(self) -> dict[str, list[tuple[str, str]]]:
        """Real path -> [(domain, snapshot)] for every file an external snapshot stands on.

        A snapshot stands on its base and everything below it, whether or not the domain's
        current disk still does (after a revert, a branch of the tree may be nobody's disk).
        Read once per scan, when a write first asks.
        """
        if self._layers is None:
            lv = _deps.libvirt
            layers: dict[str, list[tuple[str, str]]] = {}
            for d in self.domains.values():
                try:
                    handles = d.dom.listAllSnapshots(0)
                    xmls = [(h.getName(), h.getXMLDesc(0)) for h in handles]
                except lv.libvirtError as exc:
                    if gone(exc) or exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                        continue
                    raise libvirt_failed(exc, f"Listing the snapshots of domain {d.name}") from exc
                for snap, xml in xmls:
                    root = dx.parse(xml, "snapshot XML", root_tag="domainsnapshot", dump="virsh snapshot-dumpxml")
                    for base in dx.snapshot_bases(root).values():
                        for real in self._chain(base["path"]):
                            layers.setdefault(real, []).append((d.name, snap))
            self._layers = layers
        return self._layers

    def _layer_users(self, path: str, but: str | None) -> list[str]:
        return [
            f"snapshot {snap} of domain {name}"
            for name, snap in self.snapshot_layers().get(os.path.realpath(path), [])
            if name != but
        ]

    def dependants(self, path: str, domain=None, target=None, own=(), own_snapshots=False) -> list[dict]:
        """Everything a write to ``path`` would hurt: ``users()`` entries plus ``relation: snapshot`` ones.

        The collection's one write guard: another domain's disk or a disk whose backing chain
        holds the file (running or not), an overlay file beside it, a snapshot layer of any
        domain (``snapshot``: its name). Left out: disk ``target`` of ``domain`` (the writer's
        own disk, e.g. a snapshot of it), the files in ``own`` (real paths: the writer's own
        layers above the file) and, when ``domain`` is given, that domain's own snapshots
        (its caller weighs them), unless ``own_snapshots`` (a writer that no snapshot of its
        own may stand under).
        """
        out = []
        for u in self.users([path])[path]:
            if u["domain"] is not None and u["domain"] == domain and (target is None or u["target"] == target):
                continue
            if u["relation"] == "file" and os.path.realpath(u["disk"]) in own:
                continue
            out.append(u)
        for name, snap in self.snapshot_layers().get(os.path.realpath(path), []):
            if name != domain or own_snapshots:
                out.append(dict(domain=name, disk=path, target=None, relation="snapshot", snapshot=snap, active=False))
        return out

    def stands_on(self, path: str, domain=None, target=None, own=(), own_snapshots=False) -> list[str]:
        """``dependants()`` as readable strings (empty: nothing stands on the file)."""
        return sorted({describe(u) for u in self.dependants(path, domain, target, own, own_snapshots)})

    def guard(self, paths, action: str, domain=None, target=None, own=(), label=None, own_snapshots=False):
        """Refuse ``action`` (StorageError, nothing changed) when anything stands on one of ``paths``.

        ``label`` names a path in the message (e.g. ``disk vda of domain web``); the path is added.
        """
        found = {p: self.stands_on(p, domain, target, own, own_snapshots) for p in paths}
        found = {p: who for p, who in found.items() if who}
        if found:
            what = "; ".join(
                f"{f'{label} ({p})' if label else p} is the base of {', '.join(who)}" for p, who in found.items()
            )
            raise StorageError(
                f"Refusing to {action}: {what}. A file another disk, clone or snapshot layer stands on is "
                "never written; nothing was changed.",
                hint="Work on a clone of it instead, or remove what stands on it first.",
                dependants=sorted({w for who in found.values() for w in who}),
            )

    def held(self, paths, but: str) -> set[str]:
        """Those of ``paths`` that something besides domain ``but`` stands on: never deleted with it.

        ``dependants()`` (the write guard's rule), plus a path another domain has as a disk or names as
        the base kvm_clone recorded for its overlay, matched as written: a record names a base even where
        this machine cannot read the files to follow a chain (kvm_migrate's source may be another host).
        """
        named = set()
        for d in self.domains.values():
            if d.name != but:
                named.update(x["path"] for x in dx.disks(d.inactive) if x["path"])
                created = (dx.provenance(d.inactive) or {}).get("created_disks", [])
                named.update(c["base"] for c in created if c.get("base"))
        return {p for p in paths if p in named or self.dependants(p, but)}

    def dependents(self, path: str, exclude: str | None = None) -> list[str]:
        """What stands on ``path`` (backs it or holds it as a snapshot layer), other than domain ``exclude``."""
        return [describe(u) for u in self.dependants(path, exclude) if u["relation"] != "disk"]


def describe(u: dict) -> str:
    """One dependant (a ``HostScan.dependants`` entry) in words."""
    if u["relation"] == "snapshot":
        return f"snapshot {u['snapshot']} of domain {u['domain']}"
    return f"{u['disk']} (domain {u['domain']})" if u["domain"] else f"{u['disk']} (an overlay file)"


class ScansHost:
    """For managers: ``self.scan()`` is the run's one HostScan, taken when a rule first needs it."""

    _scan: HostScan | None = None

    def scan(self) -> HostScan:
        if self._scan is None:
            self._scan = HostScan.take(self.conn)
        return self._scan
