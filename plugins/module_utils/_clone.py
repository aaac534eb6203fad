# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Clones of a template domain: the XML transform, batch planning, atomic create, the host lock.

The course (sections 4-6) clones by hand: dump the template's XML, change name,
UUID, disk path and MAC, ``cp`` the disk or ``qemu-img create -b`` an overlay,
and define. This file does that for a whole fleet in one run, with the rules
the course only states: a base with overlays never changes, nothing that
exists is overwritten, and a failed clone leaves nothing behind.

Three layers, each testable on its own:

* pure lxml functions (``transform`` and friends): what changes per clone;
* ``plan``: read the host once (domains, UUIDs, MACs, disk users), validate
  every clone of the batch before anything is touched;
* ``CloneManager.run``: act on the plan under a host-wide lock, in bounded
  parallel, each clone created atomically (its files removed if define fails).
"""

from __future__ import annotations

import copy
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _storage as st
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    InvalidInput,
    KvmError,
    LibvirtFailed,
    StorageError,
    TimeoutExpired,
)

MAC_PREFIX = "52:54:00"
MODES = ("overlay", "copy")
STATES = ("present", "running", "absent")
DOMAIN_TYPES = ("auto", "kvm", "qemu")
CLONE_KEYS = ("name", "memory", "vcpus", "autostart", "macs", "uuid", "state")
LOCK_NAME = "virtops-kvm-clone.lock"
LOCK_DIRS = ("/run/lock", "/var/lock")

_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_GENERATED_TAP = re.compile(r"^(vnet|macvtap|macvlan|vif)\d+")

Runner = Callable[[list], tuple]


# --------------------------------------------------------------------------- input


def normalize_mac(mac: str) -> str:
    """Lower-case a MAC and refuse anything that is not a unicast MAC."""
    if not isinstance(mac, str):
        raise InvalidInput(f"MAC address {mac!r} is not a string.")
    m = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(m):
        raise InvalidInput(f"MAC address {mac!r} is not of the form 52:54:00:xx:xx:xx.")
    if int(m[:2], 16) & 1:
        raise InvalidInput(f"MAC address {mac!r} is a multicast address; a NIC needs a unicast one.")
    return m


def normalize_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(str(value)))
    except ValueError as exc:
        raise InvalidInput(f"UUID {value!r} is not a valid UUID.") from exc


def new_mac(used: set[str]) -> str:
    """A random MAC in QEMU's 52:54:00 range that is not in ``used`` (which it extends)."""
    for _attempt in range(1000):
        mac = MAC_PREFIX + ":" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in used:
            used.add(mac)
            return mac
    raise Conflict("Could not find a free MAC address in 52:54:00:00:00:00/24 after 1000 tries.")


def new_uuid(used: set[str]) -> str:
    while True:
        u = str(uuidlib.uuid4())
        if u not in used:
            used.add(u)
            return u


def normalize_clones(name: str | None, clones: list | None, default_state: str = "present") -> list[dict]:
    """One dict per clone (name, memory, vcpus, autostart, macs, uuid, state), validated.

    Refuses unsafe or duplicate names, unknown keys and bad MACs/UUIDs before
    anything on the host is looked at.
    """
    items: list = [name] if name is not None else list(clones or [])
    if not items:
        raise InvalidInput("No clones given.", hint="Set name or a non-empty clones list.")
    out, seen = [], set()
    for i, item in enumerate(items):
        if isinstance(item, str) or item is None:
            item = {"name": item}
        if not isinstance(item, dict):
            raise InvalidInput(f"clones[{i}] must be a name or a dict, not {type(item).__name__}.")
        unknown = sorted(set(item) - set(CLONE_KEYS))
        if unknown:
            raise InvalidInput(
                f"clones[{i}] has unknown key(s) {', '.join(unknown)}.", hint=f"Allowed: {', '.join(CLONE_KEYS)}."
            )
        cname = dx.validate_name(item.get("name") if item.get("name") is not None else "", "clone name")
        if cname in seen:
            raise InvalidInput(f"The clone name {cname!r} appears more than once in the batch.")
        seen.add(cname)
        spec = dict(name=cname, memory=None, vcpus=None, autostart=None, macs=[], uuid=None, state=default_state)
        for key in ("memory", "vcpus"):
            if item.get(key) is not None:
                try:
                    val = int(item[key])
                except (TypeError, ValueError) as exc:
                    raise InvalidInput(f"{key} of clone {cname!r} must be an integer.") from exc
                if val < 1:
                    raise InvalidInput(f"{key} of clone {cname!r} must be at least 1.")
                spec[key] = val
        if item.get("autostart") is not None:
            if not isinstance(item["autostart"], bool):
                raise InvalidInput(f"autostart of clone {cname!r} must be true or false.")
            spec["autostart"] = item["autostart"]
        macs = item.get("macs") or []
        if isinstance(macs, str):
            macs = [macs]
        spec["macs"] = [normalize_mac(m) for m in macs]
        if len(set(spec["macs"])) != len(spec["macs"]):
            raise InvalidInput(f"Clone {cname!r} lists the same MAC address twice.")
        if item.get("uuid"):
            spec["uuid"] = normalize_uuid(item["uuid"])
        if item.get("state") is not None:
            if item["state"] not in STATES:
                raise InvalidInput(f"state of clone {cname!r} must be one of {', '.join(STATES)}.")
            spec["state"] = item["state"]
        out.append(spec)
    _refuse_batch_duplicates(out)
    return out


def _refuse_batch_duplicates(specs: list[dict]) -> None:
    owners: dict[str, str] = {}
    for s in specs:
        for mac in s["macs"]:
            if mac in owners:
                raise InvalidInput(f"MAC {mac} is given to both {owners[mac]!r} and {s['name']!r} in the batch.")
            owners[mac] = s["name"]
    uuids: dict[str, str] = {}
    for s in specs:
        if s["uuid"]:
            if s["uuid"] in uuids:
                raise InvalidInput(f"UUID {s['uuid']} is given to both {uuids[s['uuid']]!r} and {s['name']!r}.")
            uuids[s["uuid"]] = s["name"]


