# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What makes a network definition unusable, found before anything is touched.

``definition_problems`` reads only the XML: addresses that are not addresses,
a DHCP range or host outside its subnet or over the network's own address,
overlapping ranges or subnets, duplicate MACs, names or addresses, a bridge
network with addresses of its own. ``check_host`` then asks the host what the
XML cannot say: that a host bridge to attach to exists, that a bridge name for
a new libvirt bridge is free, and that no other active network has the subnet.
Either raises InvalidInput (or Conflict for a collision with something that
exists) naming every problem at once.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from ansible_collections.virtops.kvm.plugins.module_utils import _dhcp
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput

# Where the host's network interfaces are listed (a seam for unit tests).
SYS_CLASS_NET = "/sys/class/net"


def _addr(text, what: str, problems: list):
    try:
        return nx.ip(text, what)
    except InvalidInput as exc:
        problems.append(exc.msg)
        return None


def _block_problems(b: dict, problems: list) -> None:
    el, where = b["el"], f"<ip address='{b['address']}'>"
    addr = _addr(el.get("address"), f"address of {where}", problems)
    if addr is None:
        return
    prefix = nx.prefix_of(el)
    if (el.get("prefix") or el.get("netmask")) and prefix is None:
        problems.append(f"{where} has an unreadable prefix or netmask.")
        return
    if prefix is not None and not 0 < prefix <= (128 if addr.version == 6 else 32):
        problems.append(f"{where} has prefix {prefix}, which is not valid for IPv{addr.version}.")
        return
    if (b["family"] == "ipv6") != (addr.version == 6):
        problems.append(f"{where} is an IPv{addr.version} address in an {b['family']} element.")
        return
    net = b["subnet"]
    if addr.version == 4 and net.prefixlen <= 30 and addr in (net.network_address, net.broadcast_address):
        problems.append(f"{where} is the subnet's network or broadcast address; use a host address such as {net[1]}.")
    ranges = []
    for start_t, end_t in b["ranges"]:
        rwhere = f"DHCP range {start_t}-{end_t} of {where}"
        start, end = _addr(start_t, f"start of {rwhere}", problems), _addr(end_t, f"end of {rwhere}", problems)
        if start is None or end is None:
            continue
        if start not in net or end not in net:
            problems.append(f"{rwhere} is not inside the subnet {net}.")
            continue
        if start > end:
            problems.append(f"{rwhere} starts after it ends.")
            continue
        if start <= addr <= end:
            problems.append(f"{rwhere} contains the network's own address {addr}.")
        for other in ranges:
            if start <= other[1] and other[0] <= end:
                problems.append(f"{rwhere} overlaps the range {other[0]}-{other[1]}.")
        ranges.append((start, end))
    _host_problems(b, addr, net, where, problems)


def _host_problems(b: dict, addr, net, where: str, problems: list) -> None:
    seen: dict[tuple, str] = {}
    for h in b["hosts"]:
        shown = " ".join(f"{k}={v}" for k, v in h.items() if v)
        hwhere = f"DHCP host ({shown}) of {where}"
        if b["family"] == "ipv6" and h["mac"]:
            problems.append(f"{hwhere} has a MAC; IPv6 hosts are matched by name (or id), not MAC.")
        if h["mac"]:
            try:
                nx.normalize_mac(h["mac"])
            except InvalidInput as exc:
                problems.append(f"{hwhere}: {exc.msg}")
        if not (h["mac"] or h["name"] or h["id"]):
            problems.append(f"{hwhere} needs a mac or a name.")
        if not h["ip"]:
            problems.append(f"{hwhere} needs an ip.")
        else:
            hip = _addr(h["ip"], f"ip of {hwhere}", problems)
            if hip is not None and hip not in net:
                problems.append(f"{hwhere}: {hip} is not inside the subnet {net}.")
            elif hip is not None and hip == addr:
                problems.append(f"{hwhere}: {hip} is the network's own address.")
            elif hip is not None and hip.version == 4 and hip in (net.network_address, net.broadcast_address):
                problems.append(f"{hwhere}: {hip} is the subnet's network or broadcast address.")
            h = dict(h, ip=str(hip) if hip is not None else h["ip"])
        for field in ("mac", "name", "ip"):
            if h[field]:
                key = (field, h[field])
                if key in seen:
                    problems.append(f"{hwhere} has the same {field} as ({seen[key]}).")
                seen[key] = shown


