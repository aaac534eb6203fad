#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_fleet_host
short_description: Converge one hypervisor's share of a fleet of clones in one module run
version_added: 0.2.0
description:
  - "The engine of the C(virtops.kvm.kvm_fleet) role: what the role did in up to nine module tasks per hypervisor
    (each an SSH round trip and a module start) runs here in one, over one libvirt connection, with the same
    steps, rules and results. Each step is done by the module it replaces, with that module's checks:"
  - "1. what is defined on the host and, with O(prune), which clones of the fleet are no longer listed
    (M(virtops.kvm.kvm_domain_info)); 2. the template sealed once (M(virtops.kvm.kvm_template), with O(seal));
    3. the clones made, one batch (M(virtops.kvm.kvm_clone)); 4. the fleet's network started
    (M(virtops.kvm.kvm_network), with O(network)); 5. the first boot of the clones made by this run
    (M(virtops.kvm.kvm_domain), with O(first_boot)); 6. every defined clone put in its state (kvm_domain, one
    batch); 7. files read from the clones left shut off (M(virtops.kvm.kvm_guestfs), read-only, with
    O(verify_paths)); 8. the unlisted clones of the fleet removed (kvm_clone, with O(prune))."
  - "A step that fails ends the run: the failure is that step's own (its message, its type in C(error)), and
    also says the step (C(step)) and what the steps before it did (C(done)). The seal is the exception: a template
    that others already stand on is left unsealed, with a warning naming them, and its new clones get kvm_clone's
    offline identity reset."
  - "Placement over many hypervisors is not done here: it needs every hypervisor's answer, so the role reads each
    host with M(virtops.kvm.kvm_host_info) and places the clones on the controller
    (C(virtops.kvm.fleet_placement)); this module takes the share placed on its host."
  - "Idempotent: a rerun of a converged host changes nothing. Check mode changes nothing; the clones kvm_clone
    would create are not defined then, so they are not put in a state or read."
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
options:
  state:
    description:
      - V(present) - the clones exist and each is in its state.
      - V(absent) - the listed clones (and with O(prune) every other clone of the fleet) are removed, with the
        disk files and XML copies kvm_clone made for them; a file something else stands on is kept.
    type: str
    choices: [present, absent]
    default: present
  clones:
    description:
      - This host's clones. Each is a dict with C(name) and, optionally, C(state) (V(running), V(shutdown),
        V(destroyed), V(paused) or V(present), default O(clone_state)); C(memory) (MiB), C(vcpus) and C(autostart),
        which shape a new clone and are then kept by kvm_domain; C(macs), C(uuid) and C(ip), the clone's identity,
        checked on an existing clone; C(hostname), C(files) and C(cloud_init), which only a new clone gets (see
        M(virtops.kvm.kvm_clone)'s O(virtops.kvm.kvm_clone#module:clones)). C(host) and C(group) (the
        placement's keys) are accepted and not used here.
      - Names follow the collection's naming rule and are unique.
    type: list
    elements: dict
    default: []
  template:
    description:
      - The template domain (shut off). Exactly one of O(template), O(template_xml) and O(template_xml_file) is
        needed with O(state=present) while a clone is to be made.
    type: str
  template_xml:
    description:
      - The template's domain XML (it names the template's disks).
    type: str
  template_xml_file:
    description:
      - A file on the managed host with the template's domain XML (for example written by C(virsh dumpxml)).
    type: path
  seal:
    description:
      - Seal O(template) once (M(virtops.kvm.kvm_template)) before cloning it, so that its clones need no offline
        identity reset. A template that already has clones and was never sealed is left as it is, with a warning.
    type: bool
    default: false
  create:
    description:
      - V(false) makes no clone and seals nothing; only the clones already defined are put in their state. The
        role sets it in check mode while a base image it would copy is not on the host yet.
    type: bool
    default: true
  mode:
    description:
      - V(overlay) - qcow2 overlays backed by the template's disks; V(copy) - full copies.
    type: str
    choices: [overlay, copy]
    default: overlay
  dest_dir:
    description:
      - Directory for the clones' disks (default, the template disk's directory).
    type: path
  xml_dir:
    description:
      - Directory where a copy of each clone's XML is written (and removed with the clone).
    type: path
  domain_type:
    description:
      - The clones' domain type; V(auto) asks the host (kvm where usable, else qemu).
    type: str
    choices: [auto, kvm, qemu]
    default: auto
  protect_base:
    description:
      - Make the template's disks read-only once overlays stand on them.
    type: bool
    default: true
  parallel:
    description:
      - How many clones kvm_clone makes at once.
    type: int
    default: 4
  network:
    description:
      - A libvirt network. Each new clone's first interface is attached to it, the network is started if it is
        defined but not running, and the clones' reserved addresses are returned in RV(addresses).
    type: str
  dhcp_reservations:
    description:
      - With O(network), give each clone a static DHCP reservation there (kept on reruns, removed with the clone).
    type: bool
    default: true
  identity:
    description:
      - kvm_clone's identity reset of each new clone (see M(virtops.kvm.kvm_clone)); an empty C(operations) list
        turns it off.
    type: dict
  cloud_init:
    description:
      - A cloud-init NoCloud seed per new clone (see M(virtops.kvm.kvm_clone)).
    type: dict
  clone_state:
    description:
      - The state of a clone that gives none.
    type: str
    choices: [running, shutdown, destroyed, paused, present]
    default: running
  shutdown_timeout:
    description:
      - Seconds a graceful shutdown may take (all clones shut down at once).
    type: int
    default: 120
  force:
    description:
      - When a graceful shutdown times out, power the clone off instead of failing it.
    type: bool
    default: false
  first_boot:
    description:
      - Boot each clone made by this run once, waiting for O(boot_marker), before putting it in its state (a clone
        declared V(shutdown) then boots once).
    type: bool
    default: false
  boot_marker:
    description:
      - A regex each clone this run starts must print on its serial console (a C(<serial type='file'>) log) before
        the run goes on. Needed by O(first_boot).
    type: str
  boot_timeout:
    description:
      - Seconds to wait for O(boot_marker).
    type: int
    default: 180
  verify_paths:
    description:
      - Files to read, read-only, from the disks of each clone left shut off (state V(shutdown) or V(destroyed));
        a missing file fails the run. A running clone is never read.
    type: list
    elements: str
    default: []
  verify_mounts:
    description:
      - Guest device to mount point for O(verify_paths), for example C(/dev/sda1) to C(/); unset, OS inspection.
    type: dict
  prune:
    description:
      - Remove the clones of the fleet that are not listed in O(clones). A domain is removed only if its name starts
        with C(<fleet_name>-), kvm_clone's provenance record says it made it, and from this template when the
        template is known. Needs O(fleet_name).
    type: bool
    default: false
  fleet_name:
    description:
      - The fleet's name, the prefix C(<fleet_name>-) that marks its clones (see O(prune)).
    type: str
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
requirements:
  - libguestfs with its Python binding, for O(seal) and O(verify_paths) only
