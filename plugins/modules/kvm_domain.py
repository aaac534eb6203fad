#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_domain
short_description: Define, update, start, stop, pause, reboot and undefine libvirt domains
version_added: 0.1.0
description:
  - Brings one libvirt domain (virtual machine) to a state, like C(virsh define), C(start), C(shutdown),
    C(destroy), C(suspend), C(resume), C(reboot), C(undefine), C(autostart) and C(edit), but idempotently.
  - "Or a whole batch of them in one task (O(domains)): the host is read once, every item is checked and
    planned before anything changes (a bad item refuses the batch), and the slow transitions (graceful
    shutdown, reboot, start and the wait for O(boot_marker)) of up to O(parallel) domains run at once, so a
    fleet's shutdown costs about one shutdown. A domain that fails (a guest that ignores the ACPI request)
    fails alone, with its hint, while the others finish; the task then fails naming it, with every item's
    result in RV(domains)."
  - "The requested definition (O(xml)) is compared semantically with the domain's inactive XML: what
    libvirt fills in and the XML omits (UUID, MAC addresses, PCI and drive addresses, controllers, input
    devices, default attributes, memory written in KiB) is not a change and is never churned: the UUID,
    the MAC of each interface and the C(<metadata>) of the defined domain are carried into the XML that
    is defined. So defining the same XML again changes nothing."
  - "Removals count where presence means something: a device, a top-level element such as C(<title>) or
    C(<features>), a child of C(<os>) or C(<features>), or a flag directly inside a device (C(<readonly/>)).
    An attribute or a deeper element the XML omits keeps libvirt's value: to change it, write it."
  - Check mode has no side effects and predicts the same C(changed) and diff as a real run, with the same
    comparison rules (nothing is defined anywhere to find out).
author:
  - virtops.kvm developers (@virtops)
extends_documentation_fragment:
  - virtops.kvm.connection
  - virtops.kvm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Nothing is defined, started, stopped or deleted; C(changed), RV(changes), RV(removed_files) and the
        diff are those a real run would report (per item with O(domains)).
  diff_mode:
    support: full
    details:
      - The diff shows the state, the autostart flag and the inactive XML before and after (with O(domains),
        one diff per item that changes).
  idempotent:
    support: partial
    details:
      - O(state=rebooted) always reboots and reports a change.
