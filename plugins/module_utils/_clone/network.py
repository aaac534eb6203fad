# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A fleet on a libvirt network: each clone's first NIC on it, and one static DHCP reservation per clone.

A reservation is a DHCP host entry ``<host mac=... name=<clone> ip=...>`` in
the network's IPv4 ``<dhcp>``, made with virNetworkUpdate (live on a running
network and in its definition, no restart). Addresses are deterministic: a
clone keeps the address of its entry (found by its MAC, or by its name when
the clone was made again with a new MAC); a new one gets the ``ip`` its spec
asks for, else the lowest free address of the network's first IPv4 DHCP range,
in batch order. Free means: not the network's own address, not another
entry's, not leased to another MAC. Entries are added before the clones are
defined (a clone that boots asks for its address at once) and taken back from
a clone whose creation failed; removing a clone removes the entries with its
MAC and name, in whatever network its interfaces are on. Entries of anyone
else are never touched; a collision with one is an error before any change.
"""

from __future__ import annotations

import copy
import ipaddress

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _dhcp
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import Item, Outcome
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

# What dnsmasq accepts as a host name.


def _dhcp_block(config, network: str) -> dict:
    for b in nx.ip_blocks(config):
        if b["family"] == "ipv4" and b["ranges"] and b["subnet"] is not None:
            return b
    raise InvalidInput(
        f"Network {network!r} has no IPv4 address with a DHCP range, so kvm_clone cannot reserve addresses in it.",
        hint="Give the network a DHCP range (virtops.kvm.kvm_network), or set dhcp_reservations: false.",
    )


def _leased(net) -> dict[str, str]:
    """IPv4 address -> MAC of the network's current leases."""
    lv = _deps.libvirt
    if not net.isActive():
        return {}
    try:
        leases = net.DHCPLeases()
    except lv.libvirtError as exc:
        if exc.get_error_code() == lv.VIR_ERR_NO_SUPPORT:
            return {}
        raise libvirt_failed(exc, f"Reading the DHCP leases of network {net.name()!r}") from exc
    return {lease["ipaddr"]: (lease.get("mac") or "").lower() for lease in leases if lease.get("ipaddr")}


