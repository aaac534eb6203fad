# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One URI's domains as plain records: its own connection (the modules' Connection), one HostScan, then closed.

A record holds only JSON values (str, int, bool, None, lists, dicts), so the
plugin can keep it in Ansible's inventory cache as it is. A domain undefined by
someone else while the URI is read is simply not listed.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection, libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._inventory import addresses
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, ScannedDomain, gone, state_name


def record(scanned: ScannedDomain, sources: list[str]) -> dict:
    """The inventory's view of one scanned domain (libvirt calls may raise libvirtError)."""
    root = scanned.current
    state = state_name(scanned.state)
    ifaces = dx.interfaces(root)
    macs = [i["mac"].lower() for i in ifaces if i["mac"]]
    if state == "running":
        found = addresses.find(scanned.dom, root, macs, sources)
    else:
        found = dict(address=None, source=None, addresses=[], error=f"the domain is not running (state: {state})")
    return dict(
        name=scanned.name,
        uuid=scanned.uuid,
        state=state,
        persistent=scanned.persistent,
        autostart=bool(scanned.dom.autostart()) if scanned.persistent else False,
        vcpus=dx.online_vcpus(root),
        memory_mib=dx.current_memory_mib(root),
        disks=scanned.disk_paths(),
        macs=macs,
        interfaces=[dict(mac=i["mac"], type=i["type"], source=i["source"]) for i in ifaces],
        title=dx.text(scanned.inactive, "title"),
        description=dx.text(scanned.inactive, "description"),
        provenance=dx.provenance(scanned.inactive),
        address=found["address"],
        address_source=found["source"],
        addresses=found["addresses"],
        address_error=found["error"],
    )


def read_uri(p: dict, sources: list[str]) -> list[dict]:
    """Every domain of the parsed URI ``p``, sorted by name, each as a ``record``.

    The connection is the modules' (``_connection.Connection``: open timeout, keepalive, the same
    messages when the host cannot be reached), read-only unless the guest agent is a source (libvirt
    refuses agent calls on a read-only connection), and closed before returning.
    """
    lv = _deps.libvirt
    with Connection(p["uri"], readonly="agent" not in sources, option="uris") as connection:
        out = []
        for scanned in HostScan.take(connection.conn).domains.values():
            try:
                out.append(record(scanned, sources))
            except lv.libvirtError as exc:
                if gone(exc):
                    continue
                raise libvirt_failed(exc, f"Reading a domain of {p['uri']}") from exc
        return sorted(out, key=lambda r: r["name"])