options:
  name:
    description:
      - The domain name. When O(xml) has a C(<name>), it must be this name.
      - May be left out when O(xml) is given; the name is then the XML's C(<name>).
      - A domain defined from O(xml) follows the collection's naming rule, the same in every module
        (1 to 64 letters, digits, C(.), C(_), C(+), C(-), starting with a letter or digit, without C(..);
        the C(names.md) guide). Without O(xml) the domain exists and is only looked up, so one named otherwise
        (by C(virsh define)) can still be started, stopped or removed; its name must not be empty or hold a
        C(/) or a control character.
      - One of O(name), O(xml) and O(domains) is required; O(domains) excludes the other two.
    type: str
  domains:
    description:
      - A batch of domains, instead of O(name) and O(xml). Each item is brought to its state as if it were
        a task of its own; what an item leaves out comes from the option of the same name at the top level
        (O(state), O(memory), O(vcpus), O(autostart), O(title), O(description), O(shutdown_timeout),
        O(force)); O(domain_type), O(remove_storage), O(allow_base_start), O(boot_marker) and
        O(boot_timeout) apply to every item.
      - "Every item is checked and planned (in check mode, from one read of the host) before anything
        changes: a malformed item, a domain listed twice, a bad state, an unknown name without O(domains[].xml),
        a clone base to start or storage in use to delete refuses the whole batch, and nothing is changed."
      - The items that change then run, up to O(parallel) at once. An item that fails does not stop the
        others; the task fails at the end naming the failed items, each with its own message and hint.
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - The domain name. May be left out when O(domains[].xml) has a C(<name>).
        type: str
      xml:
        description:
          - The full definition of this domain, as O(xml).
        type: str
      state:
        description:
          - As O(state); default the top-level O(state).
        type: str
        choices: [present, running, shutdown, destroyed, paused, absent, rebooted]
      memory:
        description:
          - As O(memory).
        type: int
      vcpus:
        description:
          - As O(vcpus).
        type: int
      autostart:
        description:
          - As O(autostart).
        type: bool
      title:
        description:
          - As O(title).
        type: str
      description:
        description:
          - As O(description).
        type: str
      shutdown_timeout:
        description:
          - As O(shutdown_timeout); default the top-level O(shutdown_timeout).
        type: int
      force:
        description:
          - As O(force); default the top-level O(force).
        type: bool
  parallel:
    description:
      - With O(domains), how many domains change at once. Their transitions mostly wait for the guests
        (an ACPI shutdown, a boot), so a fleet shuts down or boots in about the time of one domain as long
        as it is no larger than this.
    type: int
    default: 32
  state:
    description:
      - V(present) defines or updates the domain and leaves it running or not as it is (a new domain is not
        started).
      - V(running) starts it; a paused domain is resumed and a suspended (pmsuspended) one woken up.
      - V(shutdown) asks the guest to shut down (ACPI power button, like C(virsh shutdown)) and waits up to
        O(shutdown_timeout) seconds until it is off. If it is not off by then the task fails, unless
        O(force=true), which then powers it off (C(virsh destroy)).
      - V(destroyed) powers it off at once (C(virsh destroy)).
      - V(paused) suspends it (C(virsh suspend)); a shut off domain is started paused.
      - V(absent) undefines it (C(virsh undefine)), with its managed save image and snapshot and checkpoint
        metadata; a running domain is shut down first like V(shutdown) (powered off only with O(force)).
        NVRAM is kept unless O(remove_storage) is not V(none). Disk files are deleted only as
        O(remove_storage) says.
      - V(rebooted) reboots a running domain (C(virsh reboot), ACPI) and waits until the guest has reset,
        up to O(shutdown_timeout) (O(force=true) then resets it); a shut off domain is started. Always
        reports a change.
    type: str
    choices: [present, running, shutdown, destroyed, paused, absent, rebooted]
    default: present
  xml:
    description:
      - The full domain definition (as C(virsh dumpxml) prints it, or your own).
      - Needed to define a new domain. For an existing one, it is compared semantically with the inactive
        XML and defined only if it differs (see the description). Its UUID, if given, must be the domain's.
      - Ignored with O(state=absent).
    type: str
  domain_type:
    description:
      - Sets the C(type) of C(<domain>) in O(xml) (or of the domain being updated).
      - V(kvm) needs hardware virtualization; V(qemu) is software emulation (TCG), slow but works anywhere.
      - V(auto) asks the host (as virtops.kvm.kvm_host does) which one works here. When not set, O(xml)
        is used as written; an O(xml) without a type, or with C(type='auto'), is treated as V(auto).
    type: str
    choices: [auto, kvm, qemu]
  memory:
    description:
      - Memory in MiB (sets C(<memory>) and C(<currentMemory>)). Applied to the persistent config; a running
        domain gets it at its next start (RV(pending_restart)).
    type: int
  vcpus:
    description:
      - Number of virtual CPUs (sets C(<vcpu>)). Applied like O(memory).
    type: int
  autostart:
    description:
      - Start the domain when the libvirt daemon starts (C(virsh autostart) / C(autostart --disable)).
    type: bool
  title:
    description:
      - A short title of the domain (C(<title>)); applied to the config and, when running, live as well.
      - An empty string removes it. One line, without control characters.
    type: str
  description:
    description:
      - A free text description (C(<description>)); applied like O(title). Tabs and line breaks are allowed,
        other control characters are not.
    type: str
  shutdown_timeout:
    description:
      - Seconds to wait for a guest to power off after the ACPI request (O(state=shutdown), O(state=absent))
        or to reset after a reboot request (O(state=rebooted)).
      - With O(force=true) and V(0), the domain is powered off at once.
    type: int
    default: 120
  force:
    description:
      - When the guest does not shut down (or reboot) within O(shutdown_timeout), power it off (reset it)
        instead of failing.
    type: bool
    default: false
  remove_storage:
    description:
      - Which disk files O(state=absent) deletes. Files are never deleted by any other state.
      - V(none) deletes nothing.
      - V(overlays) deletes only the domain's disk files that virtops.kvm.kvm_clone created for it (as
        recorded in the domain's C(<metadata>)).
      - V(all) deletes all of the domain's writable file disks (not CD-ROMs, read-only or shareable disks).
      - Either way, a file another defined domain uses (as its disk or as a backing file), or that is the
        backing file of another disk, is refused and the task fails before anything changed. The backing
        files (base images) of the domain's disks are never deleted.
    type: str
    choices: [none, overlays, all]
    default: none
  allow_base_start:
    description:
      - "Dangerous: start a domain even though one of its writable disks is the backing file of other
        disks (a clone base). Writing to a base silently corrupts every overlay on it; by default such a
        domain is not started and the error names the dependent disks."
    type: bool
    default: false
  accept_base_change:
    description:
      - A clone made by virtops.kvm.kvm_clone records the identity of its overlay's base (size, modification
        time, a digest of sampled pieces). When the base changed since, the overlay is silently corrupt, so by
        default the domain is not started (O(state=running), V(paused), V(rebooted) from shut off) and the
        error names the base, what changed and the domains on it.
      - V(true) records the base as it is now and starts the domain; set it only once you know the overlay is
        still good (for example the change was undone). With O(domains), it applies to every item.
    type: bool
    default: false
  boot_marker:
    description:
      - A regular expression (Python C(re)) the guest prints on its serial console when it is up, for
        example V(login:) or a line of your own.
      - When this task starts (or reboots) the domain, it then waits until the pattern appears in what the
        domain's first C(<serial type='file'>) log gained since the start, up to O(boot_timeout) seconds
        (then the task fails; the domain stays started). What the log held before never counts.
      - The log is read on the managed host, so the URI must be a local one. A domain to start without such
        a console is refused before anything changes.
    type: str
  boot_timeout:
    description:
      - Seconds to wait for O(boot_marker) after a start or reboot.
    type: int
    default: 180