seealso:
  - module: virtops.kvm.kvm_clone
  - module: virtops.kvm.kvm_domain
  - module: virtops.kvm.kvm_guestfs
  - module: virtops.kvm.kvm_template
"""

EXAMPLES = r"""
- name: Three clones of a sealed template, on the lab network, running
  virtops.kvm.kvm_fleet_host:
    template: debian12
    seal: true
    network: lab
    clones: [{name: web-1}, {name: web-2}, {name: web-3, memory: 2048}]

- name: One shut off, read a file from it; drop clones of fleet "web" not listed
  virtops.kvm.kvm_fleet_host:
    template: debian12
    clones:
      - {name: web-1}
      - {name: web-2, state: shutdown}
    verify_paths: [/etc/os-release]
    prune: true
    fleet_name: web
  register: fleet

- name: Remove the fleet
  virtops.kvm.kvm_fleet_host:
    state: absent
    clones: [{name: web-1}, {name: web-2}]
"""

RETURN = r"""
existing:
  description: The listed clones that were defined before the run.
  returned: when state is present
  type: list
  elements: str
  sample: [web-1]
created:
  description: The clones made by this run (in check mode, those that would be).
  returned: when state is present
  type: list
  elements: str
  sample: [web-2]
clones:
  description: kvm_clone's result per clone (name, state, changed, disks, and ip with a reservation).
  returned: when state is present
  type: list
  elements: dict
  sample: [{name: web-2, state: present, changed: true, ip: 192.168.100.12}]
bases:
  description: kvm_clone's report on the base files the clones stand on.
  returned: when state is present
  type: list
  elements: dict
  sample: [{path: /var/lib/libvirt/images/debian12.qcow2, protected: true}]
domains:
  description: Every defined clone after the run, as M(virtops.kvm.kvm_domain_info) returns a domain.
  returned: when state is present
  type: list
  elements: dict
  sample: [{name: web-1, state: running, autostart: false}]
addresses:
  description: Clone name to its reserved address on O(network).
  returned: when state is present
  type: dict
  sample: {web-1: 192.168.100.11}
verified:
  description: Clone name to path to the file's text (base64 for a file that is not text), from O(verify_paths).
  returned: when state is present
  type: dict
  sample: {web-2: {/etc/hostname: "web-2\n"}}
pruned:
  description: The unlisted clones of the fleet removed by this run (O(prune)).
  returned: when state is present
  type: list
  elements: str
  sample: [web-3]
removed:
  description:
    - The clones removed by this run (state absent; in check mode, those that would be), listed and, with O(prune),
      unlisted. A listed clone that was not defined is not in it.
  returned: when state is absent
  type: list
  elements: str
  sample: [web-1, web-2]
steps:
  description: The steps that ran (see the description), in alphabetical order.
  returned: always
  type: list
  elements: str
  sample: [clone, states]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._fleet.manager import FleetHostManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**FleetHostManager.module_kwargs())
    run_module(module, FleetHostManager)


if __name__ == "__main__":
    main()
