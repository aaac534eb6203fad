#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_clone
short_description: Create or remove a fleet of clones of a template domain, as qcow2 overlays or full copies
version_added: 0.1.0
description:
  - Clones a shut-off template domain (or domain XML text) into one or many new domains in one task, the way
    the course does it by hand with C(virsh dumpxml), C(cp) or C(qemu-img create -b), and C(virsh define).
  - Per clone it changes the name, the UUID (also in C(<sysinfo>)), one new MAC per interface (unique on the
    host and in the batch, in QEMU's C(52:54:00) range), the disk paths, the NVRAM file (copied), the
    serial/console log paths, sets graphics to autoport, and drops generated device names and aliases.
    Read-only and shareable disks (a CD-ROM) are shared, not copied.
  - With O(mode=overlay) each writable template disk gets a qcow2 overlay whose backing file is the template
    disk, with the backing format given explicitly. With O(mode=copy) it gets a full, independent, sparse copy.
  - What was created is recorded in the clone's C(<metadata>) (template, base, mode), so a second run
    recognises its clones and O(state=absent) deletes only files this collection created.
  - Existing clones that match are left alone; a domain or file in the way that does not match is an error
    naming the difference, and is never overwritten.
  - Each NEW clone boots as itself. A template sealed by M(virtops.kvm.kvm_template) already has no identity
    to inherit, so its clones need no appliance; each gets its host name from its cloud-init seed or its DHCP
    reservation and makes its machine-id and SSH host keys at first boot. From any other template, kvm_clone
    resets the identity each clone copied (hostname, machine-id, SSH host keys, persistent-net rules, DHCP
    leases, logs; see O(identity)) on the clone's own new disk, for the batch in as few libguestfs appliance
    launches as the drive limit allows (one for up to 250 disks). The base, clones that already existed and
    running domains are never touched. RV(clones[].identity_source) says which path each clone took.
  - With O(cloud_init), each new clone also gets its own cloud-init NoCloud seed (an ISO 9660 volume
    labelled C(cidata) beside its disk, attached as a read-only CD-ROM and removed with the clone).
  - Each clone is created atomically (a failed identity reset, define or start removes that clone's disks),
    and a host-wide lock keeps concurrent runs from picking the same MAC address.
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Returns the plan (clones, disk paths, the MACs and UUIDs that would be generated, the identity
        operations planned per new clone; for O(state=absent) the files that would be removed) without touching
        a file or a domain and without launching the libguestfs appliance. Generated MACs and UUIDs differ from
        those a real run picks.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  template:
    description:
      - Name of the template domain. It must be shut off; a running or paused template is refused.
      - Mutually exclusive with O(template_xml). One of them is required unless O(state=absent).
    type: str
  template_xml:
    description:
      - Domain XML of the template, as produced by C(virsh dumpxml). Its C(<name>) is recorded as the template.
      - Mutually exclusive with O(template).
    type: str
  template_snapshot:
    description:
      - When the template's disks are external snapshot layers (M(virtops.kvm.kvm_snapshot) with
        O(virtops.kvm.kvm_snapshot#module:kind=external)), the name of the template's external snapshot whose
        frozen images the clones are made from (overlays on them, or copies of them with O(mode=copy)).
      - Without it such a template is refused, because its current layer is written again whenever it runs.
      - Only with O(template), not O(template_xml).
    type: str
  name:
    description:
      - Name of a single clone. Mutually exclusive with O(clones).
      - 1 to 64 characters, letters, digits, C(.), C(_), C(+), C(-); it becomes part of file names.
    type: str
  clones:
    description:
      - The clones of a fleet. Each item is a name, or a dict with C(name) and optional overrides
        C(memory) (MiB), C(vcpus), C(autostart) (bool), C(macs) (list of MAC addresses, one per interface in
        order; missing ones are generated), C(uuid), C(state) (V(present), V(running) or V(absent)) and
        C(ip) (the IPv4 address of its DHCP reservation on O(network); default chosen as O(network) says),
        C(hostname) (an RFC 1123 host name, for the identity reset and the seed's C(local-hostname); default
        the clone's name),
        C(files) (more files for its identity reset, as in O(identity.files); they replace the task's files
        with the same path) and C(cloud_init) (keys as in O(cloud_init), merged over the task's; C(meta_data)
        merged key by key).
      - Mutually exclusive with O(name).
    type: list
    elements: raw
  mode:
    description:
      - V(overlay) creates a qcow2 overlay on each writable template disk (fast, small; the template disk
        becomes a base that must never change). V(copy) makes a full, independent, sparse copy.
    type: str
    choices: [overlay, copy]
    default: overlay
  dest_dir:
    description:
      - Directory for the clones' disks, named C(<clone>.qcow2) (C(<clone>-<target>.qcow2) for further disks;
        C(.img) for raw copies). It must exist and be writable.
      - Defaults to the directory of the template's first writable disk.
    type: path
  xml_dir:
    description:
      - When set, each clone's domain XML is also written to C(<xml_dir>/<clone>.xml) (as the course keeps
        C(stu01.xml)) and kept in step with the defined domain. The file is recorded in the clone's provenance,
        so O(state=absent) removes it (if it is still that clone's XML) whether or not O(xml_dir) is given again.
      - Must exist and be writable when clones are created or kept present. With O(state=absent) a missing
        O(xml_dir) is not an error; it just holds no XML file to remove.
    type: path
  domain_type:
    description:
      - The clones' C(<domain type>). V(auto) uses the host's usable type, decided by the same code as
        virtops.kvm.kvm_host's verdict (V(qemu) where KVM is listed but does not really work).
    type: str
    choices: [auto, kvm, qemu]
    default: auto
  state:
    description:
      - V(present) defines the clones, V(running) also starts them.
      - V(absent) destroys and undefines the clones and deletes only the files this collection created for
        them (recorded in their metadata), and only when no other domain uses them.
      - A C(state) in a O(clones) item overrides this for that clone.
    type: str
    choices: [present, running, absent]
    default: present
  protect_base:
    description:
      - After overlays exist, make each base file read-only (C(chmod a-w)) so nothing can write to it by mistake.
    type: bool
    default: true
  parallel:
    description:
      - How many clones are created at once (disk creation and define). The connection is shared.
    type: int
    default: 4
  network:
    description:
      - Attach each clone's first interface to this libvirt virtual network (C(<interface type='network'>),
        what was specific to the template's interface type is dropped; model, MAC and PCI address stay). The
        network must be defined; it must be active when a clone starts.
      - An existing clone whose first interface is on another network is an error naming it, never changed.
      - With O(dhcp_reservations), each clone also gets a static DHCP reservation on the network.
    type: str
  dhcp_reservations:
    description:
      - With O(network), give each clone a static DHCP host entry (its first interface's MAC, the clone's name,
        an IPv4 address) in the network, made live on a running network without a restart (like
        C(virsh net-update --live --config add ip-dhcp-host)), before the clone is defined.
      - "Deterministic: a clone keeps the address of its entry (found by its MAC, or by its name when the
        clone was made again with a new MAC); a new one gets the C(ip) of its O(clones) item, else the lowest
        free address of the network's first IPv4 DHCP range, in the order of O(clones). Free means not the
        network's own address, not in another entry, not leased to another MAC. So the same fleet gets the
        same addresses on a rerun, and check mode predicts them."
      - O(state=absent) removes the entries with a removed clone's MAC and name from the networks its
        interfaces are on (also without O(network)); other entries are never touched.
      - Clone names must then be valid host names (letters, digits, C(-), C(.)).
    type: bool
    default: true
  accept_base_change:
    description:
      - Each overlay clone records its base's identity (size, modification time, a digest of sampled pieces) in
        its provenance. When a base changed after overlays were made on it (the course's rule broken), new
        overlays on it are refused, with the base, what changed and the domains on it; existing clones of the
        batch only get a warning.
      - V(true) records the bases as they are now in every clone on them (RV(base_change_accepted)) and goes
        on; set it only once you know the overlays are still good.
    type: bool
    default: false
  identity:
    description:
      - The offline identity reset of each clone created by this task, before its first boot, on its own new
        disk only (never the base, never a clone that already existed). All new clones' disks are drives of one
        read-write libguestfs appliance; each clone's filesystems are found by inspection (or O(identity.mounts))
        and changed in turn. Needs the libguestfs Python binding on the managed host.
      - An operation that does not apply to a guest (no systemd, no SSH server) is skipped and reported, not
        failed. A clone whose disk the appliance cannot mount fails (and is rolled back) with a hint to give
        O(identity.mounts); the other clones are created.
      - What was done is recorded in the clone's provenance, so reruns never redo it.
      - Set O(identity.operations=[]) (and no O(identity.files)) to clone without a reset and without libguestfs.
      - Where nothing else makes SSH host keys at first boot (Debian and Ubuntu without a cloud-init
        datasource), V(ssh-hostkeys) also installs the first-boot unit C(virtops-ssh-hostkeys.service)
        (C(ssh-keygen -A) before the SSH service).
    type: dict
    suboptions:
      operations:
        description:
          - The operations, in order, named like virt-sysprep's.
          - Default, when not given - none for a template sealed by M(virtops.kvm.kvm_template) and unchanged since
            (its clones need no reset), every operation for any other template.
          - V(hostname) writes the clone's host name (its C(hostname) item, default its name) to C(/etc/hostname)
            and replaces the template's name (and C(name.domain)) in C(/etc/hosts), or names the C(127.0.1.1)
            entry; the name must be a valid host name.
          - V(machine-id) empties C(/etc/machine-id) (systemd makes a new one at first boot) and removes a
            copy in C(/var/lib/dbus/machine-id) (a symlink to it is kept). Skipped without C(/etc/machine-id).
          - V(ssh-hostkeys) removes C(/etc/ssh/ssh_host_*); the SSH server's first start (sshd-keygen on EL and
            Fedora, cloud-init, or C(ssh-keygen -A)) makes new ones. Where the guest has systemd and
            C(ssh-keygen) but no C(sshd-keygen@) unit, it installs and enables C(virtops-ssh-hostkeys.service),
            which makes them at first boot when none exist. Skipped without C(/etc/ssh).
          - V(net-persistent) removes the udev C(70-persistent-net.rules) (and C(70-persistent-cd.rules)).
          - V(dhcp-leases) removes the DHCP client leases of dhclient, NetworkManager, dhcpcd, wicked, udhcpc.
          - V(logfiles) truncates every regular file below C(/var/log) and removes the systemd journal's
            machine-id directories (named after the template's machine-id).
        type: list
        elements: str
        choices: [hostname, machine-id, ssh-hostkeys, net-persistent, dhcp-leases, logfiles]
      files:
        description:
          - Files to write into every new clone after the operations, each a dict with C(path) (absolute, in
            the guest), C(content) (text), C(mode) (octal string such as V('0600'); default the existing file's
            mode, or V('0644') for a new file) and C(owner) (C(user) or C(user:group), names from the guest's own
            C(/etc/passwd) and C(/etc/group), or numbers). Parent directories are created.
          - A clone's own C(files) (in O(clones)) replace these for the same path.
        type: list
        elements: dict
        default: []
      mounts:
        description:
          - "Guest devices and where to mount them (C({/dev/sda1: /})), named as the guest's first disk is
            C(/dev/sda), for guests that libguestfs inspection does not recognise. Without it, inspection is
            used, then the disk's one filesystem."
        type: dict
      force_tcg:
        description:
          - Run the appliance under software emulation. V(auto) decides as virtops.kvm.kvm_guestfs does.
        type: str
        choices: [auto, 'yes', 'no']
        default: auto
  cloud_init:
    description:
      - "A cloud-init NoCloud seed for each new clone: C(<dest_dir>/<clone>-cidata.iso), an ISO 9660 volume
        labelled C(cidata) made with xorriso (or genisoimage), attached as a read-only CD-ROM, recorded in the
        provenance and removed with the clone."
      - C(user_data) is text (starting with C(#cloud-config) or C(#!)) or a dict (written as C(#cloud-config)
        followed by JSON, which is YAML). C(meta_data) is a dict; C(instance-id) defaults to the clone's UUID and
        C(local-hostname) to its C(hostname) or name. C(network_config) is text or a dict (network config v1/v2).
      - A clone's own C(cloud_init) item is merged over this one.
    type: dict
notes:
  - Overlays are refused on a base that a running domain uses as a writable disk.
  - The identity reset and the seed are done only when a clone is created; change an existing clone's files
    with virtops.kvm.kvm_guestfs for reading, and configuration management once it runs.
  - A base stays read-only after its last overlay is removed; make it writable again yourself if you want to.
seealso:
  - module: virtops.kvm.kvm_domain
"""

EXAMPLES = r"""
- name: A class of 20 linked clones of a shut-off template, started
  virtops.kvm.kvm_clone:
    template: centos7
    clones: "{{ range(1, 21) | map('string') | map('regex_replace', '^', 'stu') | list }}"
    dest_dir: /kvmfile
    xml_dir: /kvmfile
    state: running

- name: Two clones with overrides, as full copies
  virtops.kvm.kvm_clone:
    template: centos7
    mode: copy
    clones:
      - name: web01
        memory: 2048
        vcpus: 2
        autostart: true
      - name: db01
        macs: ["52:54:00:12:34:56"]

- name: Clone from XML text
  virtops.kvm.kvm_clone:
    template_xml: "{{ lookup('ansible.builtin.file', 'centos7.xml') }}"
    name: stu03
    domain_type: qemu

- name: A fleet on the lab network, each clone with a DHCP reservation (stu01 gets a fixed address)
  virtops.kvm.kvm_clone:
    template: centos7
    network: lab
    clones:
      - {name: stu01, ip: 192.168.100.101}
      - stu02
      - stu03
  register: fleet

- name: Show which address each clone gets
  ansible.builtin.debug:
    msg: "{{ fleet.clones | items2dict(key_name='name', value_name='ip') }}"

- name: Web servers that boot as themselves, with a first-boot cloud-init seed each
  virtops.kvm.kvm_clone:
    template: debian12
    state: running
    identity:
      operations: [hostname, machine-id, ssh-hostkeys, dhcp-leases]
      files:
        - {path: /etc/motd, content: "Managed by Ansible\n", mode: "0644"}
    cloud_init:
      user_data:
        users: [{name: ops, ssh_authorized_keys: ["{{ lookup('ansible.builtin.file', 'ops.pub') }}"]}]
    clones:
      - web01
      - {name: web02, hostname: web02.example.com}
      - {name: web03, cloud_init: {meta_data: {local-hostname: web03-canary}}}

- name: Remove the class again (only the files kvm_clone created are deleted)
  virtops.kvm.kvm_clone:
    clones: "{{ range(1, 21) | map('string') | map('regex_replace', '^', 'stu') | list }}"
    xml_dir: /kvmfile
    state: absent
"""

RETURN = r"""
clones:
  description: One entry per clone, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The clone's name.
      type: str
      sample: stu01
    uuid:
      description: Its UUID (for a new clone in check mode, the one that would have been generated).
      type: str
      sample: 4b1c1d4e-8f0a-4a53-9d7e-0c2b8f1a6e11
    macs:
      description: Its MAC addresses, one per interface.
      type: list
      elements: str
      sample: ["52:54:00:3a:91:0c"]
    disks:
      description: The clone's writable disks.
      type: list
      elements: dict
      sample:
        - target: vda
          path: /kvmfile/stu01.qcow2
          format: qcow2
          backing_file: /var/lib/libvirt/images/centos7.qcow2
          backing_format: qcow2
          mode: overlay
    changed:
      description: Whether this clone was created, started, removed, its XML file written or its DHCP
        reservation made.
      type: bool
      sample: true
    state:
      description: The clone's state after the task, V(present) (defined), V(running) or V(absent).
      type: str
      sample: running
    network:
      description: The network its first interface is on.
      type: str
      returned: with O(network)
      sample: lab
    ip:
      description: The IPv4 address of its DHCP reservation (in check mode, the one a real run reserves); null
        with O(dhcp_reservations=false).
      type: str
      returned: with O(network)
      sample: 192.168.100.101
    xml_file:
      description: The clone's XML file in O(xml_dir), or for O(state=absent) the XML file that is (or in check
        mode would be) removed.
      type: str
      returned: when O(xml_dir) is set, or with O(state=absent) when the clone has an XML file to remove
      sample: /kvmfile/stu01.xml
    identity:
      description:
        - The identity reset of a clone created by this task (C(hostname), C(done), C(skipped) with a C(reason)
          each, C(details) per operation, C(files) written, C(root) filesystem), or, for a clone that existed,
          the reset recorded in its provenance. In check mode C(planned) lists the operations instead of C(done).
      type: dict
      returned: when a reset was done, planned or recorded
      sample: {hostname: stu01, done: [hostname, machine-id, logfiles],
               skipped: [{operation: ssh-hostkeys, reason: no /etc/ssh (no SSH server installed)}], files: []}
    identity_source:
      description:
        - Which path gave the clone its own identity. V(sealed-template) - the template was sealed
          (M(virtops.kvm.kvm_template)), nothing was reset offline; the guest makes its machine-id and SSH host keys
          at first boot and takes its name from its seed or DHCP. V(offline-reset) - the per-batch offline reset
          (RV(clones[].identity)). V(none) - neither (O(identity.operations=[]) on an unsealed template).
        - Read back from the clone's provenance on later runs; absent for clones made before it was recorded.
      type: str
      returned: when known
      choices: [sealed-template, offline-reset, none]
      sample: sealed-template
    seed:
      description: The clone's cloud-init seed ISO (see O(cloud_init)).
      type: str
      returned: when the clone has one
      sample: /kvmfile/stu01-cidata.iso
    failed:
      description: Set when this clone failed (it was rolled back).
      type: bool
      returned: on failure of this clone
      sample: true
    msg:
      description: Why this clone failed.
      type: str
      returned: on failure of this clone
      sample: "unsupported configuration: Maximum CPUs greater than specified machine type limit 255"
bases:
  description: For O(mode=overlay), each base file (template disk) and the domains whose disks overlay it.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The base file.
      type: str
      sample: /var/lib/libvirt/images/centos7.qcow2
    read_only:
      description: Whether the base file is (or in check mode would be) read-only.
      type: bool
      sample: true
    dependents:
      description: Names of the domains that have this base in a disk's backing chain.
      type: list
      elements: str
      sample: [stu01, stu02]
identity_appliances:
  description:
    - How many libguestfs appliances the offline identity reset of this run's new clones launches (in check mode,
      would launch); 0 when no new clone needs one (no new clone, or O(identity.operations=[]) and no files).
    - An appliance takes at most 255 drives, so the new clones' disks are cut into groups of at most 250, a clone
      never split; one launch takes ~20 s under software emulation.
  returned: always
  type: int
  sample: 1
removed_files:
  description: Files deleted by O(state=absent) (disks, NVRAM and XML files the clone created); in check mode,
    the files that would be deleted.
  returned: when files were (or in check mode would be) removed
  type: list
  elements: str
  sample: [/kvmfile/stu01.qcow2, /kvmfile/stu01.xml]
kept_files:
  description: Files a removed clone created that were (or in check mode would be) kept because another domain
    still uses them, or a qcow2 overlay in the same directory has them as its backing file; C(used_by) names
    the domains, or the paths of such overlay files.
  returned: when files were kept
  type: list
  elements: dict
  sample: [{path: /kvmfile/stu01.qcow2, used_by: [stu01-child]}]
base_change_accepted:
  description: With O(accept_base_change=true), the domains whose changed base was recorded anew.
  returned: when a changed base was (or in check mode would be) accepted
  type: list
  elements: str
  sample: [stu01, stu02]
domain_type_reason:
  description: Why O(domain_type=auto) chose the type it did.
  returned: when clones were planned from a template
  type: str
  sample: "/dev/kvm exists but the CPU has no vmx/svm flag; using qemu (TCG)"
failed_clones:
  description: Names of the clones that failed.
  returned: on failure
  type: list
  elements: str
  sample: [stu07]
diff:
  description: Each clone before and after (state, uuid, macs, disks, and the reserved ip with O(network)).
  returned: always
  type: dict
  sample: {before: {clones: {stu01: {state: absent}}}, after: {clones: {stu01: {state: present}}}}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**CloneManager.module_kwargs())
    run_module(module, CloneManager)


if __name__ == "__main__":
    main()