notes:
  - A change to the persistent config of a running domain takes effect at its next start (a full
    shutdown and start; a reboot keeps the running config). RV(pending_restart) then is V(true).
    O(title), O(description) and O(autostart) need no restart.
  - To remove a setting that libvirt would otherwise fill in with a default (for example C(<cpu>) or
    C(<clock>)), give that element explicitly with the value you want.
seealso:
  - module: virtops.kvm.kvm_domain_info
  - module: virtops.kvm.kvm_clone
  - name: libvirt domain XML format
    description: Every element of the definition.
    link: https://libvirt.org/formatdomain.html
"""

EXAMPLES = r"""
- name: Define a domain from XML (virsh define), not started
  virtops.kvm.kvm_domain:
    name: web1
    xml: "{{ lookup('ansible.builtin.file', 'web1.xml') }}"

- name: Start it and start it at boot too (virsh start; virsh autostart)
  virtops.kvm.kvm_domain:
    name: web1
    state: running
    autostart: true

- name: Give it 2 GiB and 2 vCPUs (virsh edit); applied at the next start
  virtops.kvm.kvm_domain:
    name: web1
    memory: 2048
    vcpus: 2
  register: web1

- name: Graceful shutdown, power off if the guest ignores it for 60 s
  virtops.kvm.kvm_domain:
    name: web1
    state: shutdown
    shutdown_timeout: 60
    force: true
  when: web1.pending_restart

- name: Define a domain from XML; the name is the XML's <name> (community.libvirt's command=define)
  virtops.kvm.kvm_domain:
    xml: "{{ lookup('ansible.builtin.file', 'web2.xml') }}"

- name: Shut a fleet down in one task (concurrently; a guest that ignores ACPI fails alone)
  virtops.kvm.kvm_domain:
    domains:
      - name: stu01
      - name: stu02
      - name: stu03
        force: true
    state: shutdown
    shutdown_timeout: 60

- name: Start a fleet and wait until every guest prints its login prompt on the serial console
  virtops.kvm.kvm_domain:
    domains: [{name: stu01}, {name: stu02}, {name: stu03}]
    state: running
    boot_marker: "login:"
    boot_timeout: 300

- name: Remove a clone and the overlay kvm_clone created for it (never the base)
  virtops.kvm.kvm_domain:
    name: web1
    state: absent
    force: true
    remove_storage: overlays
"""

RETURN = r"""
changes:
  description:
    - What was (or in check mode would be) done, in order; empty when nothing changed.
    - "With O(domains), every item's changes, each prefixed by the domain's name (V(web1: start))."
  returned: always
  type: list
  elements: str
  sample: ["config: /domain/vcpu: '1' -> '2'", "start"]
pending_restart:
  description:
    - Whether the domain runs with an older config than its persistent one (it gets it at its next start).
    - With O(domains), whether any of them does.
  returned: always
  type: bool
  sample: true
removed_files:
  description:
    - The disk files deleted by O(state=absent) with O(remove_storage) (in check mode, to be deleted).
    - With O(domains), those of every item.
  returned: always
  type: list
  elements: str
  sample: [/var/lib/libvirt/images/web1.qcow2]
domains:
  description:
    - With O(domains), one entry per item, in order. Each has the item's C(name) and what a task with
      O(name) returns (C(changed), C(changes), C(pending_restart), C(removed_files), C(domain)).
    - An item that failed also has C(failed=true), C(msg) and C(error) (the error type); its C(domain) is
      the domain as it is after the failure.
  returned: with O(domains)
  type: list
  elements: dict
  sample:
    - name: stu01
      changed: true
      changes: [shutdown]
      pending_restart: false
      removed_files: []
      domain: {name: stu01, state: shutoff}
    - name: stu02
      changed: true
      changes: [shutdown]
      pending_restart: false
      removed_files: []
      domain: {name: stu02, state: running}
      failed: true
      msg: Domain stu02 did not shut down within 60 s of the ACPI power button request ...
      error: TimeoutExpired
