"""Unit tests of the _host package: hardware probe, verdict, families, packages and daemons, all on fakes."""

from __future__ import annotations

import os
import signal

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    HostError,
    PackageManagerError,
    TimeoutExpired,
    UnsupportedPlatform,
)
from ansible_collections.virtops.kvm.plugins.module_utils._host import daemons, packages, probe, versions
from ansible_collections.virtops.kvm.plugins.module_utils._host import manager as host_manager
from ansible_collections.virtops.kvm.plugins.module_utils._wait import FakeClock

INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep vmx smx est tm2 ssse3 sse4_1

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep vmx smx est tm2 ssse3 sse4_1
"""
AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD Ryzen 7 5800X 8-Core Processor
flags\t\t: fpu vme de pse tsc msr pae svm extapic cr8_legacy abm sse4a npt
"""
PVM = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep hypervisor lahf_lm cmp_legacy

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep hypervisor lahf_lm cmp_legacy
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32
CPU implementer\t: 0x41
"""

CAPS = """<capabilities>
  <host><cpu><arch>x86_64</arch></cpu></host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='i686'><wordsize>32</wordsize><domain type='qemu'/><domain type='kvm'/></arch>
  </guest>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'><wordsize>64</wordsize><domain type='qemu'/><domain type='kvm'/></arch>
  </guest>
