#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_customize
short_description: Edit files, SSH keys and password hashes in shut-off guests, offline, in one libguestfs launch
version_added: 0.3.0
description:
  - Changes what is inside the disks of shut-off domains without booting them, as C(virt-customize) does. It can
    write, append to or delete files, add SSH public keys to a user's C(authorized_keys), and set a user's password
    hash in C(/etc/shadow).
  - The disks of every domain of the task are drives of ONE libguestfs appliance (one per 250 drives). Each guest
    is mounted read-only and compared first, and only a guest that needs a change is mounted read-write and
    changed. So a rerun changes nothing and writes nothing.
  - "Refused before anything is launched, with nothing changed: a domain that is running or paused; a disk that is
    read-only or shareable in the domain's XML; and a disk that anything else stands on. That last one means another
    domain's disk, an overlay (a clone) or an overlay file beside it, or a snapshot layer of any domain, the
    domain's own included. This is the collection's write guard. A template others are cloned from is never
    written: edit its clones, or a copy."
  - A qcow2 overlay is written in its top layer only; the base it stands on is opened read-only.
  - Owners are the guest's own users and groups, resolved from its C(/etc/passwd) and C(/etc/group).
  - A file that is a symbolic link is never written through, because the guest may point it anywhere. Such a path
    is refused, and so is a directory where a file is wanted. Links among a path's directories are followed (for
    example C(/bin) to C(usr/bin)); they resolve inside the guest.
  - One file written by two edits (for example C(/etc/shadow) in O(files) and in O(passwords)) is refused, because
    the order would decide.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
attributes:
  check_mode:
    support: full
    details:
      - The drives are added read-only and every guest is compared. The result says what would change, and nothing
        is written.
  diff_mode:
    support: full
    details:
      - One entry per file written or removed, with its text before and after. A file over 64 KiB, or a binary one,
        is shown by its size. A password hash is never shown.
  idempotent:
    support: full
options:
  domain:
    description:
      - Name of the shut-off domain to edit (its file and block disks, from its inactive XML).
      - Mutually exclusive with O(domains); one of them is required.
    type: str
  domains:
    description:
      - Names of several shut-off domains to edit the same way, all in one appliance launch.
      - Every one must be defined and pass the refusals in the description, or nothing is changed on any.
      - A guest that fails during the edit does not stop the others. The task fails at the end, naming each
        failure, with every result.
    type: list
    elements: str
  files:
    description:
      - Files to write, append to or delete in each guest.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute, normalised path of the file in the guest.
        type: str
        required: true
      state:
        description:
          - V(present) makes the file hold exactly O(files[].content). Missing parent directories are created.
          - V(appended) adds O(files[].content) at the end of the file, after a line break if the file lacks one.
            It is not added again when the file already contains it anywhere. A missing file is created with it.
          - V(absent) deletes the file. A missing file is no change. A directory is refused, never deleted.
        type: str
        choices: [present, absent, appended]
        default: present
      content:
        description:
          - The text to write or append (UTF-8), at most 2 MiB. Required unless O(files[].state=absent).
        type: str
      mode:
        description:
          - Permission bits, as an octal string such as V('0644').
          - When not given, an existing file keeps its mode and a new one gets V(0644).
        type: raw
      owner:
        description:
          - V(user) or V(user:group), names or numbers, as the guest knows them.
          - When not given, an existing file keeps its owner and a new one belongs to root.
        type: str
  authorized_keys:
    description:
      - SSH public keys that users of each guest accept, in C(~USER/.ssh/authorized_keys). The home directory comes
        from the guest's C(/etc/passwd) and must exist. C(.ssh) is created with mode C(0700) and the file is given
        mode C(0600), both owned by the user.
    type: list
    elements: dict
    default: []
    suboptions:
      user:
        description: The user, as the guest's C(/etc/passwd) names it.
        type: str
        required: true
      keys:
        description:
          - Public key lines (type, key and an optional comment). A key already in the file is not added again.
        type: list
        elements: str
        default: []
      exclusive:
        description: Remove every other key from the file, so that it holds exactly O(authorized_keys[].keys).
        type: bool
        default: false
  passwords:
    description:
      - Password hashes to set in each guest's C(/etc/shadow). The other fields of the user's line are kept, the age
        fields included. The file keeps its mode and owner.
    type: list
    elements: dict
    default: []
    suboptions:
      user:
        description: The user; it must have a line in the guest's C(/etc/shadow).
        type: str
        required: true
      hash:
        description:
          - A crypt(3) hash such as C($6$salt$...) or C($y$...), optionally locked with a leading C(!).
          - A clear-text password is refused. Hash it with C(password_hash) or C(mkpasswd).
          - Never logged, returned or shown in a diff.
        type: str
        required: true
  mounts:
    description:
      - Filesystems to mount, as device to mountpoint, for example C(/dev/sda1=/) (see the examples). Each guest
        names its own devices, so its first disk is V(/dev/sda) whatever its place in the appliance.
      - When omitted, libguestfs inspection finds each guest's operating system and mountpoints. When there is
        none, the one filesystem on the disks is mounted at V(/).
    type: dict
  force_tcg:
    description:
      - Run the libguestfs appliance under software emulation (TCG) instead of KVM.
      - V(auto) does so when the host's verdict (the same as virtops.kvm.kvm_host's) says KVM is not usable.
    type: str
    choices: [auto, "yes", "no"]
    default: auto
