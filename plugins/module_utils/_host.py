# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The hypervisor host: hardware probe, the kvm/qemu verdict, packages and daemons.

Everything here reads files under a ``root`` (so unit tests point it at a fake
tree) and runs programs through an injected ``runner(argv, env=None) -> (rc,
stdout, stderr)``, so it works and is tested without Ansible. It knows nothing
about domains: other modules only ask ``usable_domain_type()``.

Public helpers used by other modules (keep their signatures):
``probe_hardware(caps_xml=None, root="/")``, ``verdict(facts)`` and
``usable_domain_type(conn=None)``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
from collections.abc import Callable, Iterable
from typing import Optional

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    HostError,
    PackageManagerError,
    TimeoutExpired,
    UnsupportedPlatform,
)

Runner = Callable[..., tuple[int, str, str]]
Which = Callable[[str], Optional[str]]  # noqa: UP045 (evaluated at runtime on Python < 3.10 targets)

# ---------------------------------------------------------------------------
# Hardware probe and verdict
# ---------------------------------------------------------------------------

_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "hygon", "CentaurHauls": "centaur"}
_NESTED_MODULES = ("kvm_intel", "kvm_amd")


def _path(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def _read(root: str, path: str) -> str | None:
    try:
        with open(_path(root, path), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def parse_cpuinfo(text: str) -> dict:
    """CPU vendor, model, count and the hardware virtualization flag from /proc/cpuinfo."""
    vendor_id = model = None
    count = 0
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "processor":
            count += 1
        elif key == "vendor_id" and vendor_id is None:
            vendor_id = value
        elif key == "model name" and model is None:
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    virt_flag = "vmx" if "vmx" in flags else "svm" if "svm" in flags else "none"
    return {
        "cpu_vendor_id": vendor_id,
        "cpu_vendor": _VENDORS.get(vendor_id or "", (vendor_id or "unknown").lower()),
        "cpu_model": model,
        "cpu_count": count,
        "virt_flag": virt_flag,
    }


def kvm_modules(root: str = "/") -> list[str]:
    """Loaded kvm modules (kvm, kvm_intel, kvm_amd, kvm_pvm, ...) from /proc/modules or /sys/module."""
    found: set[str] = set()
    text = _read(root, "/proc/modules")
    if text:
        found.update(line.split()[0] for line in text.splitlines() if line.split())
    try:
        found.update(os.listdir(_path(root, "/sys/module")))
    except OSError:
        pass
    return sorted(m for m in found if m == "kvm" or m.startswith("kvm_"))


def nested_setting(root: str = "/") -> bool | None:
    """The kvm_intel / kvm_amd ``nested`` parameter; None when neither module exposes it."""
    for mod in _NESTED_MODULES:
        text = _read(root, f"/sys/module/{mod}/parameters/nested")
        if text is not None:
            return text.strip().upper() in ("Y", "1")
    return None


def memory_mib(root: str = "/") -> int | None:
    text = _read(root, "/proc/meminfo") or ""
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.M)
    return int(m.group(1)) // 1024 if m else None


def caps_domain_types(caps_xml: str) -> list[str]:
    """The domain types libvirt offers for guests (``<guest><arch><domain type=...>``)."""
    etree = _deps.etree
    if etree is None:  # lxml missing: the stdlib parser reads these few attributes just as well
        import xml.etree.ElementTree as etree
    root = etree.fromstring(caps_xml.encode() if isinstance(caps_xml, str) else caps_xml)
    types = {d.get("type") for d in root.findall("./guest/arch/domain") if d.get("type")}
    return sorted(types)


def probe_hardware(caps_xml: str | None = None, root: str = "/") -> dict:
    """Read what the host offers for virtualization; cheap, read-only, no daemon needed."""
    facts = parse_cpuinfo(_read(root, "/proc/cpuinfo") or "")
    dev_kvm = _path(root, "/dev/kvm")
    facts["dev_kvm_exists"] = os.path.exists(dev_kvm)
    facts["dev_kvm_accessible"] = facts["dev_kvm_exists"] and os.access(dev_kvm, os.R_OK | os.W_OK)
    facts["kvm_modules"] = kvm_modules(root)
    facts["nested"] = nested_setting(root)
    facts["memory_mib"] = memory_mib(root)
    facts["libvirt_domain_types"] = caps_domain_types(caps_xml) if caps_xml else None
    return facts


def verdict(facts: dict) -> dict:
    """Decide whether guests can use KVM here; a pure function of ``probe_hardware()`` facts.

    libvirt's capability list alone is not trusted: a paravirtual/nested KVM (for
    example kvm_pvm) offers /dev/kvm and libvirt lists ``kvm``, yet full
    virtualization guests hang there. The CPU flag is what tells them apart.
    """

    def no(reason: str) -> dict:
        return {
            "kvm_usable": False,
            "reason": reason + " Use domain type 'qemu' (TCG software emulation).",
            "recommended_domain_type": "qemu",
        }

    flag = facts.get("virt_flag") or "none"
    types = facts.get("libvirt_domain_types")
    modules = facts.get("kvm_modules") or []
    if not facts.get("dev_kvm_exists"):
        if flag == "none":
            return no("/dev/kvm does not exist and the CPU exposes no vmx/svm flag (no hardware virtualization).")
        return no(
            f"/dev/kvm does not exist although the CPU has the {flag} flag: load the kvm module "
            f"(modprobe {'kvm_intel' if flag == 'vmx' else 'kvm_amd'}) or enable virtualization in the firmware."
        )
    if flag == "none":
        extra = [m for m in modules if m not in ("kvm", *_NESTED_MODULES)]
        via = f" (kernel module {', '.join(extra)})" if extra else ""
        return no(
            "The CPU exposes no vmx/svm flag, so /dev/kvm is a paravirtual/nested KVM"
            f"{via} that cannot run full-virtualization guests."
        )
    if types is not None and "kvm" not in types:
        return no(
            f"The CPU has {flag} and /dev/kvm exists, but libvirt does not list the kvm domain type "
            f"(it lists: {', '.join(types) or 'nothing'}); check that the QEMU driver is installed and "
            "that /dev/kvm is accessible to the QEMU user."
        )
    if not facts.get("dev_kvm_accessible") and types is None:
        return no(
            f"The CPU has {flag} but /dev/kvm is not readable and writable by this user "
            "(run as root or join the kvm group), and libvirt was not asked."
        )
    checked = "libvirt lists the kvm domain type" if types is not None else "libvirt was not asked"
    return {
        "kvm_usable": True,
        "reason": f"The CPU has the {flag} flag, /dev/kvm exists and {checked}.",
        "recommended_domain_type": "kvm",
    }


def usable_domain_type(conn=None) -> tuple[str, str]:
    """``(domain_type, reason)`` for this host: cheap, no package manager, no daemon start."""
    caps = None
    if conn is not None:
        caps = conn.getCapabilities()
    v = verdict(probe_hardware(caps))
    return v["recommended_domain_type"], v["reason"]


def version_string(number: int | None) -> str | None:
    """libvirt encodes versions as major * 1_000_000 + minor * 1000 + release."""
    if not number:
        return None
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def parse_virsh_version(text: str) -> dict:
    """``virsh version`` output: the library and the running hypervisor versions."""
    lib = re.search(r"Using library: libvirt ([\d.]+)", text)
    hyp = re.search(r"Running hypervisor: (\S+) ([\d.]+)", text)
    return {
        "libvirt_version": lib.group(1) if lib else None,
        "hypervisor": hyp.group(1) if hyp else None,
        "hypervisor_version": hyp.group(2) if hyp else None,
    }


def parse_qemu_version(text: str) -> str | None:
    m = re.search(r"QEMU emulator version ([\d.]+)", text)
    return m.group(1) if m else None


# ---------------------------------------------------------------------------
# Distribution family and packages
# ---------------------------------------------------------------------------

FAMILIES = ("debian", "redhat", "suse")

_FAMILY_IDS = {
    "debian": {"debian", "ubuntu", "linuxmint", "raspbian", "pop", "kali", "devuan"},
    "redhat": {"rhel", "fedora", "centos", "rocky", "almalinux", "ol", "scientific", "cloudlinux", "amzn"},
    "suse": {"suse", "opensuse", "sles", "sled", "opensuse-leap", "opensuse-tumbleweed"},
}

PACKAGES = {
    "debian": {
        "base": ["qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients"],
        "python": ["python3-libvirt", "python3-lxml", "python3-guestfs"],
    },
    "redhat": {
        "base": ["qemu-kvm", "libvirt-daemon", "libvirt-client", "libvirt-daemon-driver-qemu"],
        "python": ["python3-libvirt", "python3-lxml", "python3-libguestfs"],
    },
    "suse": {
        "base": ["qemu-kvm", "libvirt-daemon", "libvirt-client", "libvirt-daemon-driver-qemu"],
        "python": ["python3-libvirt-python", "python3-lxml", "python3-libguestfs"],
    },
}
GUI_PACKAGES = ["virt-manager"]


def parse_os_release(text: str) -> dict:
    """KEY=VALUE pairs of os-release(5), shell quoting removed."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _sep, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            parts = [value.strip("\"'")]
        out[key.strip()] = " ".join(parts)
    return out


def family_of(os_release: dict) -> str | None:
    """Map ID, then ID_LIKE, to a supported family; None when none matches."""
    ids = [os_release.get("ID", "").lower(), *os_release.get("ID_LIKE", "").lower().split()]
    for ident in ids:
        for family, known in _FAMILY_IDS.items():
            if ident in known:
                return family
    return None


def unsupported(what: str) -> UnsupportedPlatform:
    return UnsupportedPlatform(
        f"Unsupported distribution family: {what}. Supported families: {', '.join(FAMILIES)}.",
        hint="Set the family option to one of them if the host is compatible, or install the packages "
        "yourself and use install_packages=false.",
    )


def detect_family(root: str = "/") -> tuple[str, str]:
    """``(family, os_id)`` from /etc/os-release (no Ansible facts needed)."""
    text = _read(root, "/etc/os-release") or _read(root, "/usr/lib/os-release")
    if text is None:
        raise unsupported("no /etc/os-release on the host")
    osr = parse_os_release(text)
    family = family_of(osr)
    if family is None:
        like = f", ID_LIKE={osr['ID_LIKE']}" if osr.get("ID_LIKE") else ""
        raise unsupported(f"ID={osr.get('ID', '?')}{like}")
    return family, osr.get("ID", family)


def packages_for(family: str, gui: bool = False, python_bindings: bool = False, extra: Iterable[str] = ()) -> list:
    """The packages a KVM host of ``family`` needs, in order, without duplicates."""
    if family not in PACKAGES:
        raise unsupported(family)
    wanted = list(PACKAGES[family]["base"])
    if gui:
        wanted += GUI_PACKAGES
    if python_bindings:
        wanted += PACKAGES[family]["python"]
    wanted += list(extra)
    return list(dict.fromkeys(wanted))


class PackageManager:
    """Query and install packages with one call each (dpkg-query/apt-get, rpm/dnf|yum, rpm/zypper)."""

    def __init__(self, family: str, runner: Runner, which: Which):
        if family not in PACKAGES:
            raise unsupported(family)
        self.family = family
        self.runner = runner
        self.which = which

    def _bin(self, *names: str) -> str:
        for name in names:
            path = self.which(name)
            if path:
                return path
        raise PackageManagerError(
            f"None of {', '.join(names)} was found on the host, so packages of the {self.family} family "
            "cannot be managed.",
            hint="Check the family option.",
        )

    def installed(self, names: list[str]) -> set[str]:
        """Which of ``names`` are installed, asked in one call."""
        if not names:
            return set()
        if self.family == "debian":
            argv = [self._bin("dpkg-query"), "-W", "-f=${Package}\t${db:Status-Abbrev}\n", *names]
            rc, out, err = self.runner(argv)
            if rc not in (0, 1):  # 1: some names are unknown, which just means not installed
                raise PackageManagerError(f"dpkg-query failed (rc={rc}): {err.strip()}", rc=rc, stderr=err)
            found = set()
            for line in out.splitlines():
                name, _sep, status = line.partition("\t")
                if len(status) >= 2 and status[1] == "i":
                    found.add(name.split(":")[0])
            return found & set(names)
        argv = [self._bin("rpm"), "-q", "--qf", "%{NAME}\n", *names]
        rc, out, _err = self.runner(argv)  # rc = number of names not installed
        return {line.strip() for line in out.splitlines()} & set(names)

    def install_argv(self, names: list[str], update_cache: bool = False) -> list[list[str]]:
        if self.family == "debian":
            apt = self._bin("apt-get")
            cmds = [[apt, "update"]] if update_cache else []
            return [*cmds, [apt, "install", "-y", "--no-install-recommends", *names]]
        if self.family == "redhat":
            mgr = self._bin("dnf", "yum")
            return [[mgr, "install", "-y", *(["--refresh"] if update_cache else []), *names]]
        zypper = self._bin("zypper")
        cmds = [[zypper, "--non-interactive", "refresh"]] if update_cache else []
        return [*cmds, [zypper, "--non-interactive", "install", "--no-recommends", *names]]

    def install(self, names: list[str], update_cache: bool = False) -> None:
        """Install ``names`` in one package manager call; its own error text is reported."""
        env = {"DEBIAN_FRONTEND": "noninteractive"} if self.family == "debian" else None
        for argv in self.install_argv(names, update_cache):
            rc, out, err = self.runner(argv, env=env)
            if rc != 0:
                text = err.strip() or out.strip()
                hint = None
                if "Unable to locate package" in text or "No match for argument" in text or "not found" in text:
                    hint = "Check the package names, or refresh the package lists with update_cache=true."
                raise PackageManagerError(
                    f"'{' '.join(argv[:2])}' failed (rc={rc}): {text}",
                    hint=hint,
                    cmd=argv,
                    rc=rc,
                    stdout=out,
                    stderr=err,
                )


# ---------------------------------------------------------------------------
# Daemons
# ---------------------------------------------------------------------------

MONOLITHIC = "libvirtd"
MODULAR = "virtqemud"
LOG_DAEMON = "virtlogd"
_UNIT_DIRS = (
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
)
_ENABLED = ("enabled", "enabled-runtime", "static", "indirect", "generated", "alias", "linked", "linked-runtime")
_MODULAR_BY_DEFAULT = ("redhat", "suse")  # Fedora >= 35, RHEL 9, openSUSE ship modular daemons as the default


def init_system(root: str = "/") -> str:
    """``systemd`` when systemd is PID 1 (sd_booted(3) test), else ``none``."""
    return "systemd" if os.path.isdir(_path(root, "/run/systemd/system")) else "none"


def unit_exists(unit: str, root: str = "/") -> bool:
    return any(os.path.exists(_path(root, f"{d}/{unit}")) for d in _UNIT_DIRS)


def choose_daemon(
    requested: str,
    init: str,
    family: str | None,
    root: str = "/",
    which: Which | None = None,
    is_enabled: Callable[[str], bool] | None = None,
) -> str:
    """``libvirtd`` (monolithic) or ``virtqemud`` (modular) for this host.

    An explicit choice wins. Otherwise the daemon the distribution ships wins when it
    ships only one; with both, the one already enabled; else the family default
    (modular on RedHat/SUSE, monolithic on Debian/Ubuntu, as those distributions do).
    """
    if requested in (MONOLITHIC, MODULAR):
        return requested
    if init == "systemd":
        mono, mod = unit_exists("libvirtd.service", root), unit_exists("virtqemud.service", root)
    else:
        mono, mod = bool(which and which(MONOLITHIC)), bool(which and which(MODULAR))
    if mono and not mod:
        return MONOLITHIC
    if mod and not mono:
        return MODULAR
    if mono and mod and is_enabled is not None:
        if is_enabled("virtqemud.socket") or is_enabled("virtqemud.service"):
            return MODULAR
        if is_enabled("libvirtd.service") or is_enabled("libvirtd.socket"):
            return MONOLITHIC
    return MODULAR if family in _MODULAR_BY_DEFAULT and (init == "systemd" or mod) else MONOLITHIC


class SystemdDaemon:
    """libvirtd or virtqemud (with their sockets and virtlogd.socket) under systemd."""

    init_system = "systemd"

    def __init__(self, name: str, runner: Runner, which: Which, root: str = "/"):
        self.name = name
        self.runner = runner
        self.root = root
        self.systemctl = which("systemctl") or "systemctl"
        sockets = [f"{name}.socket", f"{name}-ro.socket", f"{name}-admin.socket"]
        self.own = [f"{name}.service", *[s for s in sockets if unit_exists(s, root)]]
        self.units = self.own + (["virtlogd.socket"] if unit_exists("virtlogd.socket", root) else [])
        # Socket-activated daemons may exit when idle (--timeout 120): then the socket is what is "started".
        own_sockets = [u for u in self.own if u.endswith(".socket")]
        self.watch = (own_sockets or [f"{name}.service"]) + self.units[len(self.own) :]

    def _query(self, verb: str, units: list[str]) -> dict[str, str]:
        _rc, out, _err = self.runner([self.systemctl, verb, *units])
        lines = out.splitlines()
        return {u: (lines[i].strip() if i < len(lines) else "unknown") for i, u in enumerate(units)}

    def state(self) -> str:
        active = self._query("is-active", self.watch)
        if all(s == "active" for s in active.values()):
            return "started"
        own = self._query("is-active", self.own)
        return "stopped" if all(s != "active" for s in own.values()) else "partial"

    def enabled_units(self) -> dict[str, str]:
        return self._query("is-enabled", self.units)

    def enabled(self) -> bool | None:
        status = self.enabled_units()
        return all(status[u] in _ENABLED for u in self.units)

    def to_enable(self, want: bool) -> list[str]:
        status = self.enabled_units()
        if want:
            masked = [u for u, s in status.items() if s.startswith("masked")]
            if masked:
                raise HostError(
                    f"Cannot enable {', '.join(masked)}: masked.", hint=f"Run systemctl unmask {' '.join(masked)}."
                )
            return [u for u in self.units if status[u] not in _ENABLED]
        return [u for u in self.own if status[u] in ("enabled", "enabled-runtime")]

    def _systemctl(self, verb: str, units: list[str]) -> None:
        argv = [self.systemctl, verb, *units]
        rc, out, err = self.runner(argv)
        if rc != 0:
            raise HostError(f"'systemctl {verb} {' '.join(units)}' failed (rc={rc}): {err.strip() or out.strip()}")

    def set_enabled(self, units: list[str], want: bool) -> None:
        if units:
            self._systemctl("enable" if want else "disable", units)

    def start(self, dry_run: bool = False) -> list[str]:
        active = self._query("is-active", self.units)
        todo = [u for u in self.units if active[u] != "active"]
        if todo and not dry_run:
            self._systemctl("start", todo)
        return todo

    def stop(self, dry_run: bool = False) -> list[str]:
        active = self._query("is-active", self.own)
        todo = [u for u in self.own if active[u] != "inactive"]
        if todo and not dry_run:
            self._systemctl("stop", todo)
        return todo


class DirectDaemon:
    """virtlogd + libvirtd (or virtqemud) started as plain daemons where no init system runs.

    The pid files in /run survive a killed daemon when /run is on disk, so a daemon
    counts as running only if its pid is alive, not a zombie, and named like the daemon.
    """

    init_system = "none"

    def __init__(
        self,
        name: str,
        runner: Runner,
        which: Which,
        ping: Callable[[], bool],
        root: str = "/",
        timeout: float = 60,
        kill: Callable[[int, int], None] = os.kill,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.runner = runner
        self.which = which
        self.ping = ping
        self.root = root
        self.timeout = timeout
        self.kill = kill
        self.sleep = sleep
        self.clock = clock
        self.daemons = [LOG_DAEMON, name]

    def pid(self, daemon: str) -> int | None:
        """The live pid of ``daemon`` from its pid file, or None."""
        text = _read(self.root, f"/run/{daemon}.pid")
        try:
            pid = int((text or "").strip())
        except ValueError:
            return None
        status = _read(self.root, f"/proc/{pid}/status")
        if status is None:
            return None
        fields = dict(line.partition(":")[::2] for line in status.splitlines())
        if fields.get("State", "").strip().startswith("Z"):
            return None
        if fields.get("Name", "").strip() != daemon[:15]:
            return None  # the pid was reused by another program
        return pid

    def running(self) -> dict[str, bool]:
        return {d: self.pid(d) is not None for d in self.daemons}

    def state(self) -> str:
        running = self.running()
        if all(running.values()):
            return "started"
        return "stopped" if not running[self.name] else "partial"

    def enabled(self) -> bool | None:
        return None

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = self.clock() + self.timeout
        while not done():
            if self.clock() >= deadline:
                raise TimeoutExpired(f"Timed out after {self.timeout:g} s waiting for {what}.")
            self.sleep(0.25)

    def to_enable(self, want: bool) -> list[str]:
        return []  # nothing manages boot-time start here

    def set_enabled(self, units: list[str], want: bool) -> None:
        return None

    def start(self, dry_run: bool = False) -> list[str]:
        started = []
        for daemon in self.daemons:
            if self.pid(daemon) is not None:
                continue
            if dry_run:
                started.append(daemon)
                continue
            binary = self.which(daemon)
            if not binary:
                raise HostError(f"{daemon} is not installed on the host.", hint="Use install_packages=true.")
            rc, out, err = self.runner([binary, "-d"])
            if rc != 0:
                raise HostError(f"'{daemon} -d' failed (rc={rc}): {err.strip() or out.strip()}")
            self._wait(f"{daemon} to write a live pid to /run/{daemon}.pid", lambda d=daemon: self.pid(d) is not None)
            started.append(daemon)
        if self.name in started and not dry_run:
            self._wait(f"{self.name} to answer on qemu:///system", self.ping)
        return started

    def stop(self, dry_run: bool = False) -> list[str]:
        pid = self.pid(self.name)
        if pid is None:
            return []
        if dry_run:
            return [self.name]
        try:
            self.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return []
        self._wait(f"{self.name} (pid {pid}) to exit", lambda: self.pid(self.name) is None)
        return [self.name]


# ---------------------------------------------------------------------------
# libvirt and QEMU versions
# ---------------------------------------------------------------------------

LOCAL_URI = "qemu:///system"


def ping(uri: str, runner: Runner, which: Which) -> bool:
    """Whether the libvirt daemon answers at ``uri`` (python binding, else virsh)."""
    from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
    from ansible_collections.virtops.kvm.plugins.module_utils._errors import ConnectionFailed

    if _deps.libvirt is not None:
        try:
            with Connection(uri) as c:
                c.conn.getLibVersion()
        except ConnectionFailed:
            return False
        return True
    virsh = which("virsh")
    return bool(virsh) and runner([virsh, "-c", uri, "version"])[0] == 0


def qemu_binary_version(runner: Runner, which: Which) -> str | None:
    # RHEL ships its QEMU as /usr/libexec/qemu-kvm, outside PATH.
    candidates = [which("qemu-system-x86_64"), which("qemu-kvm"), "/usr/libexec/qemu-kvm", which("qemu-system-aarch64")]
    for path in candidates:
        if path and os.path.exists(path):
            rc, out, _err = runner([path, "--version"])
            if rc == 0 and parse_qemu_version(out):
                return parse_qemu_version(out)
    return None


def libvirt_facts(uri: str, connect: bool, runner: Runner, which: Which) -> dict:
    """Capabilities XML and versions; asks the daemon only when ``connect`` (else library/binaries)."""
    from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection

    facts = {"caps_xml": None, "libvirt_version": None, "hypervisor": None, "qemu_version": None}
    lv = _deps.libvirt
    virsh = which("virsh")
    if connect and lv is not None:
        with Connection(uri) as c:
            conn = c.conn
            try:
                facts["caps_xml"] = conn.getCapabilities()
                facts["libvirt_version"] = version_string(conn.getLibVersion())
                facts["hypervisor"] = conn.getType()
                if facts["hypervisor"] == "QEMU":
                    facts["qemu_version"] = version_string(conn.getVersion())
            except lv.libvirtError as exc:
                from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed

                raise libvirt_failed(exc, f"Reading the capabilities of '{uri}'") from exc
    elif connect and virsh:
        rc, out, err = runner([virsh, "-c", uri, "capabilities"])
        if rc != 0:
            raise HostError(f"'virsh -c {uri} capabilities' failed: {err.strip()}")
        facts["caps_xml"] = out
        parsed = parse_virsh_version(runner([virsh, "-c", uri, "version"])[1])
        facts["libvirt_version"] = parsed["libvirt_version"]
        facts["hypervisor"] = parsed["hypervisor"]
        if parsed["hypervisor"] == "QEMU":
            facts["qemu_version"] = parsed["hypervisor_version"]
    if facts["libvirt_version"] is None:
        if lv is not None:
            facts["libvirt_version"] = version_string(lv.getVersion())
        elif virsh:
            rc, out, _err = runner([virsh, "--version"])
            facts["libvirt_version"] = out.strip() or None if rc == 0 else None
    if facts["qemu_version"] is None:
        facts["qemu_version"] = qemu_binary_version(runner, which)
    return facts


# ---------------------------------------------------------------------------
# The whole host, compare then act
# ---------------------------------------------------------------------------


class HostManager:
    """Bring a host to a KVM hypervisor state: packages, then daemon, then the probe.

    Order: the hardware-only verdict runs first, so ``require_hw_virt`` on a host
    without usable KVM fails before anything is installed; libvirt's capability
    list needs the daemon, so the full verdict (and its second check) runs last.
    """

    def __init__(
        self,
        params: dict,
        runner: Runner,
        which: Which,
        check_mode: bool = False,
        warn: Callable[[str], None] = lambda _msg: None,
        root: str = "/",
    ):
        self.p = params
        self.runner = runner
        self.which = which
        self.check_mode = check_mode
        self.warn = warn
        self.root = root

    def _family(self) -> tuple[str | None, str | None]:
        requested = self.p.get("family") or "auto"
        if requested != "auto":
            if requested not in FAMILIES:
                raise unsupported(requested)
            return requested, None
        try:
            return detect_family(self.root)
        except UnsupportedPlatform:
            if self.p.get("install_packages", True):
                raise
            return None, None

    def _is_enabled(self, unit: str) -> bool:
        systemctl = self.which("systemctl") or "systemctl"
        return self.runner([systemctl, "is-enabled", unit])[1].strip() in ("enabled", "enabled-runtime")

    def daemon(self, family: str | None):
        init = init_system(self.root)
        name = choose_daemon(self.p.get("daemon") or "auto", init, family, self.root, self.which, self._is_enabled)
        if init == "systemd":
            return SystemdDaemon(name, self.runner, self.which, self.root)
        return DirectDaemon(
            name,
            self.runner,
            self.which,
            lambda: ping(LOCAL_URI, self.runner, self.which),
            root=self.root,
            timeout=self.p.get("daemon_timeout", 60),
        )

    def run(self) -> dict:
        hw = probe_hardware(root=self.root)
        if self.p.get("require_hw_virt") and not verdict(hw)["kvm_usable"]:
            raise HostError(f"KVM is not usable on this host: {verdict(hw)['reason']}", hint=_REQUIRE_HINT)

        family, os_id = self._family()
        result: dict = {"changed": False, "installed_packages": [], "started_daemons": [], "stopped_daemons": []}
        result["enabled_units"], result["disabled_units"] = [], []

        # Packages: one query, one install.
        missing: list[str] = []
        if self.p.get("install_packages", True):
            p = self.p
            extra = p.get("extra_packages") or []
            wanted = packages_for(family, p.get("gui", False), p.get("python_bindings", False), extra)
            pm = PackageManager(family, self.runner, self.which)
            have = pm.installed(wanted)
            missing = [name for name in wanted if name not in have]
            if missing:
                if not self.check_mode:
                    pm.install(missing, self.p.get("update_cache", False))
                result["installed_packages"] = missing
                result["changed"] = True

        # Daemon: state, then enablement.
        svc = self.daemon(family)
        want_state = self.p.get("daemon_state") or "started"
        want_enabled = self.p.get("daemon_enabled", True)
        before_state = svc.state()
        before_enabled = svc.enabled()
        if want_state == "started" and before_state != "started":
            result["started_daemons"] = svc.start(dry_run=self.check_mode)
        elif want_state == "stopped" and before_state != "stopped":
            result["stopped_daemons"] = svc.stop(dry_run=self.check_mode)
        if svc.init_system == "systemd":
            units = svc.to_enable(want_enabled)
            if units and not self.check_mode:
                svc.set_enabled(units, want_enabled)
            result["enabled_units" if want_enabled else "disabled_units"] = units
        elif want_enabled:
            self.warn(
                f"No init system (systemd) runs on this host, so {svc.name} cannot be enabled at boot; "
                "it runs as a directly started daemon and must be started again after a reboot (run this task again)."
            )
        result["changed"] = result["changed"] or any(
            result[k] for k in ("started_daemons", "stopped_daemons", "enabled_units", "disabled_units")
        )
        after_state = want_state if result["started_daemons"] or result["stopped_daemons"] else before_state
        after_enabled = before_enabled if svc.init_system != "systemd" else want_enabled
        if svc.init_system == "systemd" and not (result["enabled_units"] or result["disabled_units"]):
            after_enabled = before_enabled

        # Probe: ask libvirt only when its daemon is (now) running; never wake a stopped one.
        connect = after_state == "started" and not (self.check_mode and before_state != "started")
        lvf = libvirt_facts(self.p.get("uri") or LOCAL_URI, connect, self.runner, self.which)
        facts = probe_hardware(lvf["caps_xml"], self.root)
        host = {
            "family": family,
            "os_id": os_id,
            "init_system": svc.init_system,
            "daemon": svc.name,
            "daemon_state": after_state,
            "daemon_enabled": after_enabled,
            **dict(facts),
            "libvirt_version": lvf["libvirt_version"],
            "hypervisor": lvf["hypervisor"],
            "qemu_version": lvf["qemu_version"],
            **verdict(facts),
        }
        result["host"] = host
        result["diff"] = {
            "before": {"packages_missing": missing, "daemon_state": before_state, "daemon_enabled": before_enabled},
            "after": {"packages_missing": [], "daemon_state": after_state, "daemon_enabled": after_enabled},
        }
        if self.p.get("require_hw_virt") and not host["kvm_usable"]:
            raise HostError(
                f"KVM is not usable on this host: {host['reason']}",
                hint=_REQUIRE_HINT,
                host=host,
                installed_packages=result["installed_packages"],
                started_daemons=result["started_daemons"],
            )
        return result


_REQUIRE_HINT = "Set require_hw_virt=false to accept software emulation (domain type qemu)."