</capabilities>"""
CAPS_QEMU_ONLY = CAPS.replace("<domain type='kvm'/>", "")


def write(root, path: str, text: str = "") -> str:
    full = os.path.join(str(root), path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        f.write(text)
    return full


def fake_tree(root, cpuinfo=PVM, dev_kvm=True, modules=("kvm", "kvm_pvm"), nested=None, proc_modules=False):
    write(root, "/proc/cpuinfo", cpuinfo)
    write(root, "/proc/meminfo", "MemTotal:       24683656 kB\nMemFree:        24319336 kB\n")
    write(root, "/etc/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    if dev_kvm:
        write(root, "/dev/kvm")
    if proc_modules:
        write(root, "/proc/modules", "".join(f"{m} 1286144 1 - Live 0x0000000000000000\n" for m in modules))
    else:
        for m in modules:
            os.makedirs(os.path.join(str(root), "sys/module", m), exist_ok=True)
    if nested is not None:
        write(root, "/sys/module/kvm_intel/parameters/nested", nested)
    return str(root)


# -- CPU flags and the probe ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "flag", "vendor", "count", "model"),
    [
        (INTEL, "vmx", "intel", 2, "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz"),
        (AMD, "svm", "amd", 1, "AMD Ryzen 7 5800X 8-Core Processor"),
        (PVM, "none", "amd", 2, "AMD EPYC"),
        (ARM, "none", "unknown", 1, None),
        ("", "none", "unknown", 0, None),
    ],
)
def test_parse_cpuinfo(text, flag, vendor, count, model):
    facts = probe.parse_cpuinfo(text)
    assert facts["virt_flag"] == flag
    assert facts["cpu_vendor"] == vendor
    assert facts["cpu_count"] == count
    assert facts["cpu_model"] == model


def test_flag_is_a_whole_word():
    # "vmxx" or "svm_lock" style tokens must not count as the flag
    assert probe.parse_cpuinfo("flags : fpu vmxx svm_lock\n")["virt_flag"] == "none"


@pytest.mark.parametrize("proc_modules", [True, False])
def test_kvm_modules_from_proc_or_sys(tmp_path, proc_modules):
    root = fake_tree(tmp_path, modules=("kvm", "kvm_intel", "ext4"), proc_modules=proc_modules)
    assert probe.kvm_modules(root) == ["kvm", "kvm_intel"]


@pytest.mark.parametrize(("text", "expected"), [("Y\n", True), ("1\n", True), ("N\n", False), ("0\n", False)])
def test_nested_setting(tmp_path, text, expected):
    assert probe.nested_setting(fake_tree(tmp_path, INTEL, modules=("kvm", "kvm_intel"), nested=text)) is expected


def test_nested_setting_absent(tmp_path):
    assert probe.nested_setting(fake_tree(tmp_path)) is None


def test_probe_hardware_fake_tree(tmp_path):
    root = fake_tree(tmp_path)
    facts = probe.probe_hardware(CAPS, root=root)
    assert facts["virt_flag"] == "none"
    assert facts["dev_kvm_exists"] is True
    assert facts["dev_kvm_accessible"] is True  # a file we own
    assert facts["kvm_modules"] == ["kvm", "kvm_pvm"]
    assert facts["nested"] is None
    assert facts["memory_mib"] == 24683656 // 1024
    assert facts["libvirt_domain_types"] == ["kvm", "qemu"]
    assert facts["cpu_count"] == 2


def test_probe_hardware_without_kvm_and_caps(tmp_path):
    facts = probe.probe_hardware(root=fake_tree(tmp_path, AMD, dev_kvm=False, modules=()))
    assert facts["dev_kvm_exists"] is False
    assert facts["dev_kvm_accessible"] is False
    assert facts["kvm_modules"] == []
    assert facts["libvirt_domain_types"] is None


def test_caps_domain_types_without_lxml(monkeypatch):
    monkeypatch.setattr(_deps, "etree", None)
    assert probe.caps_domain_types(CAPS_QEMU_ONLY) == ["qemu"]


# -- verdict ------------------------------------------------------------------------------------


def facts(flag="vmx", exists=True, accessible=True, types=("kvm", "qemu"), modules=("kvm", "kvm_intel")):
    return {
        "virt_flag": flag,
        "dev_kvm_exists": exists,
        "dev_kvm_accessible": accessible,
        "kvm_modules": list(modules),
        "libvirt_domain_types": None if types is None else list(types),
    }


@pytest.mark.parametrize(
    ("case", "expected", "in_reason"),
    [
        (facts(), "kvm", "vmx flag, /dev/kvm exists and libvirt lists the kvm"),
        (facts(flag="svm", modules=("kvm", "kvm_amd")), "kvm", "svm"),
        (facts(types=None), "kvm", "libvirt was not asked"),
        # this machine: PVM nested hypervisor, /dev/kvm there, libvirt lists kvm, but no vmx/svm
        (
            facts(flag="none", modules=("kvm", "kvm_pvm")),
            "qemu",
            "CPU exposes no vmx/svm flag, so /dev/kvm is a paravirtual/nested KVM (kernel module kvm_pvm)",
        ),
        (facts(flag="none", types=None, modules=("kvm",)), "qemu", "no vmx/svm flag, so /dev/kvm is a paravirtual"),
        (facts(flag="none", exists=False, accessible=False, types=("qemu",)), "qemu", "no hardware virtualization"),
        (facts(exists=False, accessible=False, types=("qemu",)), "qemu", "modprobe kvm_intel"),
        (facts(flag="svm", exists=False, accessible=False), "qemu", "modprobe kvm_amd"),
        (facts(types=("qemu",)), "qemu", "libvirt does not list the kvm domain type (it lists: qemu)"),
        (facts(accessible=False, types=None), "qemu", "not readable and writable"),
        # libvirt's QEMU user may use /dev/kvm even when the caller may not
        (facts(accessible=False), "kvm", "libvirt lists the kvm"),
    ],
)
def test_verdict_table(case, expected, in_reason):
    v = probe.verdict(case)
    assert v["recommended_domain_type"] == expected
    assert v["kvm_usable"] is (expected == "kvm")
    assert in_reason in v["reason"]
    if expected == "qemu":
        assert "Use domain type 'qemu'" in v["reason"]


def test_verdict_is_pure():
    case = facts(flag="none")
    before = dict(case)
    assert probe.verdict(case) == probe.verdict(case)
    assert case == before


class FakeConn:
    def __init__(self, caps):
        self.caps = caps

    def getCapabilities(self):
        return self.caps


@pytest.mark.parametrize(
    ("cpuinfo", "caps", "expected"),
    [(PVM, CAPS, "qemu"), (INTEL, CAPS, "kvm"), (INTEL, CAPS_QEMU_ONLY, "qemu"), (INTEL, None, "kvm")],
)
def test_usable_domain_type(tmp_path, monkeypatch, cpuinfo, caps, expected):
    root = fake_tree(tmp_path, cpuinfo)
    real = probe.probe_hardware
    monkeypatch.setattr(probe, "probe_hardware", lambda caps_xml=None: real(caps_xml, root=root))
    dtype, reason = probe.usable_domain_type(FakeConn(caps) if caps else None)
    assert dtype == expected
    assert reason


def test_usable_domain_type_with_test_driver():
    libvirt = pytest.importorskip("libvirt")
    conn = libvirt.open("test:///default")
    try:
        dtype, reason = probe.usable_domain_type(conn)
    finally:
        conn.close()
    assert dtype in ("kvm", "qemu")
    # the test driver lists only the 'test' domain type, so kvm can never be recommended from it
    assert dtype == "qemu", reason


@pytest.mark.parametrize(
    ("number", "text"), [(9000000, "9.0.0"), (7002022, "7.2.22"), (10010001, "10.10.1"), (0, None), (None, None)]
)
def test_version_string(number, text):
    assert versions.version_string(number) == text


def test_parse_virsh_and_qemu_versions():
    out = (
        "Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\n"
        "Using API: QEMU 9.0.0\nRunning hypervisor: QEMU 7.2.22\n"
    )
    assert versions.parse_virsh_version(out) == {
        "libvirt_version": "9.0.0",
        "hypervisor": "QEMU",
        "hypervisor_version": "7.2.22",
    }
    assert versions.parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n") == "7.2.22"
    assert versions.parse_qemu_version("nonsense") is None


# -- families and packages ----------------------------------------------------------------------

OS_RELEASES = {
    "debian": ('ID=debian\nVERSION_ID="12"\n', "debian"),
    "ubuntu": ('NAME="Ubuntu"\nID=ubuntu\nID_LIKE=debian\n', "debian"),
    "mint": ('ID=linuxmint\nID_LIKE="ubuntu debian"\n', "debian"),
    "fedora": ("ID=fedora\nVERSION_ID=40\n", "redhat"),
    "rhel": ('ID="rhel"\nID_LIKE="fedora"\n', "redhat"),
    "rocky": ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "redhat"),
    "alma": ('ID="almalinux"\nID_LIKE="rhel centos fedora"\n', "redhat"),
    "leap": ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "suse"),
    "sles": ('ID="sles"\nID_LIKE="suse"\n', "suse"),
    "derivative": ('ID=mydistro\nID_LIKE="debian"\n', "debian"),
    "arch": ("ID=arch\n", None),
    "alpine": ("ID=alpine\n", None),
    "comments": ("# a comment\n\nID='debian'\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n", "debian"),
}


@pytest.mark.parametrize("name", sorted(OS_RELEASES))
def test_family_of(name):
    text, expected = OS_RELEASES[name]
    assert packages.family_of(packages.parse_os_release(text)) == expected


def test_parse_os_release_quotes():
    osr = packages.parse_os_release('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID_LIKE="rhel centos"\n')
    assert osr == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "ID_LIKE": "rhel centos"}


def test_detect_family(tmp_path):
    write(tmp_path, "/etc/os-release", OS_RELEASES["rocky"][0])
    assert packages.detect_family(str(tmp_path)) == ("redhat", "rocky")


def test_detect_family_falls_back_to_usr_lib(tmp_path):
    write(tmp_path, "/usr/lib/os-release", OS_RELEASES["ubuntu"][0])
    assert packages.detect_family(str(tmp_path)) == ("debian", "ubuntu")


def test_detect_family_unsupported_lists_supported(tmp_path):
    write(tmp_path, "/etc/os-release", 'ID=arch\nID_LIKE="archlinux"\n')
    with pytest.raises(UnsupportedPlatform) as exc:
        packages.detect_family(str(tmp_path))
    assert "ID=arch" in exc.value.message
    assert "Supported families: debian, redhat, suse" in exc.value.message


def test_detect_family_no_os_release(tmp_path):
    with pytest.raises(UnsupportedPlatform, match="no /etc/os-release"):
        packages.detect_family(str(tmp_path))


@pytest.mark.parametrize(
    ("family", "gui", "python", "expected"),
    [
        (
            "debian",
            False,
            False,
            ["qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients", "dnsmasq-base", "xorriso"],
        ),
        (
            "redhat",
            False,
            False,
            ["qemu-kvm", "libvirt-daemon", "libvirt-client", "libvirt-daemon-driver-qemu", "dnsmasq", "xorriso"],
        ),
        (
            "debian",
            True,
            True,
            [
                "qemu-system-x86",
                "qemu-utils",
                "libvirt-daemon-system",
                "libvirt-clients",
                "dnsmasq-base",
                "xorriso",
                "virt-manager",
                "python3-libvirt",
                "python3-lxml",
                "python3-guestfs",
            ],
        ),
        (
            "redhat",
            True,
            True,
            [
                "qemu-kvm",
                "libvirt-daemon",
                "libvirt-client",
                "libvirt-daemon-driver-qemu",
                "dnsmasq",
                "xorriso",
                "virt-manager",
                "python3-libvirt",
                "python3-lxml",
                "python3-libguestfs",
            ],
        ),
        (
            "suse",
            False,
            True,
            [
                "qemu-kvm",
                "libvirt-daemon",
                "libvirt-client",
                "libvirt-daemon-driver-qemu",
                "dnsmasq",
                "xorriso",
                "python3-libvirt-python",
                "python3-lxml",
                "python3-libguestfs",
            ],
        ),
    ],
)
def test_packages_for(family, gui, python, expected):
    assert packages.packages_for(family, gui, python) == expected


def test_packages_for_extra_without_duplicates():
    got = packages.packages_for("debian", gui=True, extra=["virt-manager", "htop", "qemu-utils", "htop"])
    assert got.count("virt-manager") == 1
    assert got.count("qemu-utils") == 1
    assert got[-1] == "htop"


def test_packages_for_unknown_family():
    with pytest.raises(UnsupportedPlatform, match="Supported families: debian, redhat, suse"):
        packages.packages_for("gentoo")


class Runner:
    """Records calls and answers from a table of argv[0] basename (+ argv[1]) -> (rc, out, err)."""

    def __init__(self, answers=None, effects=None):
        self.calls: list[tuple[list[str], dict | None]] = []
        self.answers = answers or {}
        self.effects = effects or {}

    def __call__(self, argv, env=None):
        self.calls.append((list(argv), env))
        base = os.path.basename(argv[0])
        verb = f"{base} {argv[1]}" if len(argv) > 1 else base
        for table in (self.effects,):
            if verb in table:
                table[verb](argv)
            elif base in table:
                table[base](argv)
        answer = self.answers.get(verb, self.answers.get(base, (0, "", "")))
        return answer(argv) if callable(answer) else answer

    def argvs(self, base: str | None = None) -> list[list[str]]:
        return [a for a, _env in self.calls if base is None or os.path.basename(a[0]) == base]


def which_all(name: str) -> str:
    return f"/usr/bin/{name}"


def which_only(*names: str):
    return lambda name: f"/usr/bin/{name}" if name in names else None


DPKG_OUT = "qemu-system-x86\tii \nqemu-utils\tii \nlibvirt-clients\tii \nvirt-manager\tun \npython3-lxml\trc \n"


def test_dpkg_installed_one_call():
    runner = Runner({"dpkg-query": (1, DPKG_OUT, "dpkg-query: no packages found matching python3-libvirt\n")})
    pm = packages.PackageManager("debian", runner, which_all)
    names = ["qemu-system-x86", "qemu-utils", "libvirt-clients", "virt-manager", "python3-lxml", "python3-libvirt"]
    assert pm.installed(names) == {"qemu-system-x86", "qemu-utils", "libvirt-clients"}
    assert len(runner.calls) == 1
    assert runner.calls[0][0][-len(names) :] == names


def test_dpkg_query_failure():
    pm = packages.PackageManager(
        "debian", Runner({"dpkg-query": (2, "", "dpkg-query: error: broken database\n")}), which_all
    )
    with pytest.raises(PackageManagerError, match="broken database"):
        pm.installed(["qemu-utils"])


def test_rpm_installed_one_call():
    out = "qemu-kvm\npackage libvirt-client is not installed\nlibvirt-daemon\n"
    runner = Runner({"rpm": (1, out, "")})
    pm = packages.PackageManager("redhat", runner, which_all)
    assert pm.installed(["qemu-kvm", "libvirt-client", "libvirt-daemon"]) == {"qemu-kvm", "libvirt-daemon"}
    assert runner.calls[0][0][:4] == ["/usr/bin/rpm", "-q", "--qf", "%{NAME}\n"]


def test_install_debian_one_call_noninteractive():
    runner = Runner()
    packages.PackageManager("debian", runner, which_all).install(["virt-manager", "python3-libvirt"])
    assert runner.calls == [
        (
            ["/usr/bin/apt-get", "install", "-y", "--no-install-recommends", "virt-manager", "python3-libvirt"],
            {"DEBIAN_FRONTEND": "noninteractive"},
        )
    ]


def test_install_debian_update_cache_first():
    runner = Runner()
    packages.PackageManager("debian", runner, which_all).install(["x"], update_cache=True)
    assert [a[1] for a in runner.argvs()] == ["update", "install"]


@pytest.mark.parametrize(
    ("which", "manager"), [(which_only("rpm", "dnf", "yum"), "dnf"), (which_only("rpm", "yum"), "yum")]
)
def test_install_redhat_prefers_dnf(which, manager):
    runner = Runner()
    packages.PackageManager("redhat", runner, which).install(["qemu-kvm", "virt-manager"])
    assert runner.argvs() == [[f"/usr/bin/{manager}", "install", "-y", "qemu-kvm", "virt-manager"]]


def test_install_suse():
    runner = Runner()
    packages.PackageManager("suse", runner, which_all).install(["qemu-kvm"])
    assert runner.argvs() == [["/usr/bin/zypper", "--non-interactive", "install", "--no-recommends", "qemu-kvm"]]


def test_install_failure_reports_manager_stderr():
    err = "E: Unable to locate package virtops-no-such-package-xyz\n"
    runner = Runner({"apt-get": (100, "Reading package lists...\n", err)})
    with pytest.raises(PackageManagerError) as exc:
        packages.PackageManager("debian", runner, which_all).install(["virtops-no-such-package-xyz"])
    assert "Unable to locate package virtops-no-such-package-xyz" in exc.value.message
    assert "update_cache=true" in exc.value.message
    assert exc.value.details["rc"] == 100
    assert exc.value.details["stderr"] == err


def test_missing_package_manager():
    with pytest.raises(PackageManagerError, match="None of dnf, yum was found"):
        packages.PackageManager("redhat", Runner(), which_only("rpm")).install(["qemu-kvm"])


# -- daemons: choice and systemd ----------------------------------------------------------------


def unit_tree(root, *units):
    for unit in units:
        write(root, f"/usr/lib/systemd/system/{unit}", "[Unit]\n")
    os.makedirs(os.path.join(str(root), "run/systemd/system"), exist_ok=True)
    return str(root)


def test_init_system(tmp_path):
    assert daemons.init_system(str(tmp_path)) == "none"
    assert daemons.init_system(unit_tree(tmp_path)) == "systemd"


@pytest.mark.parametrize(
    ("units", "family", "enabled", "expected"),
    [
        (["libvirtd.service"], "redhat", set(), "libvirtd"),
        (["virtqemud.service"], "debian", set(), "virtqemud"),
        (["libvirtd.service", "virtqemud.service"], "redhat", set(), "virtqemud"),
        (["libvirtd.service", "virtqemud.service"], "debian", set(), "libvirtd"),
        (["libvirtd.service", "virtqemud.service"], "redhat", {"libvirtd.service"}, "libvirtd"),
        (["libvirtd.service", "virtqemud.service"], "debian", {"virtqemud.socket"}, "virtqemud"),
        ([], "redhat", set(), "virtqemud"),  # nothing installed yet (check mode): family default
        ([], "debian", set(), "libvirtd"),
    ],
)
def test_choose_daemon_systemd(tmp_path, units, family, enabled, expected):
    root = unit_tree(tmp_path, *units)
    assert daemons.choose_daemon("auto", "systemd", family, root, which_all, lambda u: u in enabled) == expected


@pytest.mark.parametrize(
    ("binaries", "family", "expected"),
    [
        (("libvirtd", "virtlogd"), "debian", "libvirtd"),
        (("virtqemud", "virtlogd"), "redhat", "virtqemud"),
        ((), "redhat", "libvirtd"),  # without systemd nor binaries, the daemon that runs alone
        (("libvirtd", "virtqemud"), "redhat", "virtqemud"),
    ],
)
def test_choose_daemon_without_systemd(tmp_path, binaries, family, expected):
    assert daemons.choose_daemon("auto", "none", family, str(tmp_path), which_only(*binaries)) == expected


def test_choose_daemon_explicit(tmp_path):
    assert daemons.choose_daemon("virtqemud", "none", "debian", str(tmp_path), which_only("libvirtd")) == "virtqemud"


def systemctl_runner(active: dict, enabled: dict):
    def answer(argv):
        verb, units = argv[1], argv[2:]
        table = active if verb == "is-active" else enabled
        lines = [table.get(u, "inactive" if verb == "is-active" else "disabled") for u in units]
        return (0 if all(x in ("active", "enabled") for x in lines) else 3, "\n".join(lines) + "\n", "")

    def start(argv):
        for u in argv[2:]:
            active[u] = "active"

    def enable(argv):
        for u in argv[2:]:
            enabled[u] = "enabled"

    return Runner(
        {"systemctl is-active": answer, "systemctl is-enabled": answer},
        {"systemctl start": start, "systemctl enable": enable},
    )


MONO_UNITS = ("libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket", "libvirtd-admin.socket", "virtlogd.socket")


def test_systemd_monolithic_start_and_enable(tmp_path):
    root = unit_tree(tmp_path, *MONO_UNITS)
    runner = systemctl_runner({}, {"libvirtd.service": "enabled"})
    svc = daemons.SystemdDaemon("libvirtd", runner, which_all, root)
    assert svc.units == list(MONO_UNITS)
    assert svc.state() == "stopped"
    assert svc.start(dry_run=True) == list(MONO_UNITS)
    assert runner.argvs("systemctl")[-1][1] == "is-active"  # dry run started nothing
    assert svc.start() == list(MONO_UNITS)
    assert svc.state() == "started"
    assert svc.start() == []
    assert svc.to_enable(True) == list(MONO_UNITS[1:])
    svc.set_enabled(svc.to_enable(True), True)
    assert svc.enabled() is True
    assert svc.to_enable(True) == []


def test_systemd_socket_activated_daemon_counts_as_started(tmp_path):
    root = unit_tree(tmp_path, "virtqemud.service", "virtqemud.socket", "virtlogd.socket")
    runner = systemctl_runner({"virtqemud.socket": "active", "virtlogd.socket": "active"}, {})
    svc = daemons.SystemdDaemon("virtqemud", runner, which_all, root)
    assert svc.units == ["virtqemud.service", "virtqemud.socket", "virtlogd.socket"]
    assert svc.state() == "started"  # the service itself exited after its idle timeout


def test_systemd_stop_leaves_virtlogd(tmp_path):
    root = unit_tree(tmp_path, *MONO_UNITS)
    runner = systemctl_runner(dict.fromkeys(MONO_UNITS, "active"), {})
    svc = daemons.SystemdDaemon("libvirtd", runner, which_all, root)
    assert svc.stop() == list(MONO_UNITS[:-1])
    assert runner.argvs()[-1] == ["/usr/bin/systemctl", "stop", *MONO_UNITS[:-1]]


def test_systemd_masked_unit(tmp_path):
    root = unit_tree(tmp_path, "libvirtd.service")
    svc = daemons.SystemdDaemon("libvirtd", systemctl_runner({}, {"libvirtd.service": "masked"}), which_all, root)
    with pytest.raises(HostError, match=r"systemctl unmask libvirtd\.service"):
        svc.to_enable(True)


def test_systemd_disable_only_enabled_own_units(tmp_path):
    root = unit_tree(tmp_path, *MONO_UNITS)
    enabled = {"libvirtd.service": "enabled", "libvirtd.socket": "static", "virtlogd.socket": "enabled"}
    svc = daemons.SystemdDaemon("libvirtd", systemctl_runner({}, enabled), which_all, root)
    assert svc.to_enable(False) == ["libvirtd.service"]


# -- daemons without systemd (fake /run and /proc) ------------------------------------------------


class FakeProcs:
    """A fake /run/*.pid + /proc/<pid>/status tree; 'starting' a daemon writes both."""

    def __init__(self, root):
        self.root = str(root)
        self.next_pid = 4000

    def run(self, name, state="S (sleeping)", comm=None):
        self.next_pid += 1
        pid = self.next_pid
        write(self.root, f"/run/{name}.pid", f"{pid}\n")
        write(self.root, f"/proc/{pid}/status", f"Name:\t{comm or name[:15]}\nUmask:\t0022\nState:\t{state}\n")
        return pid

    def kill(self, pid, sig):
        assert sig == signal.SIGTERM
        os.unlink(os.path.join(self.root, f"proc/{pid}/status"))


def direct(tmp_path, runner, ping=lambda: True, timeout=5.0, procs=None):
    procs = procs or FakeProcs(tmp_path)
    clock = FakeClock()
    svc = daemons.DirectDaemon(
        "libvirtd",
        runner,
        which_all,
        ping,
        root=str(tmp_path),
        timeout=timeout,
        kill=procs.kill,
        clock=clock,
    )
    return svc, procs, clock


def starting_runner(procs):
    return Runner(
        effects={"virtlogd": lambda argv: procs.run("virtlogd"), "libvirtd": lambda argv: procs.run("libvirtd")}
    )


def test_direct_pid_checks(tmp_path):
    procs = FakeProcs(tmp_path)
    svc = direct(tmp_path, Runner(), procs=procs)[0]
    assert svc.pid("libvirtd") is None  # no pid file
    write(tmp_path, "/run/libvirtd.pid", "garbage\n")
    assert svc.pid("libvirtd") is None
    write(tmp_path, "/run/libvirtd.pid", "99999\n")  # stale: no such process
    assert svc.pid("libvirtd") is None
    procs.run("libvirtd", state="Z (zombie)")
    assert svc.pid("libvirtd") is None
    procs.run("libvirtd", comm="bash")  # pid reused by another program
    assert svc.pid("libvirtd") is None
    pid = procs.run("libvirtd")
    assert svc.pid("libvirtd") == pid


def test_direct_start_both_in_order(tmp_path):
    procs = FakeProcs(tmp_path)
    runner = starting_runner(procs)
    pings = iter([False, False, True])
    svc = direct(tmp_path, runner, ping=lambda: next(pings), procs=procs)[0]
    assert svc.state() == "stopped"
    assert svc.start(dry_run=True) == ["virtlogd", "libvirtd"]
    assert runner.calls == []
    assert svc.start() == ["virtlogd", "libvirtd"]
    assert runner.argvs() == [["/usr/bin/virtlogd", "-d"], ["/usr/bin/libvirtd", "-d"]]
    assert svc.state() == "started"
    assert svc.start() == []
    assert len(runner.calls) == 2


def test_direct_start_only_dead_virtlogd(tmp_path):
    procs = FakeProcs(tmp_path)
    procs.run("libvirtd")
    write(tmp_path, "/run/virtlogd.pid", "99999")  # stale
    runner = starting_runner(procs)
    pinged = []
    svc = direct(tmp_path, runner, ping=lambda: pinged.append(1) or True, procs=procs)[0]
    assert svc.state() == "partial"
    assert svc.start() == ["virtlogd"]
    assert runner.argvs() == [["/usr/bin/virtlogd", "-d"]]
    assert pinged == []  # libvirtd was already answering


def test_direct_start_failure_reports_stderr(tmp_path):
    runner = Runner({"virtlogd": (1, "", "error: cannot bind socket\n")})
    svc = direct(tmp_path, runner)[0]
    with pytest.raises(HostError, match="cannot bind socket"):
        svc.start()


def test_direct_start_timeout_is_bounded(tmp_path):
    procs = FakeProcs(tmp_path)
    svc, _runner, clock = direct(tmp_path, starting_runner(procs), ping=lambda: False, timeout=3, procs=procs)
    with pytest.raises(TimeoutExpired, match="libvirtd to answer on qemu:///system"):
        svc.start()
    assert 3 <= clock.now() < 4


def test_direct_start_daemon_that_never_writes_its_pid(tmp_path):
    svc = direct(tmp_path, Runner(), timeout=2)[0]
    with pytest.raises(TimeoutExpired, match="virtlogd to write a live pid"):
        svc.start()


def test_direct_not_installed(tmp_path):
    svc = direct(tmp_path, Runner())[0]
    svc.which = which_only("virtlogd")
    FakeProcs(tmp_path).run("virtlogd")
    with pytest.raises(HostError, match="libvirtd is not installed"):
        svc.start()


def test_direct_stop_by_pid(tmp_path):
    procs = FakeProcs(tmp_path)
    procs.run("virtlogd")
    pid = procs.run("libvirtd")
    killed = []
    procs_kill = procs.kill
    svc = direct(tmp_path, Runner(), procs=procs)[0]
    svc.kill = lambda p, s: killed.append(p) or procs_kill(p, s)
    assert svc.stop(dry_run=True) == ["libvirtd"]
    assert killed == []
    assert svc.stop() == ["libvirtd"]
    assert killed == [pid]
    assert svc.state() == "stopped"
    assert svc.running() == {"virtlogd": True, "libvirtd": False}  # virtlogd is left alone
    assert svc.stop() == []


def test_direct_stop_timeout(tmp_path):
    procs = FakeProcs(tmp_path)
    procs.run("libvirtd")
    svc = direct(tmp_path, Runner(), timeout=1, procs=procs)[0]
    svc.kill = lambda p, s: None  # ignores SIGTERM
    with pytest.raises(TimeoutExpired, match="to exit"):
        svc.stop()


# -- the whole manager on a fake host -------------------------------------------------------------


def host_runner(
    procs,
    installed=("qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients", "dnsmasq-base", "xorriso"),
):
    have = set(installed)

    def dpkg(argv):
        names = argv[3:]
        lines = [f"{n}\tii " for n in names if n in have]
        return (0 if len(lines) == len(names) else 1, "\n".join(lines) + "\n", "")

    def apt(argv):
        have.update(argv[4:])

    return Runner(
        {"dpkg-query": dpkg},
        {
            "apt-get": apt,
            "virtlogd": lambda argv: procs.run("virtlogd"),
            "libvirtd": lambda argv: procs.run("libvirtd"),
        },
    )


def manager(tmp_path, runner, check=False, connection=None, **params):
    base = {"uri": "test:///default", "family": "auto", "install_packages": True, "daemon_state": "started"}
    base["daemon_enabled"] = True
    base.update(params)
    return host_manager.HostManager(base, connection, check, runner=runner, which=which_all, root=str(tmp_path))


class RecordingConnection(Connection):
    """A lazy connection that records, when it opens, what ``when()`` said then."""

    def __init__(self, uri, when):
        super().__init__(uri)
        self.when = when
        self.opened: list = []

    @property
    def conn(self):
        if self._conn is None:
            self.opened.append(self.when())
        return super().conn


@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    pytest.importorskip("libvirt")
    fake_tree(tmp_path)
    monkeypatch.setattr(host_manager, "ping", lambda uri, runner, which: True)
    return tmp_path


def test_manager_four_ways(fake_host):
    procs = FakeProcs(fake_host)
    runner = host_runner(procs)
    args = {"gui": True, "python_bindings": True}
    first = manager(fake_host, runner, check=True, **args)
    check1 = first.run()
    assert check1["changed"] is True
    assert check1["installed_packages"] == ["virt-manager", "python3-libvirt", "python3-lxml", "python3-guestfs"]
    assert check1["started_daemons"] == ["virtlogd", "libvirtd"]
    assert check1["diff"]["before"]["daemon_state"] == "stopped"
    assert check1["diff"]["after"] == {"packages_missing": [], "daemon_state": "started", "daemon_enabled": None}
    assert check1["host"]["libvirt_domain_types"] is None  # check mode does not ask a stopped daemon
    assert runner.argvs("apt-get") == [] and runner.argvs("libvirtd") == []
    assert "cannot be enabled at boot" in first.warnings[0]

    real1 = manager(fake_host, runner, **args).run()
    assert real1["changed"] is True
    assert real1["installed_packages"] == check1["installed_packages"]
    assert len(runner.argvs("apt-get")) == 1  # one install call for all
    assert real1["started_daemons"] == ["virtlogd", "libvirtd"]
    host = real1["host"]
    assert host["init_system"] == "none" and host["daemon_enabled"] is None
    assert host["libvirt_domain_types"] == ["test"]
    assert host["recommended_domain_type"] == "qemu"
    assert host["family"] == "debian" and host["os_id"] == "debian"

    real2 = manager(fake_host, runner, **args).run()
    check2 = manager(fake_host, runner, check=True, **args).run()
    for again in (real2, check2):
        assert again["changed"] is False, again
        assert again["installed_packages"] == [] and again["started_daemons"] == []
        assert again["diff"]["before"] == again["diff"]["after"]
    assert len(runner.argvs("apt-get")) == 1 and len(runner.argvs("libvirtd")) == 1


def test_manager_contract():
    spec = host_manager.HostManager.argument_spec()
    assert "uri" in spec and spec["daemon_timeout"]["default"] == 60
    assert host_manager.HostManager.module_kwargs()["supports_check_mode"] is True
    # works without libvirt-python and lxml (virsh and the stdlib XML parser)
    assert host_manager.HostManager.needs({}) == ()
    m = host_manager.HostManager({"uri": "test:///default"}, runner=Runner(), which=which_all)
    assert m.p["daemon_timeout"] == 60 and m.p["family"] == "auto" and m.p["extra_packages"] == []
    assert m.uri == "test:///default" and m.root == "/"


def test_manager_opens_libvirt_only_after_the_daemon_runs(fake_host):
    procs = FakeProcs(fake_host)
    runner = host_runner(procs)

    def libvirtd_alive():
        return daemons.DirectDaemon("libvirtd", runner, which_all, lambda: True, root=str(fake_host)).pid("libvirtd")

    check = RecordingConnection("test:///default", libvirtd_alive)
    manager(fake_host, runner, check=True, connection=check).run()
    assert check.opened == []  # check mode does not ask a daemon it did not start
    real = RecordingConnection("test:///default", libvirtd_alive)
    try:
        result = manager(fake_host, runner, connection=real).run()
    finally:
        real.close()
    assert result["started_daemons"] == ["virtlogd", "libvirtd"]
    assert len(real.opened) == 1 and real.opened[0] is not None  # opened once, with libvirtd running
    assert result["host"]["libvirt_domain_types"] == ["test"]


def test_manager_require_hw_virt_fails_before_changing_anything(fake_host):
    runner = host_runner(FakeProcs(fake_host), installed=())
    for check in (True, False):
        with pytest.raises(HostError, match="KVM is not usable on this host: The CPU exposes no vmx/svm flag"):
            manager(fake_host, runner, check=check, require_hw_virt=True).run()
    assert runner.calls == []


def test_manager_require_hw_virt_passes_on_intel(fake_host):
    write(fake_host, "/proc/cpuinfo", INTEL)
    procs = FakeProcs(fake_host)
    procs.run("virtlogd")
    procs.run("libvirtd")
    # test:///default lists no kvm domain type, so the final verdict still says qemu
    with pytest.raises(HostError, match="libvirt does not list the kvm domain type") as exc:
        manager(fake_host, host_runner(procs), require_hw_virt=True).run()
    assert exc.value.details["installed_packages"] == []


def test_manager_stop_without_systemd(fake_host):
    procs = FakeProcs(fake_host)
    procs.run("virtlogd")
    pid = procs.run("libvirtd")
    connection = RecordingConnection("test:///default", lambda: True)
    m = manager(fake_host, host_runner(procs), connection=connection, daemon_state="stopped", daemon_enabled=False)
    killed = []
    real_daemon = m.daemon

    def daemon(family):
        svc = real_daemon(family)
        svc.kill = lambda p, s: killed.append(p) or procs.kill(p, s)
        return svc

    m.daemon = daemon
    result = m.run()
    assert result["changed"] is True and result["stopped_daemons"] == ["libvirtd"]
    assert killed == [pid]
    assert result["host"]["daemon_state"] == "stopped"
    assert result["host"]["libvirt_domain_types"] is None  # a stopped daemon is not asked
    assert connection.opened == []


def test_manager_unsupported_family(fake_host):
    write(fake_host, "/etc/os-release", "ID=arch\n")
    runner = host_runner(FakeProcs(fake_host))
    with pytest.raises(UnsupportedPlatform, match="Supported families: debian, redhat, suse"):
        manager(fake_host, runner).run()
    assert runner.calls == []


def test_manager_unknown_family_without_packages(fake_host):
    write(fake_host, "/etc/os-release", "ID=arch\n")
    procs = FakeProcs(fake_host)
    procs.run("virtlogd")
    procs.run("libvirtd")
    result = manager(fake_host, host_runner(procs), install_packages=False).run()
    assert result["changed"] is False
    assert result["host"]["family"] is None


def test_manager_package_failure_reports_stderr(fake_host):
    procs = FakeProcs(fake_host)
    runner = host_runner(procs)
    runner.answers["apt-get"] = (100, "", "E: Unable to locate package virtops-no-such-package-xyz\n")
    with pytest.raises(PackageManagerError, match="Unable to locate package virtops-no-such-package-xyz"):
        manager(fake_host, runner, extra_packages=["virtops-no-such-package-xyz"]).run()
    assert runner.argvs("libvirtd") == []  # nothing after the failed install


# -- libvirt facts without the Python binding (virsh) ---------------------------------------------

VIRSH_VERSION = (
    "Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\n"
    "Using API: QEMU 9.0.0\nRunning hypervisor: QEMU 7.2.22\n"
)


def test_libvirt_facts_via_virsh(monkeypatch):
    monkeypatch.setattr(_deps, "libvirt", None)
    runner = Runner({"virsh -c": lambda argv: (0, CAPS if argv[3] == "capabilities" else VIRSH_VERSION, "")})
    facts = versions.libvirt_facts(Connection("qemu:///system"), True, runner, which_only("virsh"))
    assert facts["caps_xml"] == CAPS
    assert facts["libvirt_version"] == "9.0.0"
    assert facts["hypervisor"] == "QEMU"
    assert facts["qemu_version"] == "7.2.22"


def test_libvirt_facts_without_daemon(monkeypatch):
    monkeypatch.setattr(_deps, "libvirt", None)
    runner = Runner({"virsh --version": (0, "9.0.0\n", "")})
    facts = versions.libvirt_facts(Connection("qemu:///system"), False, runner, which_only("virsh"))
    assert facts == {"caps_xml": None, "libvirt_version": "9.0.0", "hypervisor": None, "qemu_version": None}
    assert all(a[1] != "-c" for a in runner.argvs())  # the daemon was not asked


def test_libvirt_facts_leaves_a_lazy_connection_closed():
    pytest.importorskip("libvirt")
    lazy = RecordingConnection("bogus:///nowhere", lambda: True)
    facts = versions.libvirt_facts(lazy, False, Runner(), which_only())
    assert facts["caps_xml"] is None and facts["hypervisor"] is None
    assert facts["libvirt_version"]  # of the library
    assert lazy.opened == []


def test_libvirt_facts_with_binding_uses_the_given_connection():
    pytest.importorskip("libvirt")
    connection = RecordingConnection("test:///default", lambda: True)
    try:
        facts = versions.libvirt_facts(connection, True, Runner(), which_only())
    finally:
        connection.close()
    assert connection.opened == [True]
    assert probe.caps_domain_types(facts["caps_xml"]) == ["test"]
    assert facts["hypervisor"] == "TEST"


@pytest.mark.parametrize(("rc", "expected"), [(0, True), (1, False)])
def test_ping_via_virsh(monkeypatch, rc, expected):
    monkeypatch.setattr(_deps, "libvirt", None)
    runner = Runner({"virsh": (rc, "", "")})
    assert versions.ping("qemu:///system", runner, which_only("virsh")) is expected
    assert runner.argvs() == [["/usr/bin/virsh", "-c", "qemu:///system", "version"]]


def test_ping_with_binding():
    pytest.importorskip("libvirt")
    assert versions.ping("test:///default", Runner(), which_all) is True
    assert versions.ping("bogus:///nowhere", Runner(), which_all) is False
