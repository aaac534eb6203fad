#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_domain_info
short_description: List libvirt domains with their state, resources, disks and interfaces
version_added: 0.1.0
description:
  - Read-only. Returns all domains (like C(virsh list --all)), or those named, or those in given states,
    each with the C(virsh dominfo) fields plus disks, interfaces, consoles and the config file path.
  - With O(xml=true), each domain also carries its inactive XML (C(virsh dumpxml --inactive)).
  - For clones made by virtops.kvm.kvm_clone, C(base_drift) (see RV(virtops.kvm.kvm_domain#module:domain))
    reports an overlay whose base changed after the overlay was made (size, modification time or sampled
    content); each base is read once per run.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.INFO_MODULE
options:
  name:
    description:
      - Only these domains. Names that are not defined are listed in RV(missing), not an error.
    type: list
    elements: str
    aliases: [names]
  state:
    description:
      - Only domains in one of these states (V(shutdown) is taken as V(shutoff)).
      - C(virsh list) without C(--all) is O(state=[running, blocked, paused, in_shutdown, pmsuspended]).
    type: list
    elements: str
    choices: [running, blocked, paused, in_shutdown, shutoff, shutdown, crashed, pmsuspended, nostate]
  xml:
    description:
      - Add each domain's inactive XML as RV(domains[].xml).
    type: bool
    default: false
seealso:
  - module: virtops.kvm.kvm_domain
"""

EXAMPLES = r"""
- name: All domains (virsh list --all)
  virtops.kvm.kvm_domain_info:
  register: all_domains

- name: Names of the running ones (virsh list)
  ansible.builtin.debug:
    msg: "{{ all_domains.domains | selectattr('state', 'eq', 'running') | map(attribute='name') }}"

- name: One domain with its XML (virsh dominfo web1; virsh dumpxml web1)
  virtops.kvm.kvm_domain_info:
    name: web1
    xml: true
  register: web1
"""

RETURN = r"""
domains:
  description:
    - The selected domains, sorted by name (in the order of O(name) when given); each is the same dict as
      RV(virtops.kvm.kvm_domain#module:domain), plus RV(domains[].xml) with O(xml=true).
  returned: always
  type: list
  elements: dict
  contains:
    xml:
      description: The inactive domain XML.
      returned: when O(xml=true)
      type: str
      sample: "<domain type='qemu'>...</domain>"
  sample:
    - name: web1
      uuid: 16a16955-5bad-4175-b74c-78069b24e361
      id: 7
      state: running
      state_reason: booted
      active: true
      persistent: true
      autostart: false
      managed_save: false
      vcpus: 1
      memory_mib: 256
      max_memory_mib: 256
      cpu_time_ns: 3520000000
      domain_type: qemu
      title: null
      description: null
      os: {type: hvm, arch: x86_64, machine: pc-i440fx-7.2}
      disks: []
      interfaces: [{type: user, mac: "52:54:00:e3:1e:96", source: null, model: virtio}]
      consoles: [{device: serial, type: pty, path: /dev/pts/3, target_type: isa-serial, port: "0", log: null}]
      config_file: /etc/libvirt/qemu/web1.xml
      provenance: null
      base_drift: []
      pending_restart: false
missing:
  description: Names given in O(name) that are not defined.
  returned: always
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._domain.info import DomainInfoManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**DomainInfoManager.module_kwargs())
    run_module(module, DomainInfoManager)


if __name__ == "__main__":
    main()
