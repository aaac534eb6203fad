"""The test guest itself: it boots, writes only to its overlay, powers off on ACPI, is cached.

Every other integration test relies on this guest, so its promises are checked here
on the real qemu:///system daemon: one disk boot (overlay of base.qcow2) with a
reboot and an ACPI shutdown, one direct-kernel boot, and the builder's cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import guestlib
import libvirt
import pytest
from lxml import etree

BOOT_TIMEOUT = 240  # TCG on 2 shared cores: a boot takes 10-25 s, allow for a busy machine


def _step(record: dict, key: str, func, *args, **kwargs):
    """Run one step of a scenario; keep its result or its error so each test reports its own."""
    try:
        record[key] = func(*args, **kwargs)
    except (TimeoutError, libvirt.libvirtError, RuntimeError) as exc:
        record[key + "_error"] = f"{type(exc).__name__}: {exc}"
    return record.get(key)


@pytest.fixture(scope="module")
def disk_boot(guest, conn) -> Iterator[dict]:
    """Boot an overlay of base.qcow2, reboot it, shut it down by ACPI; record what happened."""
    rec: dict = {"base_sha256_before": guestlib.sha256(guest["base"])}
    with guestlib.scratch_dir(conn=conn) as (prefix, scratch):
        overlay = guestlib.make_overlay(guest["base"], scratch / "disk.qcow2")
        log = scratch / "serial.log"
        dom = conn.defineXML(guestlib.domain_xml(f"{prefix}-disk", overlay, log, kind="disk"))
        dom.create()
        _step(rec, "first", guestlib.wait_for_marker, log, BOOT_TIMEOUT)
        if "first" in rec:
            dom.reboot(0)  # ACPI power button + libvirt's fake reboot: the guest boots again
            _step(rec, "second", guestlib.wait_for_marker, log, BOOT_TIMEOUT, count=2)
        if "second" in rec:
            dom.shutdown()  # ACPI power button
            _step(rec, "shutdown_state", guestlib.wait_for_state, dom, (libvirt.VIR_DOMAIN_SHUTOFF,), 120)
        rec["state"] = dom.state()
        if dom.isActive():
            dom.destroy()
        rec["serial"] = log.read_text(errors="replace") if log.exists() else ""
        rec["base_sha256_after"] = guestlib.sha256(guest["base"])
        _step(rec, "overlay_boot_log", guestlib.guestfs_read, overlay, guest["boot_log"])
        yield rec


@pytest.mark.slow
def test_disk_guest_boots_with_its_hostname(disk_boot):
    assert "first_error" not in disk_boot, disk_boot.get("first_error")
    assert disk_boot["first"] == ["VIRTOPS-GUEST-UP hostname=virtops-base"]


@pytest.mark.slow
def test_reboot_brings_the_marker_again(disk_boot):
    assert "second_error" not in disk_boot, disk_boot.get("second_error")
    assert disk_boot["second"] == ["VIRTOPS-GUEST-UP hostname=virtops-base"] * 2


@pytest.mark.slow
def test_acpi_shutdown_powers_it_off(disk_boot):
    assert "shutdown_state_error" not in disk_boot, disk_boot.get("shutdown_state_error")
    # shut off by the guest itself (reason SHUTDOWN), not destroyed by the test
    assert disk_boot["state"] == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
    assert "VIRTOPS-GUEST-POWEROFF" in disk_boot["serial"]


@pytest.mark.slow
def test_base_unchanged_and_overlay_has_the_boot_log(disk_boot):
    assert disk_boot["base_sha256_after"] == disk_boot["base_sha256_before"]
    assert "overlay_boot_log_error" not in disk_boot, disk_boot.get("overlay_boot_log_error")
    lines = disk_boot["overlay_boot_log"].splitlines()
    assert len(lines) == 2, lines  # one per boot: first boot and the reboot
    assert all(line.endswith(" boot hostname=virtops-base") for line in lines), lines


@pytest.mark.slow
def test_direct_kernel_boot_without_disk(guest, conn, prefix, scratch):
    log = scratch / "serial.log"
    dom = conn.defineXML(guestlib.domain_xml(f"{prefix}-kernel", None, log, kind="kernel"))
    dom.create()
    assert guestlib.wait_for_marker(log, BOOT_TIMEOUT) == ["VIRTOPS-GUEST-UP hostname=none"]
    dom.shutdown()
    assert guestlib.wait_for_state(dom, (libvirt.VIR_DOMAIN_SHUTOFF,), 120) == libvirt.VIR_DOMAIN_SHUTOFF


def test_domain_xml_from_the_templates(guest, scratch):
    disk = etree.fromstring(guestlib.domain_xml("vt-x-a", scratch / "d.qcow2", scratch / "s.log", memory_mib=128))
    assert disk.get("type") == "qemu"
    assert disk.findtext("name") == "vt-x-a"
    assert disk.find("memory").text == "128" and disk.find("memory").get("unit") == "MiB"
    assert disk.find("os/boot").get("dev") == "hd"
    assert disk.find("features/acpi") is not None
    assert disk.findtext("on_poweroff") == "destroy"
    assert disk.find("devices/disk/source").get("file") == str(scratch / "d.qcow2")
    assert disk.find("devices/disk/target").get("dev") == "vda"
    assert disk.find("devices/disk/driver").get("type") == "qcow2"
    assert disk.find("devices/interface").get("type") == "user"
    assert disk.find("devices/interface/model").get("type") == "virtio"
    assert disk.find("devices/serial/source").get("path") == str(scratch / "s.log")
    assert disk.find("devices/console/source").get("path") == str(scratch / "s.log")

    kernel = etree.fromstring(guestlib.domain_xml("vt-x-b", None, scratch / "s.log", kind="kernel"))
    assert kernel.findtext("os/kernel") == guest["kernel"]
    assert kernel.findtext("os/initrd") == guest["initrd"]
    assert kernel.findtext("os/cmdline") == "console=ttyS0 panic=-1"
    assert kernel.find("devices/disk") is None
    with_disk = etree.fromstring(guestlib.domain_xml("vt-x-c", scratch / "d.qcow2", scratch / "s.log", kind="kernel"))
    assert with_disk.find("devices/disk/source").get("file") == str(scratch / "d.qcow2")
    with pytest.raises(ValueError):
        guestlib.domain_xml("vt-x-d", None, scratch / "s.log", kind="disk")


def test_builder_cache_is_reused(guest):
    again = guestlib.run_builder()
    assert again["built"] is False
    for key in ("dir", "kernel", "initrd", "base", "template", "kernel_template", "inputs_hash"):
        assert again[key] == guest[key], key
    for key in ("kernel", "initrd", "base", "template", "kernel_template"):
        assert os.path.isfile(again[key]), key


def test_builder_names_the_missing_package(tmp_path):
    # No guestfish on PATH: the builder must say which package to install (checked before any build).
    proc = subprocess.run(
        [sys.executable, str(guestlib.BUILDER), "--json", "--dest", str(tmp_path / "dest")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=str(tmp_path)),
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "libguestfs-tools" in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "dest").exists()
