# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A running domain's address for ``ansible_host``, from an ordered list of sources.

Sources (libvirt's ``virDomainInterfaceAddresses``, never virsh output):

* ``lease``: the DHCP leases of the libvirt networks the domain's NICs are on;
* ``agent``: the QEMU guest agent, asked only when the domain has an agent channel
  that libvirt reports connected (an agent that is not there would make libvirt wait);
* ``arp``: the hypervisor's ARP/neighbour table.

The first source that gives an address on one of the domain's own NICs (matched by
MAC; loopback and link-local addresses never count) wins; in it the first IPv4
address in NIC order, else the first IPv6 one. A source that fails (no agent, a
driver without ARP support) is a reason, never an error.
"""

from __future__ import annotations

import ipaddress

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

SOURCES = ("lease", "agent", "arp")
DEFAULT_SOURCES = ["lease", "agent", "arp"]
AGENT_CHANNEL = "org.qemu.guest_agent.0"


def check_sources(sources) -> list[str]:
    """The ``address_sources`` option as a list, or InvalidInput naming the unknown or repeated source."""
    if sources is None:
        return list(DEFAULT_SOURCES)
    if not isinstance(sources, list):
        raise InvalidInput(f"address_sources must be a list, not {sources!r}.", hint="For example [lease, agent].")
    seen: list[str] = []
    for s in sources:
        if s not in SOURCES:
            raise InvalidInput(
                f"Unknown address source {s!r} in address_sources.",
                hint=f"Use {', '.join(SOURCES)}, in the order to try them (an empty list sets no ansible_host).",
            )
        if s in seen:
            raise InvalidInput(f"The address source {s!r} is listed twice in address_sources.")
        seen.append(s)
    return seen


def _flag(source: str) -> int:
    lv = _deps.libvirt
    return {
        "lease": lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE,
        "agent": lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
        "arp": lv.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP,
    }[source]


def agent_state(live_root) -> str | None:
    """None when the guest agent can be asked, else why not (from the live XML's agent channel)."""
    for ch in live_root.findall("devices/channel"):
        tgt = ch.find("target")
        if tgt is not None and tgt.get("name") == AGENT_CHANNEL:
            if tgt.get("state") == "disconnected":
                return "the guest agent is not connected"
            return None
    return "the domain has no guest agent channel"


def usable(addr: str) -> bool:
    """Whether an address can reach the guest from outside it (not loopback, link-local or unspecified)."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return False
    return not (ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast)


def candidates(reported: dict, macs: list[str]) -> list[dict]:
    """libvirt's ``{ifname: {hwaddr, addrs}}`` as ``[{mac, address, prefix, family}]`` on the domain's NICs.

    In the order of the domain's NICs (``macs``), IPv4 addresses before IPv6 ones.
    """
    by_mac: dict[str, list[dict]] = {}
    for iface in (reported or {}).values():
        mac = (iface.get("hwaddr") or "").lower()
        for a in iface.get("addrs") or []:
            addr = a.get("addr")
            if not addr or not usable(addr):
                continue
            family = "ipv6" if ":" in addr else "ipv4"
            by_mac.setdefault(mac, []).append(dict(mac=mac, address=addr, prefix=a.get("prefix"), family=family))
    ordered = [entry for mac in macs for entry in by_mac.get(mac, [])]
    return [e for e in ordered if e["family"] == "ipv4"] + [e for e in ordered if e["family"] == "ipv6"]


def find(dom, live_root, macs: list[str], sources: list[str]) -> dict:
    """``{address, source, addresses, error}`` of a running domain, trying ``sources`` in order.

    ``address`` is None (and ``error`` says, per source, why) when no source had one.
    """
    lv = _deps.libvirt
    reasons = []
    if not macs:
        return dict(address=None, source=None, addresses=[], error="the domain has no network interface")
    for source in sources:
        if source == "agent":
            why = agent_state(live_root)
            if why:
                reasons.append(f"agent: {why}")
                continue
        try:
            reported = dom.interfaceAddresses(_flag(source), 0)
        except lv.libvirtError as exc:
            reasons.append(f"{source}: {exc.get_error_message() or exc}")
            continue
        found = candidates(reported, macs)
        if found:
            return dict(address=found[0]["address"], source=source, addresses=found, error=None)
        reasons.append(f"{source}: no address for {', '.join(macs)}")
    if not sources:
        reasons.append("address_sources is empty")
    return dict(address=None, source=None, addresses=[], error="; ".join(reasons))