class Reservations:
    """The network part of one kvm_clone run: planned with the batch, applied around its actions."""

    def __init__(self, conn, params: dict, scan: HostScan):
        self.conn = conn
        self.network = params.get("network")
        self.reserve = bool(self.network) and params.get("dhcp_reservations", True)
        self.scan = scan
        self.nets: dict[str, object] = {}
        # clone name -> {network, ip, before, edits: [(network, remove keys, add hosts)]}
        self.clones: dict[str, dict] = {}

    # ------------------------------------------------------------------ plan

    def _net(self, name: str):
        if name not in self.nets:
            net = _dhcp.lookup(self.conn, name)
            if net is None:
                raise InvalidInput(
                    f"Network {name!r} is not defined.", hint="Define it first (virtops.kvm.kvm_network)."
                )
            self.nets[name] = net
        return self.nets[name]

    def plan(self, items: list[Item], template) -> None:
        """Decide every clone's attachment and reservation (or removal); raises before anything changes."""
        if not self.network:
            if any(i.spec.get("ip") for i in items):
                raise InvalidInput("A clone's ip needs the network option (the network the address is in).")
        else:
            vd.validate_name(self.network, "network")
            net = self._net(self.network)
            if template is not None and any(i.action == "create" for i in items):
                if template["root"].find("devices/interface") is None:
                    raise InvalidInput(
                        f"The template {template['name']!r} has no network interface to attach to network "
                        f"{self.network!r}."
                    )
            keep = [i for i in items if not i.absent]
            for i in keep:
                self._check_attached(i)
            if self.reserve:
                self._plan_reservations(net, keep)
        for i in items:
            if i.absent and i.action == "remove":
                self._plan_removal(i)

    def _check_attached(self, item: Item) -> None:
        if item.action == "create":
            self.clones[item.name] = dict(network=self.network, ip=None, before=None, edits=[])
            return
        found = self.scan.get(item.name)
        ifaces = dx.interfaces(found.inactive) if found is not None else []
        if not ifaces or ifaces[0]["type"] != "network" or ifaces[0]["source"] != self.network:
            where = f"{ifaces[0]['type']} {ifaces[0]['source'] or ''}".strip() if ifaces else "no interface"
            raise Conflict(
                f"Clone {item.name!r} exists but its first interface is not on network {self.network!r} "
                f"({where}). It is not changed.",
                hint="Remove it (state=absent) to make it again on the network, or change the task.",
                clone=item.name,
            )
        self.clones[item.name] = dict(network=self.network, ip=None, before=None, edits=[])

    def _plan_reservations(self, net, items: list[Item]) -> None:
        config = _dhcp.config_root(net)
        block = _dhcp_block(config, self.network)
        subnet, own = block["subnet"], nx.ip(block["address"])
        hosts = block["hosts"]
        domain_macs = self.scan.macs()
        leased = _leased(net)
        batch = {i.name for i in items}
        taken: dict[str, str] = {str(own): "the network's own address"}
        for h in hosts:
            if h["ip"]:
                taken[str(nx.ip(h["ip"]))] = f"the entry mac={h['mac']} name={h['name']}"
        for addr, mac in leased.items():
            taken.setdefault(addr, f"a lease of {mac}")
        decided: list[tuple[Item, str, dict | None, dict | None]] = []
        for item in items:
            mac = item.macs[0]
            mine = next((h for h in hosts if h["mac"] == mac), None)
            stale = next((h for h in hosts if h["name"] == item.name and h["mac"] != mac and h is not mine), None)
            if stale is not None and stale["mac"] in domain_macs and domain_macs[stale["mac"]] not in batch:
                raise Conflict(
                    f"Network {self.network!r} has an entry named {item.name!r} for MAC {stale['mac']} of domain "
                    f"{domain_macs[stale['mac']]!r}; clone {item.name!r} cannot take its name.",
                    hint="Remove that entry (virtops.kvm.kvm_network, state: absent) or rename the clone.",
                )
            for h in (mine, stale):
                if h is not None and h["ip"]:
                    taken[str(nx.ip(h["ip"]))] = f"clone {item.name}"  # its own, kept for it
            decided.append((item, mac, mine, stale))
        for item, mac, mine, stale in decided:
            if not vd.is_hostname(item.name):
                raise vd.refuse(
                    f"The name of clone {item.name!r} (the host name of its DHCP reservation)",
                    item.name,
                    "a DHCP reservation's name is an RFC 1123 host name (letters, digits and '-', in labels "
                    "joined by dots)",
                    hint="Rename the clone, or set dhcp_reservations: false.",
                )
            ip = self._address(item, mac, mine, stale, subnet, own, block, taken)
            taken[ip] = f"clone {item.name}"
            want = dict(mac=mac, name=item.name, ip=ip)
            entry = self.clones[item.name]
            entry["ip"] = ip
            entry["before"] = mine["ip"] if mine is not None else None
            if mine is not None and mine["name"] == item.name and mine["ip"] and str(nx.ip(mine["ip"])) == ip:
                continue
            remove = [("mac", h["mac"]) for h in (mine, stale) if h is not None]
            entry["edits"].append(((block["family"], block["address"]), remove, want))

    def _address(self, item, mac, mine, stale, subnet, own, block, taken) -> str:
        """The clone's address: asked for, else its entry's, else the lowest free one of the range(s)."""
        ours = (f"clone {item.name}", f"a lease of {mac}")
        asked = item.spec.get("ip")
        if asked:
            addr = nx.ip(asked)
            if addr not in subnet or addr == own or addr in (subnet.network_address, subnet.broadcast_address):
                raise InvalidInput(
                    f"ip {asked} of clone {item.name!r} is not a free host address of network "
                    f"{self.network!r} ({subnet}, the network's own address {own})."
                )
            if taken.get(str(addr), ours[0]) not in ours:
                raise Conflict(f"ip {asked} of clone {item.name!r} is already {taken[str(addr)]}.")
            return str(addr)
        for h in (mine, stale):
            if h is not None and h["ip"] and taken.get(str(nx.ip(h["ip"]))) == ours[0]:
                return str(nx.ip(h["ip"]))
        for start, end in block["ranges"]:
            a, b = int(nx.ip(start)), int(nx.ip(end))
            for n in range(a, b + 1):
                cand = str(ipaddress.IPv4Address(n))
                if taken.get(cand, ours[0]) in ours:
                    return cand
        raise Conflict(
            f"Network {self.network!r} has no free address left in its DHCP range(s) for clone {item.name!r}.",
            hint="Widen the range, or give the clone an ip.",
        )

    def _plan_removal(self, item: Item) -> None:
        found = self.scan.get(item.name)
        if found is None:
            return
        edits = []
        for iface in dx.interfaces(found.inactive):
            if iface["type"] != "network" or not iface["source"] or not iface["mac"]:
                continue
            net = _dhcp.lookup(self.conn, iface["source"])
            if net is None:
                continue
            self.nets.setdefault(iface["source"], net)
            for b in nx.ip_blocks(_dhcp.config_root(net)):
                for h in b["hosts"]:
                    if h["mac"] == iface["mac"].lower() and h["name"] == item.name:
                        edits.append(((b["family"], b["address"]), [("mac", h["mac"])], None))
            if edits:
                self.clones[item.name] = dict(network=iface["source"], ip=None, before=None, edits=edits)

    # ------------------------------------------------------------------ act (never in check mode)

    def _changes(self, name: str, root, undo: bool) -> list[dict]:
        edited = copy.deepcopy(root)
        blocks = {(b["family"], b["address"]): b["el"] for b in nx.ip_blocks(edited)}
        for key, remove, add in self.clones[name]["edits"]:
            el = blocks.get(key)
            if el is None:
                continue
            for h in el.findall("dhcp/host"):
                if nx.host_key(h) in remove:
                    h.getparent().remove(h)
            if add is not None:
                el.find("dhcp").append(_deps.etree.fromstring(nx.dhcp_host_xml(add["mac"], add["ip"], add["name"])))
        return _dhcp.host_changes(edited, root) if undo else _dhcp.host_changes(root, edited)

    def _apply(self, names: list[str], undo: bool = False) -> None:
        for name in names:
            entry = self.clones.get(name)
            if not entry or not entry["edits"]:
                continue
            net = self.nets[entry["network"]]
            config = _dhcp.config_root(net) if net.isPersistent() else None
            live = _dhcp.live_root(net)
            config_changes = self._changes(name, config, undo) if config is not None else []
            live_changes = self._changes(name, live, undo) if live is not None else []
            for change, on_live, on_config in _dhcp.merged(config_changes, live_changes):
                _dhcp.apply(net, [change], on_live, on_config)

    def before_create(self, items: list[Item]) -> None:
        """Make the reservations of the clones that are kept or created (before they are defined)."""
        self._apply([i.name for i in items if not i.absent])

    def after_create(self, outcomes: dict[str, Outcome]) -> None:
        """Take back the reservations of the clones whose creation failed (they were rolled back)."""
        self._apply([n for n, o in outcomes.items() if not o.ok and n in self.clones], undo=True)

    def after_remove(self, items: list[Item], outcomes: dict[str, Outcome]) -> None:
        """Remove the entries of the clones that were removed."""
        self._apply([i.name for i in items if i.absent and i.name in outcomes and outcomes[i.name].ok])

    # ------------------------------------------------------------------ report

    def annotate(self, out: dict, items: list[Item]) -> None:
        """Add ``network`` and ``ip`` to each clone of the result; reservation changes count as changes."""
        by_name = {i.name: i for i in items}
        before, after = out["diff"]["before"]["clones"], out["diff"]["after"]["clones"]
        for entry in out["clones"]:
            planned = self.clones.get(entry["name"])
            item = by_name.get(entry["name"])
            if planned is None or (item is not None and item.absent):
                continue
            entry["network"] = planned["network"]
            entry["ip"] = planned["ip"]
            if planned["ip"] is not None:
                after[entry["name"]]["ip"] = planned["ip"]
                if planned["before"] is not None:
                    before[entry["name"]]["ip"] = planned["before"]
            if planned["edits"] and not entry.get("failed"):
                entry["changed"] = True
                out["changed"] = True