notes:
  - Files written offline in an SELinux guest carry no label until the guest relabels them. Give such a guest
    C(/.autorelabel), or restore the labels at its first boot.
  - A filesystem that was not cleanly unmounted (a guest destroyed, not shut down) may have its journal replayed
    when it is mounted, even read-only. That touches the disk's metadata, not its files.
seealso:
  - module: virtops.kvm.kvm_guestfs
  - module: virtops.kvm.kvm_clone
  - module: virtops.kvm.kvm_domain
"""

EXAMPLES = r"""
- name: Let the operator's key in and set a message of the day on three stopped clones, in one launch
  virtops.kvm.kvm_customize:
    domains: [web1, web2, web3]
    authorized_keys:
      - user: root
        keys:
          - "{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"
    files:
      - path: /etc/motd
        content: "Managed by Ansible\n"
        mode: "0644"

- name: A clone whose sshd is broken - fix its config and set a known root password hash
  virtops.kvm.kvm_customize:
    domain: web1
    files:
      - path: /etc/ssh/sshd_config.d/10-rescue.conf
        content: "PermitRootLogin prohibit-password\n"
      - path: /etc/nologin
        state: absent
    passwords:
      - user: root
        hash: "{{ rescue_password | password_hash('sha512', 'virtopssalt') }}"
  no_log: true

- name: Append a line to a guest's hosts file, mounting its root by device
  virtops.kvm.kvm_customize:
    domain: db1
    mounts:
      /dev/sda1: /
    files:
      - path: /etc/hosts
        state: appended
        content: "192.0.2.10 backup.example.com\n"
"""

RETURN = r"""
domains:
  description: What was (or in check mode would be) changed in each domain, keyed by name.
  returned: always
  type: dict
  contains:
    changed:
      description: Whether the guest was (or would be) changed.
      type: bool
      returned: always
      sample: true
    changes:
      description: What was (or would be) done, in order.
      type: list
      elements: str
      returned: always
      sample: ["create /root/.ssh (0700, root)", "write /root/.ssh/authorized_keys (81 bytes)"]
    error:
      description: Why this guest could not be edited (the task then fails).
      type: str
      returned: when this guest failed
  sample:
    web1:
      changed: true
      changes: ["rewrite /etc/motd (19 bytes)"]
launches:
  description: libguestfs appliance launches (one per 250 drives).
  returned: always
  type: int
  sample: 1
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._customize.manager import CustomizeManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**CustomizeManager.module_kwargs())
    run_module(module, CustomizeManager)


if __name__ == "__main__":
    main()
