#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_host_info
short_description: Report a hypervisor's CPUs, memory and what its domains take of them
version_added: 0.2.0
description:
  - Read-only. Returns one hypervisor's capacity (logical CPUs, total and free memory) and its domains'
    share of it, so a play can choose where to place new clones across several hosts.
  - The numbers come from the libvirt API (what C(virsh nodeinfo), C(virsh freecell) and C(virsh dominfo)
    of every domain show), on a read-only connection.
  - Each domain counts what it holds, or would hold once started. An active domain (one with a QEMU process,
    whether running, paused or suspended; those C(virsh list) shows) counts its live values, the vCPUs online
    now and its current memory (what a balloon driver in the guest left it, else all of C(<memory>)).
  - An inactive domain counts what it starts with, the vCPUs online at boot (C(<vcpu current=...>), not the
    maximum it could hot-plug) and all of C(<memory>), because QEMU gives the guest all of it at start and
    only a balloon driver in the guest later gives the difference to C(<currentMemory>) back. So a domain
    with C(<currentMemory>) below C(<memory>) may count less once its guest has booted.
  - Domains are read one at a time; one undefined by someone else meanwhile is neither listed nor counted.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.INFO_MODULE
options:
  images:
    description:
      - Base images to check against what M(virtops.kvm.kvm_image) would put there. For each, RV(images) says
        whether it is settled, that is whether kvm_image with the same O(images[].dest), O(images[].mode),
        O(images[].owner) and O(images[].group) and a source of that sha256 would change nothing.
      - Read only and cheap. It costs a stat and an extended attribute read per image, with no hashing.
        It trusts the digest record kvm_image keeps on each file, and only while that record is fresh.
        A file without a fresh record is reported unsettled, never hashed here.
      - The files are checked on the machine the module runs on, like RV(host.drained). Run the module
        on the hypervisor itself.
      - The C(virtops.kvm.kvm_fleet) role uses this to skip kvm_image on hypervisors that already hold
        their bases.
    type: list
    elements: dict
    default: []
    suboptions:
      dest:
        description: The image's absolute path, as kvm_image's O(virtops.kvm.kvm_image#module:dest).
        type: path
        required: true
      sha256:
        description: The sha256 the image must have (64 hex digits, optionally after C(sha256:)).
        type: str
        required: true
      mode:
        description:
          - The mode kvm_image would set (its default C(0444)). A mode that lets the file be written is
            never settled, because kvm_image warns of it.
        type: raw
        default: "0444"
      owner:
        description: The owner kvm_image would set (a name or a number); not checked when not given.
        type: str
      group:
        description: The group kvm_image would set (a name or a number); not checked when not given.
        type: str
notes:
  - Memory in MiB is rounded down; domains' memory is summed in KiB before it is rounded.
seealso:
  - module: virtops.kvm.kvm_host
  - module: virtops.kvm.kvm_domain_info
"""

EXAMPLES = r"""
- name: What this hypervisor has
  virtops.kvm.kvm_host_info:
  register: hv

- name: Room for four more 1 GiB clones?
  ansible.builtin.assert:
    that:
      - hv.host.memory_total_mib - hv.host.memory_defined_mib >= 4 * 1024
      - hv.host.vcpus_defined + 4 <= 2 * hv.host.cpus
    fail_msg: "{{ hv.host.hostname }} is full: {{ hv.host.domains_total }} domains defined"

- name: Which base images are already in place, so kvm_image may be skipped
  virtops.kvm.kvm_host_info:
    images:
      - dest: /var/lib/libvirt/images/base.qcow2
        sha256: "{{ lookup('ansible.builtin.file', 'base.qcow2.sha256') }}"
  register: hv_images

- name: One remote hypervisor over SSH
  virtops.kvm.kvm_host_info:
    uri: qemu+ssh://root@hv2.example.com/system
  register: hv2
"""

RETURN = r"""
host:
  description: The hypervisor's capacity and what its domains take of it.
  returned: always
  type: dict
  contains:
    hostname:
      description: The hypervisor's host name, as libvirt reports it (C(virsh hostname)).
      returned: always
      type: str
      sample: hv1.example.com
    uri:
      description: The URI of the connection, as libvirt names it.
      returned: always
      type: str
      sample: qemu:///system
    cpus:
      description: Logical CPUs online on the host (the CPU(s) line of C(virsh nodeinfo)).
      returned: always
      type: int
      sample: 16
    memory_total_mib:
      description: The host's memory in MiB (the Memory size line of C(virsh nodeinfo)).
      returned: always
      type: int
      sample: 64213
    memory_free_mib:
      description: The host's free memory in MiB, as libvirt reports it (C(virsh freecell)).
      returned: always
      type: int
      sample: 41877
    domains_total:
      description: All domains, active or not (C(virsh list --all)).
      returned: always
      type: int
      sample: 12
    domains_running:
      description: The active domains (running, paused or suspended, with a QEMU process; C(virsh list)).
      returned: always
      type: int
      sample: 5
    vcpus_allocated:
      description: The vCPUs online in the active domains.
      returned: always
      type: int
      sample: 10
    memory_allocated_mib:
      description: The current (balloon) memory of the active domains, in MiB.
      returned: always
      type: int
      sample: 10240
    vcpus_defined:
      description:
        - The vCPUs of all domains, active or not; an inactive domain counts the vCPUs it boots with
          (C(<vcpu current=...>)), not its maximum.
      returned: always
      type: int
      sample: 24
    memory_defined_mib:
      description:
        - The memory of all domains, active or not, in MiB; an active domain counts its current memory,
          an inactive one the C(<memory>) it starts with (not C(<currentMemory>), see the description).
      returned: always
      type: int
      sample: 24576
    drained:
      description:
        - Whether the hypervisor is drained for maintenance (the C(virtops.kvm.kvm_drain) role's marker
          C(/var/lib/virtops-kvm/drained.json) exists on the machine the module runs on, so run it on the
          hypervisor itself). Placement (P(virtops.kvm.fleet_placement#filter)) puts no new clone there.
      returned: always
      type: bool
      sample: false
    drained_moved:
      description: While drained, which domain the drain moved to which hypervisor (inventory names).
      returned: always
      type: dict
      sample: {stu-01: hv1}
  sample:
    hostname: hv1.example.com
    uri: qemu:///system
    cpus: 16
    memory_total_mib: 64213
    memory_free_mib: 41877
    domains_total: 12
    domains_running: 5
    vcpus_allocated: 10
    memory_allocated_mib: 10240
    vcpus_defined: 24
    memory_defined_mib: 24576
images:
  description:
    - One entry per O(images) item, in order. An entry is settled when kvm_image would change nothing
      for that image.
  returned: always
  type: list
  elements: dict
  contains:
    dest:
      description: The image's path.
      returned: always
      type: str
      sample: /var/lib/libvirt/images/base.qcow2
    settled:
      description: Whether kvm_image would change nothing. When false, run it.
      returned: always
      type: bool
      sample: true
    sha256:
      description: The sha256 the file's fresh digest record names, or null when there is none.
      returned: always
      type: str
      sample: 5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef
    reason:
      description:
        - Why the image is not settled, empty when it is. Possible reasons are C(missing), C(no fresh
          digest record), C(other content), C(mode), C(owner), C(group), C(partial copy beside it), or an
          option's error.
      returned: always
      type: str
      sample: missing
    size:
      description: The file's size in bytes.
      returned: when the file exists
      type: int
      sample: 1073741824
domains:
  description: The names of all domains, active or not, sorted.
  returned: always
  type: list
  elements: str
  sample: [template, web1, web2]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._host.info import HostInfoManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**HostInfoManager.module_kwargs())
    run_module(module, HostInfoManager)


if __name__ == "__main__":
    main()
