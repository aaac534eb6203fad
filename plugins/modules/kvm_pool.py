#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_pool
short_description: Define, start, stop, autostart, refresh and remove a libvirt storage pool
version_added: 0.1.0
description:
  - Brings one libvirt storage pool to a state, like C(virsh pool-define-as), C(pool-build), C(pool-start),
    C(pool-autostart), C(pool-refresh), C(pool-destroy), C(pool-delete) and C(pool-undefine), but idempotently.
  - "Pools of type V(dir) (a directory), V(netfs) (a directory mounted from an NFS, GlusterFS or CIFS server)
    and V(logical) (an LVM volume group) are described by options; any other pool type by its XML (O(xml))."
  - "The requested definition is compared semantically with the pool's persistent one: what libvirt fills in
    (UUID, capacity, allocation, available space, the target directory's permissions, a source format or
    volume group name, a trailing C(/)) is not a change, and the pool's UUID is kept."
  - A changed definition of an active pool takes effect when the pool is restarted (libvirt keeps running the
    old one until then). RV(pending_restart) says so, and O(restart=true) restarts it. Restarting a pool does not
    touch its files or the running domains whose disks are in it.
  - "Nothing is deleted unless asked: O(state=absent) removes the pool from libvirt and leaves its files; only
    O(delete=true) deletes its volumes and its storage. A pool that a defined domain has a disk in is never
    removed (see O(state))."
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
      - Nothing is defined, built, started, stopped, refreshed or deleted; C(changed), RV(changes),
        RV(deleted_volumes) and the diff are those a real run would report.
  diff_mode:
    support: full
    details:
      - The diff shows the state, the autostart flag and the persistent definition before and after.
  idempotent:
    support: full
options:
  name:
    description:
      - The pool's name, by the collection's naming rule (1 to 64 letters, digits, C(.), C(_), C(+), C(-),
        starting with a letter or digit, without C(..); the C(names.md) guide).
    type: str
    required: true
  state:
    description:
      - V(present) defines the pool or updates its definition, and leaves it active or inactive as it is (a new
        pool is defined inactive).
      - V(active) also starts it (C(virsh pool-start)), building it first when O(build) says so.
      - V(inactive) also stops it (C(virsh pool-destroy), which deletes nothing; a V(netfs) pool is unmounted).
      - V(absent) stops and undefines it (C(virsh pool-undefine)); its files stay unless O(delete=true).
        Refused, before anything changes, while a defined domain (running or not) has a disk in the pool (a
        disk naming the pool (C(<disk type='volume'>)) or a file inside its directory). With O(delete=true),
        also refused while a volume of the pool is used through a backing chain (a domain's disk or an image
        file elsewhere backed by it, a volume of another pool backed by it).
    type: str
    choices: [present, active, inactive, absent]
    default: present
  type:
    description:
      - The pool type. V(dir) is a directory on the host; V(netfs) a directory mounted from a server
        (O(source_host), O(source_path)); V(logical) an LVM volume group (O(source_name), O(source_devices)).
      - When not set, V(dir) for a new pool and the pool's own type for an existing one. The type of an
        existing pool is never changed (the task fails; remove the pool first).
    type: str
    choices: [dir, logical, netfs]
  path:
    description:
      - The target directory (like C(--target) of C(virsh pool-define-as)), where a V(dir) pool's files are,
        or where a V(netfs) pool is mounted. Needed to define a new V(dir) or V(netfs) pool.
      - For V(logical), the volume group's device directory (default C(/dev/<source_name>)).
    type: str
  source_host:
    description:
      - V(netfs) only. The file server's host name (RFC 1123) or address. libvirt hands it to mount(8), so
        nothing else is accepted (never a leading C(-)); likewise O(source_path), O(source_devices) and O(path)
        never hold whitespace or control characters, also when given in O(xml).
    type: str
  source_path:
    description:
      - V(netfs) only. The exported directory on the server (for example V(/srv/images)).
    type: str
  source_format:
    description:
      - For V(netfs), the file system type, V(auto) (default), V(nfs), V(glusterfs) or V(cifs).
      - For V(logical), V(lvm2) (the default).
    type: str
  source_devices:
    description:
      - V(logical) only. The physical volumes of the volume group (for example V(/dev/sdb)).
      - This module never creates a volume group (that would write to the devices); create it with C(vgcreate)
        first; libvirt then uses it.
    type: list
    elements: str
  source_name:
    description:
      - V(logical) only. The volume group's name; default the pool's name.
    type: str
  xml:
    description:
      - The full pool definition (as C(virsh pool-dumpxml) prints it), instead of O(type), O(path) and the
        source options; for pool types those do not cover. Compared with the same semantic rules.
      - Its C(<name>), if any, must be O(name); its C(<uuid>), if any, the pool's.
    type: str
  autostart:
    description:
      - Start the pool when the libvirt daemon starts (C(virsh pool-autostart) / C(pool-autostart --disable)).
        When not set, the flag is left as it is (a new pool is not autostarted).
    type: bool
  build:
    description:
      - When the pool is started and its target directory does not exist on the managed host, build it first
        (C(virsh pool-build)), which creates the directory. For V(dir) and V(netfs) pools only; an existing
        directory is never built again (that would change its owner and mode).
    type: bool
    default: true
  restart:
    description:
      - Restart an active pool whose definition changed (now, or by anyone earlier), so that the new definition
        takes effect (C(virsh pool-destroy) then C(pool-start)). Off by default, and RV(pending_restart) reports it.
    type: bool
    default: false
  refresh:
    description:
      - Re-read the volumes of a pool that was already active (C(virsh pool-refresh)), for example after files
        were copied into its directory by hand. Not counted as a change (nothing on disk changes); skipped in
        check mode. A pool that is started by this task is read then anyway.
    type: bool
    default: false
  delete:
    description:
      - With O(state=absent), also delete every volume of the pool and then the pool's storage (C(virsh
        vol-delete) for each, then C(virsh pool-delete)), that is the directory of a V(dir) pool, the mount point of a
        V(netfs) pool (the files on the server are its volumes), the volume group of a V(logical) pool.
      - "Dangerous: the data is gone. Refused as O(state) describes, and when a V(dir) pool's directory holds
        what libvirt cannot delete (a non-empty subdirectory, a socket): nothing is deleted then."
      - The volumes of an inactive V(netfs) or V(logical) pool cannot be listed, so it must be active for this.
      - Ignored with other states.
    type: bool
    default: false
