# Private to the virtops.kvm collection: not a public API, may change without notice.
"""MigrateManager (kvm_migrate): one domain put on a destination hypervisor, live or offline.

The run: find where the domain is (already on the destination only: nothing
to do), plan every disk (plan.py) and refuse before anything happens if a base
is missing or different on the destination, then act:

- live (the domain runs): the overlay files are made on the destination first,
  empty, on their base (volumes.HostFiles.create), then libvirt migrates
  memory and the copied disks' top layers (live.py); UNDEFINE_SOURCE and
  PERSIST_DEST make the switch-over one step.
- offline (shut off): each copied file moves through volume streams, sha256
  checked, the inactive XML (with its provenance) is defined on the
  destination, then the domain is undefined on the source.

Either way the provenance then records the destination's copy of each base
(size, digest and that file's mtime, verified by the plan) instead of the
source's, so kvm_domain starts the moved domain there and kvm_clone adds
overlays on that base (see _drift).

A failure before the switch-over leaves the domain where it was and removes
what this run made on the destination. After it, the source's disk files that
the collection made for the domain (kvm_clone's provenance) are deleted; never
a base, never a file without that record.
"""

from __future__ import annotations

from copy import deepcopy

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import (
    Connection,
    libvirt_failed,
    refuse_hostless,
)
from ansible_collections.virtops.kvm.plugins.module_utils._drift import save_record
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    InvalidInput,
    KvmError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._migrate import live as live_mod
from ansible_collections.virtops.kvm.plugins.module_utils._migrate import plan as plan_mod
from ansible_collections.virtops.kvm.plugins.module_utils._migrate.volumes import HostFiles, copy
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, lookup_domain
from ansible_collections.virtops.kvm.plugins.module_utils._validate import validate_name
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM


