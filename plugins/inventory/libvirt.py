# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: libvirt
short_description: The domains of one or several libvirt hosts as inventory hosts, with their addresses
version_added: 0.1.0
description:
  - Lists the domains (running or not) of every libvirt URI in O(uris) as hosts, read with libvirt-python on the
    controller. The URIs are read at once, one thread and one connection each, within O(timeout).
  - A URI that cannot be read is a warning and the other URIs' domains are still listed; with O(strict=true) it is
    an error.
  - "Groups: C(hypervisor_<hypervisor>) for each URI, C(state_<state>) (C(state_running), C(state_shutoff), ...),
    and C(template_<template>) for the clones virtops.kvm.kvm_clone made (from the provenance it records in the
    domain's metadata). Names are made safe: every character other than letters, digits and C(_) becomes C(_)."
  - The hypervisor of a URI is its host (C(127.0.0.2), C(kvm1.example.com)), or C(localhost) for a URI without
    one (C(qemu:///system)); a name already taken by an earlier URI of the list gets C(_2), C(_3)...
  - "Host variables, each named with O(variable_prefix) (default C(virtops_)) in front: C(name) (the domain's),
    C(uuid), C(state), C(persistent), C(autostart), C(vcpus), C(memory_mib), C(disks) (the disks' source paths),
    C(macs), C(interfaces) (C(mac), C(type), C(source)), C(title), C(description), C(uri), C(hypervisor),
    C(provenance), C(addresses), C(address_source) and C(address_error)."
  - C(provenance) is the record virtops.kvm.kvm_clone keeps in a clone's metadata (C(template), C(mode),
    C(created_by), C(created_disks), C(identity)), V(null) for a domain it did not make.
  - C(ansible_host) is the address of a running domain found by the first of O(address_sources) that has one; a
    domain without an address has no C(ansible_host) and C(<prefix>address_error) says why.
  - See docs/inventory.md in the collection for how the sources work, NAT networks and caching.
author:
  - virtops.kvm developers (@virtops)
requirements:
  - libvirt-python (C(python3-libvirt)) and lxml (C(python3-lxml)) in the Python that runs Ansible (the controller)
  - for C(qemu+ssh://) URIs, an C(ssh) client on the controller that logs in without a prompt
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description:
      - The name of this plugin. A file is read by this plugin only when it says so here and its name ends
        with C(libvirt.yml) or C(libvirt.yaml).
    type: str
    required: true
    choices: [virtops.kvm.libvirt]
  uris:
    description:
      - The libvirt URIs to list, for example V(qemu:///system) or
        V(qemu+ssh://root@kvm1.example.com/system?keyfile=/home/ops/.ssh/kvm&no_tty=1).
      - A URI libvirt could not read (no C(driver://), an unknown transport, a port that is no number, white space)
        or listed twice is an error before anything connects.
      - Each URI gets its own connection, read-only unless V(agent) is in O(address_sources).
    type: list
    elements: str
    default: [qemu:///system]
  address_sources:
    description:
      - Where a running domain's C(ansible_host) comes from, tried in this order; the first that has an address
        on one of the domain's own NICs (matched by MAC) wins. IPv4 is preferred to IPv6; loopback and link-local
        addresses never count.
      - V(lease) - the DHCP leases of the libvirt networks the domain's NICs are on.
      - V(agent) - the QEMU guest agent in the guest; asked only when the domain has an agent channel libvirt
        reports connected, and any failure is ignored. Needs a read-write connection.
      - V(arp) - the hypervisor's ARP/neighbour table (guests on a bridge, once they have sent a packet).
      - An empty list sets no C(ansible_host).
    type: list
    elements: str
    choices: [lease, agent, arp]
    default: [lease, agent, arp]
  timeout:
    description:
      - Seconds the URIs have, all together (they are read at once), to be connected and read. A URI that has
        not answered by then is treated as unreachable.
    type: int
    default: 30
  variable_prefix:
    description:
      - The start of every host variable this plugin sets (except C(ansible_host) and C(ansible_ssh_common_args)).
    type: str
    default: virtops_
  qualify_names:
    description:
      - What to do when the same domain name is listed by more than one URI (two hypervisors, or one daemon
        reached through two URIs). The host name is the domain name unless this says otherwise.
      - V(on_collision) - each domain with such a name is named C(<domain>_<hypervisor>), with a warning; the others
        keep their name.
      - V(always) - every host is named C(<domain>_<hypervisor>).
      - V(never) - the domain of the first URI in O(uris) keeps the name; the others are left out with a warning.
      - C(<prefix>name) always holds the domain's own name.
    type: str
    choices: [on_collision, always, never]
    default: on_collision
  proxy_jump:
    description:
      - For the domains of a URI with a host (a remote hypervisor, for example C(qemu+ssh://root@kvm1/system)), set
        C(ansible_ssh_common_args) to C(-o ProxyJump=[user@]host[:port]), so Ansible reaches guests on the
        hypervisor's NAT network through the hypervisor. The user and port are the URI's for the ssh transports.
      - Never for the domains of a local URI. O(compose) can override C(ansible_ssh_common_args).
    type: bool
    default: false
  strict:
    description:
      - If V(true), a URI that cannot be read is an error (the inventory source fails) instead of a warning.
      - Also, as in the constructed fragment, an invalid O(compose), O(groups) or O(keyed_groups) entry is then
        an error instead of being skipped.
    type: bool
    default: false
notes:
  - When any URI could not be read, the result is not written to the cache, so the next run tries it again.
  - "A cached result is used only for the same O(uris) and O(address_sources); C(ansible-inventory --flush-cache)
    and C(meta: refresh_inventory) read the URIs again."
seealso:
  - module: virtops.kvm.kvm_domain_info
  - module: virtops.kvm.kvm_clone
"""

EXAMPLES = r"""
# kvm.libvirt.yml: the local daemon's domains, ansible_host from DHCP leases, then the guest agent, then ARP
plugin: virtops.kvm.libvirt
uris:
  - qemu:///system

# fleet.libvirt.yml: two hypervisors over ssh, their NAT guests reached through them, a few groups of our own
plugin: virtops.kvm.libvirt
uris:
  - qemu+ssh://root@kvm1.example.com/system?keyfile=/home/ops/.ssh/kvm&no_tty=1
  - qemu+ssh://root@kvm2.example.com/system?keyfile=/home/ops/.ssh/kvm&no_tty=1
address_sources: [lease, agent]
proxy_jump: true
qualify_names: always
strict: false
timeout: 20
keyed_groups:
  - key: virtops_provenance.mode | default('none', true)
    prefix: clone_mode
compose:
  ansible_user: "'root'"
groups:
  big: virtops_memory_mib >= 4096
  addressless: virtops_address_error is not none
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/virtops-inventory
cache_timeout: 300
"""

from ansible.errors import AnsibleParserError  # noqa: E402
from ansible.module_utils.basic import missing_required_lib  # noqa: E402
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable  # noqa: E402
from ansible.utils.display import Display  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils import _deps  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._inventory import addresses, gather, hosts, uris  # noqa: E402

display = Display()

_CONTROLLER_HINT = "Install it in the Python that runs Ansible (the controller): python3-{0} or 'pip install {1}'."


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    NAME = "virtops.kvm.libvirt"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("libvirt.yml", "libvirt.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        self._read_config_data(path)
        for lib, package, pip, error in (
            ("libvirt-python", "libvirt", "libvirt-python", _deps.LIBVIRT_IMPORT_ERROR),
            ("lxml", "lxml", "lxml", _deps.LXML_IMPORT_ERROR),
        ):
            if error is not None:
                raise AnsibleParserError(f"{missing_required_lib(lib)} {_CONTROLLER_HINT.format(package, pip)}")
        try:
            parsed = uris.parse_all(self.get_option("uris"))
            sources = addresses.check_sources(self.get_option("address_sources"))
            prefix = hosts.check_prefix(self.get_option("variable_prefix"))
            qualify = hosts.check_qualify(self.get_option("qualify_names"))
            timeout = self.get_option("timeout")
            if not isinstance(timeout, int) or timeout <= 0:
                raise InvalidInput(f"timeout must be a positive number of seconds, not {timeout!r}.")
        except InvalidInput as exc:
            raise AnsibleParserError(f"{self.NAME}: {exc.message}") from exc

        results = self._results(path, parsed, sources, timeout, cache)
        strict = self.get_option("strict")
        failed = [r for r in results if not r["ok"]]
        if failed and strict:
            raise AnsibleParserError(
                f"{self.NAME}: {len(failed)} of {len(results)} URIs could not be read (strict: true): "
                + " ".join(r["error"] for r in failed)
            )
        for r in failed:
            display.warning(f"{self.NAME}: the domains of {r['uri']} are not listed: {r['error']}")
        jumps = {p["uri"]: uris.jump_target(p) for p in parsed} if self.get_option("proxy_jump") else {}
        built = hosts.build(results, jumps, prefix=prefix, qualify=qualify)
        for warning in built["warnings"]:
            display.warning(f"{self.NAME}: {warning}")
        self._populate(built, strict)

    def _results(self, path, parsed, sources, timeout, cache):
        """The URIs' records: from the cache when allowed and it holds this query, else read (and cached)."""
        use_cache = self.get_option("cache")
        key = self.get_cache_key(path)
        query = dict(uris=[p["uri"] for p in parsed], sources=sources)
        if use_cache and cache:
            try:
                cached = self._cache[key]
            except KeyError:
                cached = None
            if isinstance(cached, dict) and cached.get("query") == query:
                return cached["results"]
        results = gather.gather(parsed, sources, timeout)
        if use_cache and all(r["ok"] for r in results):
            self._cache[key] = dict(query=query, results=results)
        return results

    def _populate(self, built, strict):
        for group in sorted(built["groups"]):
            self.inventory.add_group(group)
        for host, variables in built["hosts"].items():
            self.inventory.add_host(host)
            for name, value in variables.items():
                self.inventory.set_variable(host, name, value)
        for group, members in sorted(built["groups"].items()):
            for host in members:
                self.inventory.add_child(group, host)
        for host in built["hosts"]:
            variables = self.inventory.get_host(host).get_vars()
            self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option("keyed_groups"), variables, host, strict=strict)
