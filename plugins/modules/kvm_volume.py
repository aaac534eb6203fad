#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_volume
short_description: Create, grow, clone, upload, download and delete a volume of a libvirt storage pool
version_added: 0.1.0
description:
  - Brings one volume of an active storage pool to a state, like C(virsh vol-create-as), C(vol-create-from)
    (C(vol-clone)), C(vol-resize), C(vol-upload), C(vol-download) and C(vol-delete), but idempotently.
  - "A new volume is V(qcow2) (V(raw) in a V(logical) pool) unless O(format) says otherwise, sparse (no space
    is allocated up front in a file pool), made from nothing (O(size)), as a qcow2 overlay of a backing volume
    (O(backing_volume)), as a full copy of another volume of the pool (O(clone_from)), or from a file
    (O(upload))."
  - An existing volume is compared with the options. O(size) larger than the volume grows it; smaller shrinks
    it only with O(allow_shrink=true). A different O(format) or backing volume is an error (this module neither
    converts nor rebases volumes).
  - "Uploads and downloads go through libvirt's streams (virStorageVolUpload/Download), over the libvirt
    connection itself: with V(qemu+ssh://host/system) an image moves between hosts with nothing else to set up.
    The sha256 of the data is checked at the end, and RV(transfer) reports the bytes, the time and progress."
  - "Nothing is deleted or overwritten unless asked, and never what is used: a volume is not deleted, resized
    or replaced while a domain uses it as a disk or through a backing chain, or while another volume or image
    is backed by it."
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
      - Nothing is created, resized, uploaded, downloaded or deleted; C(changed), RV(changes) and the diff are those
        a real run would report. Deciding whether an upload or a download is needed reads (hashes) the volume and
        the file, in check mode too.
      - When the volume is not in libvirt's list, the pool's list is refreshed once (C(virsh pool-refresh), which
        changes nothing on disk) to see files copied in by hand.
  diff_mode:
    support: full
    details:
      - The diff shows the volume's format, size and backing store (and for O(upload) / O(download) the content's
        checksum and the file) before and after.
  idempotent:
    support: full
