# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The lxml model of a libvirt network's XML: parse, read out addresses, DHCP and DNS host entries.

Pure: lxml and ``ipaddress`` only, no libvirt connection, so kvm_network's
compare and kvm_clone's reservations are tested without a daemon. Addresses
are read the way libvirt reads them (``prefix`` or ``netmask``, ``family``
defaulting to IPv4) and written back in one canonical spelling.
"""

from __future__ import annotations

import ipaddress
import re

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
# Linux interface names: at most 15 bytes, no '/', no whitespace.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,14}$")
# Forward modes as kvm_network names them; "isolated" is a network without <forward>.
FORWARD_MODES = ("nat", "route", "open", "bridge", "isolated")


def parse(xml: str | bytes, what: str = "network XML"):
    """Parse XML text into an lxml ``<network>`` element; a syntax error names line and column."""
    return dx.parse(xml, what, root_tag="network", dump="virsh net-dumpxml")


def tostring(root) -> str:
    return _deps.etree.tostring(root, pretty_print=True, encoding="unicode")


def name_of(root) -> str | None:
    el = root.find("name")
    return el.text.strip() if el is not None and el.text else None


def normalize_mac(mac, what: str = "MAC address") -> str:
    """Lower-case a MAC and refuse anything that is not a unicast MAC."""
    m = str(mac).strip().lower().replace("-", ":") if isinstance(mac, str) else ""
    if not _MAC_RE.match(m):
        raise InvalidInput(f"The {what} {mac!r} is not of the form 52:54:00:xx:xx:xx.")
    if int(m[:2], 16) & 1:
        raise InvalidInput(f"The {what} {mac!r} is a multicast address; a NIC needs a unicast one.")
    return m


def ip(value, what: str = "address"):
    """An ``ipaddress`` address from text, or InvalidInput naming ``what``."""
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError as exc:
        raise InvalidInput(f"The {what} {value!r} is not an IPv4 or IPv6 address.") from exc


def check_ifname(name: str, what: str = "bridge name") -> str:
    if not isinstance(name, str) or not _IFNAME_RE.match(name):
        raise InvalidInput(
            f"The {what} {name!r} is not a valid interface name.",
            hint="Use 1 to 15 characters: letters, digits, '_', '.', ':', '-'.",
        )
    return name


def prefix_of(ip_el) -> int | None:
    """The prefix length of an ``<ip>`` element (from ``prefix`` or ``netmask``); None if it has neither."""
    if ip_el.get("prefix"):
        try:
            return int(ip_el.get("prefix"))
        except ValueError:
            return None
    if ip_el.get("netmask"):
        try:
            return ipaddress.ip_network(f"0.0.0.0/{ip_el.get('netmask')}").prefixlen
        except ValueError:
            return None
    return None


def family_of(ip_el) -> str:
    """``ipv4`` or ``ipv6``: the ``family`` attribute, else what the address looks like."""
    fam = (ip_el.get("family") or "").strip().lower()
    if fam in ("ipv4", "ipv6"):
        return fam
    try:
        return "ipv6" if ipaddress.ip_address(ip_el.get("address", "")).version == 6 else "ipv4"
    except ValueError:
        return "ipv4"


def subnet_of(ip_el):
    """The ``ip_network`` of an ``<ip>`` element (libvirt's default prefix: classful for IPv4, 64 for IPv6)."""
    addr = ip(ip_el.get("address"), "network address")
    prefix = prefix_of(ip_el)
    if prefix is None:
        prefix = 64 if addr.version == 6 else _classful(addr)
    try:
        return ipaddress.ip_network(f"{addr}/{prefix}", strict=False)
    except ValueError as exc:
        raise InvalidInput(f"The prefix {prefix} of network address {addr} is not valid.") from exc


def _classful(addr) -> int:
    first = addr.packed[0]
    return 8 if first < 128 else 16 if first < 192 else 24


def dhcp_hosts(ip_el) -> list[dict]:
    """The ``<host>`` entries of an ``<ip>``'s ``<dhcp>``: mac (lower case), id, name, ip."""
    out = []
    for h in ip_el.findall("dhcp/host"):
        mac = h.get("mac")
        out.append(dict(mac=mac.lower() if mac else None, id=h.get("id"), name=h.get("name"), ip=h.get("ip")))
    return out


def ip_blocks(root) -> list[dict]:
    """One dict per ``<ip>`` element, in document order (the order virNetworkUpdate's index counts).

    ``{index, family, address, prefix, subnet, ranges: [(start, end)], hosts, dhcp, tftp}``;
    addresses as text in canonical form. An unreadable block has ``subnet`` None.
    """
    out = []
    for i, el in enumerate(root.findall("ip")):
        try:
            subnet = subnet_of(el)
            address = str(ip(el.get("address")))
        except InvalidInput:
            subnet, address = None, el.get("address")
        ranges = [(r.get("start"), r.get("end")) for r in el.findall("dhcp/range")]
        out.append(
            dict(
                index=i,
                family=family_of(el),
                address=address,
                prefix=subnet.prefixlen if subnet is not None else prefix_of(el),
                subnet=subnet,
                ranges=ranges,
                hosts=dhcp_hosts(el),
                dhcp=el.find("dhcp") is not None,
                el=el,
            )
        )
    return out


def dns_hosts(root) -> list[dict]:
    """The ``<dns><host>`` entries: ip and hostnames."""
    return [
        dict(ip=h.get("ip"), hostnames=[n.text.strip() for n in h.findall("hostname") if n.text])
        for h in root.findall("dns/host")
    ]


def forward_mode(root) -> str:
    """``nat``, ``route``, ``open``, ``bridge`` (or another libvirt mode), or ``isolated`` without <forward>."""
    fwd = root.find("forward")
    if fwd is None:
        return "isolated"
    return fwd.get("mode") or "nat"


def bridge_name(root) -> str | None:
    el = root.find("bridge")
    return el.get("name") if el is not None else None


def dhcp_host_xml(mac: str | None, ip_text: str, name: str | None) -> str:
    """A ``<host>`` element for virNetworkUpdate's ip-dhcp-host section."""
    el = _deps.etree.Element("host")
    if mac:
        el.set("mac", mac)
    if name:
        el.set("name", name)
    el.set("ip", ip_text)
    return _deps.etree.tostring(el, encoding="unicode")


def dns_host_xml(ip_text: str, hostnames: list[str]) -> str:
    """A ``<host>`` element for virNetworkUpdate's dns-host section."""
    etree = _deps.etree
    el = etree.Element("host", ip=ip_text)
    for n in hostnames:
        etree.SubElement(el, "hostname").text = n
    return etree.tostring(el, encoding="unicode")


def host_key(host_el) -> tuple:
    """What identifies a DHCP host entry: its MAC, else its id, else its name."""
    if host_el.get("mac"):
        return ("mac", host_el.get("mac").lower())
    if host_el.get("id"):
        return ("id", host_el.get("id").lower())
    return ("name", host_el.get("name") or "")


def summary(root) -> dict:
    """What kvm_network returns about a definition: mode, bridge, addresses, DHCP and DNS entries."""
    ips = []
    for b in ip_blocks(root):
        ips.append(
            dict(
                family=b["family"],
                address=b["address"],
                prefix=b["prefix"],
                dhcp_ranges=[dict(start=s, end=e) for s, e in b["ranges"]],
                dhcp_hosts=[{k: v for k, v in h.items() if k != "id" or v} for h in b["hosts"]],
            )
        )
    uuid = root.find("uuid")
    domain = root.find("domain")
    return dict(
        name=name_of(root),
        uuid=uuid.text.strip() if uuid is not None and uuid.text else None,
        forward_mode=forward_mode(root),
        bridge=bridge_name(root),
        domain=domain.get("name") if domain is not None else None,
        ips=ips,
        dns_hosts=dns_hosts(root),
    )
