# Private to the virtops.kvm collection: not a public API, may change without notice.
"""CustomizeManager, kvm_customize's backend: domains -> refusals -> one appliance -> plan -> write -> result.

Before anything is launched, every domain must be defined and shut off, and no disk of it may be
read-only, shareable, or stood on by anything else: another domain's disk or overlay, an overlay
file beside it, or a snapshot layer (the host scan's write guard, ``HostScan.guard``, and the
domain's own external snapshots too). Then the disks of all the domains are drives of ONE appliance
(one per 250 drives), each guest is mounted read-only and compared (edit.py), and only a guest that
needs a change is mounted read-write and changed. Check mode adds the drives read-only and stops
after the comparison. A guest that fails does not stop the others; the task fails at the end,
naming each, with every result.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._customize.edit import EditError, Guest
from ansible_collections.virtops.kvm.plugins.module_utils._customize.spec import FILE_STATES, check_edits
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    GuestfsError,
    InvalidInput,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.devices import by_launch, parts_of
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import (
    check_mounts,
    decide_force_tcg,
    domain_drives,
    kvm_usable,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.session import GuestfsSession, runtime_message
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, state_name


class CustomizeManager(Manager):
    """Offline edits of shut-off domains: files, authorized_keys and password hashes, in one appliance launch."""

    ARGUMENT_SPEC = dict(
        domain=dict(type="str"),
        domains=dict(type="list", elements="str"),
        files=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                path=dict(type="str", required=True),
                state=dict(type="str", choices=list(FILE_STATES), default="present"),
                content=dict(type="str"),
                mode=dict(type="raw"),
                owner=dict(type="str"),
            ),
        ),
        authorized_keys=dict(
            type="list",
            elements="dict",
            default=[],
            no_log=False,  # public keys
            options=dict(
                user=dict(type="str", required=True),
                keys=dict(type="list", elements="str", default=[], no_log=False),
                exclusive=dict(type="bool", default=False),
            ),
        ),
        passwords=dict(
            type="list",
            elements="dict",
            default=[],
            no_log=False,  # the user names; each hash is no_log
            options=dict(user=dict(type="str", required=True), hash=dict(type="str", required=True, no_log=True)),
        ),
        mounts=dict(type="dict"),
        force_tcg=dict(type="str", choices=["auto", "yes", "no"], default="auto"),
    )
    MODULE_OPTIONS = dict(mutually_exclusive=[("domain", "domains")], required_one_of=[("domain", "domains")])
    LIBRARIES = ("guestfs", "libvirt", "lxml")
    #: handle_factory: makes libguestfs handles (unit tests give a fake one)
    SEAMS = dict(handle_factory=None)

    def run(self) -> dict:
        edits = check_edits(self.p)
        mounts = check_mounts(self.p["mounts"])
        names = [self.p["domain"]] if self.p.get("domain") else list(dict.fromkeys(self.p.get("domains") or []))
        if not names:
            raise InvalidInput("The domains option is empty.", hint="List at least one domain name.")
        scan = HostScan.take(self.conn)
        groups = [(name, self._drives(scan, name)) for name in names]
        force_tcg, tcg_reason = decide_force_tcg(self.p["force_tcg"], lambda: kvm_usable(self.conn))
        results: dict = {}
        diffs: list = []
        launches = 0
        for chunk in by_launch(groups, lambda group: len(group[1])):
            drives = [dict(path=d["path"], format=d["format"]) for _n, ds in chunk for d in ds]
            session = GuestfsSession(
                drives,
                force_tcg=force_tcg,
                handle_factory=self.handle_factory,
                tcg_reason=tcg_reason,
                writable=not self.check_mode,
            )
            try:
                launches += 1
                self._chunk(session, chunk, edits, mounts, results, diffs)
            finally:
                session.close()
                self.warnings.extend(session.warnings)
        failed = {n: r["error"] for n, r in results.items() if "error" in r}
        out = dict(
            changed=any(r["changed"] for r in results.values()),
            domains=results,
            launches=launches,
            diff=diffs,
        )
        if failed:
            raise GuestfsError(
                "Editing failed on " + "; ".join(f"{n}: {e}" for n, e in failed.items()),
                hint="The other domains were edited (see domains); fix these and run the task again.",
                domains=results,
                changed=out["changed"],
            )
        return out

    # -- what may be written

    def _drives(self, scan: HostScan, name: str) -> list[dict]:
        found = scan.get(name)
        if found is None:
            raise DomainNotFound(
                f"Domain {name} is not defined at {self.uri}; nothing was changed.",
                hint="Check the name with 'virsh list --all' (and the uri option).",
            )
        if found.active:
            raise Conflict(
                f"Domain {name} is {state_name(found.state)}: kvm_customize edits only shut-off domains (a running "
                "guest would not see the edit, and its own writes would corrupt the disk). Nothing was changed.",
                hint="Shut it down first (virtops.kvm.kvm_domain state=shutdown), then run the task again.",
                domain=name,
            )
        drives, skipped = domain_drives(found.inactive)
        self.warnings.extend(skipped)
        flags = {d["target"]: d for d in dx.disks(found.inactive)}
        for drive in drives:
            path, target = drive["path"], drive["target"]
            label = f"disk {target} of domain {name}"
            disk = flags.get(target) or {}
            if disk.get("readonly") or disk.get("shareable"):
                kind = "read-only" if disk.get("readonly") else "shareable"
                raise Conflict(
                    f"{label} ({path}) is {kind} in the domain's XML: kvm_customize writes only a domain's own "
                    "writable disks. Nothing was changed.",
                    hint="Edit that image some other way, or leave this domain out.",
                )
            # its own external snapshots count too: a revert would find another disk under them
            scan.guard(
                [path], f"edit domain {name} offline", domain=name, target=target, label=label, own_snapshots=True
            )
        return drives

    # -- the appliance

    def _chunk(self, session: GuestfsSession, chunk: list, edits: list, mounts, results: dict, diffs: list) -> None:
        try:
            session.launch()
        except GuestfsError as exc:
            for name, _drives in chunk:
                results[name] = dict(changed=False, changes=[], error=exc.message)
            return
        parts = parts_of(chunk)
        for part, (name, _drives) in zip(parts, chunk):
            results[name] = self._one(session, part, parts, name, edits, mounts, diffs)
        if not self.check_mode and any(results[name]["changed"] for name, _d in chunk):
            try:
                session.g.sync()
            except RuntimeError as exc:
                why = f"syncing the disks failed: {runtime_message(exc)}"
                for name, _d in chunk:
                    results[name].setdefault("error", why)

    def _one(self, session, part, parts, name: str, edits: list, mounts, diffs: list) -> dict:
        where = "mounts option" if mounts else "inspection"
        applied: list = []
        try:
            session.mount(mounts, part=part, parts=parts, where=where, readonly=True)
            changes = Guest(session.g, name).plan(edits)
            if changes and not self.check_mode:
                session.unmount_all()
                session.mount(mounts, part=part, parts=parts, where=where)
                for change in changes:
                    change.apply(session.g)
                    applied.append(change.text)
            diffs.extend(c.diff for c in changes if c.diff)
            return dict(changed=bool(changes), changes=[c.text for c in changes])
        except (GuestfsError, EditError) as exc:
            return dict(changed=bool(applied), changes=applied, error=getattr(exc, "message", None) or str(exc))
        except RuntimeError as exc:
            return dict(changed=bool(applied), changes=applied, error=f"libguestfs: {runtime_message(exc)}")
        finally:
            try:
                session.unmount_all()
            except GuestfsError:
                pass
