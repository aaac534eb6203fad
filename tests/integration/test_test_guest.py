"""The test guest itself: it boots, writes only to its overlay, powers off on ACPI, is cached.

Every other integration test relies on this guest, so its promises are checked here
on the real qemu:///system daemon: one disk boot (overlay of base.qcow2) with a
reboot and an ACPI shutdown, one direct-kernel boot, and the builder's cache.

The identity line (``VIRTOPS-IDENTITY hostname=.. machine-id=<state>:<id> seed-hostname=..``)
that kvm_clone's tests read is checked on those boots and on one "clone": an overlay
whose /etc/machine-id was emptied, booted twice with a cloud-init seed CD-ROM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests import guestlib

BOOT_TIMEOUT = 240  # TCG on 2 shared cores: a boot takes 10-25 s, allow for a busy machine
IDENTITY_RE = re.compile(r"VIRTOPS-IDENTITY [^\r\n]*")


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_test_guest", guestlib.BUILDER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _load_builder()


def _identity_lines(serial: str) -> list[str]:
    """Every identity line of a serial log, in order (one per boot)."""
    return IDENTITY_RE.findall(serial)


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
def test_disk_guest_prints_the_template_identity(disk_boot, guest):
    assert "first_error" not in disk_boot, disk_boot.get("first_error")
    assert guest["machine_id"] == builder.TEMPLATE_MACHINE_ID
    line = f"VIRTOPS-IDENTITY hostname=virtops-base machine-id=kept:{builder.TEMPLATE_MACHINE_ID} seed-hostname=none"
    assert _identity_lines(disk_boot["serial"]) == [line] * 2  # the first boot and the reboot


@pytest.mark.slow
def test_direct_kernel_boot_without_disk(guest, conn, prefix, scratch):
    log = scratch / "serial.log"
    dom = conn.defineXML(guestlib.domain_xml(f"{prefix}-kernel", None, log, kind="kernel"))
    dom.create()
    assert guestlib.wait_for_marker(log, BOOT_TIMEOUT) == ["VIRTOPS-GUEST-UP hostname=none"]
    # no disk: no hostname, no machine-id; no CD-ROM: no seed
    assert _identity_lines(log.read_text()) == ["VIRTOPS-IDENTITY hostname=none machine-id=none:- seed-hostname=none"]
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


def test_guest_serves_http_after_the_marker_and_before_dhcp(guest):
    # busybox httpd starts after the boot marker (it never delays it) and before the DHCP clients (it
    # listens once a lease is bound); tests/integration/test_nethost.py fetches it over a real network.
    assert (builder.HTTP_PORT, builder.HTTP_MARKER) == (8080, "VIRTOPS-HTTP")
    assert (guest["http_port"], guest["http_marker"]) == (builder.HTTP_PORT, builder.HTTP_MARKER)
    init = builder.INIT_SCRIPT
    marker = init.index(f'echo "{builder.MARKER} hostname=$host" > /dev/ttyS0')
    page = init.index(f'echo "{builder.HTTP_MARKER} hostname=$host" > {builder.HTTP_ROOT}/index.html')
    httpd = init.index(f"\nhttpd -p {builder.HTTP_PORT} -h {builder.HTTP_ROOT}\n")
    assert marker < page < httpd < init.index('udhcpc "$@"')
    applets = subprocess.run([builder.BUSYBOX, "--list"], capture_output=True, text=True, timeout=30, check=True)
    assert "httpd" in applets.stdout.split()  # the very binary the initramfs carries


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


# --------------------------------------------------------------------------- a clone's identity

SEED_JSON = json.dumps({"instance-id": "iid-clone-1", "local-hostname": "web-1"}, indent=2, sort_keys=True) + "\n"
SEED_YAML = "instance-id: iid-clone-1\nlocal-hostname: web-2\n"


def _make_seed(iso: Path, meta_data: str) -> Path:
    """The cloud-init NoCloud seed ISO ``iso`` (volume 'cidata') with ``meta_data``, replacing any old one."""
    xorriso = shutil.which("xorriso")
    if not xorriso:
        pytest.fail("no xorriso: install the package xorriso (apt-get install xorriso)", pytrace=False)
    src = iso.parent / f"{iso.stem}-src"
    src.mkdir(exist_ok=True)
    (src / "meta-data").write_text(meta_data)
    (src / "user-data").write_text("#cloud-config\n{}\n")
    iso.unlink(missing_ok=True)
    argv = [xorriso, "-as", "mkisofs", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock", "-graft-points"]
    argv += [f"{name}={src / name}" for name in ("user-data", "meta-data")]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    os.chmod(iso, 0o644)
    return iso


def _with_cdrom(xml: str, iso: Path) -> str:
    """Domain XML plus ``iso`` as a read-only IDE CD-ROM (hdc), as kvm_clone attaches its seed on pc machines."""
    root = etree.fromstring(xml)
    disk = etree.SubElement(root.find("devices"), "disk", type="file", device="cdrom")
    etree.SubElement(disk, "driver", name="qemu", type="raw")
    etree.SubElement(disk, "source", file=str(iso))
    etree.SubElement(disk, "target", dev="hdc", bus="ide")
    etree.SubElement(disk, "readonly")
    return etree.tostring(root, encoding="unicode")


def _inspect_and_empty_machine_id(overlay: Path, device: str) -> dict:
    """On the test's own overlay (read-write, never the base): what inspection and the identity files say,
    then empty /etc/machine-id as kvm_clone's machine-id operation does. One appliance launch."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend("direct")
        g.set_backend_settings(["force_tcg"])
        g.add_drive_opts(str(overlay), format="qcow2", readonly=0)
        g.launch()
        roots = g.inspect_os()
        facts: dict = {"roots": roots}
        if roots:
            facts["os_type"] = g.inspect_get_type(roots[0])
            facts["os_hostname"] = g.inspect_get_hostname(roots[0])
        g.mount(device, "/")
        facts["files"] = {
            path: {
                "regular": bool(g.is_file(path, followsymlinks=False)),
                "mode": g.statns(path)["st_mode"] & 0o7777 if g.exists(path) else None,
                "text": g.cat(path) if g.is_file(path) else None,
            }
            for path, _text, _mode in builder.IDENTITY_FILES
        }
        g.truncate("/etc/machine-id")
        g.umount_all()
        g.shutdown()
        return facts
    finally:
        g.close()


