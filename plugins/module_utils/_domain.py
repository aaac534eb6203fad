# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The domain lifecycle: define/update, the state machine, undefine with safe storage removal.

One ``DomainManager.run()`` per task: read the domain, compare the requested
config with its inactive XML (``_xml_compare``), plan the state transition,
act only outside check mode, and report the same ``changed`` and diff either
way. Waits are bounded (``shutdown_timeout``) and every refusal is a typed error
raised before anything changed.

``domain_info`` is the ``virsh dominfo``-like dict both kvm_domain and
kvm_domain_info return.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from urllib.parse import urlparse

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _storage
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _xml_compare as xc
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection, libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    InvalidInput,
    LibvirtFailed,
    StorageError,
    TimeoutExpired,
)

# virDomainState values (stable ABI) and the names this collection reports.
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
STATES = tuple(STATE_NAMES.values())
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

# The state each requested state leaves the domain in (for the diff; "present" keeps it).
_TARGET_STATE_NAME = {
    "running": "running",
    "rebooted": "running",
    "shutdown": "shutoff",
    "destroyed": "shutoff",
    "paused": "paused",
    "absent": None,
}

_POLL = 0.25


def state_name(code: int) -> str:
    return STATE_NAMES.get(code, "nostate")


def reason_name(state: int, reason: int) -> str:
    names = _REASONS.get(state, ["unknown"])
    return names[reason] if 0 <= reason < len(names) else "unknown"


def config_file(uri: str, name: str) -> str | None:
    """Where libvirt keeps a persistent domain's XML (for qemu:///system and qemu:///session)."""
    parsed = urlparse(uri)
    if parsed.scheme.split("+", 1)[0] != "qemu":
        return None
    if parsed.path == "/system":
        return f"/etc/libvirt/qemu/{name}.xml"
    if parsed.path == "/session" and not parsed.netloc:
        return os.path.expanduser(f"~/.config/libvirt/qemu/{name}.xml")
    return None


def _chain(path: str | None) -> list[dict] | None:
    if not path or not os.path.exists(path):
        return None
    try:
        return [dict(path=c["path"], format=c["format"]) for c in _storage.backing_chain(path)[1:]]
    except StorageError:
        return None


def domain_info(dom, uri: str, with_xml: bool = False, pending_restart: bool | None = None) -> dict:
    """The ``virsh dominfo`` fields plus disks, interfaces, consoles and the config file path."""
    lv = _deps.libvirt
    try:
        state, reason = dom.state()
        _st, max_kib, cur_kib, nvcpu, cpu_ns = dom.info()
        active = bool(dom.isActive())
        persistent = bool(dom.isPersistent())
        live_root = dx.parse(dom.XMLDesc(0))
        inactive_root = dx.parse(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)) if persistent else live_root
        autostart = bool(dom.autostart()) if persistent else False
        managed_save = bool(dom.hasManagedSaveImage(0)) if persistent else False
    except lv.libvirtError as exc:
        raise libvirt_failed(exc, f"Reading domain {dom.name()}") from exc
    if pending_restart is None:
        pending_restart = active and persistent and bool(xc.restart_differences(inactive_root, live_root))
    root = live_root
    ostype = root.find("os/type")
    name = dom.name()
    disks = []
    for d in dx.disks(root):
        disks.append(
            dict(
                target=d["target"],
                device=d["device"],
                type=d["type"],
                path=d["path"],
                format=d["format"],
                readonly=d["readonly"],
                backing_chain=_chain(d["path"]) if d["type"] == "file" else None,
            )
        )
    info = dict(
        name=name,
        uuid=dom.UUIDString(),
        id=dom.ID() if active else None,
        state=state_name(state),
        state_reason=reason_name(state, reason),
        active=active,
        persistent=persistent,
        autostart=autostart,
        managed_save=managed_save,
        vcpus=nvcpu,
        memory_mib=cur_kib // 1024,
        max_memory_mib=max_kib // 1024,
        cpu_time_ns=cpu_ns,
        domain_type=root.get("type"),
        title=dx.text(inactive_root, "title"),
        description=dx.text(inactive_root, "description"),
        os=dict(
            type=ostype.text if ostype is not None else None,
            arch=ostype.get("arch") if ostype is not None else None,
            machine=ostype.get("machine") if ostype is not None else None,
        ),
        disks=disks,
        interfaces=dx.interfaces(root),
        consoles=dx.consoles(root),
        config_file=config_file(uri, name) if persistent else None,
        provenance=dx.provenance(inactive_root),
        pending_restart=bool(pending_restart),
    )
    if with_xml:
        info["xml"] = dx.tostring(inactive_root)
    return info