options:
  pool:
    description:
      - The name of the storage pool (it must be active; see M(virtops.kvm.kvm_pool)).
    type: str
    required: true
  name:
    description:
      - The volume's name; in a V(dir) pool also its file name. The collection's naming rule, 1 to 64 letters,
        digits, C(.), C(_), C(+), C(-), starting with a letter or digit, without C(..).
    type: str
    required: true
  state:
    description:
      - V(present) makes the volume as the other options say.
      - V(absent) deletes it (C(virsh vol-delete)). Refused while a domain (running or not) uses it as a disk or
        through a backing chain, or another volume or image file is backed by it.
    type: str
    choices: [present, absent]
    default: present
  format:
    description:
      - The volume's format, for a new volume (default V(qcow2) in file pools, V(raw) in V(logical) pools).
      - For an existing volume a different format is an error. With O(upload) the file decides (a mismatch is
        an error); with O(clone_from) the copy is converted to it.
    type: str
    choices: [raw, qcow2]
  size:
    description:
      - The volume's virtual size, as a number with an optional unit, C(10G) or C(10GiB) (binary), C(10GB)
        (decimal), C(512M), or bytes (C(1073741824)); from 1 byte to 1 PiB (C(1P)).
      - Needed to create a volume from nothing. With O(backing_volume) it defaults to (and may not be less than)
        the backing volume's size; with O(clone_from) to the source's (a larger size grows the copy).
      - A larger size grows an existing volume (C(virsh vol-resize)); the guest sees it at its next start. A
        smaller one is an error unless O(allow_shrink=true). A volume a running domain uses, or one others are
        backed by, is not resized (use C(virsh blockresize) for a running domain's disk).
      - Backends round sizes up (qcow2 to 1 KiB, LVM to its extent size); a volume within that rounding of
        O(size) is left as it is.
    type: str
  allow_shrink:
    description:
      - "Dangerous: allow O(size) to shrink the volume; the data past the new end is lost. Shrink the file
        system inside first."
    type: bool
    default: false
  backing_volume:
    description:
      - Create the volume as a qcow2 overlay of this volume (C(qemu-img create -b)); the backing volume is only
        read from then on. A volume name in O(pool), or the path of a volume of any active pool.
      - For an existing volume, a different (or no) backing volume is an error.
      - Refused while a running domain writes to the backing volume.
    type: str
  backing_format:
    description:
      - The backing volume's format, recorded in the overlay. Default the format libvirt reports for it.
    type: str
    choices: [raw, qcow2]
  clone_from:
    description:
      - Create the volume as a full, independent copy of this volume of the same pool (C(virsh vol-clone)); a
        qcow2 source's backing chain is flattened into the copy.
      - Refused while a running domain writes to the source. Ignored when the volume exists.
    type: str
  upload:
    description:
      - A file on the managed host (where the module runs) to put into the volume (C(virsh vol-upload)); with a
        remote O(uri) such as V(qemu+ssh://hv2/system) it travels to that libvirt host over the connection. The
        volume is created when missing; its format is the file's (raw or qcow2).
      - When the volume already holds exactly the file's bytes (same sha256), nothing is done. When it holds
        other bytes, the task fails unless O(force=true), which replaces the volume (never one a running domain
        uses or that others are backed by).
    type: path
  download:
    description:
      - A file path on the managed host to copy the volume's bytes into (C(virsh vol-download)). The file is
        written beside the destination first, checked, then renamed into place, with mode C(0600) for a new file
        (disk images can hold secrets).
      - When the file already holds exactly the volume's bytes, nothing is done. When it holds other bytes, the
        task fails unless O(force=true), which replaces it.
      - A volume a running domain writes to is copied with a warning (the copy may be inconsistent).
    type: path
  checksum:
    description:
      - The expected sha256 of the content (64 hex digits, optionally after C(sha256:)). With O(upload) the file
        must have it before anything happens; with O(download) the received data must have it, or the
        destination is left untouched.
    type: str
  force:
    description:
      - Let O(upload) replace a volume, and O(download) replace a file, that holds other content.
    type: bool
    default: false
  verify:
    description:
      - After an upload, read the volume back through a stream and compare its sha256 with the file's; after a
        download, re-read the written file and compare it with what was received. Doubles the reading, not the
        writing; turn it off only for very large images on trusted links.
    type: bool
    default: true
  progress_mib:
    description:
      - Add a progress entry to RV(transfer) each time this many MiB have been transferred (V(0) for none).
    type: int
    default: 256
notes:
  - Sparse data goes through the stream as data (zeros included), so a mostly empty raw volume transfers its
    full size; qcow2 images are compact.
  - A downloaded or uploaded qcow2 overlay still refers to its backing file by path; that file must exist at the
    same path where the image is used (the module warns on upload).
seealso:
  - module: virtops.kvm.kvm_pool
  - module: virtops.kvm.kvm_clone
  - name: libvirt storage volume XML format
    description: What libvirt records for a volume.
    link: https://libvirt.org/formatstorage.html#storage-volume-xml
"""

EXAMPLES = r"""
- name: A 20 GiB qcow2 disk (virsh vol-create-as images web1.qcow2 20G --format qcow2)
  virtops.kvm.kvm_volume:
    pool: images
    name: web1.qcow2
    size: 20G

- name: An overlay of a base image (virsh vol-create-as ... --backing-vol base.qcow2 --backing-vol-format qcow2)
  virtops.kvm.kvm_volume:
    pool: images
    name: web2.qcow2
    backing_volume: base.qcow2

- name: Grow it to 40 GiB (virsh vol-resize web1.qcow2 40G --pool images)
  virtops.kvm.kvm_volume:
    pool: images
    name: web1.qcow2
    size: 40G

- name: A full copy in the same pool (virsh vol-clone base.qcow2 golden.qcow2 --pool images)
  virtops.kvm.kvm_volume:
    pool: images
    name: golden.qcow2
    clone_from: base.qcow2

- name: Upload an image over the libvirt connection, checked against its published sha256
  virtops.kvm.kvm_volume:
    uri: qemu+ssh://root@hv2/system
    pool: images
    name: debian-12.qcow2
    upload: /srv/images/debian-12.qcow2
    checksum: "sha256:{{ debian_sha256 }}"
  register: up

- name: Say how fast it went
  ansible.builtin.debug:
    msg: "{{ up.transfer.bytes }} bytes in {{ up.transfer.seconds }} s"
  when: up.transfer

- name: Download a volume to a file (virsh vol-download)
  virtops.kvm.kvm_volume:
    pool: images
    name: web1.qcow2
    download: /backup/web1.qcow2

- name: Delete a volume nothing uses (virsh vol-delete)
  virtops.kvm.kvm_volume:
    pool: images
    name: web2.qcow2
    state: absent
"""

RETURN = r"""
changes:
  description: What was (or in check mode would be) done, in order; empty when nothing changed.
  returned: always
  type: list
  elements: str
  sample: ["grow from 20 GiB (21474836480 bytes) to 40 GiB (42949672960 bytes)"]
volume:
  description: The volume after the task (in check mode, as it is now); null when it does not exist.
  returned: always
  type: dict
  contains:
    name: {description: Name., type: str, returned: always, sample: web1.qcow2}
    pool: {description: The pool's name., type: str, returned: always, sample: images}
    path: {description: The file or device., type: str, returned: always, sample: /kvmfile/web1.qcow2}
    key: {description: libvirt's key of the volume (the path for file volumes)., type: str, returned: always,
          sample: /kvmfile/web1.qcow2}
    type: {description: 'V(file), V(block), V(dir) or another libvirt volume type.', type: str, returned: always,
           sample: file}
    format: {description: 'V(qcow2), V(raw) or what libvirt reports.', type: str, returned: always, sample: qcow2}
    capacity: {description: Virtual size in bytes., type: int, returned: always, sample: 21474836480}
    allocation: {description: Bytes allocated on the host., type: int, returned: always, sample: 200704}
    physical:
      description: Size of the file in bytes (null where libvirt does not report it).
      type: int
      returned: always
      sample: 196616
    backing:
      description: The backing store, or null.
      type: dict
      returned: always
      sample: {path: /kvmfile/base.qcow2, format: qcow2}
sha256:
  description:
    - With O(upload) the file's sha256; with O(download) the volume's (when it was read), else null.
  returned: always
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
transfer:
  description: The upload or download that was done (null when none was needed, and in check mode).
  returned: always
  type: dict
  contains:
    direction: {description: V(upload) or V(download)., type: str, returned: success, sample: upload}
    bytes: {description: Bytes transferred., type: int, returned: success, sample: 1073741824}
    seconds: {description: Time taken., type: float, returned: success, sample: 9.8}
    mib_per_second: {description: Average rate., type: float, returned: success, sample: 104.5}
    sha256: {description: The sha256 of the bytes transferred., type: str, returned: success,
             sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
    verified: {description: Whether the result was read back and matched (O(verify))., type: bool,
               returned: success, sample: true}
    progress:
      description: A C({bytes, seconds}) entry every O(progress_mib) MiB.
      type: list
      elements: dict
      returned: success
      sample: [{bytes: 268435456, seconds: 2.4}, {bytes: 536870912, seconds: 4.9}]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._pool.volume_manager import VolumeManager  # noqa: E402


def main() -> None:
    module = AnsibleModule(**VolumeManager.module_kwargs())
    run_module(module, VolumeManager)


if __name__ == "__main__":
    main()
