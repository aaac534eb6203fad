#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_template
short_description: Seal a template domain once, so that its clones need no offline identity reset
version_added: 0.2.0
description:
  - "Seals a shut-off domain as a golden image, the way C(virt-sysprep) does: in one libguestfs appliance on the
    template's own disks, it removes what no clone may inherit (the machine-id, the SSH host keys, persistent NIC
    names, DHCP leases, logs and the journal) and leaves what the guest needs to make its own identity at first
    boot: an empty C(/etc/machine-id) that systemd fills, no C(/etc/hostname) (the name comes from the clone's
    cloud-init seed or its DHCP reservation), and, where the distribution has nothing that makes SSH host keys
    at boot (Debian and Ubuntu without a cloud-init datasource), a first-boot unit
    C(virtops-ssh-hostkeys.service) that runs C(ssh-keygen -A) before the SSH service."
  - "The seal is recorded in the domain's metadata (when, which operations, a fingerprint of each disk) and the
    disks are made read-only (C(chmod a-w)), as bases. While every disk still has the recorded fingerprint the
    template is sealed, and M(virtops.kvm.kvm_clone) then makes clones without an appliance of its own (see its
    O(virtops.kvm.kvm_clone#module:identity) option). Booting the template, or any write to its disks, unseals it;
    run this module again to seal it again."
  - "Refused, with nothing changed: a template that is not shut off, and a template whose disks already back
    overlays, clones or snapshots of other domains (sealing writes the disks, and a base must never change)."
  - Idempotent; check mode plans the seal and launches nothing.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
options:
  name:
    description:
      - The template domain (defined and shut off). Names follow the collection's naming rule (see the
        collection's docs, "Names and values").
    type: str
    required: true
  state:
    description:
      - V(sealed) - the template's disks are sealed and unchanged since.
    type: str
    choices: [sealed]
    default: sealed
  operations:
    description:
      - What sealing does, in this order. V(hostname) removes C(/etc/hostname) and the template's name from
        C(/etc/hosts); V(machine-id) empties C(/etc/machine-id) (and removes D-Bus's copy); V(ssh-hostkeys)
        removes the host keys and installs the first-boot key unit where the guest needs it; V(net-persistent)
        removes udev's persistent NIC rules; V(dhcp-leases) removes DHCP client leases; V(logfiles) empties every
        log below C(/var/log) and removes the journal's machine-id directories.
      - An operation that does not apply to the guest (no systemd, no SSH server) is skipped and reported.
      - A sealed template is sealed again only when its disks changed, or for an operation it was not sealed with.
    type: list
    elements: str
    choices: [hostname, machine-id, ssh-hostkeys, net-persistent, dhcp-leases, logfiles]
    default: [hostname, machine-id, ssh-hostkeys, net-persistent, dhcp-leases, logfiles]
  force_tcg:
    description:
      - Run the appliance under software emulation. V(auto) does so when the host has no usable KVM.
    type: str
    choices: [auto, "yes", "no"]
    default: auto
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
requirements:
  - libguestfs with its Python binding (C(python3-guestfs) on Debian and Ubuntu, C(python3-libguestfs) on EL)
seealso:
  - module: virtops.kvm.kvm_clone
  - name: virt-sysprep
    description: The operations this module's seal follows.
    link: https://libguestfs.org/virt-sysprep.1.html
"""

EXAMPLES = r"""
- name: Seal the golden image once (virt-sysprep -d debian12)
  virtops.kvm.kvm_template:
    name: debian12
    state: sealed

- name: Clones of it need no appliance; each gets its name from its seed or its DHCP reservation
  virtops.kvm.kvm_clone:
    template: debian12
    network: lab
    clones: [web1, web2, web3]
    cloud_init:
      user_data:
        packages: [nginx]
"""

RETURN = r"""
template:
  description: The template's name.
  returned: always
  type: str
  sample: debian12
disks:
  description: The template's writable disk files, those the seal covers.
  returned: always
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/debian12.qcow2]
sealed:
  description:
    - The seal as recorded in the template's metadata after the run. In check mode, when a seal is needed, the
      record before the run with C(planned), the operations a real run would do.
  returned: always
  type: dict
  sample:
    at: "2026-12-07T10:00:00Z"
    done: [hostname, machine-id, ssh-hostkeys, net-persistent, dhcp-leases, logfiles]
    skipped: []
    disks:
      - path: /var/lib/libvirt/images/debian12.qcow2
        size: 262406144
        mtime: 1796637600000000000
        digest: "sha256-16x64k:0f3c2a9d8e7b6a5c4d3e2f1a0b9c8d7e"
details:
  description: What each operation did, in words (only when the template was sealed by this run).
  returned: when changed and not in check mode
  type: dict
  sample:
    ssh-hostkeys: "6 host key file(s) removed, first-boot key generation virtops-ssh-hostkeys.service enabled"
protected:
  description: The disks made read-only by this run (C(chmod a-w)).
  returned: when changed and not in check mode
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/debian12.qcow2]
changes:
  description: What was done (in check mode, what would be).
  returned: always
  type: list
  elements: str
  sample: ["seal /var/lib/libvirt/images/debian12.qcow2: hostname, machine-id, ssh-hostkeys"]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._clone.template_manager import TemplateManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**TemplateManager.module_kwargs())
    run_module(module, TemplateManager)


if __name__ == "__main__":
    main()