def list_domains(conn, uri: str, names: list | None = None, states: list | None = None, with_xml: bool = False):
    """``virsh list --all`` as dicts, filtered by names and state names; also the names not found."""
    lv = _deps.libvirt
    try:
        doms = conn.listAllDomains(0)
    except lv.libvirtError as exc:
        raise libvirt_failed(exc, "Listing domains") from exc
    wanted_states = None
    if states:
        wanted_states = {"shutoff" if s == "shutdown" else s for s in states}
    by_name = {d.name(): d for d in doms}
    selected = [by_name[n] for n in names if n in by_name] if names else sorted(doms, key=lambda d: d.name())
    out = []
    for dom in selected:
        try:
            info = domain_info(dom, uri, with_xml=with_xml)
        except LibvirtFailed:
            # undefined between list and read: it is simply not there any more
            continue
        if wanted_states is None or info["state"] in wanted_states:
            out.append(info)
    missing = [n for n in names or [] if n not in by_name]
    return out, missing


class DomainManager:
    """Bring one domain to the requested config and state (see the kvm_domain module)."""

    def __init__(
        self,
        params: dict,
        check_mode: bool = False,
        connection: Connection | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.p = dict(params)
        self.check_mode = check_mode
        self.connection = connection or Connection(self.p.get("uri"))
        self.sleep = sleep
        self.clock = clock
        self.name = self.p["name"]
        self.changed = False
        self.changes: list[str] = []
        self.warnings: list[str] = []
        self.removed_files: list[str] = []

    # ------------------------------------------------------------------ helpers

    @property
    def conn(self):
        return self.connection.conn

    def _lv(self):
        return _deps.libvirt

    def _note(self, what: str) -> None:
        self.changed = True
        self.changes.append(what)

    def _call(self, what: str, fn, *args):
        """Run a libvirt call, translating its error into LibvirtFailed naming the action."""
        lv = self._lv()
        try:
            return fn(*args)
        except lv.libvirtError as exc:
            raise libvirt_failed(exc, f"{what} of domain {self.name}") from exc

    def _lookup(self):
        lv = self._lv()
        try:
            return self.conn.lookupByName(self.name)
        except lv.libvirtError as exc:
            if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                return None
            raise libvirt_failed(exc, f"Looking up domain {self.name}") from exc

    def _inactive_root(self, dom):
        lv = self._lv()
        flags = lv.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
        return dx.parse(self._call("Reading the XML", dom.XMLDesc, flags))

    # ------------------------------------------------------------------ validation

    def validate(self):
        """Check every option that does not need libvirt; returns the parsed XML or None."""
        p = self.p
        if not self.name or "/" in self.name:
            raise InvalidInput(
                f"The domain name {self.name!r} is not valid.", hint="Give a non-empty name without '/'."
            )
        if p.get("memory") is not None and (not isinstance(p["memory"], int) or p["memory"] < 1):
            raise InvalidInput(
                f"memory must be a whole number of MiB of at least 1, not {p['memory']!r}.",
                hint="For example memory: 1024 for 1 GiB.",
            )
        if p.get("vcpus") is not None and (not isinstance(p["vcpus"], int) or not 1 <= p["vcpus"] <= 4096):
            raise InvalidInput(f"vcpus must be a whole number from 1 to 4096, not {p['vcpus']!r}.")
        if (p.get("shutdown_timeout") or 0) < 0:
            raise InvalidInput(f"shutdown_timeout must be 0 or more seconds, not {p['shutdown_timeout']!r}.")
        if not p.get("xml"):
            return None
        root = dx.parse(p["xml"])
        xml_name = dx.name_of(root)
        if xml_name is None:
            el = _deps.etree.Element("name")
            el.text = self.name
            root.insert(0, el)
        elif xml_name != self.name:
            raise InvalidInput(
                f"The XML names the domain {xml_name!r} but the name option is {self.name!r}.",
                hint="Make <name> in the XML and the name option the same (to rename, define a new domain).",
            )
        return root

    # ------------------------------------------------------------------ config

    def _domain_type(self, root) -> None:
        wanted = self.p.get("domain_type")
        if wanted in ("kvm", "qemu"):
            root.set("type", wanted)
        elif wanted == "auto" or root.get("type") in (None, "auto"):
            from ansible_collections.virtops.kvm.plugins.module_utils import _host

            kind, _reason = _host.usable_domain_type(self.conn)
            root.set("type", kind)

    def _apply_targeted(self, root) -> None:
        """memory/vcpus/title/description onto a domain XML tree (what 'virsh edit' is used for)."""
        etree = _deps.etree
        p = self.p

        def child(tag: str, after: tuple = ("name",)):
            el = root.find(tag)
            if el is None:
                el = etree.Element(tag)
                anchor = None
                for a in after:
                    if root.find(a) is not None:
                        anchor = root.find(a)
                (anchor.addnext(el) if anchor is not None else root.insert(0, el))
            return el

        if p.get("memory") is not None:
            kib = str(p["memory"] * 1024)
            for tag in ("memory", "currentMemory"):
                el = child(tag, ("name", "uuid", "title", "description", "metadata", "maxMemory", "memory"))
                el.text = kib
                el.set("unit", "KiB")
        if p.get("vcpus") is not None:
            el = child("vcpu", ("name", "uuid", "title", "description", "metadata", "memory", "currentMemory"))
            el.text = str(p["vcpus"])
            el.attrib.pop("current", None)
        for tag in ("title", "description"):
            value = p.get(tag)
            if value is None:
                continue
            if value == "":
                el = root.find(tag)
                if el is not None:
                    root.remove(el)
            else:
                child(tag, ("name", "uuid", "genid", "title")).text = value

    def _check_identity(self, root, dom) -> None:
        lv = self._lv()
        uuid = (dx.uuid_of(root) or "").strip().lower()
        if dom is not None:
            if uuid and uuid != dom.UUIDString().lower():
                raise Conflict(
                    f"Domain {self.name} exists with UUID {dom.UUIDString()}, but the XML gives UUID {uuid}.",
                    hint="Drop <uuid> from the XML (the existing one is kept) or undefine the domain first.",
                )
            return
        if uuid:
            try:
                other = self.conn.lookupByUUIDString(uuid)
            except lv.libvirtError as exc:
                if exc.get_error_code() != lv.VIR_ERR_NO_DOMAIN:
                    raise libvirt_failed(exc, f"Looking up UUID {uuid}") from exc
                other = None
            if other is not None:
                raise Conflict(
                    f"The UUID {uuid} in the XML belongs to domain {other.name()}, not {self.name}.",
                    hint="Drop <uuid> from the XML to let libvirt generate one, or use another UUID.",
                )

    def _define(self, root):
        lv = self._lv()
        text = dx.tostring(root)
        try:
            return self.conn.defineXMLFlags(text, lv.VIR_DOMAIN_DEFINE_VALIDATE)
        except lv.libvirtError as exc:
            if exc.get_error_code() in (lv.VIR_ERR_NO_SUPPORT, lv.VIR_ERR_INVALID_ARG):
                try:
                    return self.conn.defineXML(text)
                except lv.libvirtError as exc2:
                    raise libvirt_failed(exc2, f"Defining domain {self.name}") from exc2
            raise libvirt_failed(exc, f"Defining domain {self.name}") from exc

    def _config(self, dom, wanted_root):
        """Define or update the persistent config. Returns (dom, before_xml_root, after_xml_root)."""
        p = self.p
        current = self._inactive_root(dom) if dom is not None else None
        targeted = any(p.get(k) is not None for k in ("memory", "vcpus", "title", "description"))
        if wanted_root is None and not targeted:
            return dom, current, current
        if wanted_root is None:
            if dom is None:
                raise self._not_defined()
            wanted = copy.deepcopy(current)
        else:
            wanted = wanted_root
            self._domain_type(wanted)
        self._apply_targeted(wanted)
        self._check_identity(wanted, dom)
        if current is None:
            self._note("define")
            after = xc.canonical(wanted)
            if not self.check_mode:
                dom = self._define(wanted)
            return dom, None, after
        xc.carry_identity(wanted, current)
        diffs = xc.differences(wanted, current)
        after = xc.predict(wanted, current) if diffs else xc.canonical(current)
        if diffs:
            self._note("config: " + "; ".join(diffs))
            if not dom.isPersistent():
                raise InvalidInput(
                    f"Domain {self.name} is transient (it has no persistent config to update).",
                    hint="Define it first (virsh dumpxml NAME > f.xml; virsh define f.xml).",
                )
            if not self.check_mode:
                dom = self._define(wanted)
                left = xc.differences(wanted, self._inactive_root(dom))
                if left:
                    self.warnings.append(
                        "libvirt stored parts of the XML differently from how they were written, so the next run "
                        "will report a change again; write them as 'virsh dumpxml --inactive' shows them: "
                        + "; ".join(left)
                    )
        return dom, current, after

    def _not_defined(self):
        return DomainNotFound(
            f"Domain {self.name} is not defined, and no xml was given to define it.",
            hint="Give the full definition in the xml option (for example from 'virsh dumpxml'), "
            "or clone one with virtops.kvm.kvm_clone.",
        )

    # ------------------------------------------------------------------ autostart and live metadata

    def _autostart(self, dom) -> None:
        wanted = self.p.get("autostart")
        if wanted is None:
            return
        current = bool(dom.autostart()) if dom is not None else False
        if current != wanted:
            self._note(f"autostart: {current} -> {wanted}")
            if not self.check_mode:
                self._call("Setting autostart", dom.setAutostart, int(wanted))

    def _live_metadata(self, dom) -> None:
        """title/description also on the running domain: they need no restart."""
        lv = self._lv()
        if dom is None or not dom.isActive():
            return
        live = dx.parse(dom.XMLDesc(0))
        for tag, kind in (("title", lv.VIR_DOMAIN_METADATA_TITLE), ("description", lv.VIR_DOMAIN_METADATA_DESCRIPTION)):
            wanted = self.p.get(tag)
            if wanted is None or (dx.text(live, tag) or "") == wanted:
                continue
            self._note(f"live {tag}")
            if not self.check_mode:
                self._call(
                    f"Setting the live {tag}",
                    dom.setMetadata,
                    kind,
                    wanted or None,
                    None,
                    None,
                    lv.VIR_DOMAIN_AFFECT_LIVE,
                )

    # ------------------------------------------------------------------ base protection

    def _dependent_disks(self, path: str) -> list[str]:
        """Other disks (of any domain, or files next to it) that have ``path`` in their backing chain."""
        out = []
        real = os.path.realpath(path)
        for u in _storage.disk_users(self.conn, [path])[path]:
            if u["relation"] == "backing" and u["domain"] != self.name:
                out.append(f"{u['disk']} (domain {u['domain']})")
        folder = os.path.dirname(real)
        try:
            entries = sorted(os.listdir(folder))[:5000]
        except OSError:
            entries = []
        known = {o.split(" (", 1)[0] for o in out}
        for entry in entries:
            candidate = os.path.join(folder, entry)
            if candidate == real or candidate in known or not os.path.isfile(candidate):
                continue
            try:
                hdr = _storage.qcow2_header(candidate)
            except StorageError:
                continue
            if hdr and hdr["backing_file"] and os.path.realpath(hdr["backing_file"]) == real:
                out.append(f"{candidate} (file)")
        return out

    def _check_base(self, root) -> None:
        if self.p.get("allow_base_start"):
            return
        problems = []
        for d in dx.writable_file_disks(root):
            deps = self._dependent_disks(d["path"])
            if deps:
                problems.append(f"{d['path']} backs {', '.join(deps)}")
        if problems:
            raise Conflict(
                f"Refusing to start domain {self.name}: its writable disk is the base of other disks "
                f"({'; '.join(problems)}). Writing to a base corrupts every overlay on it.",
                hint="Start a clone instead, or mark the disk <readonly/>; allow_base_start: true overrides "
                "this (dangerous).",
            )

    # ------------------------------------------------------------------ transitions

    def _state(self, dom) -> int:
        if dom is None:
            return SHUTOFF
        return self._call("Reading the state", dom.state)[0]

    def _wait_inactive(self, dom, timeout: float) -> bool:
        deadline = self.clock() + timeout
        while True:
            if not dom.isActive():
                return True
            if self.clock() >= deadline:
                return False
            self.sleep(_POLL)

    def _destroy(self, dom) -> None:
        lv = self._lv()
        try:
            dom.destroy()
        except lv.libvirtError as exc:
            if dom.isActive():
                raise libvirt_failed(exc, f"Destroying domain {self.name}") from exc

    def _wake(self, dom, state: int) -> None:
        """A paused domain is resumed, a suspended one woken (it cannot act on ACPI otherwise)."""
        if state == PAUSED:
            self._note("resume")
            if not self.check_mode:
                self._call("Resuming", dom.resume)
        elif state == PMSUSPENDED:
            self._note("wake up")
            if not self.check_mode:
                self._call("Waking up", dom.pMWakeup, 0)

    def _stop(self, dom, state: int) -> None:
        """Graceful ACPI shutdown with a bounded wait; ``force`` destroys after the timeout."""
        timeout = self.p.get("shutdown_timeout", 120)
        force = self.p.get("force")
        if state == CRASHED or (force and timeout == 0):
            self._note("destroy")
            if not self.check_mode:
                self._destroy(dom)
            return
        self._wake(dom, state)
        self._note("shutdown")
        if self.check_mode:
            return
        lv = self._lv()
        try:
            dom.shutdown()
        except lv.libvirtError as exc:
            if not dom.isActive():
                return
            if not force:
                raise LibvirtFailed(
                    f"Shutting down domain {self.name} failed: {exc.get_error_message()}",
                    hint="Set force: true to power it off instead (like 'virsh destroy').",
                ) from exc
        if self._wait_inactive(dom, timeout):
            return
        if force:
            self.changes.append("destroy after timeout")
            self._destroy(dom)
            return
        raise TimeoutExpired(
            f"Domain {self.name} did not shut down within {timeout} s of the ACPI power button request "
            "(the request was sent; the guest may still act on it).",
            hint="The guest may ignore ACPI (no acpid, acpi=off, or still booting). Set force: true to power it "
            "off after the timeout (like 'virsh destroy'), or raise shutdown_timeout.",
        )

    def _start(self, dom, paused: bool = False) -> None:
        lv = self._lv()
        self._note("start paused" if paused else "start")
        if self.check_mode:
            return
        if not paused:
            self._call("Starting", dom.create)
            return
        try:
            dom.createWithFlags(lv.VIR_DOMAIN_START_PAUSED)
        except lv.libvirtError as exc:
            if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
                raise libvirt_failed(exc, f"Starting domain {self.name} paused") from exc
            # drivers without START_PAUSED (the test driver): start, then pause at once
            self._call("Starting", dom.create)
            self._call("Pausing", dom.suspend)

    def _reboot(self, dom, state: int) -> None:
        lv = self._lv()
        if state in (PAUSED, PMSUSPENDED):
            self._wake(dom, state)
        self._note("reboot")
        if self.check_mode:
            return
        if self.conn.getType().lower() == "test":
            # the test driver reboots synchronously and emits no reboot event
            self._call("Rebooting", dom.reboot, 0)
            return
        seen: list = []
        conn = self.conn
        cbs = [
            conn.domainEventRegisterAny(dom, lv.VIR_DOMAIN_EVENT_ID_REBOOT, lambda *_a: seen.append("reboot"), None),
            conn.domainEventRegisterAny(
                dom,
                lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                lambda _c, _d, event, _detail, _o: seen.append(event),
                None,
            ),
        ]
        timer = lv.virEventAddTimeout(int(_POLL * 1000), lambda *_a: None, None)
        timeout = self.p.get("shutdown_timeout", 120)
        try:
            self._call("Rebooting", dom.reboot, 0)
            deadline = self.clock() + timeout
            while self.clock() < deadline:
                if "reboot" in seen or (lv.VIR_DOMAIN_EVENT_STOPPED in seen and lv.VIR_DOMAIN_EVENT_STARTED in seen):
                    break
                lv.virEventRunDefaultImpl()
            else:
                if self.p.get("force"):
                    self.changes.append("reset after timeout")
                    self._call("Resetting", dom.reset, 0)
                    return
                raise TimeoutExpired(
                    f"Domain {self.name} did not reboot within {timeout} s of the ACPI reboot request.",
                    hint="The guest may ignore ACPI. Set force: true to reset it after the timeout "
                    "(like 'virsh reset'), or raise shutdown_timeout.",
                )
        finally:
            lv.virEventRemoveTimeout(timer)
            for cb in cbs:
                conn.domainEventDeregisterAny(cb)
        if not dom.isActive():
            raise LibvirtFailed(
                f"Domain {self.name} stopped instead of rebooting (its <on_reboot> is not 'restart').",
            )

    def _transition(self, dom, target: str) -> None:
        state = self._state(dom)
        active = state not in (SHUTOFF, NOSTATE) if dom is not None else False
        if target == "running":
            if state in (RUNNING, BLOCKED):
                return
            if state in (PAUSED, PMSUSPENDED):
                self._wake(dom, state)
                return
            if state == IN_SHUTDOWN and not self.check_mode:
                self._wait_inactive(dom, self.p.get("shutdown_timeout", 120))
            if state == CRASHED:
                self._note("destroy")
                if not self.check_mode:
                    self._destroy(dom)
            self._start(dom)
        elif target == "shutdown":
            if active:
                self._stop(dom, state)
        elif target == "destroyed":
            if active:
                self._note("destroy")
                if not self.check_mode:
                    self._destroy(dom)
        elif target == "paused":
            if state == PAUSED:
                return
            if state in (RUNNING, BLOCKED, PMSUSPENDED):
                self._wake(dom, state)
                self._note("suspend")
                if not self.check_mode:
                    self._call("Pausing", dom.suspend)
                return
            if state == CRASHED:
                self._note("destroy")
                if not self.check_mode:
                    self._destroy(dom)
            elif state == IN_SHUTDOWN and not self.check_mode:
                self._wait_inactive(dom, self.p.get("shutdown_timeout", 120))
            self._start(dom, paused=True)
        elif target == "rebooted":
            if active and state != CRASHED:
                self._reboot(dom, state)
            else:
                if state == CRASHED:
                    self._note("destroy")
                    if not self.check_mode:
                        self._destroy(dom)
                self._start(dom)

    # ------------------------------------------------------------------ absent

    def _storage_plan(self, root) -> list[str]:
        """The files remove_storage would delete; raises StorageError (nothing changed) on any refusal."""
        mode = self.p.get("remove_storage") or "none"
        if mode == "none":
            return []
        disks = [d["path"] for d in dx.writable_file_disks(root)]
        if mode == "overlays":
            prov = dx.provenance(root)
            created = {os.path.realpath(d["path"]) for d in (prov or {}).get("created_disks", []) if d.get("path")}
            disks = [p for p in disks if os.path.realpath(p) in created]
        disks = [p for p in dict.fromkeys(disks) if os.path.exists(p)]
        refusals = []
        users = _storage.disk_users(self.conn, disks) if disks else {}
        for path in disks:
            others = sorted({f"{u['domain']} ({u['relation']})" for u in users[path] if u["domain"] != self.name})
            deps = [d for d in self._dependent_disks(path) if f"(domain {self.name})" not in d]
            if others:
                refusals.append(f"{path} is used by {', '.join(others)}")
            elif deps:
                refusals.append(f"{path} is the backing file of {', '.join(deps)}")
        if refusals:
            raise StorageError(
                f"Refusing to remove the storage of domain {self.name}, nothing was changed: {'; '.join(refusals)}.",
                hint="Remove the domains that depend on these files first, or use remove_storage: none.",
            )
        return disks

    def _undefine(self, dom) -> None:
        lv = self._lv()
        nvram = lv.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
        if (self.p.get("remove_storage") or "none") != "none":
            nvram = lv.VIR_DOMAIN_UNDEFINE_NVRAM
        base = lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | lv.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        attempts = [base | nvram | lv.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA, base | nvram, base]
        for flags in attempts:
            try:
                dom.undefineFlags(flags)
                return
            except lv.libvirtError as exc:
                if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
                    raise libvirt_failed(exc, f"Undefining domain {self.name}") from exc
        self._call("Undefining", dom.undefine)

    def _absent(self, dom) -> None:
        if dom is None:
            return
        root = self._inactive_root(dom)
        plan = self._storage_plan(root)
        state = self._state(dom)
        if state not in (SHUTOFF, NOSTATE):
            self._stop(dom, state)
        self._note("undefine")
        if self.check_mode:
            self.removed_files = plan
            return
        if dom.isPersistent():
            self._undefine(dom)
        for path in plan:
            _storage.remove_file(path, conn=self.conn)
            self.removed_files.append(path)

    # ------------------------------------------------------------------ run

    def _snapshot(self, dom, root) -> str:
        if dom is None:
            return ""
        state = state_name(self._state(dom))
        autostart = bool(dom.autostart()) if dom.isPersistent() else False
        return f"state: {state}\nautostart: {str(autostart).lower()}\n\n" + (
            xc.strip_for_display(root) if root is not None else ""
        )

    def run(self) -> dict:
        wanted_root = self.validate()
        state = self.p.get("state") or "present"
        if state == "rebooted":
            # reboot completion is an event: the loop must exist before the connection opens
            self._lv().virEventRegisterDefaultImpl()
        dom = self._lookup()
        before_state = state_name(self._state(dom)) if dom is not None else None
        before_text = self._snapshot(dom, xc.canonical(self._inactive_root(dom)) if dom is not None else None)
        if state == "absent":
            self._absent(dom)
            after_text = ""
            pending = False
        else:
            if dom is None and wanted_root is None:
                raise self._not_defined()
            was_active = dom is not None and bool(dom.isActive())
            live_before = dx.parse(dom.XMLDesc(0)) if was_active else None
            if state in ("running", "paused", "rebooted") and not was_active:
                # refuse before anything changes, not after a define
                self._check_base(wanted_root if wanted_root is not None else self._inactive_root(dom))
            dom_after, _before_root, after_root = self._config(dom, wanted_root)
            defined_now = dom is None
            dom = dom_after
            self._autostart(dom)
            self._live_metadata(dom)
            if state != "present":
                self._transition(None if (defined_now and self.check_mode) else dom, state)
            target_name = _TARGET_STATE_NAME.get(state) or (before_state or "shutoff")
            autostart = self.p.get("autostart")
            if autostart is None:
                autostart = bool(dom.autostart()) if dom is not None and dom.isPersistent() else False
            after_text = f"state: {target_name}\nautostart: {str(bool(autostart)).lower()}\n\n" + xc.strip_for_display(
                after_root
            )
            stays_up = was_active and state in ("present", "running", "paused", "rebooted")
            if self.check_mode:
                pending = bool(stays_up and xc.restart_differences(after_root, live_before))
            else:
                pending = bool(dom is not None and dom.isActive() and dom.isPersistent() and stays_up) and bool(
                    xc.restart_differences(self._inactive_root(dom), dx.parse(dom.XMLDesc(0)))
                )
        result = dict(
            changed=self.changed,
            pending_restart=pending,
            removed_files=self.removed_files,
            changes=self.changes,
            diff=dict(
                before_header=f"{self.name} (state and inactive XML)",
                after_header=f"{self.name} (state and inactive XML)",
                before=before_text,
                after=after_text if self.changed else before_text,
            ),
        )
        final = self._lookup() if state != "absent" or self.check_mode else None
        result["domain"] = domain_info(final, self.connection.uri, pending_restart=pending) if final else None
        if self.warnings:
            result["warnings"] = self.warnings
        return result
