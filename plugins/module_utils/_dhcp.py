# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A libvirt network's DHCP and DNS host entries: read, change, predict, apply live.

Host entries (``<dhcp><host>`` and ``<dns><host>``) are the one part of a
network libvirt changes on a running network without a restart
(virNetworkUpdate: it rewrites dnsmasq's hosts file and signals dnsmasq, so
guests keep their links). kvm_network uses this for declared entries and
kvm_clone for its per-clone reservations, so both change entries the same
way: deletions first (libvirt refuses an entry whose MAC, name or address
another entry still has), then additions; a changed entry is a deletion and
an addition. ``predict`` applies a change list to an element tree exactly as
``apply`` makes libvirt do it, so check mode reports what a real run does.
"""

from __future__ import annotations

import copy

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import call_or_none, libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

DHCP_HOST = "dhcp-host"
DNS_HOST = "dns-host"


def lookup(conn, name: str):
    """The virNetwork called ``name``, or None when no such network is defined."""
    return call_or_none(
        f"Looking up network {name!r}", _deps.libvirt.VIR_ERR_NO_NETWORK, conn.networkLookupByName, name
    )


def _xml(net, flags: int) -> str:
    lv = _deps.libvirt
    try:
        return net.XMLDesc(flags)
    except lv.libvirtError as exc:
        # drivers without VIR_NETWORK_XML_INACTIVE (the test driver) return the one definition they have
        if flags and exc.get_error_code() in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT):
            return net.XMLDesc(0)
        raise libvirt_failed(exc, f"Reading network {net.name()!r}") from exc


def config_root(net):
    """The persistent definition (the running one for a transient network)."""
    lv = _deps.libvirt
    flags = lv.VIR_NETWORK_XML_INACTIVE if net.isPersistent() else 0
    return nx.parse(_xml(net, flags), f"definition of network {net.name()!r}")


def live_root(net):
    """The running definition, or None when the network is not active."""
    if not net.isActive():
        return None
    return nx.parse(_xml(net, 0), f"running definition of network {net.name()!r}")


def _block_by_address(root) -> dict:
    return {(b["family"], b["address"]): b for b in nx.ip_blocks(root)}


def _dhcp_host_els(ip_el) -> dict:
    return {nx.host_key(h): h for h in ip_el.findall("dhcp/host")}


def _same(a, b) -> bool:
    """Two host elements with the same attributes and hostnames (MACs and addresses compared canonically)."""
    return _canon(a) == _canon(b)


def _canon(el) -> tuple:
    attrs = {}
    for k, v in el.attrib.items():
        if k == "mac":
            v = v.lower()
        elif k == "ip":
            try:
                v = str(nx.ip(v))
            except InvalidInput:  # an unreadable address is compared as written
                pass
        attrs[k] = v
    names = tuple(sorted((n.text or "").strip() for n in el.findall("hostname")))
    return (tuple(sorted(attrs.items())), names)


def _el_xml(el) -> str:
    clean = copy.deepcopy(el)
    clean.tail = None
    return _deps.etree.tostring(clean, encoding="unicode")


def host_changes(current, wanted) -> list[dict]:
    """The changes that turn ``current``'s host entries into ``wanted``'s (both <network> roots).

    Only ``<ip>`` blocks present in both (same family and address) are looked
    at; a block that comes or goes is a definition change, not a host change.
    Each change: ``{command: add|delete, section, index, xml, label}``, deletions first.
    """
    deletes, adds = [], []
    cur_blocks, want_blocks = _block_by_address(current), _block_by_address(wanted)
    for key, wb in want_blocks.items():
        cb = cur_blocks.get(key)
        if cb is None:
            continue
        have, want = _dhcp_host_els(cb["el"]), _dhcp_host_els(wb["el"])
        for hkey, el in have.items():
            if hkey not in want or not _same(el, want[hkey]):
                deletes.append(_change("delete", DHCP_HOST, cb["index"], el, wb["address"]))
        for hkey, el in want.items():
            if hkey not in have or not _same(el, have[hkey]):
                adds.append(_change("add", DHCP_HOST, cb["index"], el, wb["address"]))
    have_dns = {_dns_key(h): h for h in current.findall("dns/host")}
    want_dns = {_dns_key(h): h for h in wanted.findall("dns/host")}
    for key, el in have_dns.items():
        if key not in want_dns or not _same(el, want_dns[key]):
            deletes.append(_change("delete", DNS_HOST, -1, el, None))
    for key, el in want_dns.items():
        if key not in have_dns or not _same(el, have_dns[key]):
            adds.append(_change("add", DNS_HOST, -1, el, None))
    return deletes + adds


def _dns_key(el) -> str:
    try:
        return str(nx.ip(el.get("ip"), "DNS host address"))
    except InvalidInput:  # compared as written
        return el.get("ip") or ""


def _change(command: str, section: str, index: int, el, block: str | None) -> dict:
    if section == DHCP_HOST:
        what = " ".join(f"{k}={v}" for k, v in el.attrib.items())
        label = f"dhcp host {command} ({block}): {what}"
    else:
        names = ",".join((n.text or "").strip() for n in el.findall("hostname"))
        label = f"dns host {command}: {el.get('ip')} {names}"
    return dict(command=command, section=section, index=index, xml=_el_xml(el), label=label)


def predict(root, changes: list[dict]):
    """A copy of ``root`` with ``changes`` applied the way libvirt applies them."""
    etree = _deps.etree
    out = copy.deepcopy(root)
    ips = out.findall("ip")
    for ch in changes:
        el = etree.fromstring(ch["xml"])
        # the parent of the entry (<dhcp> of the indexed <ip>, or <dns>), and how to make it when missing
        owner, tag = (ips[ch["index"]], "dhcp") if ch["section"] == DHCP_HOST else (out, "dns")
        parent = owner.find(tag)
        if ch["command"] == "delete":
            match = next((h for h in (parent.findall("host") if parent is not None else []) if _same(h, el)), None)
            if match is not None:
                parent.remove(match)
            continue
        if parent is None:
            parent = etree.Element(tag)
            first_ip = out.find("ip")
            if tag == "dns" and first_ip is not None:
                first_ip.addprevious(parent)  # where libvirt writes it
            else:
                owner.append(parent)
        parent.append(el)
    return out


def merged(config: list[dict], live: list[dict]) -> list[tuple[dict, bool, bool]]:
    """``(change, live, config)``: a change both the definition and the running network need is made once.

    Deletions come before additions, as ``host_changes`` orders them.
    """

    def ident(c: dict) -> tuple:
        return (c["command"], c["section"], c["index"], c["xml"])

    out: list[tuple[dict, bool, bool]] = []
    for command in ("delete", "add"):
        live_left = {ident(c): c for c in live if c["command"] == command}
        for c in config:
            if c["command"] == command:
                out.append((c, live_left.pop(ident(c), None) is not None, True))
        out.extend((c, True, False) for c in live_left.values())
    return out


def apply(net, changes: list[dict], live: bool, config: bool) -> None:
    """Make libvirt do ``changes`` on the running network (``live``) and/or its definition (``config``)."""
    lv = _deps.libvirt
    if not changes or not (live or config):
        return
    flags = (lv.VIR_NETWORK_UPDATE_AFFECT_LIVE if live else 0) | (lv.VIR_NETWORK_UPDATE_AFFECT_CONFIG if config else 0)
    sections = {DHCP_HOST: lv.VIR_NETWORK_SECTION_IP_DHCP_HOST, DNS_HOST: lv.VIR_NETWORK_SECTION_DNS_HOST}
    commands = {"add": lv.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, "delete": lv.VIR_NETWORK_UPDATE_COMMAND_DELETE}
    for ch in changes:
        try:
            net.update(commands[ch["command"]], sections[ch["section"]], ch["index"], ch["xml"], flags)
        except lv.libvirtError as exc:
            raise libvirt_failed(exc, f"Network {net.name()!r}: {ch['label']}") from exc
