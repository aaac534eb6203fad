#!/usr/bin/env python3
# Copyright: (c) 2026, virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build a real Debian 12 guest offline from the machine's own Debian mirror, and cache it.

For the integration stage on a real distribution (issue 25) and for anyone who wants a small
Debian 12 template without internet images. Run as root:

    python3 scripts/build-debian-guest.py [--authorized-key ~/.ssh/id_ed25519.pub] [--json]

What it makes (``debootstrap --variant=minbase bookworm`` from the mirror in
/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list, or ``--mirror``):

* Debian 12 with systemd (PID 1), udev, openssh-server, cloud-init, qemu-guest-agent, python3,
  linux-image-amd64 + initramfs-tools, the ``en_US.UTF-8`` locale generated and set (cloud-init 22.4
  sets that locale and fails its config stage without it);
* DHCP on the first NIC by systemd-networkd (``[Match] Name=en* eth*``); cloud-init's own network
  configuration is off (``network: {config: disabled}``), its datasources are ``NoCloud, ConfigDrive`` and
  ds-identify's policy is ``notfound=disabled``, so a clone with a ``cidata`` seed runs its user data,
  and one without any seed finds no datasource and cloud-init does nothing at all (not even as
  DataSourceNone, which would make new SSH host keys);
* a serial getty on ttyS0; root logs in by SSH key only (Debian's ``PermitRootLogin
  prohibit-password``, no password): ``--authorized-key FILE`` puts that public key into
  /root/.ssh/authorized_keys, without it there is none (give keys by cloud-init user data;
  ``disable_root: false`` keeps cloud-init from turning root's keys into a "log in as debian" message);
* a small initramfs (``MODULES=list``: virtio_pci, virtio_blk, crc32c, ext4, and ata_piix, ahci and
  sr_mod so a seed's CD-ROM exists when cloud-init's generator looks for it; Debian's ``most`` is
  36 MB and costs ~30 s a boot under TCG), the floppy driver blacklisted (no drive to probe), apt's
  daily timers masked (a test guest on an isolated network has no mirror to reach);
* **used once**: the image is booted once during the build (``qemu-system-x86_64`` under TCG, no NIC,
  the kernel and initrd below), to multi-user and sshd, then powers itself off. So it carries what a
  used template carries and a clone must not keep: a machine-id (``systemd-machine-id-setup`` in the
  chroot) and its copy in /var/lib/dbus, SSH host keys (openssh-server's postinst), /var/log/dpkg.log,
  apt's logs, and a persistent journal in /var/log/journal/<machine-id>/ written by that boot.

Outputs, in ``<dest>/debian12-<recipe hash>/`` (default dest /var/cache/virtops-kvm/guests; the hash
covers this script's own bytes, the mirror, the suite, the package list, the disk size and the
authorized key; a changed recipe is a new directory, an unchanged one is reused):

* ``disk.qcow2``: one ext4 file system on the whole disk (no partition table; ``mkfs.ext4 -d`` into a
  raw file, then ``qemu-img convert -O qcow2``), label ``virtops-root``;
* ``vmlinuz`` and ``initrd.img``: the guest's own kernel and initramfs, for direct kernel boot with
  ``CMDLINE`` (``root=/dev/vda rw console=ttyS0 net.ifnames=0``: the first NIC is ``eth0`` whatever
  its PCI slot, the console and a getty are on the first serial port);
* ``template.xml``: a libvirt domain (``type='qemu'``, 512 MiB, virtio disk, NIC on network
  ``default``, virtio-rng, serial console to ``serial.log`` next to the disk, a qemu-guest-agent
  channel) that boots those files; edit names and paths to taste;
* ``firstboot.log``: the serial console of the build's boot;
* ``manifest.json`` (also printed by ``--json``): paths, the template's machine-id, hostname and SSH
  host key fingerprints (as the guest itself reported them at the end of its first boot), package
  versions, and how long each step took. Written last: a directory without it is not a build.

debootstrap writes into a tmpfs when one can be mounted (dpkg syncs every file: ~2x faster, and
removing the tree is an unmount); the packages come from the mirror each time (~90 MB).

The build runs in a temporary directory next to the cache under an fcntl lock and is renamed into
place, so a concurrent or interrupted build never leaves half a guest. Stdlib only; no shell.
Needs: debootstrap, e2fsprogs (mkfs.ext4 with -d), qemu-utils, qemu-system-x86, ssh-keygen.
"""

from __future__ import annotations

import argparse
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DEST = Path("/var/cache/virtops-kvm/guests")
SUITE = "bookworm"
NAME = "debian12"
HOSTNAME = "debian12-template"
DISK_SIZE = "2G"
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "cloud-init",
    "qemu-guest-agent",
    "python3",
    # provides python3-cffi-backend-api-{min,max}, which cloud-init's python3-cryptography needs:
    # debootstrap does not resolve virtual packages
    "python3-cffi-backend",
    "linux-image-amd64",
    "initramfs-tools",
    "locales",
    "iproute2",
    "ca-certificates",
)
# The root on a virtio disk, and the CD-ROM controllers a cloud-init seed sits on (IDE on 'pc', SATA on
# 'q35'): cloud-init's generator looks for the 'cidata' volume before udev loads any module, so its
# device must exist by then.
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4", "ata_piix", "ahci", "sr_mod")
FIRSTBOOT_MARKER = "VIRTOPS-FIRSTBOOT-DONE"
FIRSTBOOT_TIMEOUT = 900  # TCG, 2 cores: sshd ~45 s after start; a busy machine is slower
OUTPUTS = ("disk.qcow2", "vmlinuz", "initrd.img", "template.xml")

NETWORK_FILE = """\
# virtops: DHCP on the first NIC (net.ifnames=0 names it eth0; en* if a kernel names it the new way)
[Match]
Name=en* eth*

[Network]
DHCP=yes
"""
CLOUD_CFG = """\
# virtops: only a seed on a local volume is a datasource (NoCloud 'cidata', or a ConfigDrive); no seed, no
# cloud-init. Two entries and no 'None': with one entry (or one and None) ds-identify does not search, it
# enables cloud-init whatever is there, and cloud-init then runs as DataSourceNone (new SSH host keys...).
datasource_list: [ NoCloud, ConfigDrive ]
# The image's own systemd-networkd file does DHCP on the first NIC; cloud-init leaves networking alone.
network: {config: disabled}
# Root logs in by SSH key (the image's design): cloud-init must not turn root's keys into a "log in as" message.
disable_root: false
"""
FIRSTBOOT_SCRIPT = f"""\
#!/bin/sh
# virtops build: the one boot of the image during its build. Say how it went, then power off.
# ttyS1: a port of its own (the console's getty hangs up ttyS0 as it starts, and a write then is lost).
{{
  echo "VIRTOPS-FIRSTBOOT ssh=$(systemctl is-active ssh.service) failed=$(systemctl --failed --no-legend --plain \
| awk '{{print $1}}' | tr '\\n' ',')"
  echo "VIRTOPS-FIRSTBOOT machine-id=$(cat /etc/machine-id) cloud-init=$(cloud-init status | sed -n 's/^status: //p')"
  for k in /etc/ssh/ssh_host_*_key.pub; do
    echo "VIRTOPS-FIRSTBOOT hostkey=$(ssh-keygen -l -f "$k" | cut -d' ' -f2)"
  done
  echo "{FIRSTBOOT_MARKER}"
}} > /dev/ttyS1
rm -f /etc/systemd/system/multi-user.target.wants/virtops-firstboot.service \\
  /etc/systemd/system/virtops-firstboot.service /usr/local/sbin/virtops-firstboot
sync
systemctl --no-block poweroff
"""
FIRSTBOOT_UNIT = """\
[Unit]
Description=virtops build: first boot done, power off
After=multi-user.target ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/virtops-firstboot

[Install]
WantedBy=multi-user.target
"""
FSTAB = "# virtops: one ext4 file system on the whole disk\n/dev/vda / ext4 rw,errors=remount-ro 0 0\n"
HOSTS = f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class BuildError(RuntimeError):
    """The build failed; the message says where and shows the failing program's output."""


def log(msg: str) -> None:
    print(f"build-debian-guest: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], timeout: float = 1800, env: dict | None = None) -> str:
    """Run a program (argument list, no shell); its stdout, or BuildError with its output's tail."""
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    if proc.returncode != 0:
        out = (proc.stdout + "\n" + proc.stderr).strip()[-3000:]
        raise BuildError(f"{' '.join(argv[:4])} ... failed (rc={proc.returncode}):\n{out}")
    return proc.stdout


# --------------------------------------------------------------------------- the recipe


def _deb822_mirrors(text: str) -> list[tuple[str, str]]:
    """(uri, suites) of each ``Types: deb`` stanza of a .sources file."""
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            m = re.match(r"([A-Za-z-]+):\s*(.*)", line)
            if m and not line.startswith("#"):
                fields[m.group(1).lower()] = m.group(2).strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            for uri in fields.get("uris", "").split():
                out.append((uri, fields.get("suites", "")))
    return out


def _list_mirrors(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


def machine_mirror(etc: Path = Path("/etc/apt")) -> str:
    """The machine's own Debian mirror for ``SUITE`` (not its security archive), from apt's sources."""
    found = []
    for path in sorted(glob.glob(str(etc / "sources.list.d" / "*.sources"))):
        found += _deb822_mirrors(Path(path).read_text())
    for path in [etc / "sources.list", *sorted(Path(p) for p in glob.glob(str(etc / "sources.list.d" / "*.list")))]:
        if path.is_file():
            found += _list_mirrors(path.read_text())
    for uri, suites in found:
        if SUITE in suites.split() and "security" not in uri:
            return uri.rstrip("/")
    raise BuildError(f"no apt source for {SUITE} in {etc}: give one with --mirror URL")


def recipe_hash(mirror: str, key_text: str) -> str:
    """What the image is made of: this script, the mirror, the suite, the packages, the disk, the key."""
    h = hashlib.sha256()
    h.update(Path(__file__).resolve().read_bytes())
    for part in (mirror, SUITE, ",".join(PACKAGES), DISK_SIZE, CMDLINE, key_text.strip()):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def check_programs() -> dict[str, str]:
    found = {}
    for prog in ("debootstrap", "mkfs.ext4", "qemu-img", "qemu-system-x86_64", "ssh-keygen", "chroot"):
        path = shutil.which(prog, path="/usr/local/sbin:/usr/sbin:/sbin:" + os.environ.get("PATH", "/usr/bin:/bin"))
        if not path:
            raise BuildError(
                f"{prog} not found: install debootstrap, e2fsprogs, qemu-utils, qemu-system-x86, openssh-client"
            )
        found[prog] = path
    if os.geteuid() != 0:
        raise BuildError("run as root (debootstrap and chroot need it)")
    return found


# --------------------------------------------------------------------------- the steps


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(target, path)


def configure(prog: dict, root: Path, key_text: str) -> None:
    """Everything the image needs beyond its packages, written into the debootstrapped tree."""
    chroot_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    _write(root / "etc/hostname", HOSTNAME + "\n")
    _write(root / "etc/hosts", HOSTS)
    _write(root / "etc/fstab", FSTAB)
    # locale: generated and made the default, so cloud-init's locale module finds nothing to do
    gen = root / "etc/locale.gen"
    gen.write_text(re.sub(r"(?m)^#\s*(en_US\.UTF-8 UTF-8)", r"\1", gen.read_text()))
    run([prog["chroot"], str(root), "locale-gen"], env=chroot_env)
    _write(root / "etc/default/locale", "LANG=en_US.UTF-8\n")
    # network: systemd-networkd, DHCP on the first NIC
    _write(root / "etc/systemd/network/10-virtops-dhcp.network", NETWORK_FILE)
    wants = root / "etc/systemd/system"
    _link(wants / "multi-user.target.wants/systemd-networkd.service", "/lib/systemd/system/systemd-networkd.service")
    _link(wants / "sockets.target.wants/systemd-networkd.socket", "/lib/systemd/system/systemd-networkd.socket")
    # a getty on the serial console (systemd would also start one for console=ttyS0)
    _link(wants / "getty.target.wants/serial-getty@ttyS0.service", "/lib/systemd/system/serial-getty@.service")
    # quiet: no apt downloads from a guest on an isolated network
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer"):
        _link(wants / timer, "/dev/null")
    # cloud-init: a local seed only, no network configuration of its own
    _write(
        root / "etc/cloud/cloud.cfg.d/90_dpkg.cfg",
        "# virtops: see 99-virtops.cfg\ndatasource_list: [ NoCloud, ConfigDrive ]\n",
    )
    _write(root / "etc/cloud/cloud.cfg.d/99-virtops.cfg", CLOUD_CFG)
    # ds-identify decides at boot whether cloud-init runs at all: with no datasource found, not at all
    _write(root / "etc/cloud/ds-identify.cfg", "policy: search,found=all,maybe=all,notfound=disabled\n")
    # no floppy drive to probe (the 'pc' machine has a controller; probing it costs seconds under TCG)
    _write(root / "etc/modprobe.d/virtops.conf", "blacklist floppy\n")
    # root: SSH key only (Debian's sshd default is PermitRootLogin prohibit-password; root has no password)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    if key_text.strip():
        _write(ssh_dir / "authorized_keys", key_text.strip() + "\n", 0o600)
    # the one boot of the build: reach sshd, say so on the serial port, power off, remove itself
    _write(root / "usr/local/sbin/virtops-firstboot", FIRSTBOOT_SCRIPT, 0o755)
    _write(wants / "virtops-firstboot.service", FIRSTBOOT_UNIT)
    _link(wants / "multi-user.target.wants/virtops-firstboot.service", "/etc/systemd/system/virtops-firstboot.service")
    # a small initramfs: only what finds and mounts /dev/vda (MODULES=most is 36 MB and costs ~30 s a boot
    # under TCG, unpacking it and loading every storage driver)
    _write(
        root / "etc/initramfs-tools/conf.d/virtops.conf",
        "# virtops: only the modules listed in ../modules\nMODULES=list\n",
    )
    with (root / "etc/initramfs-tools/modules").open("a") as f:
        f.write("# virtops: the root file system on a virtio disk\n" + "\n".join(INITRAMFS_MODULES) + "\n")
    run([prog["chroot"], str(root), "update-initramfs", "-u", "-k", "all"], env=chroot_env)
    # identity a used template has: a machine-id (and D-Bus's copy) and a persistent journal directory
    mid = root / "etc/machine-id"
    if not mid.is_file() or not mid.read_text().strip():
        run([prog["chroot"], str(root), "systemd-machine-id-setup"], env=chroot_env)
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    # no package caches in the image
    for leftover in glob.glob(str(root / "var/cache/apt/archives/*.deb")) + glob.glob(
        str(root / "var/lib/apt/lists/*_*")
    ):
        os.unlink(leftover)


def kernel_files(root: Path) -> tuple[Path, Path, str]:
    kernels = sorted(glob.glob(str(root / "boot/vmlinuz-*")))
    if len(kernels) != 1:
        raise BuildError(f"want exactly one kernel in {root}/boot, found {kernels}")
    version = Path(kernels[0]).name[len("vmlinuz-") :]
    initrd = root / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise BuildError(f"no {initrd}: initramfs-tools did not make the initrd")
    listed = run(["lsinitramfs", str(initrd)]) if shutil.which("lsinitramfs") else ""
    missing = [m for m in INITRAMFS_MODULES if listed and f"/{m}.ko" not in listed.replace("-", "_")]
    if missing:
        raise BuildError(f"{initrd} lacks the module(s) {missing}: the guest could not mount its root")
    return Path(kernels[0]), initrd, version


def make_raw(prog: dict, root: Path, raw: Path) -> None:
    run([prog["mkfs.ext4"], "-q", "-F", "-L", "virtops-root", "-d", str(root), str(raw), DISK_SIZE])


def first_boot(prog: dict, work: Path, raw: Path) -> tuple[float, dict]:
    """Boot the raw image once (TCG, no NIC); it powers itself off after sshd is up.

    Returns the seconds it took and what the guest said of itself at the end of it: ``machine_id``,
    ``cloud_init`` (its status: ``disabled``, as no datasource is there) and ``hostkeys`` (fingerprints).
    """
    serial, report = work / "firstboot.log", work / "firstboot.report"
    argv = [
        prog["qemu-system-x86_64"], "-machine", "pc,accel=tcg", "-m", "1024", "-smp", "2",
        "-kernel", str(work / "vmlinuz"), "-initrd", str(work / "initrd.img"), "-append", CMDLINE,
        "-drive", f"file={raw},format=raw,if=virtio", "-nic", "none",
        "-device", "virtio-rng-pci", "-serial", f"file:{serial}", "-serial", f"file:{report}",
        "-display", "none", "-monitor", "none",
        "-no-reboot",
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=FIRSTBOOT_TIMEOUT, check=False
    )
    seconds = time.monotonic() - t0
    text = report.read_text(errors="replace") if report.exists() else ""
    if proc.returncode != 0 or FIRSTBOOT_MARKER not in text:
        console = serial.read_text(errors="replace") if serial.exists() else ""
        kept = work.parent / f"{work.name.split('-', 1)[1].rsplit('-', 1)[0]}.firstboot-failed.log"
        kept.write_text(console)  # the build directory goes; its console log stays for a look
        lines = [line for line in console.splitlines() if line.strip()]
        raise BuildError(
            f"the first boot did not finish (qemu rc={proc.returncode}, {proc.stderr.strip()[-500:]}); "
            f"its serial console is in {kept}; its end:\n" + "\n".join(lines[-40:])
        )
    m = re.search(r"VIRTOPS-FIRSTBOOT ssh=(\S+) failed=(\S*)", text)
    if not m or m.group(1) != "active":
        raise BuildError(f"sshd was not active at the end of the first boot: {m.group(0) if m else text[-3000:]}")
    if m.group(2).strip(","):
        log(f"first boot: failed units: {m.group(2)}")
    said = re.search(r"VIRTOPS-FIRSTBOOT machine-id=(\S*) cloud-init=(\S*)", text)
    facts = {
        "machine_id": said.group(1) if said else "",
        "cloud_init": said.group(2) if said else "",
        "hostkeys": sorted(re.findall(r"VIRTOPS-FIRSTBOOT hostkey=(\S+)", text)),
    }
    if facts["cloud_init"] != "disabled" or not facts["hostkeys"]:
        raise BuildError(f"after the first boot: cloud-init {facts['cloud_init']!r} (want 'disabled': no datasource), "
                         f"host keys {facts['hostkeys']}")  # fmt: skip
    return seconds, facts


def template_xml(cache: Path) -> str:
    """A libvirt domain that boots the cached files (direct kernel boot); paths point into ``cache``."""
    return f"""<domain type='qemu'>
  <name>{NAME}</name>
  <memory unit='MiB'>512</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{cache / "vmlinuz"}</kernel>
    <initrd>{cache / "initrd.img"}</initrd>
    <cmdline>{CMDLINE}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{cache / "disk.qcow2"}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{cache / "serial.log"}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='{cache / "serial.log"}' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _versions(root: Path, names: tuple[str, ...]) -> dict[str, str]:
    out, pkg, ver = {}, None, None
    for line in [*(root / "var/lib/dpkg/status").read_text().splitlines(), ""]:
        if line.startswith("Package: "):
            pkg = line[9:].strip()
        elif line.startswith("Version: "):
            ver = line[9:].strip()
        elif not line.strip():
            if pkg in names:
                out[pkg] = ver
            pkg = ver = None
    return out


def build_into(prog: dict, work: Path, cache: Path, mirror: str, key_text: str, digest: str) -> dict:
    times = {}
    root = work / "root"
    root.mkdir()
    # dpkg syncs every file it writes: on a tmpfs that costs nothing (~2x faster here), and removing
    # the tree afterwards is an unmount. Where no tmpfs can be mounted, the directory itself serves.
    on_tmpfs = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4g,mode=0755", "virtops-debian-build", str(root)],
        capture_output=True, check=False,
    ).returncode == 0  # fmt: skip
    t = time.monotonic()
    log(f"debootstrap {SUITE} from {mirror} (minbase + {len(PACKAGES)} packages)")
    run([prog["debootstrap"], "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror],
        timeout=3600)  # fmt: skip
    times["debootstrap"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    configure(prog, root, key_text)
    kernel, initrd, version = kernel_files(root)
    shutil.copyfile(kernel, work / "vmlinuz")
    shutil.copyfile(initrd, work / "initrd.img")
    machine_id = (root / "etc/machine-id").read_text().strip()
    fingerprints = sorted(
        run([prog["ssh-keygen"], "-l", "-f", str(pub)]).split()[1]
        for pub in sorted((root / "etc/ssh").glob("ssh_host_*_key.pub"))
    )
    versions = _versions(
        root, ("cloud-init", "systemd", "openssh-server", "qemu-guest-agent", "python3", "linux-image-" + version)
    )
    raw = work / "disk.raw"
    make_raw(prog, root, raw)
    if on_tmpfs:
        run(["umount", str(root)])
    shutil.rmtree(root)
    times["configure_and_mkfs"] = round(time.monotonic() - t, 1)
    log("first boot (TCG): up to sshd, then power off")
    seconds, booted = first_boot(prog, work, raw)
    times["first_boot"] = round(seconds, 1)
    if booted["machine_id"] != machine_id or booted["hostkeys"] != fingerprints:
        raise BuildError(f"the first boot changed the identity it should have used: {booted}, built with "
                         f"machine-id {machine_id} and host keys {fingerprints}")  # fmt: skip
    t = time.monotonic()
    run([prog["qemu-img"], "convert", "-O", "qcow2", str(raw), str(work / "disk.qcow2")])
    raw.unlink()
    times["qcow2"] = round(time.monotonic() - t, 1)
    (work / "template.xml").write_text(template_xml(cache))
    report = work / "firstboot.report"
    with (work / "firstboot.log").open("a") as log_file:
        log_file.write(report.read_text())
    report.unlink()
    for name in (*OUTPUTS, "firstboot.log"):
        os.chmod(work / name, 0o644)
    manifest = {
        "name": NAME,
        "recipe": digest,
        "dir": str(cache),
        "disk": str(cache / "disk.qcow2"),
        "kernel": str(cache / "vmlinuz"),
        "initrd": str(cache / "initrd.img"),
        "template": str(cache / "template.xml"),
        "cmdline": CMDLINE,
        "hostname": HOSTNAME,
        "machine_id": machine_id,
        "ssh_host_key_fingerprints": fingerprints,
        "authorized_key": key_text.strip() or None,
        "kernel_version": version,
        "packages": versions,
        "mirror": mirror,
        "suite": SUITE,
        "seconds": times,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sizes": {name: (work / name).stat().st_size for name in OUTPUTS},
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# --------------------------------------------------------------------------- cache, lock, atomic rename


def read_manifest(cache: Path) -> dict | None:
    try:
        manifest = json.loads((cache / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if all((cache / name).is_file() for name in OUTPUTS) else None


def _unmount_under(path: Path) -> None:
    """Unmount whatever an interrupted debootstrap left mounted below ``path`` (proc, sys), deepest first."""
    prefix = str(path.resolve()) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _remove(path: Path) -> None:
    _unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def ensure(dest: Path, key_text: str = "", mirror: str | None = None, force: bool = False) -> dict:
    """The manifest of the cached guest for this recipe, building it first if there is none."""
    prog = check_programs()
    mirror = (mirror or machine_mirror()).rstrip("/")
    digest = recipe_hash(mirror, key_text)
    cache = dest / f"{NAME}-{digest}"
    if not force and (manifest := read_manifest(cache)) is not None:
        return {**manifest, "built": False}
    dest.mkdir(parents=True, exist_ok=True)
    for d in (dest, *dest.parents):  # libvirt-qemu must traverse to the images
        if d == Path("/"):
            break
        os.chmod(d, os.stat(d).st_mode | 0o005)
    with (dest / ".build.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another build holds {dest / '.build.lock'}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (manifest := read_manifest(cache)) is not None:
            return {**manifest, "built": False}
        for stale in dest.glob(".tmp-*"):  # left by an interrupted build; we hold the lock
            log(f"removing stale {stale}")
            _remove(stale)
        work = Path(tempfile.mkdtemp(prefix=f".tmp-{NAME}-{digest}-", dir=dest))
        t0 = time.monotonic()
        try:
            os.chmod(work, 0o755)
            log(f"building in {work}")
            manifest = build_into(prog, work, cache, mirror, key_text, digest)
            manifest["seconds"]["total"] = round(time.monotonic() - t0, 1)
            (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if cache.exists():
                _remove(cache)
            os.rename(work, cache)
        except BaseException:
            _remove(work)
            raise
        log(f"built {cache} in {manifest['seconds']['total']} s")
        return {**manifest, "built": True}


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"cache root (default {DEFAULT_DEST})")
    parser.add_argument("--authorized-key", type=Path, help="a public key file for root's authorized_keys")
    parser.add_argument("--mirror", help="a Debian mirror URL (default: the machine's own, from apt's sources)")
    parser.add_argument("--force", action="store_true", help="rebuild even if this recipe is cached")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # unwinds like Ctrl-C: the temporary build dir goes
    try:
        key_text = args.authorized_key.read_text() if args.authorized_key else ""
        if key_text and not re.match(r"(ssh-|ecdsa-|sk-)\S+ [A-Za-z0-9+/=]+", key_text.strip()):
            raise BuildError(f"{args.authorized_key} does not look like an OpenSSH public key")
        result = ensure(args.dest, key_text, args.mirror, args.force)
    except (BuildError, OSError) as exc:
        print(f"build-debian-guest: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"build-debian-guest: error: {exc.cmd[0]} timed out after {exc.timeout} s", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        log("cached, nothing to build" if not result["built"] else "done")
        for key in ("dir", "disk", "kernel", "initrd", "template", "cmdline"):
            print(f"{key}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
