# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The libvirt daemon: which one (libvirtd or virtqemud), and starting, stopping and enabling it.

Under systemd its service and sockets are managed with systemctl; where no
init system runs (containers, some CI machines) virtlogd and the daemon are
started directly and tracked by their pid files.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, TimeoutExpired
from ansible_collections.virtops.kvm.plugins.module_utils._host.files import host_path, read_text
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Runner, Which
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock, Deadline, wait_until

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
    return "systemd" if os.path.isdir(host_path(root, "/run/systemd/system")) else "none"


def unit_exists(unit: str, root: str = "/") -> bool:
    return any(os.path.exists(host_path(root, f"{d}/{unit}")) for d in _UNIT_DIRS)


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

    def _bring(self, verb: str, units: list[str], there: str, dry_run: bool) -> list[str]:
        """``systemctl verb`` on the ``units`` whose is-active is not ``there`` yet; those units."""
        active = self._query("is-active", units)
        todo = [u for u in units if active[u] != there]
        if todo and not dry_run:
            self._systemctl(verb, todo)
        return todo

    def start(self, dry_run: bool = False) -> list[str]:
        return self._bring("start", self.units, "active", dry_run)

    def stop(self, dry_run: bool = False) -> list[str]:
        return self._bring("stop", self.own, "inactive", dry_run)


@dataclass(eq=False)
class DirectDaemon:
    """virtlogd + libvirtd (or virtqemud) started as plain daemons where no init system runs.

    The pid files in /run survive a killed daemon when /run is on disk, so a daemon
    counts as running only if its pid is alive, not a zombie, and named like the daemon.
    """

    init_system = "none"

    name: str
    runner: Runner
    which: Which
    ping: Callable[[], bool]
    root: str = "/"
    timeout: float = 60
    kill: Callable[[int, int], None] = os.kill
    clock: Clock = SYSTEM

    @property
    def daemons(self) -> list[str]:
        return [LOG_DAEMON, self.name]

    def pid(self, daemon: str) -> int | None:
        """The live pid of ``daemon`` from its pid file, or None."""
        text = read_text(self.root, f"/run/{daemon}.pid")
        try:
            pid = int((text or "").strip())
        except ValueError:
            return None
        status = read_text(self.root, f"/proc/{pid}/status")
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
        if not wait_until(done, Deadline(self.timeout, self.clock), 0.25):
            raise TimeoutExpired(f"Timed out after {self.timeout:g} s waiting for {what}.")

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
