# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The libvirt and QEMU versions of the host, its capabilities XML, and whether its daemon answers.

Each works with the libvirt Python binding when it is there and falls back to
``virsh`` (and ``qemu-system-* --version``) when it is not, so kvm_host runs on
a host that does not have the binding yet.
"""

from __future__ import annotations

import os
import re

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection, libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ConnectionFailed, HostError
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Runner, Which

#: the local system daemon, which kvm_host starts and awaits whatever the uri option says
LOCAL_URI = "qemu:///system"


def version_string(number: int | None) -> str | None:
    """libvirt encodes versions as major * 1_000_000 + minor * 1000 + release."""
    if not number:
        return None
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def parse_virsh_version(text: str) -> dict:
    """``virsh version`` output: the library and the running hypervisor versions."""
    lib = re.search(r"Using library: libvirt ([\d.]+)", text)
    hyp = re.search(r"Running hypervisor: (\S+) ([\d.]+)", text)
    return {
        "libvirt_version": lib.group(1) if lib else None,
        "hypervisor": hyp.group(1) if hyp else None,
        "hypervisor_version": hyp.group(2) if hyp else None,
    }


def parse_qemu_version(text: str) -> str | None:
    m = re.search(r"QEMU emulator version ([\d.]+)", text)
    return m.group(1) if m else None


def ping(uri: str, runner: Runner, which: Which) -> bool:
    """Whether the libvirt daemon answers at ``uri`` (python binding, else virsh).

    Each call opens (and closes) its own connection: it is asked again and again
    while a daemon starts, and a failed open must not be remembered.
    """
    if _deps.libvirt is not None:
        try:
            with Connection(uri) as c:
                c.conn.getLibVersion()
        except ConnectionFailed:
            return False
        return True
    virsh = which("virsh")
    return bool(virsh) and runner([virsh, "-c", uri, "version"])[0] == 0


def qemu_binary_version(runner: Runner, which: Which) -> str | None:
    # RHEL ships its QEMU as /usr/libexec/qemu-kvm, outside PATH.
    candidates = [which("qemu-system-x86_64"), which("qemu-kvm"), "/usr/libexec/qemu-kvm", which("qemu-system-aarch64")]
    for path in candidates:
        if path and os.path.exists(path):
            rc, out, _err = runner([path, "--version"])
            if rc == 0 and parse_qemu_version(out):
                return parse_qemu_version(out)
    return None


def libvirt_facts(connection: Connection, connect: bool, runner: Runner, which: Which) -> dict:
    """Capabilities XML and versions; asks the daemon only when ``connect`` (else library/binaries).

    ``connection`` is opened (through the binding) only when the daemon is asked,
    so a caller may hand over a lazy one before its daemon runs.
    """
    facts = {"caps_xml": None, "libvirt_version": None, "hypervisor": None, "qemu_version": None}
    lv = _deps.libvirt
    virsh = which("virsh")
    uri = connection.uri
    if connect and lv is not None:
        conn = connection.conn
        try:
            facts["caps_xml"] = conn.getCapabilities()
            facts["libvirt_version"] = version_string(conn.getLibVersion())
            facts["hypervisor"] = conn.getType()
            if facts["hypervisor"] == "QEMU":
                facts["qemu_version"] = version_string(conn.getVersion())
        except lv.libvirtError as exc:
            raise libvirt_failed(exc, f"Reading the capabilities of '{uri}'") from exc
    elif connect and virsh:
        rc, out, err = runner([virsh, "-c", uri, "capabilities"])
        if rc != 0:
            raise HostError(f"'virsh -c {uri} capabilities' failed: {err.strip()}")
        facts["caps_xml"] = out
        parsed = parse_virsh_version(runner([virsh, "-c", uri, "version"])[1])
        facts["libvirt_version"] = parsed["libvirt_version"]
        facts["hypervisor"] = parsed["hypervisor"]
        if parsed["hypervisor"] == "QEMU":
            facts["qemu_version"] = parsed["hypervisor_version"]
    if facts["libvirt_version"] is None:
        if lv is not None:
            facts["libvirt_version"] = version_string(lv.getVersion())
        elif virsh:
            rc, out, _err = runner([virsh, "--version"])
            facts["libvirt_version"] = out.strip() or None if rc == 0 else None
    if facts["qemu_version"] is None:
        facts["qemu_version"] = qemu_binary_version(runner, which)
    return facts
