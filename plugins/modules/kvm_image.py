#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_image
short_description: Put a base image on a hypervisor once, verified by sha256, never overwritten
version_added: 0.1.0
description:
  - Copies a disk image (typically the base of qcow2 overlays) from the controller to the managed host over
    Ansible's own connection (SSH/SFTP, no other daemon), unless the host already has it.
  - "O(src)'s sha256 is computed on the controller and kept in a cache under C(~/.cache/virtops-kvm/)
    (C($XDG_CACHE_HOME/virtops-kvm/) when set), valid while the file's size, modification time, inode and
    device are the same, so a rerun does not hash a 10 GiB image again."
  - When O(dest) does not exist, the file is sent to a hidden name beside it (C(.NAME.virtops-partial-RANDOM),
    on the same file system), hashed there and compared with O(src)'s sha256, given O(mode), O(owner) and
    O(group), flushed to disk, and put in place with a hard link, which never replaces a file. A copy that does
    not match is removed and the task fails. The staged file is removed whatever happens.
  - When O(dest) exists with the same sha256, nothing is copied; its mode, owner and group are set if they
    differ (reported as a change).
  - "When O(dest) exists with another sha256, the task fails naming the path and both checksums: an image is
    never overwritten, as overlays may be built on it. Remove or rename it yourself if no overlay uses it."
  - "The sha256 of O(dest) is kept in its extended attribute C(user.virtops.sha256) (JSON C({sha256, size,
    mtime_ns, ctime_ns})) and trusted only while the file's size and modification time are the same and its
    change time (which no user can set) has not moved since the record was written, so a rerun over a large
    image takes milliseconds. Where extended attributes are not supported the file is hashed on every run."
  - This module has an action plugin, which runs on the controller and calls the module on the host in steps.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  check_mode:
    support: full
    details:
      - Nothing is written on the host (not even the checksum attribute); C(changed) is true when the image would
        be copied or its mode, owner or group set. O(src) is hashed (and its controller-side cache written).
  diff_mode:
    support: full
    details:
      - The diff shows O(dest)'s state, sha256, mode (and owner, group when given) before and after.
  idempotent:
    support: full
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
options:
  src:
    description:
      - The image on the controller. A relative path is looked up like M(ansible.builtin.copy)'s (a role's
        C(files/), the playbook's directory).
    type: str
    required: true
  dest:
    description:
      - The absolute path of the image on the managed host, without C(..). Its directory must exist.
    type: path
    required: true
  checksum:
    description:
      - The expected sha256 of O(src) (64 hex digits, optionally after C(sha256:)). When O(src) does not have
        it, the task fails before anything is sent.
    type: str
  mode:
    description:
      - The permissions of O(dest), as an octal string (quote it, V('0444')).
      - The default keeps the image read-only, as a base under overlays must not be written.
    type: raw
    default: '0444'
  owner:
    description:
      - The owner (name or uid) of O(dest). When not set, a copied image belongs to the user the module runs as
        (the C(become_user)), and an existing one keeps its owner.
    type: str
  group:
    description:
      - The group (name or gid) of O(dest). When not set, like O(owner).
    type: str
  _step:
    description:
      - Internal, set by the action plugin; do not set it in a task (the action refuses it).
    type: str
    choices: [probe, install, cleanup]
    default: probe
  _sha256:
    description:
      - Internal, set by the action plugin (the sha256 of O(src)).
    type: str
  _staged:
    description:
      - Internal, set by the action plugin (the file the image was sent to).
    type: str
notes:
  - "The connection user writes the staged file: with C(become), that user must be able to write in O(dest)'s
    directory (connecting as root works everywhere)."
  - The file system of O(dest) must support hard links.
seealso:
  - module: virtops.kvm.kvm_volume
    description: Uploads an image into a libvirt storage pool over the libvirt connection instead.
  - module: virtops.kvm.kvm_clone
"""

EXAMPLES = r"""
- name: Put the Debian base on every hypervisor, checked against its published sha256
  virtops.kvm.kvm_image:
    src: /srv/images/debian-12.qcow2
    dest: /var/lib/libvirt/images/debian-12.qcow2
    checksum: "sha256:{{ debian_sha256 }}"
  register: base

- name: Say how fast it went
  ansible.builtin.debug:
    msg: "{{ base.transfer.bytes }} bytes in {{ base.transfer.seconds }} s ({{ base.transfer.mib_per_second }} MiB/s)"
  when: base.copied

- name: A base owned by the qemu user
  virtops.kvm.kvm_image:
    src: images/alma-9.qcow2
    dest: /var/lib/libvirt/images/alma-9.qcow2
    owner: qemu
    group: qemu
    mode: '0440'
"""

RETURN = r"""
dest:
  description: The image's path on the managed host.
  returned: always
  type: str
  sample: /var/lib/libvirt/images/debian-12.qcow2
sha256:
  description: The image's sha256 (O(src)'s, and O(dest)'s when it exists).
  returned: always
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
size:
  description: The image's size in bytes.
  returned: always
  type: int
  sample: 2147483648
copied:
  description: Whether the image was copied by this task (false in check mode).
  returned: always
  type: bool
  sample: true
checksum_cached:
  description:
    - Whether O(dest)'s sha256 came from its C(user.virtops.sha256) record rather than from reading the file
      (null when O(dest) did not exist).
  returned: always
  type: bool
  sample: true
changes:
  description: What was (or in check mode would be) done; empty when nothing changed.
  returned: always
  type: list
  elements: str
  sample: ["copy /srv/images/debian-12.qcow2 to /var/lib/libvirt/images/debian-12.qcow2"]
transfer:
  description: The copy that was made.
  returned: when RV(copied) is true
  type: dict
  contains:
    bytes: {description: Bytes sent., type: int, returned: success, sample: 2147483648}
    seconds: {description: Time the transfer took., type: float, returned: success, sample: 19.6}
    mib_per_second: {description: Average rate., type: float, returned: success, sample: 104.5}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._image import ImageManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**ImageManager.module_kwargs())
    run_module(module, ImageManager)


if __name__ == "__main__":
    main()
