#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_migrate
short_description: Move a domain to another hypervisor, live or shut off, copying only what the destination lacks
version_added: 0.1.0
description:
  - Puts domain O(name) of the hypervisor at O(uri) on the hypervisor at O(dest_uri). A running domain is
    migrated live (libvirt managed migration, C(virsh migrate --live --persistent --undefinesource)); a shut-off
    one is moved offline (its disks copied, its inactive XML defined on the destination, then undefined on the
    source).
  - "Each disk is planned before anything happens (O(storage)): an overlay whose base is already on the
    destination (same path, same size, and the same sampled fingerprint when kvm_clone recorded one) moves only
    its own layer; a disk without a backing file moves whole; a base that is missing or different on the
    destination refuses the run, naming the host, the path and what is missing, with nothing changed."
  - The moved domain's provenance then records the destination's copy of each base it verified (size, sampled
    digest and that file's own modification time), so M(virtops.kvm.kvm_domain) starts it there and
    M(virtops.kvm.kvm_clone) adds overlays on that base there (each hypervisor's copy of a base has its own
    modification time). The C(virtops.kvm.kvm_drain) role moves domains with this module.
  - Every file is read, made and deleted through the libvirt connections (storage pools and volume streams), so the
    task may run on the source, on the destination or elsewhere. Where no storage pool covers a disk's directory,
    a transient C(dir) pool is made for the run and destroyed at its end (which never deletes files).
  - A failure before the switch-over leaves the domain where it was (running on the source) and removes what this
    run made on the destination. Once the domain lives on the destination, the source's disk files that the
    collection made for it (kvm_clone's provenance in the domain's metadata) are deleted; never a base, never a
    file without that record, never a file another domain of the source uses.
  - "Idempotent by where the domain is defined: only on the destination is success without change; on both is an
    error naming both URIs; on neither is an error."
  - The cloud-init seed that M(virtops.kvm.kvm_clone) or M(virtops.kvm.kvm_vm) made for the domain (recorded in its
    provenance) moves with it, and is removed from the source with its disks. Other read-only disks (an
    installation ISO) must already be at the same path on the destination.
  - Snapshots, NVRAM files and managed-save images are not moved; a domain with snapshots is refused, and so is an
    offline move of a domain with an NVRAM file or a managed-save image.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan (mode, per disk the action and the bytes estimated from the file's allocation, the files
        that would be removed) and refuses what a real run would refuse. Reading files on a host that no storage
        pool covers makes a transient pool for the run, destroyed before the module returns.
  diff_mode:
    support: full
    details:
      - The diff is the host (URI) of the domain before and after.
  idempotent:
    support: full
options:
  name:
    description: The domain to move.
    type: str
    required: true
  dest_uri:
    description:
      - The libvirt URI of the destination hypervisor, as the host running the task reaches it, for example
        V(qemu+ssh://root@hv2/system).
    type: str
    required: true
  migrate_uri:
    description:
      - The address QEMU sends the migration data (memory and disks) to, for example V(tcp://10.0.0.12), when the
        destination's host name does not resolve to an address the source reaches. Its host (without the port) is
        also the address of the destination's NBD server for the disk copy.
      - Only used by a live migration.
    type: str
  live:
    description:
      - V(auto) migrates a running (or paused) domain live and moves a shut-off one offline.
      - V(always) refuses a shut-off domain; V(never) refuses a running one.
    type: str
    default: auto
    choices: [auto, always, never]
  storage:
    description:
      - V(auto) copies each writable file disk (only the top layer of an overlay whose base is on the destination,
        a disk without backing file whole), and leaves disks in storage pools of a shared type (netfs, gluster,
        rbd, iscsi, ...) in place.
      - V(copy) copies every writable file disk the same way, shared pool or not.
      - V(shared) copies nothing; every disk's file must already be at the same path on the destination.
      - Read-only, shareable and CD-ROM disks are never copied; their file must already be on the destination.
        Network and block disks are never copied and are not checked.
      - A copy never overwrites; a file already at a copied disk's path on the destination refuses the run.
    type: str
    default: auto
    choices: [auto, shared, copy]
  timeout:
    description:
      - Seconds a live migration may take. Past it the job is aborted (C(virsh domjobabort)) and the domain goes
        on running on the source; the task fails. The job is also aborted at once when the connection to the
        destination is lost.
    type: int
    default: 600
  bandwidth:
    description:
      - Limit of the live migration's bandwidth in MiB/s (memory and disks). Unlimited when not given.
    type: int
seealso:
  - module: virtops.kvm.kvm_clone
  - module: virtops.kvm.kvm_image
  - name: virsh migrate
    description: libvirt's migration command, which this module drives through the API.
    link: https://libvirt.org/manpages/virsh.html#migrate
notes:
  - The destination must run a compatible QEMU and see the domain's networks and bridges under the same names.
  - On the destination the overlay file of a live-migrated disk is made before the migration (a qcow2 volume on
    the same base, of the same virtual size), as libvirt's incremental storage copy (C(--copy-storage-inc))
    needs.
"""

EXAMPLES = r"""
- name: Move web1 to hv2 (live if it runs), copying only its overlay, as hv2 already has the base
  virtops.kvm.kvm_migrate:
    name: web1
    dest_uri: qemu+ssh://root@hv2/system

- name: Plan only (what moves, how much, what is missing on hv3)
  virtops.kvm.kvm_migrate:
    name: web1
    dest_uri: qemu+ssh://root@hv3/system
  check_mode: true
  register: plan

- name: Migration traffic on the storage network, at most 200 MiB/s, within 20 minutes
  virtops.kvm.kvm_migrate:
    name: db1
    dest_uri: qemu+ssh://root@hv2/system
    migrate_uri: tcp://10.10.0.12
    bandwidth: 200
    timeout: 1200

- name: Disks on NFS mounted at the same path everywhere
  virtops.kvm.kvm_migrate:
    name: app1
    dest_uri: qemu+ssh://root@hv2/system
    storage: shared
"""

RETURN = r"""
domain:
  description: The domain's name.
  returned: always
  type: str
  sample: web1
source:
  description: The source URI (O(uri)).
  returned: always
  type: str
  sample: qemu:///system
dest:
  description: The destination URI (O(dest_uri)).
  returned: always
  type: str
  sample: qemu+ssh://root@hv2/system
mode:
  description: V(live), V(offline), or V(none) when the domain was already on the destination.
  returned: always
  type: str
  sample: live
disks:
  description: The plan of each disk, and what was done (empty when nothing was to do).
  returned: always
  type: list
  elements: dict
  contains:
    target:
      description: The disk's target device.
      type: str
      sample: vda
    path:
      description: The disk's file.
      type: str
      sample: /var/lib/libvirt/images/web1.qcow2
    action:
      description:
        - V(top) (an overlay, only its own layer moves), V(whole) (all of it moves), V(seed) (the cloud-init seed
          kvm_clone or kvm_vm made for the domain, a read-only CD-ROM, copied whole through a volume stream, live
          or not), V(shared) (nothing moves, the same path is used on the destination), V(none) (an empty drive).
      type: str
      sample: top
    base:
      description: The overlay's base (on both hosts), or null.
      type: str
      sample: /var/lib/libvirt/images/base.qcow2
    bytes:
      description:
        - Bytes to move, estimated from the file's allocation on the source; after an offline move, the bytes moved.
      type: int
      sample: 2424832
    format:
      description: The file's format.
      type: str
      sample: qcow2
    reason:
      description: Why this action.
      type: str
      sample: "overlay: only its own layer moves"
    result:
      description: V(planned) (check mode), V(copied) or V(unchanged).
      type: str
      sample: copied
    base_identity:
      description:
        - The destination's copy of the base as verified and recorded in the moved domain's provenance (C(size) in
          bytes, sampled C(digest), C(mtime) in nanoseconds), or null when the disk has no such record (a disk
          kvm_clone or kvm_vm did not make) or libvirt gave no modification time.
      type: dict
      returned: always
      sample: {size: 21233664, digest: "sha256-16x64k:0c7c4b3f5e1d2a9b8c7d6e5f4a3b2c1d", mtime: 1796657430693138116}
    sha256:
      description: The sha256 of the moved file, checked on the destination (offline moves, and seeds).
      type: str
      returned: after an offline copy, and for a seed
      sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
transfer:
  description:
    - The bytes that moved, the seconds it took, and up to ten progress points read while it ran. Null in check
      mode and when nothing was to do.
    - Live, C(bytes) is C(memory_bytes) (as libvirt counts them) plus C(disk_bytes), the copied disks' allocation
      on the destination once they arrived (a disk copy can end between two samples of libvirt's job counters).
  returned: always
  type: dict
  sample:
    bytes: 12877824
    memory_bytes: 11829248
    disk_bytes: 1048576
    seconds: 4.1
    progress:
      - {seconds: 1.0, bytes: 1048576, total: 290455552, disk_bytes: 1048576, memory_bytes: 0}
removed_files:
  description: The source's files deleted after the move (in check mode, those that would be).
  returned: always
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/web1.qcow2]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._migrate.manager import MigrateManager  # noqa: E402


def main() -> None:
    module = AnsibleModule(**MigrateManager.module_kwargs())
    run_module(module, MigrateManager)


if __name__ == "__main__":
    main()