@pytest.fixture(scope="module")
def clone_boot(guest, conn) -> Iterator[dict]:
    """An overlay with an emptied machine-id and a seed CD-ROM (JSON meta-data) boots; it is shut down,
    the seed is remade with YAML meta-data and it boots again. Record what happened."""
    rec: dict = {"base_sha256_before": guestlib.sha256(guest["base"])}
    with guestlib.scratch_dir(conn=conn) as (prefix, scratch):
        overlay = guestlib.make_overlay(guest["base"], scratch / "clone.qcow2")
        _step(rec, "facts", _inspect_and_empty_machine_id, overlay, guest["root_device"]["guestfs"])
        iso = _make_seed(scratch / "clone-cidata.iso", SEED_JSON)
        log = scratch / "serial.log"
        dom = conn.defineXML(_with_cdrom(guestlib.domain_xml(f"{prefix}-clone", overlay, log), iso))
        if "facts" in rec:
            dom.create()
            _step(rec, "first", guestlib.wait_for_marker, log, BOOT_TIMEOUT)
        if "first" in rec:
            dom.shutdown()
            _step(rec, "shutdown", guestlib.wait_for_state, dom, (libvirt.VIR_DOMAIN_SHUTOFF,), 120)
        if "shutdown" in rec:
            _make_seed(iso, SEED_YAML)
            dom.create()
            _step(rec, "second", guestlib.wait_for_marker, log, BOOT_TIMEOUT, count=2)
        if dom.isActive():
            dom.destroy()
        rec["identity"] = _identity_lines(log.read_text(errors="replace")) if log.exists() else []
        rec["base_sha256_after"] = guestlib.sha256(guest["base"])
        yield rec


