# Copyright: (c) 2025, virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the tiny offline test guest used by the integration tests and the demo.

No internet images: the guest is the host's own kernel (``/boot/vmlinuz-*``), a
busybox-static initramfs and a few kernel modules copied from ``/lib/modules``.
It boots under software emulation (``<domain type='qemu'>``, TCG) in seconds,
prints one marker line on the serial port and powers off on an ACPI power
button press, so ``virsh shutdown`` and ``virsh reboot`` work. After the marker
it asks for a DHCP lease on each NIC (busybox udhcpc, in the background) and
prints ``VIRTOPS-IP <interface> <address>`` when it has one. Also after the
marker it serves a tiny TCP service for tests that reach it over its network:
busybox ``httpd`` on port 8080 (``HTTP_PORT``, every address, so the leased one
as soon as udhcpc sets it) answers ``GET /`` with one line
``VIRTOPS-HTTP hostname=<name|none>``.

Just before the marker it prints one identity line, so tests can prove that a
clone got its own identity (kvm_clone)::

    VIRTOPS-IDENTITY hostname=<name|none> machine-id=<kept|regenerated|none>:<id|-> seed-hostname=<name|none>

``hostname`` is the first line of the disk's ``/etc/hostname`` (the marker's
too). ``machine-id`` is ``none:-`` without ``/etc/machine-id``; ``regenerated:<id>``
when the file was empty (or only whitespace): like systemd at first boot, the
guest writes a new random 32-hex id into it; else ``kept:<id>``.
``seed-hostname`` is ``local-hostname`` from the ``meta-data`` (JSON or YAML) of
a cloud-init NoCloud seed, an ISO 9660 volume labelled ``cidata`` on an IDE
CD-ROM (ata_piix, sr_mod, isofs); only reported, the hostname stays the disk's,
unless the disk has no ``/etc/hostname`` (a sealed template's clone): then, as
cloud-init does at a first boot, the seed's name becomes the hostname and is
written to the disk's ``/etc/hostname``.
The guest looks for the seed only when libata found an ATAPI device, so the
lookup adds no wait to a boot without a CD-ROM (loading the IDE and CD-ROM
modules costs about 1 s under TCG).

Outputs, in a cache directory named by a hash of the inputs (kernel file and
version, busybox binary, this script's own content) under ``--dest``:

* ``vmlinuz`` and ``initrd.img`` (cpio newc, gzip) for direct kernel boot;
* ``base.qcow2``: MBR + one ext4 partition with /boot (kernel, initrd,
  extlinux), ``/etc/hostname`` (``virtops-base``), ``/etc/hosts``, an empty
  ``/bin`` and ``/etc/os-release`` (so libguestfs inspection finds a Linux root),
  and the fake identity state that clone tools reset (see ``IDENTITY_FILES``):
  ``/etc/machine-id`` (``TEMPLATE_MACHINE_ID``) and its copy
  ``/var/lib/dbus/machine-id``, SSH host keys in ``/etc/ssh`` (private ones mode
  0600, clearly fake text, not keys), ``/etc/udev/rules.d/70-persistent-net.rules``,
  a dhclient lease in ``/var/lib/dhcp`` and ``/var/log/messages``;
* ``template.xml`` (boots ``base.qcow2`` from its disk) and
  ``template-kernel.xml`` (direct kernel boot, no disk);
* ``manifest.json``: what was built (also printed by ``--json``), with the
  identity data: ``machine_id``, ``machine_id_files``, ``ssh_host_keys``,
  ``udev_net_rules``, ``dhcp_leases``, ``log_files``, ``identity_marker``,
  ``seed_label``; and the TCP service: ``http_port``, ``http_marker``.

The cache is built in a temporary directory next to it and renamed into place
under an fcntl lock, so a concurrent or interrupted build never leaves a
half-built cache. Stdlib only; runs with the venv python or /usr/bin/python3.
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import platform
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

DEFAULT_DEST = "/var/lib/libvirt/images/virtops-testguest"
HOSTNAME = "virtops-base"
TEMPLATE_NAME = "virtops-template"
MARKER = "VIRTOPS-GUEST-UP"
# Printed on the serial port by the guest's DHCP client: "VIRTOPS-IP <interface> <address>".
IP_MARKER = "VIRTOPS-IP"
# Printed just before MARKER: "VIRTOPS-IDENTITY hostname=.. machine-id=<state>:<id> seed-hostname=..".
IDENTITY_MARKER = "VIRTOPS-IDENTITY"
# Served by busybox httpd on HTTP_PORT from HTTP_ROOT/index.html: "VIRTOPS-HTTP hostname=<name|none>".
HTTP_MARKER = "VIRTOPS-HTTP"
HTTP_PORT = 8080
HTTP_ROOT = "/www"
# /etc/machine-id of base.qcow2 (fake, fixed: a clone that kept it still has this one).
TEMPLATE_MACHINE_ID = "7e57c0de7e57c0de7e57c0de7e57c0de"
SEED_LABEL = "cidata"  # cloud-init NoCloud's volume label
UDHCPC_SCRIPT = "/etc/virtops/udhcpc.sh"
BOOT_LOG = "/var/log/virtops-boot.log"
CMDLINE = "console=ttyS0 panic=-1"
BUSYBOX = "/bin/busybox"
MBR_BIN = "/usr/lib/EXTLINUX/mbr.bin"
DISK_SIZE = "128M"
MEMORY_MIB = 256
# Module names the guest needs, in load order; dependencies are added from
# modules.dep. Built-in ones (modules.builtin) are skipped.
WANTED_MODULES = (
    "virtio_pci",  # virtio transport (disk, net)
    "virtio_blk",  # /dev/vda
    "crc32c_generic",  # ext4 metadata_csum (crc32c-intel needs SSE4.2, TCG's default CPU lacks it)
    "ext4",  # the root partition
    "button",  # ACPI power button -> virsh shutdown / reboot
    "evdev",  # /dev/input/event* that busybox acpid reads
    "virtio_net",  # eth0 on a virtio NIC (with failover, net_failover from modules.dep)
    "af_packet",  # the raw sockets busybox udhcpc sends its DHCP requests on
    "ata_piix",  # the IDE controller of the pc (i440fx) machine, for a CD-ROM (libata, scsi_mod from modules.dep)
    "cdrom",  # (a dependency of sr_mod and isofs; named for clarity)
    "sr_mod",  # /dev/sr0, the cloud-init seed CD-ROM
    "isofs",  # its ISO 9660 file system
)
OUTPUTS = ("vmlinuz", "initrd.img", "base.qcow2", "template.xml", "template-kernel.xml")

# Shell function of /init: local-hostname from a NoCloud meta-data file ($1), JSON
# ("local-hostname": "web-1", on one line or many) or YAML (local-hostname: web-1,
# quoted or not, a trailing comment); printed as [A-Za-z0-9.-] or "none".
SEED_HOSTNAME_SH = r"""seed_hostname() {
  v=$(sed -n 's/.*"local-hostname"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$1" | head -n 1)
  [ -n "$v" ] || v=$(sed -n -e 's/[[:space:]]#.*//' -e 's/^local-hostname[[:space:]]*:[[:space:]]*//p' "$1" | head -n 1)
  v=$(printf %s "$v" | tr -cd 'A-Za-z0-9.-')
  echo "${v:-none}"
}
"""

INIT_SCRIPT = f"""#!/bin/sh
# virtops test guest /init (busybox), generated by playbooks/files/build_test_guest.py.
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r ko; do
  insmod "/lib/modules/$ko" 2>/dev/null
done < /etc/virtops/modules
{SEED_HOSTNAME_SH}host=none
mid=none:-
seed=none
# A virtio block device present: wait (bounded) for its first partition.
if grep -qs 0x0002 /sys/bus/virtio/devices/*/device; then
  i=0
  while [ ! -b /dev/vda1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
if [ -b /dev/vda1 ] && mount -t ext4 -o rw /dev/vda1 /root; then
  if [ -s /root/etc/hostname ]; then
    host=$(head -n 1 /root/etc/hostname | tr -cd 'A-Za-z0-9.-')
    [ -n "$host" ] || host=none
  fi
  # machine-id: an empty one (or only whitespace) gets a new random id, as systemd does at first boot.
  if [ -f /root/etc/machine-id ]; then
    if grep -qs '[^[:space:]]' /root/etc/machine-id; then
      id=$(head -n 1 /root/etc/machine-id | tr -cd 'A-Za-z0-9')
      mid="kept:${{id:--}}"
    else
      id=$(tr -cd '0-9a-f' < /proc/sys/kernel/random/uuid)
      echo "$id" > /root/etc/machine-id
      mid="regenerated:$id"
    fi
  fi
  mkdir -p /root/var/log
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) boot hostname=$host" >> /root{BOOT_LOG}
  sync
fi
[ "$host" = none ] || hostname "$host"
# ACPI power button -> /etc/acpi/PWRF/00000080 (sync, unmount, poweroff -f).
acpid -c /etc/acpi -l /dev/null
# The marker promises that a power button press is acted on: acpid forks, and a
# press that comes before it has opened the input device is lost (under a loaded
# TCG host, `virsh shutdown` right after the marker then did nothing). Wait, at
# most ~10 s, until it holds /dev/input/event* open.
i=0
while [ $i -lt 100 ]; do
  p=$(pidof acpid) && ls -l /proc/$p/fd 2>/dev/null | grep -q /dev/input/event && break
  sleep 0.1
  i=$((i+1))
done
# cloud-init NoCloud seed: a volume labelled {SEED_LABEL} on a CD-ROM. `insmod ata_piix`
# returns only once libata has probed the IDE ports (module init waits for its async
# probes) and /dev/sr0 exists once sr_mod is in: without an ATAPI device nothing waits;
# with one, the guest waits at most ~5 s for the volume to be readable.
if grep -qs atapi /sys/class/ata_device/*/class; then
  i=0
  while [ $i -lt 50 ]; do
    dev=$(findfs LABEL={SEED_LABEL} 2>/dev/null || findfs LABEL={SEED_LABEL.upper()} 2>/dev/null) && break
    sleep 0.1
    i=$((i+1))
  done
  mkdir -p /run/seed
  if [ -n "$dev" ] && mount -t iso9660 -o ro "$dev" /run/seed; then
    [ -f /run/seed/meta-data ] && seed=$(seed_hostname /run/seed/meta-data)
    umount /run/seed
  fi
fi
# A disk without /etc/hostname (a sealed template's clone) takes the seed's name and keeps it,
# as cloud-init's set_hostname does on a first boot.
if [ "$host" = none ] && [ "$seed" != none ] && [ -d /root/etc ]; then
  host=$seed
  echo "$host" > /root/etc/hostname
  sync
  hostname "$host"
fi
echo "{IDENTITY_MARKER} hostname=$host machine-id=$mid seed-hostname=$seed" > /dev/ttyS0
echo "{MARKER} hostname=$host" > /dev/ttyS0
# A tiny TCP service, after the marker (httpd forks into the background at once):
# GET / on port {HTTP_PORT} of any address of the guest answers "{HTTP_MARKER} hostname=..".
mkdir -p {HTTP_ROOT}
echo "{HTTP_MARKER} hostname=$host" > {HTTP_ROOT}/index.html
httpd -p {HTTP_PORT} -h {HTTP_ROOT}
# Network, after the marker (a boot without a NIC is as fast as ever): a DHCP
# client per NIC in the background; {UDHCPC_SCRIPT} sets the leased address and
# prints "{IP_MARKER} <interface> <address>" on the serial port.
for dev in /sys/class/net/*; do
  n=${{dev##*/}}
  [ "$n" = lo ] || [ ! -e "$dev" ] && continue
  ip link set "$n" up
  set -- -f -i "$n" -s {UDHCPC_SCRIPT} -t 5 -T 2 -A 3
  [ "$host" = none ] || set -- "$@" -x "hostname:$host"
  udhcpc "$@" >/dev/null 2>&1 &
done
while :; do sleep 3600; done
"""

UDHCPC_EVENTS = f"""#!/bin/sh
# udhcpc event script of the virtops test guest: set the leased address, say it on the serial port.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${{mask:-24}}" dev "$interface"
    for r in $router; do
      ip route replace default via "$r" dev "$interface"
      break
    done
    echo "{IP_MARKER} $interface $ip" > /dev/ttyS0
    ;;
esac
exit 0
"""

POWER_SCRIPT = """#!/bin/sh
# ACPI power button handler of the virtops test guest.
echo "VIRTOPS-GUEST-POWEROFF" > /dev/ttyS0
sync
umount /root 2>/dev/null || mount -o remount,ro /root 2>/dev/null
sync
poweroff -f
"""

EXTLINUX_CONF = f"""DEFAULT virtops
PROMPT 0
TIMEOUT 0
LABEL virtops
  LINUX /boot/vmlinuz
  INITRD /boot/initrd.img
  APPEND {CMDLINE}
"""

HOSTS = f"""127.0.0.1\tlocalhost
127.0.1.1\t{HOSTNAME}.virtops.test\t{HOSTNAME}

# The following lines are desirable for IPv6 capable hosts
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""

SSH_HOST_KEYS = (
    "/etc/ssh/ssh_host_ed25519_key",
    "/etc/ssh/ssh_host_ed25519_key.pub",
    "/etc/ssh/ssh_host_rsa_key",
    "/etc/ssh/ssh_host_rsa_key.pub",
)
UDEV_NET_RULES = "/etc/udev/rules.d/70-persistent-net.rules"
DHCP_LEASES = ("/var/lib/dhcp/dhclient.eth0.leases",)
LOG_FILES = ("/var/log/messages",)


def _fake_key(path: str) -> str:
    """Fake SSH host key file content: obviously not a key (no PEM armour), but shaped like one."""
    kind = path.split("ssh_host_", 1)[1].split("_key", 1)[0]  # ed25519, rsa
    if path.endswith(".pub"):
        algo = "ssh-ed25519" if kind == "ed25519" else "ssh-rsa"
        return f"{algo} VklSVE9QUy1GQUtFLUtFWQ== root@{HOSTNAME} (virtops test guest: fake {kind} host key)\n"
    return f"virtops test guest: fake {kind} SSH host private key, not a real key\n"


# Files of base.qcow2 besides /boot, /etc/hostname and /etc/hosts: (path, content, mode).
# The identity state below is fake test data for kvm_clone's identity operations.
IDENTITY_FILES = (
    ("/etc/os-release", 'ID=virtops\nNAME="virtops test guest"\nPRETTY_NAME="virtops test guest (busybox)"\n'
     "VERSION_ID=1\n", 0o644),
    ("/etc/machine-id", TEMPLATE_MACHINE_ID + "\n", 0o444),
    ("/var/lib/dbus/machine-id", TEMPLATE_MACHINE_ID + "\n", 0o444),
    *((path, _fake_key(path), 0o644 if path.endswith(".pub") else 0o600) for path in SSH_HOST_KEYS),
    (UDEV_NET_RULES, "# virtops test guest: a fake persistent net rule (the template's NIC)\n"
     'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="52:54:00:00:00:01", '
     'ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"\n', 0o644),
    (DHCP_LEASES[0], 'lease {\n  interface "eth0";\n  fixed-address 192.0.2.10;\n'
     "  option subnet-mask 255.255.255.0;\n  option routers 192.0.2.1;\n"
     "  option dhcp-server-identifier 192.0.2.1;\n  renew 4 2025/01/02 03:04:05;\n"
     "  expire 5 2025/01/03 03:04:05;\n}\n", 0o644),
    (LOG_FILES[0], f"Jan  1 00:00:00 {HOSTNAME} virtops: a log line of the template (fake test data)\n", 0o640),
)  # fmt: skip


class BuildError(Exception):
    """A prerequisite is missing or a build step failed; the message says what to do."""


def log(msg: str) -> None:
    print(f"build_test_guest: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- inputs


def _version_key(version: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", version)]


def find_kernel() -> tuple[Path, str]:
    """Pick the host kernel: the running one if installed, else the newest with modules."""
    candidates = {}
    for path in Path("/boot").glob("vmlinuz-*"):
        version = path.name[len("vmlinuz-") :]
        if path.is_file() and Path("/lib/modules", version, "modules.dep").is_file():
            candidates[version] = path
    if not candidates:
        raise BuildError(
            "no kernel: need /boot/vmlinuz-<version> with /lib/modules/<version>/modules.dep; "
            "install the package linux-image-amd64 (Debian/Ubuntu: apt-get install linux-image-amd64)"
        )
    running = platform.release()
    version = running if running in candidates else max(candidates, key=_version_key)
    return candidates[version], version


def _is_static_elf(path: Path) -> bool:
    """True if the ELF file has no PT_INTERP program header (so it runs in an empty initramfs)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        endian = "<" if head[5] == 1 else ">"
        phoff = struct.unpack_from(endian + "Q", head, 32)[0]
        phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        if struct.unpack_from(endian + "I", table, i * phentsize)[0] == 3:  # PT_INTERP
            return False
    return True


def check_prerequisites() -> dict:
    """Find every input and program; raise BuildError naming the package to install."""
    kernel, version = find_kernel()
    busybox = Path(BUSYBOX)
    if not busybox.is_file():
        raise BuildError(f"no {BUSYBOX}: install the package busybox-static (apt-get install busybox-static)")
    if not _is_static_elf(busybox):
        raise BuildError(
            f"{BUSYBOX} is dynamically linked and cannot run in the initramfs: "
            "install the package busybox-static (apt-get install busybox-static)"
        )
    programs = {}
    for prog, package in (("guestfish", "libguestfs-tools"), ("qemu-img", "qemu-utils")):
        found = shutil.which(prog)
        if not found:
            raise BuildError(f"no {prog} on PATH: install the package {package} (apt-get install {package})")
        programs[prog] = found
    if not Path(MBR_BIN).is_file() or not shutil.which("extlinux"):
        raise BuildError(f"no extlinux or {MBR_BIN}: install the package extlinux (apt-get install extlinux)")
    return {"kernel": kernel, "kernel_version": version, "busybox": busybox, "programs": programs}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inputs_hash(pre: dict) -> str:
    """Hash of everything the guest is built from; names the cache directory."""
    h = hashlib.sha256()
    h.update(b"kernel-version\0" + pre["kernel_version"].encode() + b"\0")
    h.update(b"kernel\0" + _sha256_file(pre["kernel"]).encode() + b"\0")
    h.update(b"busybox\0" + _sha256_file(pre["busybox"]).encode() + b"\0")
    h.update(b"script\0" + _sha256_file(Path(__file__).resolve()).encode() + b"\0")
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- modules


def resolve_modules(version: str) -> list[Path]:
    """Module files to load for WANTED_MODULES, dependencies first, built-ins skipped."""
    root = Path("/lib/modules", version)
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (root / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, _sep, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[_module_name(mod)] = mod
    builtin = set()
    builtin_file = root / "modules.builtin"
    if builtin_file.is_file():
        builtin = {_module_name(m) for m in builtin_file.read_text().split()}

    order: list[str] = []

    def visit(mod: str, stack: tuple[str, ...] = ()) -> None:
        if mod in order or mod in stack:
            return
        for dep in deps.get(mod, []):
            visit(dep, (*stack, mod))
        order.append(mod)

    for name in WANTED_MODULES:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise BuildError(f"kernel {version} has no module {name} (neither in modules.dep nor built in)")
    return [root / m for m in order]


def _module_name(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    name = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", name)
    return name.replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        raise BuildError(f"{path} is zstd-compressed; install zstd support or a kernel with uncompressed modules")
    return data


# --------------------------------------------------------------------------- initramfs


class Cpio:
    """A minimal cpio 'newc' writer: enough for an initramfs (dirs, files, symlinks, device nodes)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.buf.write(header + encoded)
        self.buf.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def build_initrd(pre: dict, modules: list[Path], dest: Path) -> None:
    """Write a gzip'd cpio initramfs: busybox, /init, the modules and the ACPI handler."""
    cpio = Cpio()
    for d in (
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "root", "tmp", "run",
        "etc", "etc/virtops", "etc/acpi", "etc/acpi/PWRF", "lib", "lib/modules", "var", "var/log",
    ):  # fmt: skip
        cpio.dir(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", pre["busybox"].read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", INIT_SCRIPT.encode(), 0o755)
    cpio.file("etc/acpi/PWRF/00000080", POWER_SCRIPT.encode(), 0o755)
    cpio.file(UDHCPC_SCRIPT.lstrip("/"), UDHCPC_EVENTS.encode(), 0o755)
    cpio.file("etc/hostname", b"none\n")
    names = []
    for i, mod in enumerate(modules):
        name = f"{i:02d}-{_module_name(mod.name)}.ko"
        cpio.file(f"lib/modules/{name}", _module_bytes(mod))
        names.append(name)
    cpio.file("etc/virtops/modules", ("\n".join(names) + "\n").encode())
    raw = cpio.finish()
    with dest.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
        gz.write(raw)


# --------------------------------------------------------------------------- disk image


def run(argv: list[str], env: dict | None = None, timeout: float = 900) -> None:
    """Run a program (argument list, no shell); raise BuildError with its output on failure."""
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{argv[0]} failed (rc={proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")


def build_disk(pre: dict, work: Path) -> None:
    """Make base.qcow2 with guestfish: MBR, ext4 /dev/sda1, /boot with extlinux, /etc and IDENTITY_FILES."""
    sources = [("extlinux.conf", EXTLINUX_CONF), ("hostname", HOSTNAME + "\n"), ("hosts", HOSTS)]
    sources += [(f"identity-{i}", text) for i, (_path, text, _mode) in enumerate(IDENTITY_FILES)]
    for name, text in sources:
        (work / f"src-{name}").write_text(text)
    identity = []
    for i, (path, _text, mode) in enumerate(IDENTITY_FILES):
        identity += [
            f'mkdir-p "{os.path.dirname(path)}"',
            f'upload "{work / f"src-identity-{i}"}" "{path}"',
            f'chmod 0{mode:o} "{path}"',
        ]
    disk = work / "base.qcow2"
    run([pre["programs"]["qemu-img"], "create", "-q", "-f", "qcow2", str(disk), DISK_SIZE])
    script = "\n".join(
        [
            "run",
            "part-disk /dev/sda mbr",
            "part-set-bootable /dev/sda 1 true",
            "mkfs ext4 /dev/sda1 label:virtops-root",
            "mount /dev/sda1 /",
            "mkdir-p /boot",
            "mkdir-p /bin",  # an (empty) /bin, /etc and /etc/hosts: libguestfs inspection sees a Linux root
            "mkdir-p /etc",
            "mkdir-p /var/log",
            f'upload "{work / "vmlinuz"}" /boot/vmlinuz',
            f'upload "{work / "initrd.img"}" /boot/initrd.img',
            f'upload "{work / "src-extlinux.conf"}" /boot/extlinux.conf',
            f'upload "{work / "src-hostname"}" /etc/hostname',
            f'upload "{work / "src-hosts"}" /etc/hosts',
            *identity,
            "extlinux /boot",
            "umount-all",
            f"upload {MBR_BIN} /dev/sda",
            "",
        ]
    )
    (work / "src-guestfish").write_text(script)
    env = dict(os.environ, LIBGUESTFS_BACKEND="direct", LIBGUESTFS_BACKEND_SETTINGS="force_tcg")
    # --rw only on the image created just above; nothing else is opened.
    run([pre["programs"]["guestfish"], "--rw", "--format=qcow2", "-a", str(disk), "-f", str(work / "src-guestfish")],
        env=env)  # fmt: skip
    for name, _text in sources:
        (work / f"src-{name}").unlink()
    (work / "src-guestfish").unlink()


# --------------------------------------------------------------------------- domain XML


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def template_xml(cache: Path, kind: str) -> str:
    """Domain XML for the guest: kind 'disk' boots base.qcow2, 'kernel' boots vmlinuz+initrd directly."""
    serial_log = str(cache / "serial.log")
    dom = ET.Element("domain", type="qemu")
    _sub(dom, "name", TEMPLATE_NAME)
    _sub(dom, "memory", str(MEMORY_MIB), unit="MiB")
    _sub(dom, "currentMemory", str(MEMORY_MIB), unit="MiB")
    _sub(dom, "vcpu", "1")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64")
    if kind == "disk":
        _sub(os_el, "boot", dev="hd")
    else:
        _sub(os_el, "kernel", str(cache / "vmlinuz"))
        _sub(os_el, "initrd", str(cache / "initrd.img"))
        _sub(os_el, "cmdline", CMDLINE)
    _sub(_sub(dom, "features"), "acpi")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    dev = _sub(dom, "devices")
    if kind == "disk":
        disk = _sub(dev, "disk", type="file", device="disk")
        _sub(disk, "driver", name="qemu", type="qcow2")
        _sub(disk, "source", file=str(cache / "base.qcow2"))
        _sub(disk, "target", dev="vda", bus="virtio")
    iface = _sub(dev, "interface", type="user")
    _sub(iface, "model", type="virtio")
    serial = _sub(dev, "serial", type="file")
    _sub(serial, "source", path=serial_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(dev, "console", type="file")
    _sub(console, "source", path=serial_log, append="on")
    _sub(console, "target", type="serial", port="0")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


# --------------------------------------------------------------------------- cache


def read_manifest(cache: Path) -> dict | None:
    """The manifest of a complete cache directory, or None if it is missing or incomplete."""
    try:
        manifest = json.loads((cache / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    sizes = manifest.get("sizes", {})
    for name in OUTPUTS:
        try:
            if (cache / name).stat().st_size != sizes.get(name):
                return None
        except OSError:
            return None
    return manifest


def build_into(pre: dict, digest: str, work: Path, cache: Path) -> dict:
    """Build every output into ``work``; paths in the templates/manifest point at ``cache``."""
    modules = resolve_modules(pre["kernel_version"])
    log(f"kernel {pre['kernel']} ({pre['kernel_version']}), {len(modules)} modules")
    shutil.copyfile(pre["kernel"], work / "vmlinuz")
    log("initramfs (busybox, /init, modules, ACPI handler)")
    build_initrd(pre, modules, work / "initrd.img")
    log("base.qcow2 with guestfish (one appliance launch, ~30 s under TCG)")
    build_disk(pre, work)
    (work / "template.xml").write_text(template_xml(cache, "disk"))
    (work / "template-kernel.xml").write_text(template_xml(cache, "kernel"))
    for name in OUTPUTS:
        os.chmod(work / name, 0o644)
    manifest = {
        "dir": str(cache),
        "kernel": str(cache / "vmlinuz"),
        "initrd": str(cache / "initrd.img"),
        "base": str(cache / "base.qcow2"),
        "template": str(cache / "template.xml"),
        "kernel_template": str(cache / "template-kernel.xml"),
        "kernel_version": pre["kernel_version"],
        "kernel_source": str(pre["kernel"]),
        "cmdline": CMDLINE,
        "hostname": HOSTNAME,
        "template_name": TEMPLATE_NAME,
        "marker": MARKER,
        "ip_marker": IP_MARKER,
        "http_marker": HTTP_MARKER,
        "http_port": HTTP_PORT,
        "identity_marker": IDENTITY_MARKER,
        "machine_id": TEMPLATE_MACHINE_ID,
        "machine_id_files": ["/etc/machine-id", "/var/lib/dbus/machine-id"],
        "ssh_host_keys": list(SSH_HOST_KEYS),
        "udev_net_rules": UDEV_NET_RULES,
        "dhcp_leases": list(DHCP_LEASES),
        "log_files": list(LOG_FILES),
        "seed_label": SEED_LABEL,
        "boot_log": BOOT_LOG,
        "root_device": {"guest": "/dev/vda1", "guestfs": "/dev/sda1"},
        "memory_mib": MEMORY_MIB,
        "modules": [_module_name(m.name) for m in modules],
        "inputs_hash": digest,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": {name: (work / name).stat().st_size for name in OUTPUTS},
    }
    # The manifest is written last: its presence marks a complete build.
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def ensure(dest: Path, force: bool = False) -> dict:
    """Return the manifest of the cached guest for the current inputs, building it if needed."""
    pre = check_prerequisites()
    digest = inputs_hash(pre)
    cache = dest / digest
    if not force:
        manifest = read_manifest(cache)
        if manifest is not None:
            return {**manifest, "built": False}
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)  # libvirt-qemu must traverse to the images
    with (dest / ".build.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build holds {dest / '.build.lock'}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not force:  # another process may have built it while we waited
            manifest = read_manifest(cache)
            if manifest is not None:
                return {**manifest, "built": False}
        for stale in dest.glob(".tmp-*"):  # left by an interrupted build; we hold the lock
            log(f"removing stale {stale}")
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{digest}-", dir=dest))
        try:
            os.chmod(work, 0o755)
            log(f"building in {work}")
            manifest = build_into(pre, digest, work, cache)
            old = None
            if cache.exists():
                old = Path(tempfile.mkdtemp(prefix=f".tmp-old-{digest}-", dir=dest))
                os.rename(cache, old / "cache")
            os.rename(work, cache)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log(f"built {cache}")
        return {**manifest, "built": True}


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--dest", default=DEFAULT_DEST, help=f"cache root (default {DEFAULT_DEST})")
    parser.add_argument("--json", action="store_true", help="print a JSON object of what was built")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid cache exists")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the temporary build dir is removed and guestfish killed.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        result = ensure(Path(args.dest), force=args.force)
    except BuildError as exc:
        print(f"build_test_guest: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"build_test_guest: error: {exc.cmd[0]} timed out after {exc.timeout} s", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        log("cached, nothing to build" if not result["built"] else "done")
        for key in ("dir", "kernel", "initrd", "base", "template", "kernel_template"):
            print(f"{key}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