# --------------------------------------------------------------------------- pure XML transform


def disk_file_name(clone: str, target: str | None, index: int, ext: str) -> str:
    """``<clone>.<ext>`` for the first disk (the course's stu01.qcow2), ``<clone>-<target>.<ext>`` after."""
    return f"{clone}.{ext}" if index == 0 else f"{clone}-{target or index}.{ext}"


def derived_path(path: str, template: str, clone: str) -> str:
    """A per-clone file path (serial log, NVRAM) derived from the template's one."""
    d, base = os.path.split(path)
    if template and template in base:
        return os.path.join(d, base.replace(template, clone))
    return os.path.join(d, f"{clone}-{base}")


def transform(
    template_root,
    *,
    name: str,
    uuid: str,
    macs: list[str],
    disk_map: dict[str, dict],
    domain_type: str | None,
    template_name: str,
    mode: str,
    created: list[dict],
    nvram_path: str | None = None,
    memory_mib: int | None = None,
    vcpus: int | None = None,
):
    """The clone's domain XML (a new element tree; the template's is not modified).

    ``disk_map`` maps a template disk path to ``{path, format}`` of the clone's
    disk; disks not in it (CD-ROMs, read-only and shareable disks) are shared.
    ``macs`` gives one MAC per interface, in document order.
    """
    etree = _deps.etree
    root = copy.deepcopy(template_root)
    if "id" in root.attrib:
        del root.attrib["id"]
    if domain_type:
        root.set("type", domain_type)
    _set_child(root, "name", name)
    _set_child(root, "uuid", uuid)
    for entry in root.findall("sysinfo/system/entry"):
        if entry.get("name") == "uuid":
            entry.text = uuid
    if memory_mib is not None:
        for tag in ("memory", "currentMemory"):
            el = root.find(tag)
            if el is None and tag == "currentMemory":
                continue
            el = el if el is not None else etree.SubElement(root, tag)
            el.text = str(memory_mib * 1024)
            el.set("unit", "KiB")
    if vcpus is not None:
        el = root.find("vcpu")
        if el is None:
            el = etree.SubElement(root, "vcpu")
        el.text = str(vcpus)
        if "current" in el.attrib:
            del el.attrib["current"]
        topo = root.find("cpu/topology")
        if topo is not None:
            try:
                n = 1
                for k in ("sockets", "dies", "cores", "threads"):
                    n *= int(topo.get(k, "1"))
            except ValueError:
                n = -1
            if n != vcpus:
                topo.getparent().remove(topo)
        vcpus_el = root.find("vcpus")
        if vcpus_el is not None:
            root.remove(vcpus_el)
    # NVRAM: a copy per clone (virt-clone does the same)
    nv = root.find("os/nvram")
    if nv is not None:
        if nvram_path:
            nv.text = nvram_path
        elif nv.text:
            nv.text = None  # libvirt makes a fresh one from the template at first start
    devices = root.find("devices")
    if devices is not None:
        for d in devices.findall("disk"):
            src = d.find("source")
            path = src.get("file") if src is not None else None
            if path is None or path not in disk_map:
                continue
            new = disk_map[path]
            src.set("file", new["path"])
            if "index" in src.attrib:
                del src.attrib["index"]
            for bs in d.findall("backingStore"):
                d.remove(bs)
            drv = d.find("driver")
            if drv is None:
                drv = etree.Element("driver", name="qemu")
                d.insert(0, drv)
            drv.set("type", new["format"])
        for i, iface in enumerate(devices.findall("interface")):
            mac = iface.find("mac")
            if mac is None:
                mac = etree.Element("mac")
                iface.insert(0, mac)
            mac.set("address", macs[i])
            tgt = iface.find("target")
            if tgt is not None and _GENERATED_TAP.match(tgt.get("dev", "")):
                iface.remove(tgt)
        mapped: dict[str, str] = {}
        for kind in ("serial", "console", "parallel", "channel"):
            for dev in devices.findall(kind):
                src = dev.find("source")
                if "tty" in dev.attrib:
                    del dev.attrib["tty"]
                if src is None:
                    continue
                if dev.get("type") == "file" and src.get("path"):
                    old = src.get("path")
                    mapped.setdefault(old, derived_path(old, template_name, name))
                    src.set("path", mapped[old])
                elif dev.get("type") == "pty" and "path" in src.attrib:
                    del src.attrib["path"]
                elif dev.get("type") == "unix" and src.get("mode") == "bind" and "path" in src.attrib:
                    del src.attrib["path"]  # libvirt generates a per-domain socket
        for g in devices.findall("graphics"):
            if g.get("type") in ("vnc", "spice"):
                for attr in ("port", "tlsPort", "websocket"):
                    if attr in g.attrib:
                        del g.attrib[attr]
                g.set("autoport", "yes")
        for alias in devices.iter("alias"):
            if not (alias.get("name") or "").startswith("ua-"):
                alias.getparent().remove(alias)
    for sec in root.findall("seclabel"):
        if sec.get("type") == "dynamic":
            for child in sec.findall("label") + sec.findall("imagelabel"):
                sec.remove(child)
    dx.set_provenance(root, template_name, mode, created)
    return root


def _set_child(root, tag: str, value: str) -> None:
    el = root.find(tag)
    if el is None:
        el = _deps.etree.Element(tag)
        root.insert(0 if tag == "name" else 1, el)
    el.text = value


def memory_mib(root) -> int | None:
    el = root.find("memory")
    if el is None or not el.text:
        return None
    factor = {"b": 1 / 1048576, "bytes": 1 / 1048576, "kib": 1 / 1024, "k": 1 / 1024, "mib": 1, "m": 1}
    factor.update({"gib": 1024, "g": 1024, "tib": 1048576, "t": 1048576})
    unit = el.get("unit", "KiB").lower()
    return int(int(el.text) * factor.get(unit, 1 / 1024))


def vcpus_of(root) -> int | None:
    el = root.find("vcpu")
    return int(el.text) if el is not None and el.text else None


