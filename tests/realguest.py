"""The real Debian 12 test guest (scripts/build-debian-guest.py): build or reuse it, its key, its domain XML.

The busybox guest (guestlib.py) boots in seconds and stays for the fast tests; this one is a real
distribution (systemd, udev, openssh-server, cloud-init, qemu-guest-agent, python3) for the stage that
proves what kvm_template and kvm_clone do to a real guest. It is built once per recipe and cached under
``DEST`` (/var/cache/virtops-kvm/guests/debian12-<recipe hash>/, ~3-5 min, most of it debootstrap).

The tests' SSH key pair is made once and kept next to the images (``DEST``/virtops-test-key and .pub,
ed25519, no passphrase); its public half is baked into the image as root's authorized key (so a clone
with no cloud-init seed can still be reached), and is part of the image's recipe.

``build()`` returns the builder's manifest: ``dir``, ``disk`` (qcow2, ext4 on the whole disk),
``kernel``, ``initrd``, ``cmdline``, ``template`` (domain XML), ``hostname``, ``machine_id`` and
``ssh_host_key_fingerprints`` of the image as built, ``packages``, ``seconds`` (of each build step),
``built`` (True if it was built now), plus ``key`` (the private key's path). ``domain_xml()`` turns the
template into one domain of a test's own names and paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "scripts" / "build-debian-guest.py"
DEST = Path(os.environ.get("VIRTOPS_DEBIAN_GUEST_DEST", "/var/cache/virtops-kvm/guests"))
KEY_NAME = "virtops-test-key"
BUILD_TIMEOUT = 2400  # debootstrap ~2-3 min and one TCG boot ~1 min here; a slow mirror or machine: more

_cache: dict | None = None


def ssh_key(dest: Path = DEST) -> Path:
    """The tests' private key (made once, ed25519, no passphrase); its public half is ``<key>.pub``."""
    key = dest / KEY_NAME
    if key.is_file() and key.with_suffix(".pub").is_file():
        return key
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".key-") as tmp:
        made = Path(tmp) / KEY_NAME
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtops-test", "-f", str(made)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        # the public half first: a private key with its .pub beside it is a complete pair
        os.replace(made.with_suffix(".pub"), key.with_suffix(".pub"))
        os.replace(made, key)
    return key


def build(force: bool = False, dest: Path = DEST) -> dict:
    """The cached guest's manifest (built first if its recipe is not cached); see the module docstring."""
    global _cache
    if _cache is not None and not force:
        return dict(_cache)
    key = ssh_key(dest)
    argv = [sys.executable, str(BUILDER), "--json", "--dest", str(dest), "--authorized-key", f"{key}.pub"]
    if force:
        argv.append("--force")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"build-debian-guest.py failed (rc={proc.returncode}):\n{proc.stderr.strip()[-4000:]}")
    _cache = {**json.loads(proc.stdout), "key": str(key)}
    return dict(_cache)


def domain_xml(
    name: str,
    disk: str | os.PathLike,
    kernel: str | os.PathLike,
    initrd: str | os.PathLike,
    serial_log: str | os.PathLike,
    network: str = "default",
    memory_mib: int = 512,
) -> str:
    """The builder's template.xml as domain ``name``: its disk, kernel, initrd, serial log and network."""
    from lxml import etree

    root = etree.parse(build()["template"]).getroot()
    root.find("name").text = name
    for tag in ("memory", "currentMemory"):
        root.find(tag).text = str(memory_mib)
        root.find(tag).set("unit", "MiB")
    root.find("os/kernel").text = str(kernel)
    root.find("os/initrd").text = str(initrd)
    devices = root.find("devices")
    devices.find("disk/source").set("file", str(disk))
    devices.find("interface/source").set("network", network)
    for tag in ("serial", "console"):
        devices.find(f"{tag}/source").set("path", str(serial_log))
    return etree.tostring(root, encoding="unicode", pretty_print=True)
