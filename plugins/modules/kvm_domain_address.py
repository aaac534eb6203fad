#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_domain_address
short_description: Wait until every domain of a batch has an IP address, and return the addresses
version_added: 0.1.0
description:
  - Read-only. Polls the named running domains together (one loop for the whole batch, so it waits as long as
    the slowest guest, not the sum) until each has an address, or O(timeout) passes.
  - "The addresses come from the sources the virtops.kvm.libvirt inventory plugin uses, in the same order and
    with the same rules (DHCP leases of libvirt networks, the QEMU guest agent, the hypervisor's ARP table; only
    addresses on the domain's own NICs, never loopback or link-local), so the address a play waited for is the
    C(ansible_host) the inventory gives after C(meta: refresh_inventory)."
  - A domain that is not running fails at once (it will get no address); the others are still waited for. The
    task fails when any domain has no address at the end, naming each with the reason per source.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.INFO_MODULE
attributes:
  check_mode:
    support: full
    details:
      - Reads the addresses once and waits for nothing; domains that do not exist yet (clones a check-mode
        virtops.kvm.kvm_clone only planned) or have no address are reported with a warning, not an error.
options:
  name:
    description:
      - The domains whose addresses to wait for. All must be defined.
    type: list
    elements: str
    required: true
    aliases: [names]
  sources:
    description:
      - Where an address comes from, tried in this order for each domain; the first that has one wins.
      - V(lease) - the DHCP leases of the libvirt networks the domain's NICs are on.
      - V(agent) - the QEMU guest agent (asked only when the domain has a connected agent channel; a read-write
        connection is opened then).
      - V(arp) - the hypervisor's ARP/neighbour table.
    type: list
    elements: str
    choices: [lease, agent, arp]
    default: [lease, agent, arp]
  family:
    description:
      - The address family wanted; V(any) takes IPv4 first, else IPv6.
    type: str
    choices: [ipv4, ipv6, any]
    default: ipv4
  wait:
    description:
      - Wait for the addresses. V(false) reads once, and fails if one is missing.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the whole batch.
    type: int
    default: 300
seealso:
  - module: virtops.kvm.kvm_clone
  - module: virtops.kvm.kvm_domain
  - plugin: virtops.kvm.libvirt
    plugin_type: inventory
"""

EXAMPLES = r"""
- name: Clone a class onto the lab network and start it
  virtops.kvm.kvm_clone:
    template: centos7
    clones: [stu01, stu02, stu03]
    network: lab
    state: running

- name: Wait until every clone has its DHCP address
  virtops.kvm.kvm_domain_address:
    name: [stu01, stu02, stu03]
    sources: [lease]
    timeout: 180
  register: class_addresses

- name: Show them
  ansible.builtin.debug:
    msg: "{{ class_addresses.hosts }}"

- name: Read the inventory again, so the clones are hosts with ansible_host set
  ansible.builtin.meta: refresh_inventory
"""

RETURN = r"""
addresses:
  description: Per domain name, what was found.
  returned: always
  type: dict
  sample:
    stu01: {address: 192.168.100.101, source: lease, error: null,
            addresses: [{mac: "52:54:00:3a:91:0c", address: 192.168.100.101, prefix: 24, family: ipv4}]}
  contains:
    address:
      description: The address (the first of the family asked for, in NIC order), or null.
      type: str
    source:
      description: The source it came from (V(lease), V(agent), V(arp)), or null.
      type: str
    addresses:
      description: Every usable address of that source on the domain's NICs (C(mac), C(address), C(prefix), C(family)).
      type: list
      elements: dict
    error:
      description: Why there is no address (per source), or null.
      type: str
hosts:
  description: Domain name to address, for the domains that have one.
  returned: always
  type: dict
  sample: {stu01: 192.168.100.101, stu02: 192.168.100.102}
waited:
  description: Seconds the task waited.
  returned: always
  type: float
  sample: 12.4
missing:
  description: The domains without an address.
  returned: on failure
  type: list
  elements: str
  sample: [stu03]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._inventory.address_manager import AddressManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**AddressManager.module_kwargs())
    run_module(module, AddressManager)


if __name__ == "__main__":
    main()