def macs_of(root) -> list[str]:
    return [i["mac"].lower() for i in dx.interfaces(root) if i["mac"]]


# --------------------------------------------------------------------------- host lock


class HostLock:
    """A host-wide exclusive lock (flock) so that concurrent runs never pick the same MAC.

    Two plays, or several forks of one play, each take it for the whole
    plan-and-create of their batch; the lock dies with the process.
    """

    def __init__(self, path: str | None = None, timeout: float = 900):
        self.path = path or default_lock_path()
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> HostLock:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"Cannot open the clone lock file {self.path}: {exc.strerror}.") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                os.close(self._fd)
                self._fd = None
                raise TimeoutExpired(
                    f"Another kvm_clone run held {self.path} for more than {self.timeout:.0f} s.",
                    hint="Wait for it to finish, or check for a hung process holding the lock.",
                )
            time.sleep(0.05)

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def default_lock_path() -> str:
    for d in LOCK_DIRS:
        if os.path.isdir(d) and os.access(d, os.W_OK):
            return os.path.join(d, LOCK_NAME)
    return os.path.join(tempfile.gettempdir(), LOCK_NAME)


# --------------------------------------------------------------------------- host view


def scan_host(conn) -> dict:
    """Every domain once: name -> {uuid, active, state, root (inactive XML), macs}."""
    lv = _deps.libvirt
    out = {}
    for dom in conn.listAllDomains(0):
        try:
            active = bool(dom.isActive())
            root = dx.parse(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE))
            macs = set(macs_of(root))
            if active:
                macs |= set(macs_of(dx.parse(dom.XMLDesc(0))))
            out[dom.name()] = dict(
                uuid=dom.UUIDString(), active=active, state=dom.state()[0], root=root, macs=macs, dom=dom
            )
        except lv.libvirtError as exc:
            if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                continue  # undefined by someone else while we looked
            raise
    return out


def _state_name(state: int) -> str:
    lv = _deps.libvirt
    return {
        lv.VIR_DOMAIN_RUNNING: "running",
        lv.VIR_DOMAIN_BLOCKED: "running",
        lv.VIR_DOMAIN_PAUSED: "paused",
        lv.VIR_DOMAIN_SHUTDOWN: "shutting down",
        lv.VIR_DOMAIN_SHUTOFF: "shut off",
        lv.VIR_DOMAIN_CRASHED: "crashed",
        lv.VIR_DOMAIN_PMSUSPENDED: "suspended",
    }.get(state, f"state {state}")


# --------------------------------------------------------------------------- the manager


def resolve_domain_type(conn, requested: str) -> tuple[str, str]:
    """``kvm``/``qemu`` as asked, or for ``auto`` the host's verdict (the code kvm_host uses)."""
    if requested in ("kvm", "qemu"):
        return requested, "set explicitly"
    from ansible_collections.virtops.kvm.plugins.module_utils import _host

    return _host.usable_domain_type(conn)