class MigrateManager(Manager):
    ARGUMENT_SPEC = dict(
        name=dict(type="str", required=True),
        dest_uri=dict(type="str", required=True),
        migrate_uri=dict(type="str"),
        live=dict(type="str", default="auto", choices=["auto", "always", "never"]),
        storage=dict(type="str", default="auto", choices=list(plan_mod.STORAGE_CHOICES)),
        timeout=dict(type="int", default=600),
        bandwidth=dict(type="int"),
    )
    #: test seams: how the destination's connection is made; the clock that times the transfers
    SEAMS = dict(dest_connection=None, clock=SYSTEM)

    def run(self) -> dict:
        name = validate_name(self.p["name"], "name")
        if self.p["timeout"] is not None and self.p["timeout"] < 1:
            raise InvalidInput(f"timeout is {self.p['timeout']}: give a number of seconds, at least 1.")
        if self.p["bandwidth"] is not None and self.p["bandwidth"] < 1:
            raise InvalidInput(f"bandwidth is {self.p['bandwidth']}: give MiB/s, at least 1, or leave it out.")
        refuse_hostless(self.p["dest_uri"], "dest_uri")  # before libvirt is called for either URI
        dest = self.dest_connection or Connection(self.p["dest_uri"], option="dest_uri")
        self.dest_uri = dest.uri
        self._dest = dest
        self.src_files = self.dst_files = None
        try:
            return self._run(name, dest)
        finally:
            for files in (self.src_files, self.dst_files):
                if files is not None:
                    for problem in files.close():
                        self.warn(problem)
            if self.dest_connection is None:
                dest.close()

    # ------------------------------------------------------------------ the run
    def _result(self, changed: bool, name: str, mode: str, disks: list, transfer=None, removed=None):
        """The module's return values; the diff is where the domain is before and after (``none``: already moved)."""
        before = dict(host=self.dest_uri if mode == "none" else self.uri)
        after = dict(host=self.dest_uri)
        return dict(
            changed=changed,
            domain=name,
            source=self.uri,
            dest=self.dest_uri,
            mode=mode,
            disks=disks,
            transfer=transfer,
            removed_files=removed or [],
            diff=dict(before=before, after=after),
        )

    def _run(self, name: str, dest: Connection) -> dict:
        if dest.uri == self.uri:
            raise InvalidInput(f"uri and dest_uri are both {self.uri}: the domain is already there.")
        sdom, ddom = lookup_domain(self.conn, name), lookup_domain(dest.conn, name)
        if ddom is not None and sdom is None:
            return self._result(False, name, "none", [])
        if ddom is not None:
            raise Conflict(
                f"Domain {name} is defined on both {self.uri} and {self.dest_uri}.",
                hint="Decide which one is the domain (compare their disks and state), remove the other "
                "(kvm_domain state=absent), then rerun.",
            )
        if sdom is None:
            raise DomainNotFound(
                f"Domain {name} is defined neither on {self.uri} nor on {self.dest_uri}.",
                hint="Check the name and both URIs.",
            )
        mode = self._mode(sdom, name)
        if sdom.snapshotNum(0):
            raise InvalidInput(
                f"Domain {name} has snapshots on {self.uri}; kvm_migrate does not move snapshots.",
                hint="Delete them (kvm_snapshot) or merge them first.",
            )
        root = dx.parse(sdom.XMLDesc(_deps.libvirt.VIR_DOMAIN_XML_INACTIVE | _deps.libvirt.VIR_DOMAIN_XML_SECURE))
        if mode == "offline" and sdom.hasManagedSaveImage(0):
            raise InvalidInput(
                f"Domain {name} has a managed save image on {self.uri}; kvm_migrate does not move it.",
                hint="Start the domain (it resumes from it) and migrate it live, or discard it "
                "(virsh managedsave-remove).",
            )
        if mode == "offline" and root.find("os/nvram") is not None:
            raise InvalidInput(
                f"Domain {name} has an NVRAM file (UEFI variables); kvm_migrate does not move it offline.",
                hint="Start the domain and migrate it live, or copy the NVRAM file and define the domain by hand.",
            )
        self.src_files, self.dst_files = HostFiles(self.conn, self.uri), HostFiles(dest.conn, self.dest_uri)
        disks, problems = plan_mod.plan_disks(root, self.p["storage"], self.src_files, self.dst_files)
        if problems:
            raise plan_mod.refusal(name, self.dest_uri, problems)
        prov = dx.provenance(root)
        if self.check_mode:
            for d in disks:
                d["result"] = "planned"
            return self._result(
                True, name, mode, disks, removed=plan_mod.removable(prov, disks, self._in_use(name, disks))
            )
        if mode == "live":
            transfer = self._live(sdom, dest.conn, root, disks)
        else:
            transfer = self._offline(sdom, dest.conn, root, disks)
        removed = []
        for path in plan_mod.removable(prov, disks, self._in_use(name, disks)):
            try:
                if self.src_files.delete(path):
                    removed.append(path)
            except KvmError as exc:
                self.warn(f"Domain {name} now lives on {self.dest_uri}, but its file {path} on {self.uri} was not "
                          f"removed: {exc.message}")  # fmt: skip
        return self._result(True, name, mode, disks, transfer, removed)

    def _mode(self, sdom, name: str) -> str:
        active = bool(sdom.isActive())
        want = self.p["live"]
        if want == "always" and not active:
            raise InvalidInput(
                f"Domain {name} is shut off: it cannot be migrated live.", hint="Start it, or use live=auto."
            )
        if want == "never" and active:
            raise InvalidInput(
                f"Domain {name} is running: an offline move needs it shut off.",
                hint="Shut it down first (kvm_domain state=shutdown), or use live=auto.",
            )
        return "live" if active else "offline"

    def _in_use(self, name: str, disks: list) -> set:
        """The moved disks' paths on the source that something besides domain ``name`` stands on (``HostScan.held``)."""
        moved = [d["path"] for d in disks if d.get("action") in plan_mod.COPIED]
        return HostScan.take(self.conn).held(moved, but=name)

    # ------------------------------------------------------------------ live
    def _record_bases_live(self, new, root, disks: list) -> None:
        """The migrated domain records the destination's bases (offline, the defined XML already does)."""
        root = deepcopy(root)
        if not plan_mod.record_bases(root, disks):
            return
        try:
            save_record(new, root)
        except _deps.libvirt.libvirtError as exc:
            for d in disks:
                d["base_identity"] = None
            self.warn(
                f"Domain {new.name()} now runs on {self.dest_uri}, but its record of its base could not be updated "
                f"there ({exc.get_error_message()}): kvm_domain will refuse to start it again there until a run with "
                "accept_base_change: true records the base."
            )

    def _live(self, sdom, dconn, root, disks: list) -> dict:
        made = []
        copies = [d for d in disks if d["action"] in ("top", "whole")]
        try:
            for d in copies:
                facts = self.src_files.facts(d["path"])
                fmt = facts["format"] or "raw"
                if d["action"] == "top":
                    self.dst_files.create(d["path"], "qcow2", facts["capacity"], d["base"], facts["backing_format"])
                else:
                    self.dst_files.create(d["path"], fmt, facts["capacity"])
                made.append(d["path"])
            for d in disks:  # read-only: nothing writes it while the domain runs, and QEMU copies no read-only disk
                if d["action"] == "seed":
                    self._stream(d, made, [], lambda: 0)
            flags, params = live_mod.flags_and_params(
                [d["target"] for d in copies], self.p["migrate_uri"], self.p["bandwidth"]
            )
            new, transfer = live_mod.migrate(
                sdom, dconn, flags, params, self.p["timeout"], self._dest.alive, clock=self.clock
            )
        except KvmError as exc:
            exc.msg += self._stays(sdom.name(), made, self._undo(made, defined=None))
            raise
        except BaseException:
            self._undo(made, defined=None)
            raise
        for d in disks:
            d["result"] = "copied" if d in copies or d["action"] == "seed" else "unchanged"
        self._record_bases_live(new, root, disks)
        # A disk mirror that ends between two samples of the job is missing from its counters: what
        # arrived on the destination (the copied files' allocation there) is the disks' true count.
        arrived = sum((self.dst_files.facts(path) or {}).get("allocation") or 0 for path in made)
        if arrived > transfer["disk_bytes"]:
            transfer["disk_bytes"] = arrived
            transfer["bytes"] = max(transfer["bytes"], transfer["memory_bytes"] + arrived)
        return transfer

    # ------------------------------------------------------------------ offline
    def _offline(self, sdom, dconn, root, disks: list) -> dict:
        lv = _deps.libvirt
        made, defined = [], None
        started = self.clock.now()
        progress: list[dict] = []
        total = 0
        try:
            for d in disks:
                if d["action"] not in plan_mod.COPIED:
                    d["result"] = "unchanged"
                    continue
                total += self._stream(d, made, progress, lambda: round(self.clock.now() - started, 2))
            root = deepcopy(root)
            plan_mod.record_bases(root, disks)
            xml = dx.tostring(root)
            try:
                defined = dconn.defineXML(xml)
            except lv.libvirtError as exc:
                raise libvirt_failed(exc, f"Defining domain {sdom.name()} on {self.dest_uri}") from exc
            try:
                sdom.undefineFlags(0)
            except lv.libvirtError as exc:
                raise libvirt_failed(exc, f"Undefining domain {sdom.name()} on {self.uri}") from exc
        except KvmError as exc:
            exc.msg += self._stays(sdom.name(), made, self._undo(made, defined))
            raise
        except BaseException:
            self._undo(made, defined)
            raise
        return dict(bytes=total, seconds=round(self.clock.now() - started, 2), progress=live_mod.pick(progress))

    def _stream(self, d: dict, made: list, progress: list, elapsed) -> int:
        """Copy disk ``d``'s file to the same path on the destination through volume streams (sha256 checked);
        the bytes moved. The file is in ``made`` from its creation on."""
        facts = self.src_files.facts(d["path"])
        vol = self.dst_files.create(d["path"], "raw", facts["physical"])
        made.append(d["path"])
        moved = copy(self.src_files, d["path"], self.dst_files, vol, facts["physical"], progress, elapsed)
        d.update(result="copied", sha256=moved["sha256"], bytes=moved["bytes"])
        return moved["bytes"]

    def _stays(self, name: str, made: list, undone: bool) -> str:
        if not made:
            left = ""
        elif undone:
            left = f"; what this run made on {self.dest_uri} was removed ({', '.join(made)})"
        else:
            left = f"; some of what this run made on {self.dest_uri} could not be removed (see the warnings)"
        return f" Domain {name} stays on {self.uri}, as before{left}."

    def _undo(self, made: list, defined) -> bool:
        """Remove what this run made on the destination (the domain stays on the source); whether all went."""
        ok = True
        if defined is not None:
            try:
                defined.undefine()
            except _deps.libvirt.libvirtError as exc:
                ok = False
                self.warn(f"Could not undefine the half-moved domain on {self.dest_uri}: {exc.get_error_message()}")
        for path in made:
            try:
                self.dst_files.delete(path)
            except KvmError as exc:
                ok = False
                self.warn(
                    f"Could not remove {path}, made by this run on {self.dest_uri} (delete it there before the next "
                    f"run, which would not overwrite it): {exc.message}"
                )
        return ok
