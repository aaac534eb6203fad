# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One URI's domains as plain records: its own connection, one scan, then closed.

A record holds only JSON values (str, int, bool, None, lists, dicts), so the
plugin can keep it in Ansible's inventory cache as it is. A domain undefined by
someone else while the URI is read is simply not listed.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed, translate
from ansible_collections.virtops.kvm.plugins.module_utils._inventory import addresses
from ansible_collections.virtops.kvm.plugins.module_utils._scan import ScannedDomain, gone, state_name


def open_uri(p: dict, readonly: bool):
    """A new libvirt connection to the parsed URI ``p``; ConnectionFailed (or a subclass) saying why not."""
    lv = _deps.libvirt
    uri = p["uri"]
    try:
        return lv.openReadOnly(uri) if readonly else lv.open(uri)
    except lv.libvirtError as exc:
        raise translate(exc, uri) from exc  # the modules' messages: ssh refused, login, host key, daemon...


def _memory_mib(root) -> int | None:
    """The domain's current memory (``<currentMemory>``, else ``<memory>``) in whole MiB."""
    for tag in ("currentMemory", "memory"):
        el = root.find(tag)
        if el is not None:
            kib = dx.to_kib(el.text, el.get("unit"))
            if kib is not None:
                return kib // 1024
    return None


def _vcpus(root) -> int | None:
    el = root.find("vcpu")
    if el is None:
        return None
    try:
        return int(el.get("current") or el.text)
    except (TypeError, ValueError):
        return None


def record(scanned: ScannedDomain, sources: list[str]) -> dict:
    """The inventory's view of one scanned domain (libvirt calls may raise libvirtError)."""
    root = scanned.live if scanned.live is not None else scanned.inactive
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
        vcpus=_vcpus(root),
        memory_mib=_memory_mib(root),
        disks=[d["path"] for d in dx.disks(root) if d["path"]],
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

    The connection is read-only unless the guest agent is a source (libvirt refuses
    agent calls on a read-only connection), and is closed before returning.
    """
    lv = _deps.libvirt
    conn = open_uri(p, readonly="agent" not in sources)
    try:
        try:
            handles = conn.listAllDomains(0)
        except lv.libvirtError as exc:
            raise libvirt_failed(exc, f"Listing the domains of {p['uri']}") from exc
        out = []
        for dom in handles:
            try:
                out.append(record(ScannedDomain(dom), sources))
            except lv.libvirtError as exc:
                if gone(exc):
                    continue
                raise libvirt_failed(exc, f"Reading a domain of {p['uri']}") from exc
        return sorted(out, key=lambda r: r["name"])
    finally:
        try:
            conn.close()
        except lv.libvirtError:
            pass  # the connection is gone either way; what was read stands
