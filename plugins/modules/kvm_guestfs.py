#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_guestfs
short_description: Read files from guest disks offline, safely read-only, in one libguestfs launch
version_added: 0.1.0
description:
  - Looks inside the disks of a domain that is not running (or of disk image files) without booting it,
    the way C(guestmount -o nonempty -a disk.qcow2 -i MOUNTPOINT) followed by C(cat MOUNTPOINT/etc/hosts) does,
    but in a single libguestfs appliance launch for every file of the task.
  - "Safe by construction: drives are always added read-only (the image is never written), the appliance has no
    network, and no guest program is ever run. Disks that a running domain uses are refused unless
    O(allow_running=true)."
  - With O(state=read) (the default) it returns file contents and metadata, directory listings and the
    operating system found by inspection, and can copy the files to a directory on the managed host (O(dest)).
  - With O(state=mounted) / O(state=unmounted) it keeps a read-only C(guestmount) of the guest's filesystems on
    O(mount_point) (the course's C(-o nonempty) case included); unmounting waits until guestmount has exited.
  - One appliance launch takes about 20 seconds under software emulation (more with OS inspection), so put all
    the paths of one guest in one task, and give O(mounts) when the devices are known.
  - O(domains) reads the same paths from several domains in that one launch (libguestfs takes many drives in one
    appliance); each domain is mounted in turn and its results are returned under its name (RV(domains)).
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reading changes nothing, so check mode runs the reads and returns the real content.
      - Mounting, unmounting and writing to O(dest) are skipped in check mode and reported as changes.
  diff_mode:
    support: partial
    details:
      - Reports the mount state before and after, and the O(dest) files that were (or would be) written.
  idempotent:
    support: full
options:
  domain:
    description:
      - Name of the libvirt domain whose disks are read, taken from its inactive XML (file and block disks,
        not CD-ROMs), in the domain's order.
      - A qcow2 overlay is read through its backing chain (libguestfs follows it).
      - Mutually exclusive with O(disks) and O(domains). One of them is required unless O(state=unmounted).
    type: str
  domains:
    description:
      - Names of several libvirt domains to read O(paths) and O(list_dirs) from, in ONE appliance launch for up
        to 250 disks (an appliance takes at most 255 drives; more domains are read in as few launches as that
        allows, a domain never split, counted in C(launches) of RV(appliance)). The disks of all of them are added to
        the appliance, then each domain's filesystems are mounted in turn, read and unmounted. Only with
        O(state=read).
      - Every domain must be defined (an unknown name fails the task before the launch), and none may be running
        unless O(allow_running=true).
      - O(mounts) names each guest's devices as its own (its first disk is V(/dev/sda) whatever its place in the
        appliance). Without O(mounts), inspection runs once for all of them and each domain gets the operating
        system found on its own disks (for clones of one template, C(UUID=) and C(LABEL=) in a guest's fstab
        are taken as that guest's own disks).
      - The results are in RV(domains), keyed by domain name; RV(files), RV(dirs) and RV(inspection) are then
        empty. With O(dest), each domain's files are copied below C(DEST/<domain name>/).
      - A domain that cannot be mounted or read does not stop the others; the task fails at the end naming
        each problem, with every result.
    type: list
    elements: str
  disks:
    description:
      - Disk image paths on the managed host, instead of O(domain). Each item is a path, or a dict with
        C(path) and an optional C(format).
      - Without a format, qcow2 is recognised by its header and anything else is read as raw.
      - The paths are still checked against the domains of O(uri); a disk that a running domain writes is refused
        unless O(allow_running=true).
    type: list
    elements: raw
  paths:
    description:
      - Absolute paths of files inside the guest to read (symlinks are followed inside the guest).
      - Each is returned in RV(files) with its metadata and C(content) (valid UTF-8) or C(content_b64).
      - A path that does not exist is returned with C(exists=false) and is not an error, unless
        O(fail_missing=true).
      - Only used with O(state=read).
    type: list
    elements: str
    default: []
  list_dirs:
    description:
      - Absolute paths of directories inside the guest to list (names only, sorted). Only with O(state=read).
      - A missing directory is returned as V(null) with a warning, or fails the task with O(fail_missing=true).
    type: list
    elements: str
    default: []
  mounts:
    description:
      - Filesystems to mount, as device to mountpoint, for example C(/dev/sda1=/) and C(/dev/sda2=/boot)
        (see the examples).
      - Devices are named as the libguestfs appliance sees them (V(/dev/sda1), not the guest's V(/dev/vda1));
        LVM volumes as V(/dev/VG/LV).
      - When omitted, libguestfs inspection finds the operating system and its mountpoints (what C(guestmount -i)
        does); when inspection finds none and the disks hold exactly one filesystem, that one is mounted at V(/).
        Giving O(mounts) skips inspection and is faster.
    type: dict
  fail_missing:
    description:
      - Fail the task when a path of O(paths) or O(list_dirs) does not exist in the guest.
      - The other paths are still read and returned with the failure.
    type: bool
    default: false
  max_size:
    description:
      - Largest file, in bytes, that is read. A larger file is never truncated; it is returned with an C(error)
        saying its size, and the task fails after reading every other path.
    type: int
    default: 1048576
  dest:
    description:
      - Also copy every file read into this directory on the managed host, below its guest path (C(/etc/hosts) to
        C(DEST/etc/hosts)). Created when missing.
      - A copy is written only when its content or mode differs, which is the only change O(state=read) makes.
        Copies get the guest file's permission bits without setuid, setgid, sticky and group/other write.
    type: path
  allow_running:
    description:
      - Read disks that a running domain uses. They are still opened read-only, but files the guest is writing
        may be inconsistent; a warning says so.
      - By default such disks are refused with a message that names the domain.
    type: bool
    default: false
  state:
    description:
      - V(read) reads O(paths) and O(list_dirs) and returns them.
      - V(mounted) keeps a read-only guestmount of the guest's filesystems on O(mount_point); when it is already
        there, nothing changes.
      - V(unmounted) unmounts the guestmount on O(mount_point) and waits until the guestmount process has
        flushed and exited.
    type: str
    choices: [read, mounted, unmounted]
    default: read
  mount_point:
    description:
      - Directory on the managed host for O(state=mounted) and O(state=unmounted). Created when missing; may hold
        files (guestmount C(-o nonempty) hides them while mounted).
      - A directory on which something other than a guestmount is mounted is refused.
    type: path
  force_tcg:
    description:
      - Run the libguestfs appliance under software emulation (TCG) instead of KVM.
      - V(auto) does so when the host's verdict (the same as virtops.kvm.kvm_host's) says KVM is not usable,
        for example nested virtualisation without vmx/svm, so no environment variable is needed.
      - Settings in E(LIBGUESTFS_BACKEND_SETTINGS) are kept; the libguestfs backend (E(LIBGUESTFS_BACKEND))
        is left as configured.
    type: str
    choices: [auto, "yes", "no"]
    default: auto
  unmount_timeout:
    description:
      - Seconds to wait, after C(guestunmount), for the guestmount process to exit.
    type: int
    default: 120
requirements:
  - libguestfs and its Python binding (C(python3-guestfs) on Debian/Ubuntu, C(python3-libguestfs) on
    Fedora/RHEL; not on PyPI) on the managed host
  - C(guestmount) and C(guestunmount) (C(libguestfs-tools)) for O(state=mounted) and O(state=unmounted)
notes:
  - The disks are opened read-only even with O(allow_running=true); nothing in the guest is ever written.
  - Devices in O(mounts) and in the returned inspection are appliance names (V(/dev/sda1)).
seealso:
  - name: libguestfs guestfs(3)
    description: Why disks in use must only be opened read-only.
    link: https://libguestfs.org/guestfs.3.html#disk-image-formats
"""

EXAMPLES = r"""
- name: Read /etc/hosts and /etc/hostname of a shut-down domain (one appliance launch)
  virtops.kvm.kvm_guestfs:
    domain: web01
    paths:
      - /etc/hosts
      - /etc/hostname
  register: web01_files

- name: Show the guest's /etc/hosts
  ansible.builtin.debug:
    msg: "{{ web01_files.files['/etc/hosts'].content }}"

- name: Read from an image, mounting by device (skips OS inspection), and copy the files to the host
  virtops.kvm.kvm_guestfs:
    disks:
      - path: /var/lib/libvirt/images/web01.qcow2
        format: qcow2
    mounts:
      /dev/sda1: /
    paths: [/etc/passwd, /var/log/boot.log]
    list_dirs: [/etc]
    max_size: 4194304
    dest: /srv/guest-copies/web01

- name: Read /etc/hostname of three shut-off clones in ONE appliance launch
  virtops.kvm.kvm_guestfs:
    domains: [stu01, stu02, stu03]
    paths: [/etc/hostname]
    mounts:
      /dev/sda1: /  # each guest's own first disk
  register: fleet_files

- name: Show what stu02 holds
  ansible.builtin.debug:
    msg: "{{ fleet_files.domains.stu02.files['/etc/hostname'].content }}"

- name: Look at a running domain anyway (read-only; content may be inconsistent)
  virtops.kvm.kvm_guestfs:
    domain: web01
    allow_running: true
    paths: [/etc/hosts]

- name: The course's guestmount -o nonempty -i, read-only and idempotent
  virtops.kvm.kvm_guestfs:
    domain: web01
    state: mounted
    mount_point: /srv/web01-root

- name: Unmount it again (waits for guestmount to exit)
  virtops.kvm.kvm_guestfs:
    state: unmounted
    mount_point: /srv/web01-root
"""

RETURN = r"""
files:
  description:
    - One entry per path of O(paths). C(exists) is always there; metadata when the file exists.
    - C(content) holds text that is valid UTF-8, otherwise C(content_b64) holds the bytes in base64.
    - C(error) says why a path was not read (larger than O(max_size), a directory, not a regular file, missing
      with O(fail_missing=true)); the task then fails, still returning every entry.
    - C(dest) is the copy on the managed host when O(dest) is set.
    - C(mode) is the octal permission string, C(mtime) seconds since the epoch, C(owner)/C(group) names from the
      guest's own /etc/passwd and /etc/group (the number when not found).
  returned: always (empty unless O(state=read))
  type: dict
  sample:
    /etc/hosts:
      exists: true
      content: "127.0.0.1 localhost\n"
      size: 20
      mode: "0644"
      owner: root
      group: root
      uid: 0
      gid: 0
      mtime: 1716460000
      sha256: 3f1c5a0e4c7b2e0b56b1a9e1b6d0f4cdb0b7b6d1f0e0c5b8f5a2d6e7c8b9a0f1
    /etc/shadow-missing:
      exists: false
dirs:
  description: Sorted names in each directory of O(list_dirs); V(null) for a missing directory.
  returned: always (empty unless O(state=read))
  type: dict
  sample:
    /etc: [hostname, hosts, passwd]
inspection:
  description:
    - What was found when O(mounts) was not given. C(method) is V(inspection) (libguestfs recognised an
      operating system) or V(single-filesystem) (no OS recognised; the only filesystem was mounted at V(/)).
    - C(mountpoints) maps mountpoint to appliance device. V(null) when O(mounts) was given.
  returned: when O(state=read), or O(state=mounted) needed the single-filesystem fallback
  type: dict
  sample:
    method: inspection
    root: /dev/sda1
    os_type: linux
    distro: debian
    product_name: Debian GNU/Linux 12 (bookworm)
    version: "12.0"
    hostname: web01
    mountpoints: {"/": /dev/sda1}
domains:
  description:
    - With O(domains), per domain name, what O(domain) returns for it - C(files), C(dirs) and C(inspection)
      as described above, and C(error) when the domain's filesystems could not be mounted.
  returned: with O(domains)
  type: dict
  sample:
    stu01:
      files: {/etc/hostname: {exists: true, content: "stu01\n", size: 6, mode: "0644", owner: root, group: root,
                              uid: 0, gid: 0, mtime: 1716460000, sha256: 5b8e...}}
      dirs: {}
      inspection: null
    stu02:
      files: {/etc/hostname: {exists: true, content: "stu02\n", size: 6, mode: "0644", owner: root, group: root,
                              uid: 0, gid: 0, mtime: 1716460000, sha256: 9a1c...}}
      dirs: {}
      inspection: null
appliance:
  description:
    - How the libguestfs appliance ran. C(launches) is 1 for every O(state=read) run, but one over O(domains) with
      more than 250 disks in all (one launch per 250 disks).
  returned: when O(state=read)
  type: dict
  sample:
    launches: 1
    backend: direct
    force_tcg: true
    force_tcg_reason: "KVM is not usable here (no vmx/svm CPU flag); libguestfs runs under software emulation (TCG)"
mounted:
  description: Whether a guestmount is on O(mount_point) after the task (predicted in check mode).
  returned: always
  type: bool
  sample: true
mount_point:
  description: The normalised O(mount_point), or V(null) for O(state=read).
  returned: always
  type: str
  sample: /srv/web01-root
guestmount_argv:
  description: The guestmount command that was run (no shell).
  returned: when O(state=mounted) mounted something
  type: list
  elements: str
  sample: [guestmount, --ro, -o, nonempty, --pid-file, /run/virtops-kvm/guestmount-0a1b.pid, --format=qcow2, -a,
           /var/lib/libvirt/images/web01.qcow2, -i, /srv/web01-root]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.manager import GuestfsManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**GuestfsManager.module_kwargs())
    run_module(module, GuestfsManager)


if __name__ == "__main__":
    main()
