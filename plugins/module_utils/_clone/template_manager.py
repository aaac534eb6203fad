# Private to the virtops.kvm collection: not a public API, may change without notice.
"""TemplateManager, the kvm_template module's work: seal a template once, so its clones need no appliance.

Compare, then act: a template whose record (``seal.record_of``) still matches
every writable disk and covers the requested operations is left alone. Else
the host's write guard is asked first (sealing writes the disks: refused when
a clone, an overlay or a snapshot stands on them), then one read-write
appliance runs the seal's operations on the template's own disks, the record
is written into the domain's metadata, and the disks are made read-only
(``chmod a-w``: the course's "never modify a base", as kvm_clone does for bases).
Check mode plans all of it and launches nothing.
"""

from __future__ import annotations

import datetime
import os
import stat

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone import seal
from ansible_collections.virtops.kvm.plugins.module_utils._clone.layout import find_layout
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._drift import fingerprint
from ansible_collections.virtops.kvm.plugins.module_utils._errors import DomainNotFound, GuestfsError, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.devices import parts_of
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import decide_force_tcg, kvm_usable
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.session import GuestfsSession, runtime_message
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import SHUTOFF, HostScan, state_name


def view(record: dict | None, drifted: list[str]) -> str:
    """The diff's text: sealed or not, when, what was done, and what changed since."""
    if record is None:
        return "sealed: no\n"
    lines = [f"sealed: {'no (changed since)' if drifted else 'yes'}", f"at: {record['at']}", "operations:"]
    lines += [f"  - {op}" for op in record["done"]] or ["  (none)"]
    lines += [f"changed: {d}" for d in drifted]
    return "\n".join(lines) + "\n"


class TemplateManager(Manager):
    """Bring one template to ``state: sealed`` (see the kvm_template module)."""

    ARGUMENT_SPEC = dict(
        name=dict(type="str", required=True),
        state=dict(type="str", default="sealed", choices=["sealed"]),
        operations=dict(type="list", elements="str", choices=list(seal.OPERATIONS), default=list(seal.OPERATIONS)),
        force_tcg=dict(type="str", choices=["auto", "yes", "no"], default="auto"),
    )
    LIBRARIES = ("libvirt", "lxml")
    #: handle_factory makes the appliance's libguestfs handle (tests give a fake); now: the record's clock
    SEAMS = dict(handle_factory=None, now=None)

    @classmethod
    def needs(cls, params: dict) -> tuple:
        return (*cls.LIBRARIES, "guestfs")

    def run(self) -> dict:
        name = vd.validate_name(self.p["name"], "name")
        ops = list(dict.fromkeys(self.p["operations"]))
        scan = HostScan.take(self.conn)
        found = scan.get(name)
        if found is None:
            raise DomainNotFound(
                f"The template domain {name!r} is not defined.",
                hint="Define it first (virtops.kvm.kvm_domain), then seal it.",
            )
        disks = dx.writable_file_disks(found.inactive)
        paths = [d["path"] for d in disks]
        if not paths:
            raise InvalidInput(f"Template {name} has no writable file disk to seal.")
        record = seal.record_of(found.inactive)
        drifted = seal.drift(record, paths) if record else []
        before = view(record, drifted)
        header = f"template {name}"
        if record is not None and not drifted and set(ops) <= set(record["done"]) | _skipped(record):
            return self._result(False, name, record, paths, before, before, header)
        if found.state != SHUTOFF:
            raise InvalidInput(
                f"Template {name} is {state_name(found.state)}; sealing writes its disks, which must not change "
                "under a running guest.",
                hint="Shut it down first (virtops.kvm.kvm_domain state=shutdown).",
            )
        scan.guard(paths, f"seal template {name}", domain=name)
        self.note(f"seal {', '.join(paths)}: {', '.join(ops) or 'no operations'}")
        if self.check_mode:
            planned = dict(at=None, done=ops, skipped=[], disks=[])
            return self._result(True, name, record, paths, before, view(planned, []), header, planned=ops)
        report = self._seal(disks, ops)
        new = dict(at=self._now(), done=report["done"], skipped=report["skipped"], disks=[])
        protected = _protect(paths)
        # the seal holds on this very file: size, mtime and digest, no file id (any other file is unsealed)
        new["disks"] = [{k: v for k, v in dict(path=p, **fingerprint(p)).items() if k != "file"} for p in paths]
        self._record(found.dom, new)
        out = self._result(True, name, new, paths, before, view(new, []), header)
        out.update(details=report["details"], protected=protected)
        return out

    def _now(self) -> str:
        now = self.now() if self.now else datetime.datetime.now(datetime.timezone.utc)
        return now.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _seal(self, disks: list[dict], ops: list[str]) -> dict:
        """One read-write appliance over the template's disks; the operations' report."""
        drives = [dict(path=d["path"], format=d["format"]) for d in disks]
        force_tcg, _why = decide_force_tcg(self.p["force_tcg"], lambda: kvm_usable(self.conn))
        session = GuestfsSession(drives, force_tcg=force_tcg, handle_factory=self.handle_factory, writable=True)
        try:
            part = parts_of([(self.p["name"], drives)])[0]
            try:
                session.launch()
                mounts = find_layout(session.g, part)
                session.mount(mounts, part=part, where="the template's layout")
                report = seal.run(session.g, ops)
                session.g.sync()
            except RuntimeError as exc:
                raise GuestfsError(f"Sealing template {self.p['name']} failed: {runtime_message(exc)}") from exc
        finally:
            session.close()
            self.warnings.extend(session.warnings)
        return report

    def _record(self, dom, record: dict) -> None:
        lv = _deps.libvirt
        text = dx.metadata_text(seal.element(record))
        try:
            dom.setMetadata(lv.VIR_DOMAIN_METADATA_ELEMENT, text, seal.PREFIX, seal.NS, lv.VIR_DOMAIN_AFFECT_CONFIG)
        except lv.libvirtError as exc:
            raise libvirt_failed(exc, f"Recording the seal of template {self.p['name']}") from exc

    def _result(self, changed, name, record, paths, before, after, header, planned=None) -> dict:
        return dict(
            changed=changed,
            changes=list(self.changes),
            template=name,
            disks=paths,
            sealed=dict(record or {}, planned=planned) if planned is not None else record,
            diff=dict(before_header=header, after_header=header, before=before, after=after),
        )


def _skipped(record: dict) -> set:
    """Operations that did not apply to this guest count as done (a rerun does not seal again for them)."""
    return {s["operation"] for s in record["skipped"]}


def _protect(paths: list[str]) -> list[str]:
    """chmod a-w each disk (a sealed template's disks are bases); the ones changed."""
    out = []
    for path in paths:
        mode = os.stat(path).st_mode
        if mode & 0o222:
            os.chmod(path, stat.S_IMODE(mode) & ~0o222)
            out.append(path)
    return out
