# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The definition a task asks for: from its XML or the current definition, with the options applied.

Two sources, one rule for host entries. With ``xml`` the user's XML is the
base (what it omits is libvirt's, see ``compare``); without it the current
definition is the base and each option replaces only what it names. DHCP and
DNS host entries the task does not list are kept, unless ``purge_hosts``: they
are often added by someone else on purpose (kvm_clone's reservations). An entry
listed with ``state: absent`` goes. A kept entry that collides with a listed
one (same address or name under another key) is an error, never a silent pick.
"""

from __future__ import annotations

import copy

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput

# What a new <forward> gets per kvm_network mode ("isolated" has none).
_FORWARD = {"nat": "nat", "route": "route", "open": "open", "bridge": "bridge"}


def wanted_root(p: dict, current):
    """The wanted ``<network>`` element (a new tree): ``(root, from_xml)``.

    ``current`` is the current definition's root, or None for a new network.
    """
    name = vd.validate_name(p["name"], "name")
    if p["xml"] is not None:
        root = nx.parse(p["xml"])
        xml_name = nx.name_of(root)
        if xml_name is not None and xml_name != name:
            raise InvalidInput(f"The XML names the network {xml_name!r}, but the task's name is {name!r}.")
        if xml_name is None:
            _set_name(root, name)
        _check_uuid(root, current)
    elif current is not None:
        root = copy.deepcopy(current)
        _strip_hosts(root)  # they come back below unless purged or removed
    else:
        root = _deps.etree.Element("network")
        _set_name(root, name)
    from_xml = p["xml"] is not None
    if p["forward_mode"] is not None:
        _set_forward(root, p["forward_mode"], p["bridge"])
    if p["bridge"] is not None:
        _set_bridge_name(root, nx.check_ifname(p["bridge"]))
    gone: set = set()
    if p["ips"] is not None:
        gone |= _set_ips(root, p["ips"])
    if p["dns_hosts"] is not None:
        gone |= _set_dns_hosts(root, p["dns_hosts"])
    if current is not None and not p["purge_hosts"]:
        _keep_hosts(root, current, gone)
    return root, from_xml


def _set_name(root, name: str) -> None:
    el = root.find("name")
    if el is None:
        el = _deps.etree.Element("name")
        root.insert(0, el)
    el.text = name


def _check_uuid(root, current) -> None:
    el = root.find("uuid")
    if el is None or current is None or current.find("uuid") is None:
        return
    have = (current.find("uuid").text or "").strip().lower()
    if (el.text or "").strip().lower() != have:
        raise InvalidInput(
            f"The XML's UUID {el.text!r} is not the network's ({have}).",
            hint="Leave <uuid> out (it is kept), or remove the network first to define it with a new UUID.",
        )


def _strip_hosts(root) -> None:
    for h in root.findall("ip/dhcp/host") + root.findall("dns/host"):
        h.getparent().remove(h)


def _set_forward(root, mode: str, bridge: str | None) -> None:
    """The <forward> of ``mode``; a changed mode starts from a fresh element (libvirt refuses leftovers)."""
    etree = _deps.etree
    fwd = root.find("forward")
    if mode == "isolated":
        if fwd is not None:
            root.remove(fwd)
        return
    if fwd is not None and (fwd.get("mode") or "nat") == _FORWARD[mode]:
        return
    new = etree.Element("forward", mode=_FORWARD[mode])
    if fwd is not None:
        fwd.addprevious(new)
        root.remove(fwd)
    else:
        _insert_after(root, new, ("uuid", "name"))
    if mode == "bridge":
        # a host bridge is not libvirt's: no MAC, STP or addresses of libvirt's own on it
        for tag in ("mac", "ip", "dns", "domain"):
            for el in root.findall(tag):
                root.remove(el)
        br = root.find("bridge")
        if br is not None:
            keep = br.get("name")
            br.attrib.clear()
            if keep and bridge is None:
                br.set("name", keep)


def _insert_after(root, el, tags: tuple) -> None:
    for tag in tags:
        anchor = root.find(tag)
        if anchor is not None:
            anchor.addnext(el)
            return
    root.insert(0, el)


def _set_bridge_name(root, name: str) -> None:
    br = root.find("bridge")
    if br is None:
        br = _deps.etree.Element("bridge")
        _insert_after(root, br, ("forward", "uuid", "name"))
    br.set("name", name)


def _set_ips(root, ips: list) -> set:
    """Replace the <ip> elements by the listed ones (an existing one keeps what the task does not name)."""
    etree = _deps.etree
    existing = {(b["family"], b["address"]): b["el"] for b in nx.ip_blocks(root)}
    anchor = root.findall("ip")
    position = root.index(anchor[0]) if anchor else len(root)
    for el in anchor:
        root.remove(el)
    gone: set = set()
    seen = set()
    for i, item in enumerate(ips):
        addr = nx.ip(item.get("address"), f"address of ips[{i}]")
        family = "ipv6" if addr.version == 6 else "ipv4"
        key = (family, str(addr))
        if key in seen:
            raise InvalidInput(f"The address {addr} is listed twice in ips.")
        seen.add(key)
        el = existing.get(key)
        if el is None:
            el = etree.Element("ip", address=str(addr))
        for attr in ("netmask", "address"):
            el.attrib.pop(attr, None)
        el.set("address", str(addr))
        if family == "ipv6":
            el.set("family", "ipv6")
        else:
            el.attrib.pop("family", None)
        prefix = item.get("prefix")
        if prefix is None:
            prefix = nx.prefix_of(el) or (64 if family == "ipv6" else 24)
        vd.number(prefix, f"ips[{i}].prefix", 0, 128 if family == "ipv6" else 32, "bits")
        el.set("prefix", str(prefix))
        if item.get("dhcp_ranges") is not None:
            _set_ranges(el, item["dhcp_ranges"], i)
        if item.get("dhcp_hosts") is not None:
            gone |= _set_dhcp_hosts(el, item["dhcp_hosts"], family, i)
        root.insert(position, el)
        position += 1
    return gone


def _dhcp_of(ip_el):
    dhcp = ip_el.find("dhcp")
    if dhcp is None:
        dhcp = _deps.etree.SubElement(ip_el, "dhcp")
    return dhcp


def _set_ranges(ip_el, ranges: list, i: int) -> None:
    dhcp = ip_el.find("dhcp")
    for r in dhcp.findall("range") if dhcp is not None else []:
        dhcp.remove(r)
    if not ranges:
        if dhcp is not None and len(dhcp) == 0:
            ip_el.remove(dhcp)
        return
    dhcp = _dhcp_of(ip_el)
    for j, r in enumerate(ranges):
        start = nx.ip(r.get("start"), f"start of ips[{i}].dhcp_ranges[{j}]")
        end = nx.ip(r.get("end"), f"end of ips[{i}].dhcp_ranges[{j}]")
        dhcp.insert(j, _deps.etree.Element("range", start=str(start), end=str(end)))


def _set_dhcp_hosts(ip_el, hosts: list, family: str, i: int) -> set:
    """Add the listed present hosts; return the keys of those listed absent."""
    gone = set()
    for j, h in enumerate(hosts):
        where = f"ips[{i}].dhcp_hosts[{j}]"
        mac = nx.normalize_mac(h["mac"], f"MAC of {where}") if h.get("mac") else None
        name = h.get("name") or None
        if name is not None and h.get("state") != "absent":
            vd.hostname(name, f"{where}.name")
        if mac is None and name is None:
            raise InvalidInput(f"{where} needs a mac (IPv4) or a name.")
        key = ("mac", mac) if mac else ("name", name)
        if h.get("state") == "absent":
            gone.add(("dhcp", family, ip_el.get("address"), key))
            continue
        if not h.get("ip"):
            raise InvalidInput(f"{where} needs an ip.")
        addr = nx.ip(h["ip"], f"ip of {where}")
        el = _deps.etree.Element("host")
        if mac:
            el.set("mac", mac)
        if name:
            el.set("name", name)
        el.set("ip", str(addr))
        _dhcp_of(ip_el).append(el)
    return gone


def _dns_of(root):
    """The network's <dns>, made where libvirt writes it (before the first <ip>) when missing."""
    dns = root.find("dns")
    if dns is None:
        dns = _deps.etree.Element("dns")
        first_ip = root.find("ip")
        (first_ip.addprevious(dns) if first_ip is not None else root.append(dns))
    return dns


def _set_dns_hosts(root, hosts: list) -> set:
    etree = _deps.etree
    gone = set()
    for j, h in enumerate(hosts):
        addr = nx.ip(h.get("ip"), f"ip of dns_hosts[{j}]")
        if h.get("state") == "absent":
            gone.add(("dns", str(addr)))
            continue
        names = [n for n in (h.get("hostnames") or []) if n]
        if not names:
            raise InvalidInput(f"dns_hosts[{j}] ({addr}) needs at least one hostname.")
        el = etree.SubElement(_dns_of(root), "host", ip=str(addr))
        for k, n in enumerate(names):
            etree.SubElement(el, "hostname").text = vd.hostname(n, f"dns_hosts[{j}].hostnames[{k}]")
    return gone


def _keep_hosts(root, current, gone: set) -> None:
    """Carry the current host entries the task neither lists nor removes (see the module doc)."""
    wanted_blocks = {(b["family"], b["address"]): b["el"] for b in nx.ip_blocks(root)}
    for b in nx.ip_blocks(current):
        el = wanted_blocks.get((b["family"], b["address"]))
        if el is None:
            continue
        listed = {nx.host_key(h): h for h in el.findall("dhcp/host")}
        for h in b["el"].findall("dhcp/host"):
            key = nx.host_key(h)
            if key in listed or ("dhcp", b["family"], b["address"], key) in gone:
                continue
            for other in listed.values():
                same_ip = h.get("ip") and other.get("ip") and nx.ip(h.get("ip")) == nx.ip(other.get("ip"))
                if same_ip or (h.get("name") and h.get("name") == other.get("name")):
                    raise Conflict(
                        f"The DHCP host entry {_show(h)} of network {nx.name_of(current)!r} has the address or "
                        f"name of the listed entry {_show(other)}.",
                        hint="Remove the existing entry (state: absent), or use purge_hosts: true.",
                    )
            _dhcp_of(el).append(copy.deepcopy(h))
    listed_dns = {str(nx.ip(h.get("ip"))): h for h in root.findall("dns/host")}
    for h in current.findall("dns/host"):
        addr = str(nx.ip(h.get("ip"), "DNS host address"))
        if addr in listed_dns or ("dns", addr) in gone:
            continue
        names = {(n.text or "").strip() for n in h.findall("hostname")}
        for other in listed_dns.values():
            if names & {(n.text or "").strip() for n in other.findall("hostname")}:
                raise Conflict(
                    f"The DNS host entry {addr} of network {nx.name_of(current)!r} has a hostname of the listed "
                    f"entry {other.get('ip')}.",
                    hint="Remove the existing entry (state: absent), or use purge_hosts: true.",
                )
        _dns_of(root).append(copy.deepcopy(h))


def _show(h) -> str:
    return "<host " + " ".join(f"{k}='{v}'" for k, v in h.attrib.items()) + "/>"
