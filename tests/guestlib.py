"""Helpers for tests and bench scripts that need a real, tiny, bootable guest.

The guest comes from ``playbooks/files/build_test_guest.py`` (host kernel + busybox
initramfs, cached under /var/lib/libvirt/images/virtops-testguest). Every test
gets a random name prefix (``vt-xxxxxxxx``) for its domains and a scratch
directory under /var/lib/libvirt/images/virtops-test/<prefix>, so helpers that
share the one libvirtd never touch each other's objects.

What the guest does once booted: mounts /dev/vda1 if there is one, appends a line
to /var/log/virtops-boot.log on it, then prints exactly one line
``VIRTOPS-GUEST-UP hostname=<hostname or none>`` on its serial port (a file, see
``domain_xml``). An ACPI power button press (``virsh shutdown``) powers it off.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "playbooks" / "files" / "build_test_guest.py"
GUEST_DEST = Path(os.environ.get("VIRTOPS_TESTGUEST_DEST", "/var/lib/libvirt/images/virtops-testguest"))
SCRATCH_ROOT = Path("/var/lib/libvirt/images/virtops-test")
MARKER = "VIRTOPS-GUEST-UP"
MARKER_RE = re.compile(MARKER + r" hostname=(\S+)")
GUESTFS_ENV = {"LIBGUESTFS_BACKEND": "direct", "LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}

_guest_cache: dict | None = None


def run_builder(force: bool = False, dest: Path = GUEST_DEST) -> dict:
    """Run the builder once and return its JSON (with ``built`` true if it built now)."""
    argv = [sys.executable, str(BUILDER), "--json", "--dest", str(dest)]
    if force:
        argv.append("--force")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"build_test_guest.py failed (rc={proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def build_guest() -> dict:
    """The test guest (builder JSON: dir, kernel, initrd, base, template, kernel_template, ...), cached."""
    global _guest_cache
    if _guest_cache is None:
        _guest_cache = run_builder()
    return dict(_guest_cache)


def new_prefix() -> str:
    """A random name prefix ``vt-xxxxxxxx`` for the domains and files of one test."""
    return f"vt-{secrets.token_hex(4)}"


def make_overlay(base: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Create a qcow2 overlay backed by ``base`` (writes land only in the overlay)."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    os.chmod(path, 0o644)
    return Path(path)


def define_template(conn, base, scratch: Path, prefix: str, memory_mib: int = 192, kind: str = "disk") -> dict:
    """A shut-off template domain ``<prefix>-tpl`` on a private copy of ``base`` (``scratch/tpl.qcow2``).

    Returns ``dict(name, disk, xml)``; the ``prefix`` fixture's teardown removes the domain and the copy.
    """
    disk = scratch / "tpl.qcow2"
    shutil.copyfile(base, disk)
    os.chmod(disk, 0o644)
    name = f"{prefix}-tpl"
    xml = domain_xml(name, disk, scratch / f"{name}.log", kind=kind, memory_mib=memory_mib)
    conn.defineXML(xml)
    return dict(name=name, disk=disk, xml=xml)


def domain_xml(
    name: str,
    disk: str | os.PathLike | None,
    serial_log: str | os.PathLike,
    kind: str = "disk",
    memory_mib: int = 256,
) -> str:
    """Domain XML for the test guest, from the builder's template (edited with lxml).

    ``kind='disk'`` boots ``disk`` (an overlay of ``base``) through extlinux;
    ``kind='kernel'`` boots the kernel and initrd directly (a few seconds faster) and
    attaches ``disk`` as vda only if one is given. The serial port and console log
    to ``serial_log`` with append on, so the file keeps every boot of the domain.
    """
    from lxml import etree

    if kind not in ("disk", "kernel"):
        raise ValueError(f"kind must be 'disk' or 'kernel', not {kind!r}")
    guest = build_guest()
    disk_root = etree.parse(guest["template"]).getroot()
    root = disk_root if kind == "disk" else etree.parse(guest["kernel_template"]).getroot()
    root.find("name").text = name
    for tag in ("memory", "currentMemory"):
        el = root.find(tag)
        el.text = str(memory_mib)
        el.set("unit", "MiB")
    devices = root.find("devices")
    disk_el = devices.find("disk")
    if disk is None:
        if kind == "disk":
            raise ValueError("kind='disk' needs a disk image (an overlay of the base)")
    else:
        if disk_el is None:
            disk_el = disk_root.find("devices/disk")
            devices.insert(0, disk_el)
        disk_el.find("source").set("file", str(disk))
    for tag in ("serial", "console"):
        devices.find(tag).find("source").set("path", str(serial_log))
    return etree.tostring(root, encoding="unicode", pretty_print=True)


def read_markers(serial_log: str | os.PathLike) -> list[str]:
    """Every marker line written so far to the serial log (empty if the file is not there yet)."""
    try:
        text = Path(serial_log).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [m.group(0) for m in MARKER_RE.finditer(text)]


def wait_for_marker(serial_log: str | os.PathLike, timeout: float = 90, count: int = 1) -> list[str]:
    """Poll the serial log until ``count`` marker lines are there; return them.

    Raises TimeoutError (with the log's tail) if they do not come within ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        markers = read_markers(serial_log)
        if len(markers) >= count:
            return markers
        if time.monotonic() > deadline:
            try:
                tail = Path(serial_log).read_text(errors="replace")[-1500:]
            except FileNotFoundError:
                tail = "(no serial log)"
            raise TimeoutError(f"{len(markers)}/{count} '{MARKER}' lines in {serial_log} after {timeout} s:\n{tail}")
        time.sleep(0.25)


def wait_for_state(dom, states: tuple[int, ...], timeout: float = 60) -> int:
    """Poll a virDomain until its state is one of ``states``; return it (TimeoutError otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        state = dom.state()[0]
        if state in states:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"domain {dom.name()} still in state {state} after {timeout} s, wanted {states}")
        time.sleep(0.25)


def cleanup_domains(conn, prefix: str) -> list[str]:
    """Destroy and undefine every domain whose name starts with ``prefix``; return their names."""
    import libvirt

    flags = (
        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    )
    removed = []
    for dom in conn.listAllDomains():
        name = dom.name()
        if not name.startswith(prefix):
            continue
        try:
            if dom.isActive():
                dom.destroy()
        except libvirt.libvirtError:
            if dom.isActive():  # it may have stopped on its own meanwhile
                raise
        try:
            if dom.isPersistent():
                dom.undefineFlags(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        removed.append(name)
    return removed


def make_scratch(prefix: str) -> Path:
    """Create (mode 0755) and return the scratch directory of ``prefix``."""
    SCRATCH_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(SCRATCH_ROOT, 0o755)  # libvirt-qemu must traverse to the images
    path = SCRATCH_ROOT / prefix
    path.mkdir(mode=0o755, exist_ok=True)
    os.chmod(path, 0o755)
    return path


def remove_scratch(prefix: str) -> None:
    """Remove the scratch directory of ``prefix`` (nothing else)."""
    if not prefix or "/" in prefix or prefix in (".", ".."):
        raise ValueError(f"refusing to remove scratch for prefix {prefix!r}")
    shutil.rmtree(SCRATCH_ROOT / prefix, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(prefix: str | None = None, conn=None) -> Iterator[tuple[str, Path]]:
    """``with scratch_dir() as (prefix, path):`` a fresh prefix and its scratch dir, removed after.

    With ``conn``, domains named with the prefix are destroyed/undefined first.
    """
    prefix = prefix or new_prefix()
    path = make_scratch(prefix)
    try:
        yield prefix, path
    finally:
        try:
            if conn is not None:
                cleanup_domains(conn, prefix)
        finally:
            remove_scratch(prefix)


def guestfs_read(image: str | os.PathLike, path: str, device: str = "/dev/sda1") -> str:
    """Read one file from a (stopped) disk image, read-only, with the guestfs binding (~20 s)."""
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend("direct")
        g.set_backend_settings(["force_tcg"])  # real KVM guests hang on this machine kind
        g.add_drive_opts(str(image), format="qcow2", readonly=1)
        g.launch()
        g.mount_ro(device, "/")
        return g.cat(path)
    finally:
        g.close()


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (to prove a base image was not written)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fleet_vars(prefix: str, clones: list, images: str = "/var/lib/libvirt/images", **extra) -> dict:
    """kvm_fleet role variables for a fleet of the test guest over many hypervisors (tests/ground.py):
    the template as XML on the base at ``images``/<prefix>-base.qcow2, the base copied from here to each
    hypervisor (kvm_image), spread placement, no identity reset (~20 s an appliance), clones left defined;
    ``extra`` on top."""
    base = f"{images}/{prefix}-base.qcow2"
    out = {
        "kvm_fleet_name": prefix,
        "kvm_fleet_template_xml": domain_xml(
            f"{prefix}-tpl", base, f"{images}/{prefix}-tpl.serial.log", memory_mib=128
        ),
        "kvm_fleet_base_images": [{"src": build_guest()["base"], "dest": base}],
        "kvm_fleet_dest_dir": images,
        "kvm_fleet_domain_type": "qemu",
        "kvm_fleet_identity": {"operations": []},
        "kvm_fleet_clone_state": "present",
        "kvm_fleet_placement": "spread",
        "kvm_fleet_clones": clones,
    }
    out.update(extra)
    return out
