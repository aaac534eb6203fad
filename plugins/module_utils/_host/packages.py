# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The distribution family of the host, the packages a KVM host of that family needs, and its package manager.

The family comes from /etc/os-release (no Ansible facts needed); packages are
queried with one call and installed with one call.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from ansible_collections.virtops.kvm.plugins.module_utils._errors import PackageManagerError, UnsupportedPlatform
from ansible_collections.virtops.kvm.plugins.module_utils._host.files import read_text
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Runner, Which

FAMILIES = ("debian", "redhat", "suse")

_FAMILY_IDS = {
    "debian": {"debian", "ubuntu", "linuxmint", "raspbian", "pop", "kali", "devuan"},
    "redhat": {"rhel", "fedora", "centos", "rocky", "almalinux", "ol", "scientific", "cloudlinux", "amzn"},
    "suse": {"suse", "opensuse", "sles", "sled", "opensuse-leap", "opensuse-tumbleweed"},
}

PACKAGES = {
    "debian": {
        # dnsmasq: DHCP and DNS of libvirt's virtual networks (kvm_network); Debian's libvirt only suggests it
        "base": [
            "qemu-system-x86",
            "qemu-utils",
            "libvirt-daemon-system",
            "libvirt-clients",
            "dnsmasq-base",
            "xorriso",
        ],
        "python": ["python3-libvirt", "python3-lxml", "python3-guestfs"],
    },
    "redhat": {
        "base": ["qemu-kvm", "libvirt-daemon", "libvirt-client", "libvirt-daemon-driver-qemu", "dnsmasq", "xorriso"],
        "python": ["python3-libvirt", "python3-lxml", "python3-libguestfs"],
    },
    "suse": {
        "base": ["qemu-kvm", "libvirt-daemon", "libvirt-client", "libvirt-daemon-driver-qemu", "dnsmasq", "xorriso"],
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
    text = read_text(root, "/etc/os-release") or read_text(root, "/usr/lib/os-release")
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