@pytest.mark.slow
def test_base_has_the_identity_files_and_inspection_finds_it(clone_boot, guest):
    assert "facts_error" not in clone_boot, clone_boot.get("facts_error")
    facts = clone_boot["facts"]
    assert facts["roots"] == ["/dev/sda1"]
    assert (facts["os_type"], facts["os_hostname"]) == ("linux", "virtops-base")
    files = facts["files"]
    assert all(f["regular"] for f in files.values()), files
    for path in guest["machine_id_files"]:  # /var/lib/dbus/machine-id is a copy, not a symlink
        assert files[path]["text"] == builder.TEMPLATE_MACHINE_ID + "\n", path
    assert len(guest["ssh_host_keys"]) == 4
    for path in guest["ssh_host_keys"]:
        assert files[path]["mode"] == (0o644 if path.endswith(".pub") else 0o600), path
        assert "fake" in files[path]["text"], path
    assert 'SUBSYSTEM=="net"' in files[guest["udev_net_rules"]]["text"]
    assert "lease {" in files[guest["dhcp_leases"][0]]["text"]
    assert files[guest["log_files"][0]]["text"].strip()


@pytest.mark.slow
def test_clone_regenerates_its_emptied_machine_id_and_reads_the_seed(clone_boot):
    assert "first_error" not in clone_boot, clone_boot.get("first_error")
    # the marker keeps the disk's hostname; the seed's local-hostname is only reported
    assert clone_boot["first"] == ["VIRTOPS-GUEST-UP hostname=virtops-base"]
    first = clone_boot["identity"][0]
    m = re.fullmatch(
        r"VIRTOPS-IDENTITY hostname=virtops-base machine-id=regenerated:([0-9a-f]{32}) seed-hostname=web-1", first
    )
    assert m, first
    assert m.group(1) != builder.TEMPLATE_MACHINE_ID
    assert clone_boot["base_sha256_after"] == clone_boot["base_sha256_before"]


@pytest.mark.slow
def test_regenerated_machine_id_is_kept_and_yaml_seed_read(clone_boot):
    for step in ("shutdown", "second"):
        assert f"{step}_error" not in clone_boot, clone_boot.get(f"{step}_error")
    assert len(clone_boot["identity"]) == 2, clone_boot["identity"]
    first, second = clone_boot["identity"]
    new_id = first.split("machine-id=regenerated:", 1)[1].split()[0]
    assert second == f"VIRTOPS-IDENTITY hostname=virtops-base machine-id=kept:{new_id} seed-hostname=web-2"


def test_seed_hostname_from_json_and_yaml_meta_data(tmp_path):
    # The guest's own parser (busybox sh, sed, tr) run with the host's busybox: every form kvm_clone
    # or a user may write, and what must not match.
    cases = {
        SEED_JSON: "web-1",  # kvm_clone's meta-data (sorted, indented JSON)
        '{"instance-id": "i-1", "local-hostname": "web-1.virtops.test", "zone": "a"}': "web-1.virtops.test",
        "instance-id: i-1\nlocal-hostname: web-2\n": "web-2",
        "local-hostname: 'web-3'  # the clone\r\n": "web-3",
        'local-hostname: "web-4"\n': "web-4",
        "instance-id: i-1\nhostname: other\n": "none",
        '{"instance-id": "i-1"}\n': "none",
        "": "none",
    }
    got = {}
    for i, meta in enumerate(cases):
        path = tmp_path / f"meta-data-{i}"
        path.write_text(meta)
        script = builder.SEED_HOSTNAME_SH + 'seed_hostname "$1"\n'
        proc = subprocess.run(
            [builder.BUSYBOX, "sh", "-c", script, "sh", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        got[meta] = proc.stdout
    assert got == {meta: want + "\n" for meta, want in cases.items()}
