"""kvm_host against this machine: the real packages, the shared libvirtd and the real hardware.

The libvirtd here is shared with other work, so nothing in this file stops or restarts it:
only daemon_state=started (already running, so no change) is run for real. Package
scenarios that would install something run in check mode, and the one real install is
a bogus name that apt refuses as a whole.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.harness import ROOT, assert_four_ways, four_ways, module_env, run_module

MODULE = "kvm_host"
BOGUS = "virtops-no-such-package-xyz"
ARGS = "require_hw_virt=false"


def cpu_flag() -> str:
    with open("/proc/cpuinfo") as f:
        flags = set()
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return "vmx" if "vmx" in flags else "svm" if "svm" in flags else "none"


def dpkg_installed(names: list[str]) -> set[str]:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${db:Status-Abbrev}\n", *names],
        capture_output=True,
        text=True,
        check=False,
    )
    return {line.split("\t")[0] for line in proc.stdout.splitlines() if line.split("\t")[1][1:2] == "i"}


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, check=True).stdout


NO_HW_VIRT = cpu_flag() == "none"
needs_no_hw_virt = pytest.mark.skipif(not NO_HW_VIRT, reason="this host has vmx/svm")
needs_debian = pytest.mark.skipif(not os.path.exists("/usr/bin/dpkg-query"), reason="not a Debian host")


def assert_facts_of_this_machine(result: dict) -> None:
    host = result["host"]
    assert host["virt_flag"] == cpu_flag()
    assert host["dev_kvm_exists"] is os.path.exists("/dev/kvm")
    assert host["dev_kvm_accessible"] is (os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK))
    with open("/proc/cpuinfo") as f:
        assert host["cpu_count"] == sum(1 for line in f if line.startswith("processor"))
    with open("/proc/meminfo") as f:
        assert host["memory_mib"] == int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1)) // 1024
    assert host["init_system"] == ("systemd" if os.path.isdir("/run/systemd/system") else "none")
    assert host["daemon_state"] == "started"
    assert host["daemon"] == "libvirtd"
    assert host["family"] == "debian"

    version = virsh("version")
    assert host["libvirt_version"] == re.search(r"Using library: libvirt ([\d.]+)", version).group(1)
    assert host["qemu_version"] == re.search(r"Running hypervisor: QEMU ([\d.]+)", version).group(1)
    libvirt = pytest.importorskip("libvirt")
    major, rest = divmod(libvirt.getVersion(), 1_000_000)
    assert host["libvirt_version"] == f"{major}.{rest // 1000}.{rest % 1000}"

    caps_types = sorted(set(re.findall(r"<domain type='(\w+)'", virsh("capabilities"))))
    assert host["libvirt_domain_types"] == caps_types
    if NO_HW_VIRT:
        assert host["kvm_usable"] is False
        assert host["recommended_domain_type"] == "qemu"
        assert "no vmx/svm flag" in host["reason"]
        assert "paravirtual/nested KVM" in host["reason"]


@needs_debian
def test_facts_four_ways():
    results = four_ways(MODULE, {"require_hw_virt": False})
    assert_four_ways(results, first_changes=False)
    for r in results:
        assert_facts_of_this_machine(r)
        assert r["installed_packages"] == []
        assert r["started_daemons"] == []
        assert r["diff"]["before"] == r["diff"]["after"]
        if r["host"]["init_system"] == "none":
            assert "cannot be enabled at boot" in json.dumps(r.get("warnings")), r.get("warnings")


@needs_no_hw_virt
@pytest.mark.parametrize("check", [True, False])
def test_require_hw_virt_fails_clearly_here(check):
    result = run_module(MODULE, {"require_hw_virt": True, "gui": True}, check=check)
    assert result["failed"] is True
    assert result["msg"].startswith("KVM is not usable on this host: The CPU exposes no vmx/svm flag")
    assert "require_hw_virt=false" in result["msg"]
    assert result["error"] == "HostError"
    assert "installed_packages" not in result  # failed before anything was planned or done


@needs_debian
def test_gui_check_mode_reports_and_installs_nothing():
    if dpkg_installed(["virt-manager"]):
        pytest.skip("virt-manager is installed here")
    result = run_module(MODULE, {"gui": True}, check=True)
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] is True
    assert result["installed_packages"] == ["virt-manager"]
    assert result["diff"]["before"]["packages_missing"] == ["virt-manager"]
    assert result["diff"]["after"]["packages_missing"] == []
    assert dpkg_installed(["virt-manager"]) == set()


@needs_debian
def test_python_bindings_check_mode():
    wanted = ["python3-libvirt", "python3-lxml", "python3-guestfs"]
    missing = [p for p in wanted if p not in dpkg_installed(wanted)]
    result = run_module(MODULE, {"python_bindings": True}, check=True)
    assert not result.get("failed"), result.get("msg")
    assert result["installed_packages"] == missing
    assert result["changed"] is bool(missing)
    assert [p for p in wanted if p not in dpkg_installed(wanted)] == missing


@needs_debian
def test_package_manager_error_installs_nothing():
    watched = ["virt-manager", BOGUS]
    before = dpkg_installed(watched)
    check = run_module(MODULE, {"extra_packages": [BOGUS], "gui": True}, check=True)
    assert not check.get("failed"), check.get("msg")
    assert BOGUS in check["installed_packages"]
    result = run_module(MODULE, {"extra_packages": [BOGUS], "gui": True})
    assert result["failed"] is True
    assert result["error"] == "PackageManagerError"
    assert f"Unable to locate package {BOGUS}" in result["msg"]
    assert f"Unable to locate package {BOGUS}" in result["stderr"]
    assert result["rc"] != 0
    assert dpkg_installed(watched) == before


@needs_debian
def test_wrong_family_names_the_missing_manager():
    result = run_module(MODULE, {"family": "redhat"}, check=True)
    assert result["failed"] is True
    assert result["error"] == "PackageManagerError"
    assert "rpm" in result["msg"] and "family" in result["msg"]


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ({"family": "arch"}, "value of family must be one of: auto, debian, redhat, suse"),
        ({"daemon_state": "running"}, "value of daemon_state must be one of: started, stopped"),
        ({"gui": "maybe"}, "gui"),
        ({"bogus_option": 1}, "Unsupported parameters"),
    ],
)
def test_invalid_options_rejected(args, text):
    result = run_module(MODULE, args, check=True)
    assert result["failed"] is True
    assert text in result["msg"]


@needs_debian
def test_ansible_adhoc_reports_facts_unchanged():
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/ansible"), "localhost", "-o", "-m", "virtops.kvm.kvm_host", "-a", ARGS],
        capture_output=True,
        text=True,
        env=module_env(),
        cwd=str(ROOT),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("localhost | "))
    assert line.startswith("localhost | SUCCESS => "), line
    result = json.loads(line.split("=> ", 1)[1])
    assert result["changed"] is False
    assert_facts_of_this_machine(result)


def test_virsh_fallback_matches_binding(monkeypatch):
    """Without python3-libvirt on the host the module asks virsh; both paths agree here."""
    import shutil

    from ansible_collections.virtops.kvm.plugins.module_utils import _deps
    from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
    from ansible_collections.virtops.kvm.plugins.module_utils._host.probe import caps_domain_types
    from ansible_collections.virtops.kvm.plugins.module_utils._host.versions import libvirt_facts, ping

    pytest.importorskip("libvirt")

    def runner(argv, env=None):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, **(env or {})})
        return proc.returncode, proc.stdout, proc.stderr

    with Connection("qemu:///system") as connection:
        with_binding = libvirt_facts(connection, True, runner, shutil.which)
    monkeypatch.setattr(_deps, "libvirt", None)
    with_virsh = libvirt_facts(Connection("qemu:///system"), True, runner, shutil.which)
    for key in ("libvirt_version", "hypervisor", "qemu_version"):
        assert with_virsh[key] == with_binding[key], key
    assert caps_domain_types(with_virsh["caps_xml"]) == caps_domain_types(with_binding["caps_xml"])
    assert ping("qemu:///system", runner, shutil.which) is True
