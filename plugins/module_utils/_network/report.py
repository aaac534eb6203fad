# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What is reported about one network: its definition, state, DHCP leases and the domains on it.

Leases are libvirt's (virNetworkGetDHCPLeases, read from dnsmasq's lease
file): the way to learn a guest's address without sending it anything.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan


def users(scan: HostScan, name: str) -> list[dict]:
    """The domains with an interface on network ``name``: ``[{domain, active}]``, running ones by their live XML."""
    out = []
    for d in scan.domains.values():
        root = d.live if d.live is not None else d.inactive
        if any(i["type"] == "network" and i["source"] == name for i in dx.interfaces(root)):
            out.append(dict(domain=d.name, active=d.active))
    return sorted(out, key=lambda u: u["domain"])


def leases(net) -> list[dict]:
    """The network's current DHCP leases (empty when it is not active or the driver keeps none)."""
    lv = _deps.libvirt
    if not net.isActive():
        return []
    try:
        raw = net.DHCPLeases()
    except lv.libvirtError as exc:
        if exc.get_error_code() == lv.VIR_ERR_NO_SUPPORT:
            return []
        raise libvirt_failed(exc, f"Reading the DHCP leases of network {net.name()!r}") from exc
    out = []
    for lease in raw:
        out.append(
            dict(
                mac=(lease.get("mac") or "").lower() or None,
                ip=lease.get("ipaddr"),
                prefix=lease.get("prefix"),
                hostname=lease.get("hostname") or None,
                expiry_time=lease.get("expirytime"),
            )
        )
    return sorted(out, key=lambda x: (x["ip"] or "", x["mac"] or ""))


def network_info(net, config_root, used_by: list[dict], pending_restart: bool) -> dict:
    """The ``network`` return value of kvm_network for a defined (or running) network."""
    info = nx.summary(config_root)
    active = bool(net.isActive())
    persistent = bool(net.isPersistent())
    if active:
        try:
            info["bridge"] = net.bridgeName() or info["bridge"]
        except _deps.libvirt.libvirtError:
            pass  # a network without a bridge of its own (macvtap, hostdev modes)
    info.update(
        active=active,
        persistent=persistent,
        autostart=bool(net.autostart()) if persistent else False,
        leases=leases(net),
        used_by=used_by,
        pending_restart=pending_restart,
    )
    return info
