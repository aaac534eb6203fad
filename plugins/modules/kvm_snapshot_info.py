#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_snapshot_info
short_description: List a libvirt domain's snapshots with their tree, the current one and each disk's layers
version_added: 0.1.0
description:
  - "Read-only. Returns every snapshot of a domain (like C(virsh snapshot-list --tree) and C(snapshot-info)), or
    those named: kind, state, memory, parent and children, whether it is the current snapshot, and for external
    snapshots each disk's overlay file and base image."
  - Also returns the domain's current disk chains (C(qemu-img info --backing-chain)), so what a revert or a
    delete of an external snapshot would touch can be seen before.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
  - virtops.kvm.attributes.INFO_MODULE
options:
  domain:
    description:
      - The domain whose snapshots are listed. A domain that is not defined is an error.
    type: str
    required: true
  name:
    description:
      - Only these snapshots. Names that do not exist are listed in RV(missing), not an error.
    type: list
    elements: str
    aliases: [names]
seealso:
  - module: virtops.kvm.kvm_snapshot
"""

EXAMPLES = r"""
- name: All snapshots of web1 (virsh snapshot-list web1 --tree)
  virtops.kvm.kvm_snapshot_info:
    domain: web1
  register: snaps

- name: The current one (virsh snapshot-current web1 --name)
  ansible.builtin.debug:
    msg: "{{ snaps.current }}"

- name: Snapshots taken before the upgrade
  ansible.builtin.debug:
    msg: "{{ snaps.snapshots | selectattr('name', 'match', 'pre-') | map(attribute='name') }}"
"""

RETURN = r"""
snapshots:
  description: The selected snapshots, oldest first (in the order of O(name) when given).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The snapshot's name.
      type: str
      returned: always
    description:
      description: Its description, or null.
      type: str
      returned: always
    kind:
      description: V(internal) (inside the qcow2 images) or V(external) (overlay files).
      type: str
      returned: always
    state:
      description: The domain's state when the snapshot was taken (V(running), V(paused), V(shutoff),
        V(disk-snapshot) for an external snapshot of a running domain).
      type: str
      returned: always
    memory:
      description: Whether the snapshot holds the guest's memory (a revert resumes the guest where it was).
      type: bool
      returned: always
    creation_time:
      description: When it was taken, in seconds since the epoch.
      type: int
      returned: always
    parent:
      description: The snapshot it was taken after (its parent in the tree), or null for a root.
      type: str
      returned: always
    children:
      description: The snapshots taken after it on its branch.
      type: list
      elements: str
      returned: always
    current:
      description: Whether it is the domain's current snapshot (C(virsh snapshot-current)).
      type: bool
      returned: always
    disks:
      description: The domain's disks as the snapshot covers them.
      type: list
      elements: dict
      returned: always
      contains:
        target:
          description: The disk (C(vda)).
          type: str
          returned: always
        snapshot:
          description: V(internal), V(external) or V(no) (not covered, for example a CD-ROM).
          type: str
          returned: always
        file:
          description: For an external snapshot, the overlay it created; else null.
          type: str
          returned: always
        base:
          description: For an external snapshot, the image it froze (a revert puts a fresh overlay on it); else null.
          type: str
          returned: always
        in_chain:
          description: Whether the disk's current chain stands on RV(snapshots[].disks[].base) (a delete then merges
            a layer).
          type: bool
          returned: always
  sample:
    - name: pre
      description: before the upgrade
      kind: external
      state: disk-snapshot
      memory: false
      creation_time: 1796014000
      parent: null
      children: [post]
      current: false
      disks:
        - target: vda
          snapshot: external
          file: /var/lib/libvirt/images/web2.vda.pre.qcow2
          base: /var/lib/libvirt/images/web2.qcow2
          in_chain: true
current:
  description: The name of the domain's current snapshot, or null.
  returned: always
  type: str
  sample: post
roots:
  description: The snapshots without a parent (the roots of the tree), oldest first.
  returned: always
  type: list
  elements: str
  sample: [pre]
missing:
  description: Names given in O(name) that are not snapshots of the domain.
  returned: always
  type: list
  elements: str
  sample: []
disks:
  description: The domain's writable disks with their current backing chains, top first.
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: The disk (C(vda)).
      type: str
      returned: always
    chain:
      description: The disk's file and every file below it, top first (empty when the chain cannot be read).
      type: list
      elements: str
      returned: always
  sample:
    - target: vda
      chain:
        - /var/lib/libvirt/images/web2.vda.post.qcow2
        - /var/lib/libvirt/images/web2.vda.pre.qcow2
        - /var/lib/libvirt/images/web2.qcow2
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.info import SnapshotInfoManager  # noqa: E402


def main() -> None:
    module = AnsibleModule(**SnapshotInfoManager.module_kwargs())
    run_module(module, SnapshotInfoManager)


if __name__ == "__main__":
    main()