notes:
  - The directory of a V(dir) pool is looked for (O(build)) and listed (O(delete)) on the managed host, which
    is the libvirt host for the local URIs (V(qemu:///system)).
  - When O(state=absent) is refused because domains use the pool, O(state=inactive) stops it without removing
    it (domains that take disks from the pool by name then cannot start until it is active again).
seealso:
  - module: virtops.kvm.kvm_volume
  - name: libvirt storage pool XML format
    description: Every element of a pool definition.
    link: https://libvirt.org/formatstorage.html
"""

EXAMPLES = r"""
- name: A directory pool, started now and at boot (virsh pool-define-as; pool-build; pool-start; pool-autostart)
  virtops.kvm.kvm_pool:
    name: images
    path: /kvmfile
    state: active
    autostart: true

- name: An NFS pool
  virtops.kvm.kvm_pool:
    name: nas
    type: netfs
    source_host: nas.example.com
    source_path: /srv/images
    source_format: nfs
    path: /var/lib/libvirt/nas
    state: active

- name: A pool on an existing LVM volume group vg_guests
  virtops.kvm.kvm_pool:
    name: vg_guests
    type: logical
    source_devices: [/dev/sdb]
    state: active

- name: Move the pool to another directory now (the definition, then a restart)
  virtops.kvm.kvm_pool:
    name: images
    path: /srv/kvmfile
    state: active
    restart: true

- name: Stop managing the pool; its files stay (virsh pool-destroy; pool-undefine)
  virtops.kvm.kvm_pool:
    name: images
    state: absent

- name: Remove a scratch pool with every volume in it (virsh vol-delete ...; pool-delete; pool-undefine)
  virtops.kvm.kvm_pool:
    name: scratch
    state: absent
    delete: true
"""

RETURN = r"""
changes:
  description: What was (or in check mode would be) done, in order; empty when nothing changed.
  returned: always
  type: list
  elements: str
  sample: ["define: /pool/target/path: '/kvmfile' -> '/srv/kvmfile'", "restart"]
pending_restart:
  description:
    - Whether the pool is active with an older definition than its persistent one (it gets the new one when
      restarted, see O(restart)).
  returned: always
  type: bool
  sample: false
refreshed:
  description: Whether the pool's volumes were re-read (O(refresh)).
  returned: always
  type: bool
  sample: false
deleted_volumes:
  description:
    - The paths of the volumes deleted by O(delete=true) (in check mode, to be deleted).
  returned: always
  type: list
  elements: str
  sample: [/srv/scratch/disk1.qcow2]
pool:
  description: The pool after the task (in check mode, as it is now); null when it is not defined.
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str, returned: always, sample: images}
    uuid: {description: UUID., type: str, returned: always, sample: 7b30950c-0943-4ecc-9cd4-f8a8f1594422}
    type: {description: 'Pool type: V(dir), V(netfs), V(logical) or another libvirt type.', type: str,
           returned: always, sample: dir}
    path: {description: Target directory (or the volume group's device directory)., type: str, returned: always,
           sample: /kvmfile}
    source:
      description: The source of the pool (empty values for a V(dir) pool).
      type: dict
      returned: always
      sample: {hosts: [nas.example.com], dir: /srv/images, devices: [], name: null, format: nfs}
    state:
      description: V(running), V(inactive), V(building), V(degraded) or V(inaccessible).
      type: str
      returned: always
      sample: running
    active: {description: Whether it is started., type: bool, returned: always, sample: true}
    persistent: {description: Whether it has a persistent definition., type: bool, returned: always, sample: true}
    autostart: {description: Started with the daemon., type: bool, returned: always, sample: true}
    capacity: {description: 'Size in bytes (null while inactive).', type: int, returned: always,
               sample: 270553174016}
    allocation: {description: 'Bytes in use (null while inactive).', type: int, returned: always,
                 sample: 26534903808}
    available: {description: 'Bytes free (null while inactive).', type: int, returned: always, sample: 244018270208}
    volumes:
      description: The names of its volumes (null while inactive).
      type: list
      elements: str
      returned: always
      sample: [base.qcow2, web1.qcow2]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pool.pool_manager import PoolManager  # noqa: E402


def main() -> None:
    module = AnsibleModule(**PoolManager.module_kwargs())
    run_module(module, PoolManager)


if __name__ == "__main__":
    main()
