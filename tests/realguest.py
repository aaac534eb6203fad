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

``class_blocks()`` reads the marked blocks of docs/distribution-image-to-class.md (the page's
playbooks, inventory and ``whoami.sh``), which the real-guest stage runs as they are written.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "scripts" / "build-debian-guest.py"
DEST = Path(os.environ.get("VIRTOPS_DEBIAN_GUEST_DEST", "/var/cache/virtops-kvm/guests"))
KEY_NAME = "virtops-test-key"
BUILD_TIMEOUT = 2400  # debootstrap ~2-3 min and one TCG boot ~1 min here; a slow mirror or machine: more

_cache: dict | None = None

# how the tests reach a guest over SSH: the tests' key, no host key kept, fail fast
SSH_OPTS = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]  # fmt: skip

CLASS_DOC = ROOT / "docs" / "distribution-image-to-class.md"
# each marker, and the language of the fenced block that must follow it at once
CLASS_KINDS = {
    "network": "yaml",
    "seal": "yaml",
    "inventory": "yaml",
    "whoami": "sh",
    "fleet": "yaml",
    "teardown": "yaml",
}
_MARKER = re.compile(r"<!-- class:([a-z]+) -->")
# a marker, then at once a fenced block; the block ends at the first line that is only ```
_BLOCK = re.compile(r"<!-- class:([a-z]+) -->\n```([a-z]+)\n(.*?)^```$", re.S | re.M)


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


def lease_address(dom, deadline: float) -> str:
    """The domain's first IPv4 address from its network's DHCP leases; TimeoutError at ``deadline`` (monotonic)."""
    import libvirt

    while time.monotonic() < deadline:
        try:
            ifaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
        except libvirt.libvirtError:
            ifaces = {}
        for iface in ifaces.values():
            for addr in iface.get("addrs") or []:
                if addr["type"] == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    return addr["addr"]
        time.sleep(2)
    raise TimeoutError(f"{dom.name()}: no DHCP lease in time")


def ssh(host, key: str, address: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``ssh root@address command`` with the tests' key, run by ``host.run`` (a NetHost: inside its namespace)."""
    argv = ["ssh", "-i", key, *SSH_OPTS, f"root@{address}", command]
    return host.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def wait_for_ssh(host, key: str, address: str, deadline: float) -> None:
    """Until sshd is active on the guest at ``address``; TimeoutError (with ssh's last word) at ``deadline``."""
    while True:
        proc = ssh(host, key, address, "systemctl is-active ssh.service", timeout=30)
        if proc.returncode == 0:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no SSH at {address} in time: {proc.stderr.strip() or proc.stdout.strip()}")
        time.sleep(2)


def class_blocks(text: str | None = None) -> dict[str, str]:
    """The marked blocks of docs/distribution-image-to-class.md by kind; an AssertionError names what is wrong."""
    text = CLASS_DOC.read_text() if text is None else text
    markers = _MARKER.findall(text)
    assert sorted(markers) == sorted(CLASS_KINDS), (
        f"{CLASS_DOC}: want each marker <!-- class:KIND --> once for {sorted(CLASS_KINDS)}, found {markers}"
    )
    blocks = {kind: (lang, body) for kind, lang, body in _BLOCK.findall(text)}
    wrong = [f"{k} (want ```{lang})" for k, lang in CLASS_KINDS.items() if blocks.get(k, ("",))[0] != lang]
    assert not wrong, f"{CLASS_DOC}: no fenced block of the right language right after the marker(s) {wrong}"
    return {kind: body for kind, (_lang, body) in blocks.items()}


def class_vars(blocks: dict[str, str]) -> dict[str, object]:
    """Every play variable of the page's playbooks with its default (the test overrides them with -e)."""
    import yaml

    out: dict[str, object] = {}
    for kind, body in blocks.items():
        if CLASS_KINDS[kind] == "yaml" and kind != "inventory":
            for play in yaml.safe_load(body):
                out.update(play.get("vars") or {})
    return out


class Steps:
    """The ordered steps of a module-scoped real-guest flow: those done, the facts found, seconds per step."""

    def __init__(self) -> None:
        self.done: list[str] = []
        self.facts: dict = {}
        self.times: dict[str, float] = {}

    def need(self, *steps: str) -> None:
        """Skip the calling test, naming them, unless every step given completed."""
        import pytest

        missing = [s for s in steps if s not in self.done]
        if missing:
            pytest.skip(f"needs step(s) {missing}, which did not complete")