class CloneManager:
    """Plan and create (or remove) a batch of clones of one template, over one connection."""

    def __init__(
        self,
        conn,
        runner: Runner,
        *,
        template: str | None = None,
        template_xml: str | None = None,
        name: str | None = None,
        clones: list | None = None,
        mode: str = "overlay",
        dest_dir: str | None = None,
        xml_dir: str | None = None,
        domain_type: str = "auto",
        state: str = "present",
        protect_base: bool = True,
        parallel: int = 4,
        check_mode: bool = False,
        lock_path: str | None = None,
        lock_timeout: float = 900,
    ):
        if mode not in MODES:
            raise InvalidInput(f"mode must be one of {', '.join(MODES)}.")
        if state not in STATES:
            raise InvalidInput(f"state must be one of {', '.join(STATES)}.")
        if domain_type not in DOMAIN_TYPES:
            raise InvalidInput(f"domain_type must be one of {', '.join(DOMAIN_TYPES)}.")
        if template is not None and template_xml is not None:
            raise InvalidInput("Give template or template_xml, not both.")
        if parallel < 1:
            raise InvalidInput("parallel must be at least 1.")
        self.conn = conn
        self.runner = runner
        self.template = template
        self.template_xml = template_xml
        self.specs = normalize_clones(name, clones, state)
        self.mode = mode
        self.dest_dir = dest_dir
        self.xml_dir = xml_dir
        self.domain_type = domain_type
        self.protect_base = protect_base
        self.parallel = parallel
        self.check_mode = check_mode
        self.lock_path = lock_path
        self.lock_timeout = lock_timeout
        self.warnings: list[str] = []
        self.domain_type_reason: str | None = None

    # ------------------------------------------------------------ template

    def load_template(self) -> dict | None:
        """The template's XML, name and writable disks (checked: present, supported format, not in use)."""
        lv = _deps.libvirt
        if self.template is None and self.template_xml is None:
            return None
        if self.template is not None:
            dx.validate_name(self.template, "template name")
            try:
                dom = self.conn.lookupByName(self.template)
            except lv.libvirtError as exc:
                if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                    raise DomainNotFound(f"The template domain {self.template!r} is not defined.") from exc
                raise LibvirtFailed(f"Looking up template {self.template!r} failed: {exc}") from exc
            state = dom.state()[0]
            if state != lv.VIR_DOMAIN_SHUTOFF:
                raise InvalidInput(
                    f"The template {self.template!r} is {_state_name(state)}; clones need a shut-off template "
                    "(its disk would change under the copies).",
                    hint="Shut it down first (virtops.kvm.kvm_domain state=shutdown).",
                )
            root = dx.parse(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE), "template XML")
            name = self.template
        else:
            root = dx.parse(self.template_xml, "template_xml")
            name = dx.name_of(root)
            if not name:
                raise InvalidInput("template_xml has no <name>; it names the template in the clones' provenance.")
        disks = []
        for d in dx.disks(root):
            shared = d["readonly"] or d["shareable"] or d["device"] != "disk"
            if shared:
                continue
            if d["type"] != "file" or not d["path"]:
                raise InvalidInput(
                    f"Template disk {d['target']} is a {d['type']} disk; kvm_clone clones file-backed disks only.",
                    hint="Mark it <readonly/> or <shareable/> to share it, or convert it to a file.",
                )
            path = d["path"]
            if not os.path.isfile(path):
                raise StorageError(
                    f"Template disk {path} ({d['target']}) does not exist.",
                    hint="Fix the template's disk path or restore the image.",
                )
            declared = d["format"]
            if declared is not None and declared not in st.SUPPORTED_FORMATS:
                raise StorageError(
                    f"Template disk {path} has format {declared!r}, which kvm_clone does not support.",
                    hint=f"Convert it to {' or '.join(st.SUPPORTED_FORMATS)} with qemu-img convert.",
                )
            real = st.image_info(self.runner, path).get("format")
            if real not in st.SUPPORTED_FORMATS:
                raise StorageError(
                    f"Template disk {path} is a {real!r} image, which kvm_clone does not support.",
                    hint=f"Convert it to {' or '.join(st.SUPPORTED_FORMATS)} with qemu-img convert.",
                )
            if declared is not None and declared != real:
                raise StorageError(
                    f"Template disk {path} is declared as {declared} in the XML but is a {real} image.",
                    hint="Fix <driver type=...> in the template.",
                )
            disks.append(dict(target=d["target"], path=path, format=real))
        nvram = root.find("os/nvram")
        return dict(name=name, root=root, disks=disks, nvram=nvram.text if nvram is not None else None)

    # ------------------------------------------------------------ planning

    def _check_dir(self, path: str, what: str) -> str:
        if not os.path.isabs(path):
            raise InvalidInput(f"{what} {path!r} must be an absolute path.")
        if not os.path.isdir(path):
            raise StorageError(f"{what} {path} does not exist or is not a directory.", hint="Create it first.")
        if not os.access(path, os.W_OK | os.X_OK):
            raise StorageError(f"{what} {path} is not writable.", hint="Fix its permissions or choose another one.")
        return os.path.normpath(path)

    def plan(self, host: dict) -> dict:
        """Validate the whole batch against the host and decide every action; touches nothing."""
        tpl = self.load_template()
        wants_create = any(s["state"] != "absent" and s["name"] not in host for s in self.specs)
        if tpl is None and any(s["state"] != "absent" for s in self.specs):
            raise InvalidInput("template or template_xml is required unless state is absent.")
        dest_dir = self.dest_dir
        if tpl is not None and dest_dir is None:
            dest_dir = os.path.dirname(tpl["disks"][0]["path"]) if tpl["disks"] else None
        if wants_create and tpl["disks"]:
            if dest_dir is None:
                raise InvalidInput("dest_dir is required.")
            dest_dir = self._check_dir(dest_dir, "dest_dir")
        elif dest_dir is not None:
            dest_dir = os.path.normpath(dest_dir)
        xml_dir = self._plan_xml_dir()
        if tpl is not None and self.template is not None and self.template in {s["name"] for s in self.specs}:
            raise InvalidInput(f"A clone cannot have the template's name {self.template!r}.")

        used_uuids = {v["uuid"]: n for n, v in host.items()}
        used_macs: dict[str, str] = {}
        for n, v in host.items():
            for m in v["macs"]:
                used_macs.setdefault(m, n)
        batch_macs = set(used_macs)
        batch_uuids = set(used_uuids)
        for s in self.specs:
            batch_macs.update(s["macs"])
            if s["uuid"]:
                batch_uuids.add(s["uuid"])

        domain_type = None
        if wants_create:
            domain_type, self.domain_type_reason = resolve_domain_type(self.conn, self.domain_type)

        ext_of = {"qcow2": "qcow2", "raw": "img"}
        n_ifaces = len(tpl["root"].findall("devices/interface")) if tpl else 0
        planned_paths: dict[str, str] = {}
        items = []
        for s in self.specs:
            existing = host.get(s["name"])
            if s["state"] == "absent":
                items.append(self._plan_absent(s, existing, tpl, xml_dir))
                continue
            if existing is not None:
                items.append(self._plan_existing(s, existing, tpl, dest_dir, xml_dir))
                continue
            # a new clone: every path must be free, every explicit MAC/UUID unused
            if s["uuid"] and s["uuid"] in used_uuids:
                raise Conflict(
                    f"UUID {s['uuid']} of clone {s['name']!r} is already used by domain {used_uuids[s['uuid']]!r}."
                )
            for m in s["macs"]:
                if m in used_macs:
                    raise Conflict(f"MAC {m} of clone {s['name']!r} is already used by domain {used_macs[m]!r}.")
            if len(s["macs"]) > n_ifaces:
                raise InvalidInput(
                    f"Clone {s['name']!r} lists {len(s['macs'])} MAC(s) but the template has {n_ifaces} interface(s)."
                )
            disks, disk_map, created = [], {}, []
            for i, d in enumerate(tpl["disks"]):
                fmt = "qcow2" if self.mode == "overlay" else d["format"]
                path = os.path.join(dest_dir, disk_file_name(s["name"], d["target"], i, ext_of[fmt]))
                if path in planned_paths:
                    raise InvalidInput(
                        f"Clones {planned_paths[path]!r} and {s['name']!r} would both use disk file {path}."
                    )
                planned_paths[path] = s["name"]
                if os.path.realpath(path) == os.path.realpath(d["path"]):
                    raise Conflict(f"The disk of clone {s['name']!r} would be the template's own disk {path}.")
                if os.path.lexists(path):
                    raise Conflict(
                        f"Disk file {path} for clone {s['name']!r} already exists; it was not created by "
                        "virtops.kvm for this clone and is not overwritten.",
                        hint="Remove or move the file, or choose another clone name or dest_dir.",
                    )
                disk = dict(
                    target=d["target"],
                    path=path,
                    format=fmt,
                    backing_file=d["path"] if self.mode == "overlay" else None,
                    backing_format=d["format"] if self.mode == "overlay" else None,
                    mode=self.mode,
                    source=d["path"],
                    source_format=d["format"],
                )
                disks.append(disk)
                disk_map[d["path"]] = dict(path=path, format=fmt)
                created.append(dict(path=path, base=d["path"], mode=self.mode, format=fmt))
            nvram_path, nvram_src = None, None
            if tpl["nvram"]:
                nvram_path = derived_path(tpl["nvram"], tpl["name"], s["name"])
                if os.path.exists(tpl["nvram"]):
                    nvram_src = tpl["nvram"]
                    if os.path.lexists(nvram_path):
                        raise Conflict(f"NVRAM file {nvram_path} for clone {s['name']!r} already exists.")
                    created.append(dict(path=nvram_path, base=nvram_src, mode="nvram"))
            xml_path = self._xml_path(xml_dir, s["name"])
            if xml_path and os.path.lexists(xml_path):
                raise Conflict(
                    f"XML file {xml_path} for clone {s['name']!r} already exists and is not overwritten.",
                    hint="Remove it or choose another xml_dir.",
                )
            if xml_path:
                # recorded so that a later state=absent finds it even without xml_dir
                created.append(dict(path=xml_path, mode="xml"))
            uuid = s["uuid"] or new_uuid(batch_uuids)
            macs = list(s["macs"]) + [new_mac(batch_macs) for _i in range(n_ifaces - len(s["macs"]))]
            root = transform(
                tpl["root"],
                name=s["name"],
                uuid=uuid,
                macs=macs,
                disk_map=disk_map,
                domain_type=domain_type,
                template_name=tpl["name"],
                mode=self.mode,
                created=created,
                nvram_path=nvram_path,
                memory_mib=s["memory"],
                vcpus=s["vcpus"],
            )
            items.append(
                dict(
                    action="create",
                    spec=s,
                    name=s["name"],
                    uuid=uuid,
                    macs=macs,
                    disks=disks,
                    nvram=(nvram_src, nvram_path) if nvram_src else None,
                    xml=dx.tostring(root),
                    xml_path=xml_path,
                    before=None,
                )
            )
        bases = []
        if tpl is not None and self.mode == "overlay":
            bases = [d["path"] for d in tpl["disks"]]
        if bases and any(i["action"] == "create" for i in items):
            for base, users in st.disk_users(self.conn, bases).items():
                busy = [u["domain"] for u in users if u["active"] and u["writable"]]
                if busy:
                    raise StorageError(
                        f"Refusing overlays on {base}: running domain(s) {', '.join(sorted(busy))} write to it.",
                        hint="Shut them down first; an overlay's base must never change.",
                    )
        return dict(template=tpl, items=items, bases=bases, dest_dir=dest_dir, xml_dir=xml_dir)

    def _plan_xml_dir(self) -> str | None:
        """The checked xml_dir; a batch that only removes does not need it to exist.

        Writing XML files needs an existing, writable directory. When every
        clone is absent, a missing xml_dir just means there is no XML file
        there to remove.
        """
        if not self.xml_dir:
            return None
        removal_only = all(s["state"] == "absent" for s in self.specs)
        if removal_only and os.path.isabs(self.xml_dir) and not os.path.lexists(self.xml_dir):
            return None
        return self._check_dir(self.xml_dir, "xml_dir")

    @staticmethod
    def _xml_path(xml_dir: str | None, name: str) -> str | None:
        return os.path.join(xml_dir, f"{name}.xml") if xml_dir else None

    def _existing_disks(self, root) -> list[dict]:
        prov = dx.provenance(root) or {}
        modes = {c["path"]: c["mode"] for c in prov.get("created_disks", [])}
        out = []
        for d in dx.writable_file_disks(root):
            hdr = None
            if os.path.exists(d["path"]):
                try:
                    hdr = st.qcow2_header(d["path"])
                except StorageError:
                    hdr = None
            out.append(
                dict(
                    target=d["target"],
                    path=d["path"],
                    format=d["format"],
                    backing_file=hdr["backing_file"] if hdr else None,
                    backing_format=hdr["backing_format"] if hdr else None,
                    mode=modes.get(d["path"]),
                )
            )
        return out

    def _plan_existing(self, s: dict, existing: dict, tpl: dict, dest_dir: str | None, xml_dir: str | None) -> dict:
        """An existing clone must match exactly what this run would make; never overwritten."""
        root = existing["root"]
        diffs = []
        prov = dx.provenance(root)
        if prov is None or prov.get("created_by") != "virtops.kvm":
            raise Conflict(
                f"Domain {s['name']!r} exists and was not created by virtops.kvm.kvm_clone (no provenance in its "
                "metadata); it is not overwritten.",
                hint="Choose another clone name, or remove that domain first.",
            )
        if prov["template"] != tpl["name"]:
            diffs.append(f"it was cloned from {prov['template']!r}, not {tpl['name']!r}")
        if prov["mode"] != self.mode:
            diffs.append(f"it is a {prov['mode']} clone, not {self.mode}")
        have = {d["target"]: d for d in dx.writable_file_disks(root)}
        ext_of = {"qcow2": "qcow2", "raw": "img"}
        for i, d in enumerate(tpl["disks"]):
            cur = have.get(d["target"])
            if cur is None:
                diffs.append(f"it has no disk {d['target']}")
                continue
            fmt = "qcow2" if self.mode == "overlay" else d["format"]
            if dest_dir is not None:
                want = os.path.join(dest_dir, disk_file_name(s["name"], d["target"], i, ext_of[fmt]))
                if os.path.realpath(cur["path"]) != os.path.realpath(want):
                    diffs.append(f"disk {d['target']} is {cur['path']}, expected {want}")
                    continue
            if not os.path.exists(cur["path"]):
                diffs.append(f"disk file {cur['path']} is missing")
                continue
            if self.mode == "overlay":
                hdr = st.qcow2_header(cur["path"])
                backing = hdr["backing_file"] if hdr else None
                if backing is None or os.path.realpath(backing) != os.path.realpath(d["path"]):
                    diffs.append(f"disk {cur['path']} overlays {backing or 'nothing'}, expected {d['path']}")
        if s["uuid"] and s["uuid"] != existing["uuid"]:
            diffs.append(f"its UUID is {existing['uuid']}, expected {s['uuid']}")
        cur_macs = macs_of(root)
        if s["macs"] and cur_macs[: len(s["macs"])] != s["macs"]:
            diffs.append(f"its MACs are {', '.join(cur_macs) or 'none'}, expected {', '.join(s['macs'])}")
        if s["memory"] is not None and memory_mib(root) != s["memory"]:
            diffs.append(f"its memory is {memory_mib(root)} MiB, expected {s['memory']} MiB")
        if s["vcpus"] is not None and vcpus_of(root) != s["vcpus"]:
            diffs.append(f"it has {vcpus_of(root)} vCPU(s), expected {s['vcpus']}")
        if self.domain_type in ("kvm", "qemu") and root.get("type") != self.domain_type:
            diffs.append(f"its domain type is {root.get('type')}, expected {self.domain_type}")
        if diffs:
            raise Conflict(
                f"Clone {s['name']!r} exists but does not match: {'; '.join(diffs)}. It is not overwritten.",
                hint="Remove it (state=absent) to recreate it, or change the task to match.",
                clone=s["name"],
                differences=diffs,
            )
        actions = []
        if s["state"] == "running" and not existing["active"]:
            actions.append("start")
        dom = existing["dom"]
        if s["autostart"] is not None and bool(dom.autostart()) != s["autostart"]:
            actions.append("autostart")
        xml_path = self._xml_path(xml_dir, s["name"])
        xml_text = None
        if xml_path:
            xml_text = dom.XMLDesc(_deps.libvirt.VIR_DOMAIN_XML_INACTIVE)
            if not os.path.lexists(xml_path):
                actions.append("write_xml")
            else:
                if not self._our_xml_file(xml_path, s["name"], existing["uuid"]):
                    raise Conflict(
                        f"XML file {xml_path} exists but is not the XML of clone {s['name']!r}; it is not overwritten."
                    )
                with open(xml_path, encoding="utf-8") as f:
                    if f.read() != xml_text:
                        actions.append("write_xml")
        return dict(
            action="update" if actions else "none",
            actions=actions,
            spec=s,
            name=s["name"],
            uuid=existing["uuid"],
            macs=cur_macs,
            disks=self._existing_disks(root),
            dom=dom,
            active=existing["active"],
            xml_path=xml_path,
            xml=xml_text,
        )

    @staticmethod
    def _our_xml_file(path: str, name: str, uuid: str | None) -> bool:
        try:
            with open(path, encoding="utf-8") as f:
                root = dx.parse(f.read())
        except (OSError, KvmError):
            return False
        prov = dx.provenance(root)
        return bool(prov and dx.name_of(root) == name and (uuid is None or dx.uuid_of(root) == uuid))

    def _plan_absent(self, s: dict, existing: dict | None, tpl: dict | None, xml_dir: str | None) -> dict:
        if existing is None:
            xml_path = self._xml_path(xml_dir, s["name"])
            stale_xml = xml_path if xml_path and self._our_xml_file(xml_path, s["name"], None) else None
            return dict(
                action="remove_xml" if stale_xml else "none",
                spec=s,
                name=s["name"],
                uuid=None,
                macs=[],
                disks=[],
                files=[],
                xml_path=stale_xml,
                xml_paths=[stale_xml] if stale_xml else [],
                absent=True,
            )
        root = existing["root"]
        prov = dx.provenance(root)
        if prov is None or prov.get("created_by") != "virtops.kvm":
            raise Conflict(
                f"Domain {s['name']!r} was not created by virtops.kvm.kvm_clone; kvm_clone does not remove it.",
                hint="Use virtops.kvm.kvm_domain state=absent for domains kvm_clone did not make.",
            )
        if tpl is not None and prov["template"] != tpl["name"]:
            raise Conflict(
                f"Clone {s['name']!r} was cloned from {prov['template']!r}, not {tpl['name']!r}; not removed."
            )
        # Only files the provenance records AND the domain really uses (a forged record deletes nothing else).
        in_use = {d["path"] for d in dx.disks(root) if d["path"]}
        nv = root.find("os/nvram")
        nvram = nv.text if nv is not None else None
        files = []
        for c in prov["created_disks"]:
            if c["mode"] == "nvram":
                if c["path"] == nvram:
                    files.append(dict(path=c["path"], nvram=True))
            elif c["path"] in in_use:
                files.append(dict(path=c["path"], nvram=False))
        xml_paths = self._xml_files_to_remove(prov, xml_dir, s["name"], existing["uuid"])
        return dict(
            action="remove",
            spec=s,
            name=s["name"],
            uuid=existing["uuid"],
            macs=macs_of(root),
            disks=self._existing_disks(root),
            files=files,
            dom=existing["dom"],
            active=existing["active"],
            xml_path=xml_paths[0] if xml_paths else None,
            xml_paths=xml_paths,
            absent=True,
        )

    def _xml_files_to_remove(self, prov: dict, xml_dir: str | None, name: str, uuid: str) -> list[str]:
        """The clone's XML files: the one its provenance records, and the one in xml_dir if given.

        Each only if it is still this clone's XML (name, UUID, provenance), so
        a forged record or a replaced file deletes nothing else. Clones made
        before the record existed are found through xml_dir alone.
        """
        recorded = [
            c["path"]
            for c in prov["created_disks"]
            if c["mode"] == "xml"
            and c["path"]
            and os.path.isabs(c["path"])
            and os.path.basename(c["path"]) == f"{name}.xml"
        ]
        given = self._xml_path(xml_dir, name)
        out, seen = [], set()
        for path in [*recorded, *([given] if given else [])]:
            real = os.path.realpath(path)
            if real in seen or not self._our_xml_file(path, name, uuid):
                continue
            seen.add(real)
            out.append(path)
        return out

    # ------------------------------------------------------------ acting

    def run(self) -> dict:
        """Plan, then (unless check mode) act under the host lock; return the module result."""
        if self.check_mode:
            plan = self.plan(scan_host(self.conn))
            outcomes = {i["name"]: dict(ok=True, changed=i["action"] != "none") for i in plan["items"]}
            removed, kept = self._preview_removals([i for i in plan["items"] if i.get("absent")])
            return self._result(plan, outcomes, removed=removed, kept=kept)
        with HostLock(self.lock_path, self.lock_timeout):
            plan = self.plan(scan_host(self.conn))
            outcomes: dict[str, dict] = {}
            removed, kept = self._remove_all([i for i in plan["items"] if i.get("absent")], outcomes)
            creates = [i for i in plan["items"] if i["action"] == "create"]
            if creates:
                with ThreadPoolExecutor(max_workers=min(self.parallel, len(creates))) as pool:
                    for item, outcome in zip(creates, pool.map(self._create_one, creates), strict=True):
                        outcomes[item["name"]] = outcome
            for item in plan["items"]:
                if item["action"] in ("update", "none") and not item.get("absent"):
                    outcomes[item["name"]] = self._update_one(item)
            base_changed = self._protect_bases(plan, outcomes)
        result = self._result(plan, outcomes, removed, kept)
        result["changed"] = result["changed"] or base_changed
        failed = [(n, o["error"]) for n, o in outcomes.items() if not o["ok"]]
        if failed:
            names = ", ".join(n for n, _why in failed)
            why = "; ".join(f"{n}: {e}" for n, e in failed)
            raise KvmError(
                f"{len(failed)} of {len(plan['items'])} clone(s) failed ({names}); each failed clone was rolled "
                f"back and left nothing behind. {why}",
                changed=result["changed"],
                clones=result["clones"],
                bases=result["bases"],
                failed_clones=[n for n, _why in failed],
            )
        return result

    def _create_one(self, item: dict) -> dict:
        """Disks, NVRAM, define, autostart, start, XML file; on any failure undo all of it."""
        lv = _deps.libvirt
        made: list[str] = []
        dom = None
        try:
            for d in item["disks"]:
                if self.mode == "overlay":
                    st.create_overlay(self.runner, d["source"], d["path"], d["source_format"])
                else:
                    st.copy_image(self.runner, d["source"], d["path"], d["source_format"])
                made.append(d["path"])
            if item["nvram"]:
                src, dst = item["nvram"]
                made.append(dst)
                shutil.copyfile(src, dst)
            try:
                dom = self.conn.defineXML(item["xml"])
                if item["spec"]["autostart"]:
                    dom.setAutostart(1)
                if item["spec"]["state"] == "running":
                    dom.create()
                xml_text = dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE) if item["xml_path"] else None
            except lv.libvirtError as exc:
                raise LibvirtFailed(f"{exc.get_error_message() or exc}") from exc
            if item["xml_path"]:
                made.append(item["xml_path"])
                _write_new(item["xml_path"], xml_text)
            return dict(ok=True, changed=True)
        except (KvmError, OSError) as exc:
            msg = exc.message if isinstance(exc, KvmError) else f"{exc.strerror or exc} ({exc.filename or ''})"
            undo = self._rollback(dom, made)
            return dict(ok=False, changed=False, error=msg + (f" (rollback: {undo})" if undo else ""))

    def _rollback(self, dom, files: list[str]) -> str:
        lv = _deps.libvirt
        problems = []
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
                _undefine(dom)
            except lv.libvirtError as exc:
                problems.append(f"undefine failed: {exc.get_error_message()}")
        for path in reversed(files):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"cannot delete {path}: {exc.strerror}")
        return "; ".join(problems)

    def _update_one(self, item: dict) -> dict:
        lv = _deps.libvirt
        dom = item.get("dom")
        try:
            if "autostart" in item.get("actions", []):
                dom.setAutostart(1 if item["spec"]["autostart"] else 0)
            if "start" in item.get("actions", []):
                dom.create()
            if "write_xml" in item.get("actions", []):
                _write_replace(item["xml_path"], item["xml"])
        except lv.libvirtError as exc:
            return dict(ok=False, changed=False, error=exc.get_error_message() or str(exc))
        except OSError as exc:
            return dict(ok=False, changed=False, error=f"{exc.strerror} ({exc.filename})")
        return dict(ok=True, changed=item["action"] != "none")

    def _remove_all(self, items: list[dict], outcomes: dict) -> tuple[list[str], list[dict]]:
        """Destroy and undefine the clones, then delete the files they alone used."""
        lv = _deps.libvirt
        removed = []
        going = {i["name"] for i in items if i["action"] == "remove"}
        for item in items:
            if item["action"] == "none":
                outcomes[item["name"]] = dict(ok=True, changed=False)
                continue
            if item["action"] == "remove_xml":
                for path in item["xml_paths"]:
                    st.unlink(path)
                    removed.append(path)
                outcomes[item["name"]] = dict(ok=True, changed=True)
                continue
            dom = item["dom"]
            try:
                if dom.isActive():
                    dom.destroy()
                _undefine(dom)
                outcomes[item["name"]] = dict(ok=True, changed=True)
            except lv.libvirtError as exc:
                outcomes[item["name"]] = dict(ok=False, changed=False, error=exc.get_error_message() or str(exc))
                going.discard(item["name"])
            for f in item["files"]:
                if f["nvram"] and item["name"] in going and not os.path.exists(f["path"]):
                    removed.append(f["path"])  # libvirt removed it with the domain
        deletable, kept = self._disk_fates(items, going)
        for item in items:
            if item["action"] != "remove" or item["name"] not in going:
                continue
            for path in deletable[item["name"]] + item["xml_paths"]:
                if os.path.lexists(path):
                    st.unlink(path)
                    removed.append(path)
        return removed, kept

    def _preview_removals(self, items: list[dict]) -> tuple[list[str], list[dict]]:
        """Check mode: the files a real run would delete (and keep), found the same way; touches nothing."""
        going = {i["name"] for i in items if i["action"] == "remove"}
        deletable, kept = self._disk_fates(items, going)
        removed = []
        for item in items:
            if item["action"] == "remove_xml":
                removed += item["xml_paths"]
            elif item["action"] == "remove":
                nvram = [f["path"] for f in item["files"] if f["nvram"] and os.path.exists(f["path"])]
                removed += [p for p in nvram + deletable[item["name"]] + item["xml_paths"] if os.path.lexists(p)]
        return removed, kept

    def _disk_fates(self, items: list[dict], going: set[str]) -> tuple[dict[str, list[str]], list[dict]]:
        """Per removed clone, the disk files it created that no other domain uses; the rest are kept."""
        candidates = [f["path"] for i in items if i["name"] in going for f in i["files"] if not f["nvram"]]
        users = st.disk_users(self.conn, candidates) if candidates else {}
        deletable: dict[str, list[str]] = {}
        kept = []
        for item in items:
            if item["name"] not in going:
                continue
            deletable[item["name"]] = []
            for f in item["files"]:
                if f["nvram"]:
                    continue
                others = sorted({u["domain"] for u in users.get(f["path"], []) if u["domain"] not in going})
                if others:
                    kept.append(dict(path=f["path"], used_by=others))
                    verb = "Would keep" if self.check_mode else "Kept"
                    self.warnings.append(f"{verb} {f['path']}: still used by {', '.join(others)}.")
                    continue
                deletable[item["name"]].append(f["path"])
        return deletable, kept

    def _protect_bases(self, plan: dict, outcomes: dict) -> bool:
        """chmod a-w every base that now has overlays; the course's 'never modify a base'."""
        if not self.protect_base or not plan["bases"]:
            return False
        if not any(
            i["action"] != "remove" and not i.get("absent") and outcomes.get(i["name"], {}).get("ok")
            for i in plan["items"]
        ):
            return False
        changed = False
        for base in plan["bases"]:
            mode = os.stat(base).st_mode
            if mode & 0o222:
                os.chmod(base, stat.S_IMODE(mode) & ~0o222)
                changed = True
        return changed

    # ------------------------------------------------------------ result

    def _result(self, plan: dict, outcomes: dict, removed: list[str], kept: list[dict]) -> dict:
        clones, before, after = [], {}, {}
        for item in plan["items"]:
            o = outcomes.get(item["name"], dict(ok=True, changed=False))
            absent = bool(item.get("absent"))
            if item["action"] == "create":
                want = "running" if item["spec"]["state"] == "running" else "present"
                state = want if o["ok"] else "absent"
            elif absent:
                state = "absent" if o["ok"] else "present"
            else:
                running = item["active"] or ("start" in item.get("actions", []) and o["ok"])
                state = "running" if running else "present"
            entry = dict(
                name=item["name"],
                uuid=item["uuid"],
                macs=item["macs"],
                disks=[
                    {k: d.get(k) for k in ("target", "path", "format", "backing_file", "backing_format", "mode")}
                    for d in item["disks"]
                ],
                changed=bool(o["changed"]),
                state=state,
            )
            if item.get("xml_path"):
                entry["xml_file"] = item["xml_path"]
            if not o["ok"]:
                entry["failed"] = True
                entry["msg"] = o["error"]
            clones.append(entry)
            if item["action"] == "create":
                before[item["name"]] = dict(state="absent")
            elif absent:
                before[item["name"]] = dict(
                    state="running" if item.get("active") else ("present" if item["action"] == "remove" else "absent"),
                    uuid=item["uuid"],
                    macs=item["macs"],
                    disks=[d["path"] for d in item["disks"]],
                )
            else:
                before[item["name"]] = dict(
                    state="running" if item["active"] else "present",
                    uuid=item["uuid"],
                    macs=item["macs"],
                    disks=[d["path"] for d in item["disks"]],
                )
            after[item["name"]] = (
                dict(state="absent")
                if state == "absent"
                else dict(state=state, uuid=item["uuid"], macs=item["macs"], disks=[d["path"] for d in item["disks"]])
            )
        bases = self._bases(plan, clones)
        changed = any(c["changed"] for c in clones) or any(b.get("changed") for b in bases)
        for b in bases:
            b.pop("changed", None)
        result = dict(
            changed=changed,
            clones=clones,
            bases=bases,
            diff=dict(before=dict(clones=before), after=dict(clones=after)),
        )
        if plan["template"] is not None and self.domain_type_reason:
            result["domain_type_reason"] = self.domain_type_reason
        if removed:
            result["removed_files"] = removed
        if kept:
            result["kept_files"] = kept
        if self.warnings:
            result["warnings"] = list(self.warnings)
        return result

    def _bases(self, plan: dict, clones: list[dict]) -> list[dict]:
        if not plan["bases"]:
            return []
        users = st.disk_users(self.conn, plan["bases"])
        planned = {c["name"] for c in clones if c["state"] != "absent"} if self.check_mode else set()
        out = []
        for base in plan["bases"]:
            deps = {u["domain"] for u in users[base] if u["relation"] == "backing"}
            if self.check_mode:
                deps |= planned
            writable = bool(os.stat(base).st_mode & 0o222)
            will_protect = self.protect_base and bool(deps)
            out.append(
                dict(
                    path=base,
                    read_only=not writable or (self.check_mode and will_protect),
                    dependents=sorted(deps),
                    changed=self.check_mode and will_protect and writable,
                )
            )
        return out


def _undefine(dom) -> None:
    lv = _deps.libvirt
    flags = lv.VIR_DOMAIN_UNDEFINE_NVRAM | lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    try:
        dom.undefineFlags(flags)
    except lv.libvirtError as exc:
        if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT, lv.VIR_ERR_ARGUMENT_UNSUPPORTED):
            raise
        dom.undefine()


def _write_new(path: str, text: str) -> None:
    """Create ``path`` exclusively (never overwrite what someone else put there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _write_replace(path: str, text: str) -> None:
    tmp = f"{path}.virtops-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
