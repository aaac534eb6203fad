# Private to the virtops.kvm collection: not a public API, may change without notice.
"""HostManager: the kvm_host module's work, bringing a host to a KVM hypervisor state.

Packages, then the daemon, then the probe; each step compares, then acts only
where something differs (and not in check mode).
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, UnsupportedPlatform
from ansible_collections.virtops.kvm.plugins.module_utils._host.daemons import (
    DirectDaemon,
    SystemdDaemon,
    choose_daemon,
    init_system,
)
from ansible_collections.virtops.kvm.plugins.module_utils._host.packages import (
    FAMILIES,
    PackageManager,
    detect_family,
    packages_for,
    unsupported,
)
from ansible_collections.virtops.kvm.plugins.module_utils._host.probe import probe_hardware, verdict
from ansible_collections.virtops.kvm.plugins.module_utils._host.versions import LOCAL_URI, libvirt_facts, ping
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager

_REQUIRE_HINT = "Set require_hw_virt=false to accept software emulation (domain type qemu)."


class HostManager(Manager):
    """Bring a host to a KVM hypervisor state: packages, then daemon, then the probe.

    Order: the hardware-only verdict runs first, so ``require_hw_virt`` on a host
    without usable KVM fails before anything is installed; libvirt's capability
    list needs the daemon, so the full verdict (and its second check) runs last,
    and only then is the libvirt connection opened.
    """

    ARGUMENT_SPEC = dict(
        family=dict(type="str", default="auto", choices=["auto", *FAMILIES]),
        install_packages=dict(type="bool", default=True),
        gui=dict(type="bool", default=False),
        python_bindings=dict(type="bool", default=False),
        extra_packages=dict(type="list", elements="str", default=[]),
        update_cache=dict(type="bool", default=False),
        daemon=dict(type="str", default="auto", choices=["auto", "libvirtd", "virtqemud"]),
        daemon_state=dict(type="str", default="started", choices=["started", "stopped"]),
        daemon_enabled=dict(type="bool", default=True),
        daemon_timeout=dict(type="int", default=60),
        require_hw_virt=dict(type="bool", default=False),
    )
    # Works without libvirt-python and lxml: it asks virsh and reads XML with the stdlib.
    LIBRARIES = ()

    #: root: the host's file tree (tests point it at a fake one)
    SEAMS = dict(root="/")
    #: a daemon that has not answered within an hour will not
    LIMITS = dict(daemon_timeout=(0, 3600, "seconds"))

    def _family(self) -> tuple[str | None, str | None]:
        requested = self.p["family"]
        if requested != "auto":
            if requested not in FAMILIES:
                raise unsupported(requested)
            return requested, None
        try:
            return detect_family(self.root)
        except UnsupportedPlatform:
            if self.p["install_packages"]:
                raise
            return None, None

    def _is_enabled(self, unit: str) -> bool:
        systemctl = self.which("systemctl") or "systemctl"
        return self.runner([systemctl, "is-enabled", unit])[1].strip() in ("enabled", "enabled-runtime")

    def daemon(self, family: str | None):
        init = init_system(self.root)
        name = choose_daemon(self.p["daemon"], init, family, self.root, self.which, self._is_enabled)
        if init == "systemd":
            return SystemdDaemon(name, self.runner, self.which, self.root)
        return DirectDaemon(
            name,
            self.runner,
            self.which,
            lambda: ping(LOCAL_URI, self.runner, self.which),
            root=self.root,
            timeout=self.p["daemon_timeout"],
        )

    def _packages(self, family: str | None) -> list[str]:
        """The missing packages, installed unless in check mode (one query, one install)."""
        if not self.p["install_packages"]:
            return []
        p = self.p
        wanted = packages_for(family, p["gui"], p["python_bindings"], p["extra_packages"] or [])
        pm = PackageManager(family, self.runner, self.which)
        have = pm.installed(wanted)
        missing = [name for name in wanted if name not in have]
        if missing and not self.check_mode:
            pm.install(missing, p["update_cache"])
        return missing

    def _daemon(self, svc, result: dict) -> tuple[dict, dict]:
        """Daemon state, then enablement; fills ``result``'s lists, returns the (before, after) of both."""
        want_state = self.p["daemon_state"]
        want_enabled = self.p["daemon_enabled"]
        before = {"daemon_state": svc.state(), "daemon_enabled": svc.enabled()}
        if want_state == "started" and before["daemon_state"] != "started":
            result["started_daemons"] = svc.start(dry_run=self.check_mode)
        elif want_state == "stopped" and before["daemon_state"] != "stopped":
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
        moved = result["started_daemons"] or result["stopped_daemons"]
        after = {
            "daemon_state": want_state if moved else before["daemon_state"],
            "daemon_enabled": before["daemon_enabled"],
        }
        if svc.init_system == "systemd" and (result["enabled_units"] or result["disabled_units"]):
            after["daemon_enabled"] = want_enabled
        return before, after

    def run(self) -> dict:
        for i, name in enumerate(self.p["extra_packages"] or []):
            vd.argument(name, f"extra_packages[{i}]", "the package manager")
        hw = probe_hardware(root=self.root)
        if self.p["require_hw_virt"] and not verdict(hw)["kvm_usable"]:
            raise HostError(f"KVM is not usable on this host: {verdict(hw)['reason']}", hint=_REQUIRE_HINT)

        family, os_id = self._family()
        result: dict = {"changed": False, "installed_packages": [], "started_daemons": [], "stopped_daemons": []}
        result["enabled_units"], result["disabled_units"] = [], []

        missing = self._packages(family)
        result["installed_packages"] = missing
        svc = self.daemon(family)
        before, after = self._daemon(svc, result)
        result["changed"] = any(
            result[k]
            for k in ("installed_packages", "started_daemons", "stopped_daemons", "enabled_units", "disabled_units")
        )

        # Probe: ask libvirt only when its daemon is (now) running; never wake a stopped one.
        # The connection is lazy: this is where it opens, after the daemon step.
        connect = after["daemon_state"] == "started" and not (self.check_mode and before["daemon_state"] != "started")
        lvf = libvirt_facts(self.connection, connect, self.runner, self.which)
        facts = probe_hardware(lvf["caps_xml"], self.root)
        host = {
            "family": family,
            "os_id": os_id,
            "init_system": svc.init_system,
            "daemon": svc.name,
            **after,
            **facts,
            "libvirt_version": lvf["libvirt_version"],
            "hypervisor": lvf["hypervisor"],
            "qemu_version": lvf["qemu_version"],
            **verdict(facts),
        }
        result["host"] = host
        result["diff"] = {
            "before": {"packages_missing": missing, **before},
            "after": {"packages_missing": [], **after},
        }
        if self.p["require_hw_virt"] and not host["kvm_usable"]:
            raise HostError(
                f"KVM is not usable on this host: {host['reason']}",
                hint=_REQUIRE_HINT,
                host=host,
                installed_packages=result["installed_packages"],
                started_daemons=result["started_daemons"],
            )
        return result