domain:
  description:
    - The domain after the task (in check mode, as it is now); null when it is not defined.
  returned: with O(name) or O(xml)
  type: dict
  contains:
    name: {description: Name., type: str, returned: always, sample: web1}
    uuid: {description: UUID., type: str, returned: always, sample: 16a16955-5bad-4175-b74c-78069b24e361}
    id: {description: 'Numeric id while running, else null.', type: int, returned: always, sample: 7}
    state:
      description: One of V(running), V(blocked), V(paused), V(in_shutdown), V(shutoff), V(crashed),
        V(pmsuspended), V(nostate).
      type: str
      returned: always
      sample: running
    state_reason: {description: Why it is in that state (libvirt's reason)., type: str, returned: always,
                   sample: booted}
    active: {description: Whether it is running (or paused)., type: bool, returned: always, sample: true}
    persistent: {description: Whether it has a persistent config., type: bool, returned: always, sample: true}
    autostart: {description: Started with the daemon., type: bool, returned: always, sample: false}
    managed_save: {description: Whether a managed save image exists., type: bool, returned: always,
                   sample: false}
    vcpus: {description: Number of vCPUs., type: int, returned: always, sample: 1}
    memory_mib: {description: Current memory in MiB., type: int, returned: always, sample: 256}
    max_memory_mib: {description: Maximum memory in MiB., type: int, returned: always, sample: 256}
    cpu_time_ns: {description: CPU time used in nanoseconds., type: int, returned: always, sample: 3520000000}
    domain_type: {description: V(kvm) or V(qemu) (or another driver's type)., type: str, returned: always,
                  sample: qemu}
    title: {description: 'Title, or null.', type: str, returned: always, sample: Web server}
    description: {description: 'Description, or null.', type: str, returned: always, sample: null}
    os:
      description: OS type, architecture and machine type.
      type: dict
      returned: always
      sample: {type: hvm, arch: x86_64, machine: pc-i440fx-7.2}
    disks:
      description: Disks (from the live XML when running) with the backing chain of file disks.
      type: list
      elements: dict
      returned: always
      sample:
        - target: vda
          device: disk
          type: file
          path: /var/lib/libvirt/images/web1.qcow2
          format: qcow2
          readonly: false
          backing_chain: [{path: /var/lib/libvirt/images/base.qcow2, format: qcow2}]
    interfaces:
      description: Network interfaces.
      type: list
      elements: dict
      returned: always
      sample: [{type: network, mac: "52:54:00:e3:1e:96", source: default, model: virtio}]
    consoles:
      description: Serial ports and consoles (type and file or pty path).
      type: list
      elements: dict
      returned: always
      sample: [{device: serial, type: pty, path: /dev/pts/3, target_type: isa-serial, port: "0"}]
    config_file:
      description: Where libvirt keeps the persistent XML (for qemu:///system and qemu:///session), or null.
      type: str
      returned: always
      sample: /etc/libvirt/qemu/web1.xml
    provenance:
      description:
        - What virtops.kvm.kvm_clone recorded in the domain's C(<metadata>) when it made this domain, or null
          for a domain it did not make.
        - Used to tell a fleet's clones from other domains, and by O(remove_storage=overlays).
      type: dict
      returned: always
      contains:
        template: {description: The template domain's name., type: str, returned: success, sample: stu-template}
        mode: {description: 'Clone mode, V(overlay) or V(copy).', type: str, returned: success, sample: overlay}
        created_by: {description: Always V(virtops.kvm)., type: str, returned: success, sample: virtops.kvm}
        created_disks:
          description: The files kvm_clone created for the clone (disks, NVRAM, cloud-init seed, its XML file).
          type: list
          elements: dict
          returned: success
          sample: [{path: /kvmfile/stu01.qcow2, base: /kvmfile/base.qcow2, mode: overlay, format: qcow2}]
        identity:
          description:
            - The identity reset kvm_clone did on the clone's new disk before its first boot
              (see O(virtops.kvm.kvm_clone#module:identity)), or null when none was recorded.
            - C(hostname), C(done) (operations carried out), C(skipped) (operations that did not apply, each with
              its C(reason)) and C(files) (paths written).
          type: dict
          returned: success
          sample: {hostname: stu01, done: [hostname, machine-id], skipped: [], files: []}
      sample: null
    base_drift:
      description:
        - For a clone made by virtops.kvm.kvm_clone, each overlay whose base changed after the overlay was made
          (C(disk), C(base), C(changes) such as V(content), V(modification time), V(size 1 -> 2 bytes)); empty
          when none did or nothing was recorded.
      type: list
      elements: dict
      returned: always
      sample: [{disk: /kvmfile/stu01.qcow2, base: /kvmfile/base.qcow2, changes: [content, modification time]}]
    pending_restart:
      description: Same as the top-level RV(pending_restart).
      type: bool
      returned: always
      sample: false
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._domain.manager import DomainManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**DomainManager.module_kwargs())
    run_module(module, DomainManager)


if __name__ == "__main__":
    main()
