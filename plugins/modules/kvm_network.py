#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_network
short_description: Define, update, start, stop and undefine a libvirt virtual network
version_added: 0.1.0
description:
  - Brings one libvirt virtual network to a definition and a state, like C(virsh net-define), C(net-start),
    C(net-destroy), C(net-undefine), C(net-autostart) and C(net-update), but idempotently.
  - "Kinds of network: NAT (V(nat)), isolated (V(isolated): the guests and the host only), routed
    (V(route)), open (V(open): routed, with no firewall rules from libvirt) and an existing host bridge
    (V(bridge)). Give the definition as options (O(forward_mode), O(bridge), O(ips), O(dns_hosts)), as full
    XML (O(xml)), or both (the options are applied over the XML)."
  - "The definition is compared semantically with the network's: what libvirt fills in (UUID, MAC, a
    C(virbrN) bridge name with STP and delay, the NAT port range, C(netmask) for C(prefix)) is not a change
    and is kept. With O(xml), what the XML omits keeps libvirt's value; with options, only what an option
    names changes."
  - "DHCP host entries (MAC, IP, host name) and DNS host entries are changed with C(virsh net-update)'s API
    on a running network, live and in its definition, without a restart: guests keep their link. Any other
    change to a running network is defined and takes effect at the next start; RV(pending_restart) says so,
    and O(restart=true) restarts the network to apply it."
  - Host entries the task does not list are kept (virtops.kvm.kvm_clone adds its reservations to a network);
    O(purge_hosts=true) removes them. An entry listed with C(state=absent) is removed.
  - A network that running domains use is not stopped, restarted or removed unless O(force=true).
  - "Bad input is refused before anything changes: an address that is not one, a DHCP range or host outside
    its subnet or over the network's own address, overlapping ranges or subnets, duplicate or bad MACs, a
    bridge network with addresses, a host bridge that does not exist, a subnet an active network has."
  - Check mode has no side effects and predicts the same C(changed), RV(changes) and diff as a real run.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing is defined, updated, started, stopped or removed; C(changed), RV(changes),
        RV(pending_restart) and the diff are those a real run reports.
  diff_mode:
    support: full
    details:
      - The diff shows the state, the autostart flag and the definition before and after.
  idempotent:
    support: full