def definition_problems(root) -> list[str]:
    """Everything wrong with a definition that its XML alone shows (empty: nothing)."""
    problems: list[str] = []
    mode = nx.forward_mode(root)
    blocks = nx.ip_blocks(root)
    if mode == "bridge":
        if not nx.bridge_name(root):
            problems.append("A network in bridge mode needs the name of an existing host bridge (bridge).")
        if blocks or root.find("dns/host") is not None:
            problems.append(
                "A network in bridge mode has no addresses, DHCP or DNS of its own (the host bridge's LAN has)."
            )
    if nx.bridge_name(root):
        try:
            nx.check_ifname(nx.bridge_name(root))
        except InvalidInput as exc:
            problems.append(exc.msg)
    for b in blocks:
        _block_problems(b, problems)
    good = [b for b in blocks if b["subnet"] is not None]
    for i, a in enumerate(good):
        for other in good[i + 1 :]:
            if a["subnet"].version == other["subnet"].version and a["subnet"].overlaps(other["subnet"]):
                problems.append(f"The subnets {a['subnet']} and {other['subnet']} of the network overlap.")
    for fam in ("ipv4", "ipv6"):
        with_dhcp = [b for b in blocks if b["family"] == fam and (b["ranges"] or b["hosts"])]
        if len(with_dhcp) > 1:
            problems.append(f"DHCP is possible on one {fam} address of a network only, not on {len(with_dhcp)}.")
    seen_dns: set = set()
    for h in nx.dns_hosts(root):
        a = _addr(h["ip"], "address of a DNS host", problems)
        if not h["hostnames"]:
            problems.append(f"The DNS host {h['ip']} needs at least one hostname.")
        for n in h["hostnames"]:
            if any(c.isspace() for c in n):
                problems.append(f"The DNS hostname {n!r} contains whitespace.")
        if a is not None and a in seen_dns:
            problems.append(f"The DNS host {a} is listed twice.")
        seen_dns.add(a)
    return problems


def refuse_problems(root) -> None:
    problems = definition_problems(root)
    if problems:
        raise InvalidInput(
            f"The definition of network {nx.name_of(root)!r} cannot be used: " + " ".join(problems),
            hint="Nothing was changed.",
            problems=problems,
        )


def is_local(uri: str) -> bool:
    """Whether ``uri`` reaches the machine the module runs on (its /sys is the host's)."""
    return not urlsplit(uri).netloc


def _interface_exists(name: str) -> bool:
    return os.path.lexists(os.path.join(SYS_CLASS_NET, name))


def _is_bridge(name: str) -> bool:
    return os.path.isdir(os.path.join(SYS_CLASS_NET, name, "bridge"))


def check_host(conn, uri: str, root, current, coming_up: bool) -> None:
    """Refuse a definition the host cannot carry (see the module doc); ``current`` is the defined one or None.

    ``coming_up``: whether the network's subnets come up with this run (a start, or new subnets on a
    running network), which is when they must not collide with another active network's.
    """
    name = nx.name_of(root)
    bridge = nx.bridge_name(root)
    local = is_local(uri)
    others = [n for n in conn.listAllNetworks(0) if n.name() != name]
    if nx.forward_mode(root) == "bridge":
        if local and bridge and not _is_bridge(bridge):
            what = "not a bridge" if _interface_exists(bridge) else "missing"
            raise InvalidInput(
                f"The host bridge {bridge!r} for network {name!r} does not exist "
                f"({os.path.join(SYS_CLASS_NET, bridge)} is {what}).",
                hint="Create the bridge on the host first (for example with nmcli or /etc/network/interfaces), "
                "or name an existing one.",
            )
        return
    if bridge and bridge != (nx.bridge_name(current) if current is not None else None):
        for other in others:
            if _bridge_of(other) == bridge:
                raise Conflict(f"The bridge name {bridge!r} is already used by network {other.name()!r}.")
        if local and _interface_exists(bridge):
            raise Conflict(
                f"The bridge name {bridge!r} for network {name!r} is already a network interface of the host.",
                hint="Choose another bridge name; libvirt creates its own bridge for this network.",
            )
    if coming_up:
        _refuse_overlap(root, others)


def _bridge_of(net) -> str | None:
    root = _dhcp.live_root(net) if net.isActive() else _dhcp.config_root(net)
    return nx.bridge_name(root)


def _refuse_overlap(root, others) -> None:
    mine = [b["subnet"] for b in nx.ip_blocks(root) if b["subnet"] is not None]
    if not mine:
        return
    for other in others:
        if not other.isActive():
            continue
        for b in nx.ip_blocks(_dhcp.live_root(other)):
            theirs = b["subnet"]
            for sub in mine:
                if theirs is not None and sub.version == theirs.version and sub.overlaps(theirs):
                    raise Conflict(
                        f"The subnet {sub} of network {nx.name_of(root)!r} overlaps {theirs} of the active "
                        f"network {other.name()!r}.",
                        hint="Choose a free subnet, or stop the other network.",
                    )
