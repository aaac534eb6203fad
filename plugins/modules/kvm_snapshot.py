#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_snapshot
short_description: Create, revert to and delete snapshots of a libvirt domain, keeping the overlay rule
version_added: 0.1.0
description:
  - Brings one snapshot of one domain to a state, like C(virsh snapshot-create-as), C(snapshot-revert) and
    C(snapshot-delete), but idempotently, and without ever writing a file that other disks stand on.
  - "O(kind=internal): a qcow2 internal snapshot of every writable disk, with the guest's memory when the domain
    runs (or is paused). O(kind=external): a disk-only snapshot that gives each writable disk a new qcow2 overlay
    C(<domain>.<target>.<snapshot>.qcow2) beside its current file; from then on the file below (the snapshot's
    base) is never written again, the same rule virtops.kvm.kvm_clone keeps for clone bases."
  - A domain has snapshots of one kind only; a snapshot of a disk that others stand on (a template with clones,
    a clone's base) is refused, as it would write that file or move the disk from under them. A snapshot of a
    clone (an overlay) never touches the clone's base.
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
      - Nothing is created, reverted, merged or deleted; C(changed), RV(changes), the file lists and the diff are
        those a real run would report. RV(snapshot) is null when the snapshot would only be created.
  diff_mode:
    support: full
    details:
      - The diff shows the domain's state, its current snapshot, its snapshots and each disk's backing chain,
        before and after.
  idempotent:
    support: full
    details:
      - O(state=current) reverts only when the domain is not at the snapshot any more (see O(state)).
options:
  domain:
    description:
      - The domain (virtual machine) whose snapshot this is.
    type: str
    required: true
  name:
    description:
      - The snapshot's name. It is part of the overlay file names, so it follows the collection's naming rule
        (1 to 64 letters, digits, C(.), C(_), C(+), C(-), starting with a letter or digit, without C(..);
        the C(names.md) guide).
    type: str
    required: true
  state:
    description:
      - V(present) creates the snapshot unless one with that name exists (an existing one of the other O(kind)
        is an error; a different O(description) is updated).
      - "V(current) reverts the domain to the snapshot unless it is still at it: for a memory snapshot, the domain
        still runs (or is paused) from that snapshot; for a disk-only one, the domain is shut off and no disk was
        written since the snapshot was taken or reverted to. An internal revert is libvirt's and discards the
        domain's current state. An external revert powers the domain off and makes each disk a fresh overlay
        C(<domain>.<target>.<snapshot>@<n>.qcow2) on the snapshot's base; the files holding the state after the
        snapshot are kept and listed in RV(kept_files) unless O(drop_later_state=true). The domain is left shut
        off: start it with virtops.kvm.kvm_domain."
      - "V(absent) deletes the snapshot. An external one is merged back first so that no orphan layer is left:
        the layer above its base is committed into the base (it costs what that layer holds, not the disk's
        size) and deleted; when other domains, clones or overlay files stand on the base, the base is pulled
        into the layer instead and stays (a clone's base is never written); when others stand on both, the
        task fails with nothing changed. A running domain is merged live (block commit or block pull)."
    type: str
    choices: [present, current, absent]
    default: present
  kind:
    description:
      - What O(state=present) creates. V(internal) needs qcow2 disks and no UEFI (pflash) firmware; with the
        domain running it includes the memory (no shared disk allowed then). V(external) works on qcow2 and
        raw disks, running or shut off, and saves no memory.
      - O(state=current) and O(state=absent) use the snapshot's own kind.
    type: str
    choices: [internal, external]
    default: internal
  description:
    description:
      - A free text description of the snapshot (C(virsh snapshot-create-as --description)). When the snapshot
        exists with another description, the description is updated (an empty string removes it). Tabs and
        line breaks are allowed, other control characters are not.
    type: str
  quiesce:
    description:
      - How an external snapshot of a running domain is made consistent.
      - V(agent) freezes the guest's file systems through the QEMU guest agent (C(--quiesce)); the agent must be
        connected.
      - V(pause) pauses the guest for the instant of the switch to the new overlays and resumes it.
      - V(auto) uses the agent when it is connected, else pauses. V(none) does neither (crash-consistent).
    type: str
    choices: [auto, agent, pause, none]
    default: auto
  drop_later_state:
    description:
      - With O(state=current) for an external snapshot, delete the files that held the domain's state after the
        snapshot, as far as no other snapshot, domain or overlay file stands on them. They are listed in
        RV(removed_files). Without it, they are kept and listed in RV(kept_files).
    type: bool
    default: false
  timeout:
    description:
      - Seconds to wait for a live block commit or pull (O(state=absent) of an external snapshot of a running
        domain). At the timeout the job is cancelled, the disk's chain stays as it was and the task fails.
    type: int
    default: 300
notes:
  - "The C(virsh) equivalents and the overlay rule are explained in the collection's docs/snapshots.md."
  - Internal snapshots with memory of a running guest take as long as writing its memory to disk; under
    software emulation (TCG) and with large guests this can take minutes.
seealso:
  - module: virtops.kvm.kvm_snapshot_info
  - module: virtops.kvm.kvm_clone
  - module: virtops.kvm.kvm_domain
  - name: libvirt snapshot XML format
    description: What libvirt records per snapshot.
    link: https://libvirt.org/formatsnapshot.html
"""

EXAMPLES = r"""
- name: Snapshot before the upgrade (internal, with memory if web1 runs; virsh snapshot-create-as web1 pre-upgrade)
  virtops.kvm.kvm_snapshot:
    domain: web1
    name: pre-upgrade
    description: before the kernel upgrade

- name: An external disk-only snapshot (virsh snapshot-create-as web2 pre --disk-only)
  virtops.kvm.kvm_snapshot:
    domain: web2
    name: pre
    kind: external

- name: It broke, go back (virsh snapshot-revert web1 pre-upgrade)
  virtops.kvm.kvm_snapshot:
    domain: web1
    name: pre-upgrade
    state: current

- name: Back to the external snapshot, dropping what was written since
  virtops.kvm.kvm_snapshot:
    domain: web2
    name: pre
    state: current
    drop_later_state: true
  register: reverted

- name: Start it again after an external revert
  virtops.kvm.kvm_domain:
    name: web2
    state: running

- name: It worked, delete the snapshot (an external one is merged back, live if web2 runs)
  virtops.kvm.kvm_snapshot:
    domain: web2
    name: pre
    state: absent
"""

RETURN = r"""
snapshot:
  description:
    - The snapshot after the task, the same dict as an element of
      RV(virtops.kvm.kvm_snapshot_info#module:snapshots); null when it is absent (or in check mode would only be
      created).
  returned: always
  type: dict
  sample:
    name: pre
    description: null
    kind: external
    state: running
    memory: false
    creation_time: 1796014000
    parent: null
    children: []
    current: true
    disks:
      - target: vda
        snapshot: external
        file: /var/lib/libvirt/images/web2.vda.pre.qcow2
        base: /var/lib/libvirt/images/web2.qcow2
        in_chain: true
changes:
  description: What was done (in check mode, what would be done), in order.
  returned: always
  type: list
  elements: str
  sample:
    - "disk vda: commit /var/lib/libvirt/images/web2.vda.pre.qcow2 into /var/lib/libvirt/images/web2.qcow2,
      then delete /var/lib/libvirt/images/web2.vda.pre.qcow2"
    - forget snapshot pre
created_files:
  description: The overlay files created (an external snapshot's overlays, or a revert's fresh overlays).
  returned: always
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/web2.vda.pre.qcow2]
removed_files:
  description:
    - The files deleted, each only after its data was merged elsewhere (O(state=absent)) or because
      O(drop_later_state=true) said so (O(state=current)).
  returned: always
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/web2.vda.pre.qcow2]
kept_files:
  description:
    - With O(state=current) for an external snapshot and O(drop_later_state=false), the files that held the state
      after the snapshot and are no longer the domain's disk. They are kept, with a warning; delete them when
      they are not needed.
  returned: always
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/web2.vda.pre.qcow2]
merged:
  description:
    - With O(state=absent) for an external snapshot, how each disk's layer was merged.
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: The disk (C(vda)).
      type: str
      returned: always
    method:
      description: V(commit) (the layer went into the base and was deleted) or V(pull) (the base went into the
        layer and stays, because others use it).
      type: str
      returned: always
    base:
      description: The snapshot's base file.
      type: str
      returned: always
    layer:
      description: The layer above the base.
      type: str
      returned: always
  sample:
    - target: vda
      method: commit
      base: /var/lib/libvirt/images/web2.qcow2
      layer: /var/lib/libvirt/images/web2.vda.pre.qcow2
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.manager import SnapshotManager  # noqa: E402


def main() -> None:
    module = AnsibleModule(**SnapshotManager.module_kwargs())
    run_module(module, SnapshotManager)


if __name__ == "__main__":
    main()