options:
  name:
    description:
      - The network name, by the collection's naming rule (1 to 64 letters, digits, C(.), C(_), C(+), C(-),
        starting with a letter or digit, without C(..); the C(names.md) guide). When O(xml) has a C(<name>),
        it must be this name.
    type: str
    required: true
  state:
    description:
      - V(present) defines or updates the network and leaves it running or not as it is (a new network is
        not started). A transient network is made persistent.
      - V(active) also starts it (C(virsh net-start)).
      - V(inactive) also stops it (C(virsh net-destroy)); refused while running domains use it, unless
        O(force=true).
      - V(absent) stops and undefines it (C(virsh net-undefine)); refused while running domains use it,
        unless O(force=true). Domains defined on it are not changed (a warning names them).
    type: str
    choices: [present, active, inactive, absent]
    default: present
  xml:
    description:
      - The full network definition, as C(virsh net-dumpxml) prints it (or your own). Its C(<uuid>), if
        given, must be the network's.
      - Compared semantically with the current definition; what it omits keeps libvirt's value. Ignored with
        O(state=absent).
    type: str
  forward_mode:
    description:
      - V(nat) (guests reach outside through the host's address), V(route) (routed, the host's routing
        decides), V(open) (routed, libvirt adds no firewall rules), V(bridge) (the guests join the existing
        host bridge O(bridge); libvirt adds nothing of its own), or V(isolated) (no forwarding, guests and
        host only).
      - Changing it changes the definition (a running network then has a RV(pending_restart)).
    type: str
    choices: [nat, route, open, bridge, isolated]
  bridge:
    description:
      - With O(forward_mode=bridge), the existing host bridge the guests join; it must exist.
      - Otherwise the name of the bridge libvirt creates for the network (default C(virbrN), chosen by
        libvirt); it must not be an interface of the host or another network's bridge.
    type: str
  ips:
    description:
      - The network's addresses, one per subnet (IPv4 and IPv6). When given, the network has exactly these
        addresses; an address that was there keeps what its entry does not name (its ranges, its hosts).
    type: list
    elements: dict
    suboptions:
      address:
        description:
          - The host's address on the network (the guests' gateway and DNS server), for example V(192.168.100.1).
        type: str
        required: true
      prefix:
        description: The prefix length; default the current one, else V(24) for IPv4 and V(64) for IPv6.
        type: int
      dhcp_ranges:
        description:
          - The DHCP ranges (replace the current ones; V([]) removes DHCP ranges). Inside the subnet, not
            over the address, not overlapping. DHCP is possible on one IPv4 and one IPv6 address per network.
        type: list
        elements: dict
        suboptions:
          start:
            description: First address of the range.
            type: str
            required: true
          end:
            description: Last address of the range.
            type: str
            required: true
      dhcp_hosts:
        description:
          - Static DHCP host entries (reservations). An IPv4 entry is matched by its MAC (or by its name
            without one), an IPv6 entry by its name.
          - Entries not listed are kept unless O(purge_hosts=true).
        type: list
        elements: dict
        suboptions:
          mac:
            description: The guest interface's MAC (IPv4 entries).
            type: str
          ip:
            description: The address it gets; inside the subnet. Required unless O(ips[].dhcp_hosts[].state=absent).
            type: str
          name:
            description: The host name dnsmasq hands out and resolves.
            type: str
          state:
            description: V(absent) removes the entry with this MAC (or name).
            type: str
            choices: [present, absent]
            default: present
  dns_hosts:
    description:
      - DNS host entries the network's DNS server answers (like C(/etc/hosts) lines), matched by address.
      - Entries not listed are kept unless O(purge_hosts=true).
    type: list
    elements: dict
    suboptions:
      ip:
        description: The address.
        type: str
        required: true
      hostnames:
        description: Its names (at least one unless O(dns_hosts[].state=absent)).
        type: list
        elements: str
      state:
        description: V(absent) removes the entry with this address.
        type: str
        choices: [present, absent]
        default: present
  purge_hosts:
    description:
      - Remove the DHCP host and DNS host entries that the task does not list (in O(ips), O(dns_hosts) or
        O(xml)). Off by default, so entries others added (virtops.kvm.kvm_clone's reservations) stay.
    type: bool
    default: false
  autostart:
    description:
      - Start the network when the libvirt daemon starts (C(virsh net-autostart), C(--disable)).
    type: bool
  restart:
    description:
      - When the running network differs from its definition in more than host entries, restart it
        (C(net-destroy) and C(net-start)) so the definition takes effect now.
      - "Running guests on it lose their link until their interfaces are attached again: refused while
        running domains use it, unless O(force=true)."
    type: bool
    default: false
  force:
    description:
      - Stop, restart or remove the network even while running domains use it.
    type: bool
    default: false
notes:
  - Needs dnsmasq on the host for DHCP and DNS (virtops.kvm.kvm_host installs it).
  - "The returned RV(network.leases) are libvirt's own view of the DHCP leases (C(virsh net-dhcp-leases)):
    the way to learn a guest's address without sending it anything."
seealso:
  - module: virtops.kvm.kvm_clone
  - name: libvirt network XML format
    description: Every element of the definition.
    link: https://libvirt.org/formatnetwork.html
"""

EXAMPLES = r"""
- name: A NAT network with DHCP (virsh net-define + net-start + net-autostart)
  virtops.kvm.kvm_network:
    name: lab
    forward_mode: nat
    ips:
      - address: 192.168.100.1
        prefix: 24
        dhcp_ranges: [{start: 192.168.100.100, end: 192.168.100.200}]
    state: active
    autostart: true

- name: Reserve addresses and names, live (virsh net-update ... ip-dhcp-host --live --config)
  virtops.kvm.kvm_network:
    name: lab
    ips:
      - address: 192.168.100.1
        dhcp_hosts:
          - {mac: "52:54:00:10:00:01", ip: 192.168.100.11, name: web1}
          - {mac: "52:54:00:10:00:02", ip: 192.168.100.12, name: db1}
    dns_hosts:
      - {ip: 192.168.100.12, hostnames: [db1, db]}

- name: An isolated network (guests and host only), defined from XML
  virtops.kvm.kvm_network:
    name: backend
    xml: "{{ lookup('ansible.builtin.file', 'backend.xml') }}"
    state: active

- name: Guests on the host's existing bridge br0
  virtops.kvm.kvm_network:
    name: lan
    forward_mode: bridge
    bridge: br0
    state: active
    autostart: true

- name: Apply a changed DHCP range now (restarts the network; guests on it lose their link)
  virtops.kvm.kvm_network:
    name: lab
    ips:
      - address: 192.168.100.1
        dhcp_ranges: [{start: 192.168.100.50, end: 192.168.100.250}]
    restart: true
    force: true

- name: Remove a network nobody uses (virsh net-destroy + net-undefine)
  virtops.kvm.kvm_network:
    name: backend
    state: absent
"""

RETURN = r"""
changes:
  description: What was (or in check mode would be) done, in order; empty when nothing changed.
  returned: always
  type: list
  elements: str
  sample: ["dhcp host add (192.168.100.1): mac=52:54:00:10:00:01 name=web1 ip=192.168.100.11 (running and defined)"]
pending_restart:
  description:
    - Whether the network runs with an older definition than its persistent one (it gets it at its next
      start, or now with O(restart=true)).
  returned: always
  type: bool
  sample: false
network:
  description: The network after the task (in check mode, as it is now); null when it is not defined.
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str, returned: always, sample: lab}
    uuid: {description: UUID., type: str, returned: always, sample: 0b4c8f0e-2b57-4bd1-9a4d-0d4f8e3f2a11}
    forward_mode:
      description: V(nat), V(route), V(open), V(bridge), V(isolated) (or another libvirt mode).
      type: str
      returned: always
      sample: nat
    bridge: {description: 'The bridge (libvirt''s own, or the host bridge).', type: str, returned: always,
             sample: virbr1}
    domain: {description: 'The DNS domain of the network, or null.', type: str, returned: always, sample: null}
    ips:
      description: Addresses, with their DHCP ranges and host entries.
      type: list
      elements: dict
      returned: always
      sample:
        - family: ipv4
          address: 192.168.100.1
          prefix: 24
          dhcp_ranges: [{start: 192.168.100.100, end: 192.168.100.200}]
          dhcp_hosts: [{mac: "52:54:00:10:00:01", name: web1, ip: 192.168.100.11}]
    dns_hosts:
      description: DNS host entries.
      type: list
      elements: dict
      returned: always
      sample: [{ip: 192.168.100.12, hostnames: [db1, db]}]
    active: {description: Whether it runs., type: bool, returned: always, sample: true}
    persistent: {description: Whether it has a persistent definition., type: bool, returned: always, sample: true}
    autostart: {description: Started with the daemon., type: bool, returned: always, sample: true}
    leases:
      description: The current DHCP leases as libvirt reports them (C(virsh net-dhcp-leases)).
      type: list
      elements: dict
      returned: always
      sample: [{mac: "52:54:00:10:00:01", ip: 192.168.100.11, prefix: 24, hostname: web1, expiry_time: 1764480000}]
    used_by:
      description: The domains with an interface on the network (running ones by their live definition).
      type: list
      elements: dict
      returned: always
      sample: [{domain: web1, active: true}]
    pending_restart:
      description: Same as the top-level RV(pending_restart).
      type: bool
      returned: always
      sample: false
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._network.manager import NetworkManager  # noqa: E402


def main() -> None:
    module = AnsibleModule(**NetworkManager.module_kwargs())
    run_module(module, NetworkManager)


if __name__ == "__main__":
    main()
