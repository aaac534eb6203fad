#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_vm
short_description: Make a VM from a cloud image, a disk image or a blank disk, without writing XML
version_added: 0.1.0
description:
  - "Makes and keeps a KVM virtual machine from a typed description, as C(virt-install --import) does (the
    options are named like virt-install's): memory, vCPUs, disks made from an image (a qcow2 overlay on it by
    default, a copy, or the image itself) or blank, networks, a cloud-init NoCloud seed, direct kernel boot,
    a serial console logged to a file, firmware, and the OS's device defaults from the osinfo database."
  - "An image an overlay is made on becomes a protected base, as M(virtops.kvm.kvm_clone) treats a template's
    disk: its identity (size, modification time, sampled content) is recorded in the VM's provenance and it is
    made read-only (C(chmod a-w)); M(virtops.kvm.kvm_domain) then refuses to start the VM if the base changes."
  - The files the module makes (disks and seed) are recorded in the domain's C(<metadata>) like a clone's
    provenance, so M(virtops.kvm.kvm_domain_info), the inventory, M(virtops.kvm.kvm_clone) (as a template),
    M(virtops.kvm.kvm_snapshot) and M(virtops.kvm.kvm_migrate) treat the VM as they treat a clone.
  - "A rerun compares the XML built from the options with the defined one semantically (what libvirt fills in
    is not a change) and changes nothing when they agree. On a running VM a new O(memory) (up to
    O(max_memory)) or O(vcpus) (up to O(max_vcpus)) is also applied live, a disk or network interface added
    to the list is hot-plugged and one dropped is hot-unplugged; what cannot change live is reported in
    RV(pending_restart). The VM is never restarted by this module."
  - Bad input (a missing image, a size smaller than its image, an O(disks[].mode=as_is) image that another
    disk stands on or another domain uses, a file that exists but is not this VM's, two VMs or disks claiming
    one file, an unknown O(os_variant)) is refused before anything is made.
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
      - Nothing is created, defined, started, hot-plugged or deleted, and no lock is taken; C(changed),
        RV(changes) and the diff are those a real run would report, except a new VM's C(<uuid>), drawn anew by
        each run.
  diff_mode:
    support: full
    details:
      - The diff shows each VM's state, autostart flag and inactive XML before and after.
  idempotent:
    support: full
options:
  name:
    description:
      - The VM's (domain's) name; its files are named after it. The collection's naming rule, 1 to 64 letters,
        digits, C(.), C(_), C(+), C(-), starting with a letter or digit, without C(..).
      - One of O(name) and O(vms) is required.
    type: str
  vms:
    description:
      - Several VMs in one task, made concurrently (up to O(parallel) at once) after one plan of all of them.
      - Each item is a dict with the options of one VM (O(name) and any of O(memory), O(max_memory), O(vcpus),
        O(max_vcpus), O(cpu), O(machine), O(firmware), O(os_variant), O(disks), O(networks), O(cloud_init),
        O(boot), O(console), O(console_log), O(graphics), O(pool), O(autostart), O(state),
        O(remove_detached)); an option it leaves out comes from the top-level option of the same name.
      - A VM that fails fails alone; the task then fails naming it, with every VM's result in RV(vms).
    type: list
    elements: dict
  state:
    description:
      - V(present) defines the VM (and makes its files) without changing whether it runs; V(running) also starts
        it; V(shutdown) shuts it down gracefully (ACPI, up to O(shutdown_timeout)); V(destroyed) powers it off.
      - V(absent) shuts it down, undefines it (with its NVRAM and snapshot metadata) and deletes the files this
        module made for it (its disks other than V(as_is) images, and its seed), never an image, and refuses
        (changing nothing) if another domain or disk stands on one of them.
    type: str
    choices: [present, running, shutdown, destroyed, absent]
    default: present
  memory:
    description:
      - Memory in MiB. Default - the O(os_variant)'s recommended memory, else 1024.
      - On a running VM a smaller or larger value up to O(max_memory) is applied live through the balloon.
    type: int
  max_memory:
    description:
      - The most memory (MiB) the VM may be given live, without a restart. Default - O(memory).
    type: int
  vcpus:
    description:
      - Virtual CPUs online. Default - the O(os_variant)'s recommendation, else 1.
      - On a running VM a value up to O(max_vcpus) is applied live.
    type: int
  max_vcpus:
    description:
      - The most vCPUs the VM may have online without a restart. Default - O(vcpus).
    type: int
  cpu:
    description:
      - V(host-model), V(host-passthrough), V(maximum) or a CPU model name (for example V(Haswell-noTSX)).
      - Default - V(host-model) where KVM really works, else QEMU's own default model under software emulation
        (TCG), decided as M(virtops.kvm.kvm_host) decides.
    type: str
  machine:
    description:
      - The machine type (V(q35), V(pc), ...). Default - what the O(os_variant) needs, V(q35) for
        V(uefi-secure), else libvirt's default.
    type: str
  firmware:
    description:
      - V(bios), V(uefi) or V(uefi-secure) (UEFI with Secure Boot). UEFI firmware is chosen by libvirt's
        firmware auto-selection, with an NVRAM file per VM; it needs OVMF on the host (C(apt install ovmf)).
      - Default - V(uefi) when the O(os_variant) requires UEFI (for example V(win11)), else V(bios).
    type: str
    choices: [bios, uefi, uefi-secure]
  os_variant:
    description:
      - A libosinfo short id (V(debian12), V(ubuntu22.04), V(rhel9.0), V(win11), V(generic), ...), read from the
        osinfo database on the host (C(osinfo-db), in C(/usr/share/osinfo)).
      - It decides the defaults not given - virtio or not (disk bus and NIC model), recommended memory and
        vCPUs, UEFI where the OS needs it.
      - An unknown id is an error naming close matches.
    type: str
  disks:
    description:
      - The VM's disks, in order (the first boots). Targets are given in order per bus (V(vda), V(vdb), ...).
      - The files made go to O(disks[].path), or to O(disks[].pool) (or O(pool))'s directory as
        C(<name>-<target>.qcow2) (C(.img) for raw).
      - A disk dropped from the list is detached (hot-unplugged from a running VM); its file is deleted only with
        O(remove_detached=true).
    type: list
    elements: dict
    default: []
    suboptions:
      image:
        description:
          - An existing disk image file on the host (qcow2 or raw), for example a distribution's cloud image.
        type: path
      mode:
        description:
          - V(overlay) (default with O(disks[].image)) makes a qcow2 overlay on the image (the image becomes a
            protected base); V(copy) makes a full copy; V(as_is) uses the image itself as the VM's writable disk
            (refused if anything stands on it or another domain uses it).
        type: str
        choices: [overlay, copy, as_is]
      size:
        description:
          - With an image, the size the overlay or copy is grown to (never smaller than the image); alone, the
            size of a new blank disk. A number of bytes or with a unit (V(20G), V(512M)).
          - Applied when the disk is made; a later larger value is not applied to an existing disk.
        type: str
      format:
        description:
          - V(qcow2) or V(raw) for a copy or a blank disk (default - the image's format for a copy, qcow2 for a
            blank disk). An overlay is always qcow2.
        type: str
        choices: [qcow2, raw]
      bus:
        description:
          - V(virtio), V(sata), V(scsi), V(ide) or V(usb). Default - the O(os_variant)'s, else V(virtio).
        type: str
      target:
        description:
          - The target device (V(vdb)); default - the next free one on the bus.
        type: str
      path:
        description:
          - The full path of the file to make (not with V(as_is)).
        type: path
      pool:
        description:
          - A directory-like libvirt pool (V(dir), V(fs), V(netfs)) whose directory gets the file.
        type: str
  networks:
    description:
      - The network interfaces, in order. Give O(networks[].mac) to keep a NIC's address stable when the list
        changes (without it, libvirt makes one, which later runs keep by position).
    type: list
    elements: dict
    default: []
    suboptions:
      network:
        description:
          - A libvirt network (see M(virtops.kvm.kvm_network)). One of O(networks[].network) and
            O(networks[].bridge).
        type: str
      bridge:
        description:
          - A host bridge (for example V(br0)).
        type: str
      mac:
        description:
          - The MAC address (unicast, for example V(52:54:00:12:34:56)).
        type: str
      model:
        description:
          - V(virtio), V(e1000e), V(e1000) or V(rtl8139). Default - the O(os_variant)'s, else V(virtio).
        type: str
  cloud_init:
    description:
      - A cloud-init NoCloud seed for the VM, C(<name>-cidata.iso) beside its first disk made (or in O(pool)),
        attached as a read-only CD-ROM, recorded in the provenance and removed with the VM; rewritten when the
        documents change.
      - Keys C(user_data) (text starting with C(#cloud-config) or C(#!), or a dict), C(meta_data) (a dict;
        C(instance-id) defaults to the VM's UUID, C(local-hostname) to its name) and C(network_config) (text or
        a dict), as M(virtops.kvm.kvm_clone)'s O(virtops.kvm.kvm_clone#module:cloud_init).
    type: dict
  boot:
    description:
      - Direct kernel boot - keys C(kernel) (a file on the host, required), C(initrd) and C(cmdline).
      - Without it the VM boots from its first disk.
    type: dict
  console:
    description:
      - A serial console (a pty for C(virsh console)) whose output is logged to O(console_log), appended across
        boots; its path is returned in RV(console_log).
    type: bool
    default: true
  console_log:
    description:
      - The console's log file. Default - C(/var/log/libvirt/qemu/<name>-console.log).
    type: path
  graphics:
    description:
      - V(none), or V(vnc) listening on 127.0.0.1 only (reach it through an SSH tunnel).
    type: str
    choices: [none, vnc]
    default: none
  pool:
    description:
      - The libvirt pool whose directory gets the files made, for disks without their own O(disks[].path) or
        O(disks[].pool). The pool V(default) missing means C(/var/lib/libvirt/images).
    type: str
    default: default
  autostart:
    description:
      - Whether the VM starts with the host (C(virsh autostart)); left as it is when not given.
    type: bool
  remove_detached:
    description:
      - Delete the file of a disk dropped from O(disks) when this module made it and nothing else uses it.
    type: bool
    default: false
  parallel:
    description:
      - How many VMs of O(vms) are made at once.
    type: int
    default: 8
  shutdown_timeout:
    description:
      - Seconds to wait for a graceful shutdown (O(state=shutdown) or V(absent)) before failing (or, with
        O(force=true), powering it off).
    type: int
    default: 120
  force:
    description:
      - When a running VM does not shut down within O(shutdown_timeout) (O(state=shutdown) or V(absent)), power it
        off instead of failing, as M(virtops.kvm.kvm_domain)'s O(virtops.kvm.kvm_domain#module:force). A guest
        that is still booting, or has no ACPI, ignores the power button.
    type: bool
    default: false
  boot_marker:
    description:
      - A regular expression to wait for in the console log after this task starts the VM (for example the
        login prompt); the task fails if it does not appear within O(boot_timeout).
    type: str
  boot_timeout:
    description:
      - Seconds to wait for O(boot_marker).
    type: int
    default: 180
notes:
  - The VM's files are made under the host lock M(virtops.kvm.kvm_clone) takes, so concurrent tasks do not
    claim the same file.
seealso:
  - module: virtops.kvm.kvm_domain
  - module: virtops.kvm.kvm_clone
  - module: virtops.kvm.kvm_image
"""

EXAMPLES = r"""
- name: A Debian 12 VM from the distribution's cloud image, on the default network, running
  virtops.kvm.kvm_vm:
    name: web1
    os_variant: linux2022
    memory: 2048
    vcpus: 2
    disks:
      - image: /var/lib/libvirt/images/debian-12-genericcloud-amd64.qcow2
        size: 20G
    networks:
      - network: default
    cloud_init:
      user_data:
        users:
          - name: ops
            ssh_authorized_keys: ["{{ lookup('ansible.builtin.file', '~/.ssh/id_ed25519.pub') }}"]
            sudo: ALL=(ALL) NOPASSWD:ALL
    state: running

- name: Three VMs from one image in one task
  virtops.kvm.kvm_vm:
    os_variant: linux2022
    disks:
      - image: /var/lib/libvirt/images/debian-12-genericcloud-amd64.qcow2
    networks:
      - network: default
    cloud_init: {}
    vms:
      - name: app1
      - name: app2
      - name: db1
        memory: 4096
    state: running

- name: Add a 10 GiB data disk to the running web1 (hot-plugged)
  virtops.kvm.kvm_vm:
    name: web1
    os_variant: linux2022
    memory: 2048
    vcpus: 2
    disks:
      - image: /var/lib/libvirt/images/debian-12-genericcloud-amd64.qcow2
        size: 20G
      - size: 10G
    networks:
      - network: default
    cloud_init: {}

- name: Remove web1 and the files made for it (never the image)
  virtops.kvm.kvm_vm:
    name: web1
    state: absent
"""

RETURN = r"""
changes:
  description: What changed (or, in check mode, would change), in order.
  type: list
  elements: str
  returned: with O(name)
  sample: ["create disk vda (overlay of /img/debian12.qcow2): /var/lib/libvirt/images/web1-vda.qcow2",
           "create cloud-init seed: /var/lib/libvirt/images/web1-cidata.iso", "define", "start"]
pending_restart:
  description: Whether the defined config has changes the running VM takes only at its next start.
  type: bool
  returned: with O(name)
  sample: false
console_log:
  description: The file the serial console is logged to (null without a console or when absent).
  type: str
  returned: with O(name)
  sample: /var/log/libvirt/qemu/web1-console.log
disks:
  description: The VM's disks as planned - target, path, mode (V(overlay), V(copy), V(as_is), V(blank)), format
    and image.
  type: list
  elements: dict
  returned: with O(name)
  sample: [{target: vda, path: /var/lib/libvirt/images/web1-vda.qcow2, mode: overlay, format: qcow2,
            image: /img/debian12.qcow2}]
seed:
  description: The cloud-init seed file (null without O(cloud_init)).
  type: str
  returned: with O(name)
  sample: /var/lib/libvirt/images/web1-cidata.iso
os_variant:
  description: The osinfo short id whose defaults were used (null without O(os_variant)).
  type: str
  returned: with O(name)
  sample: debian12
removed_files:
  description: The files deleted with O(state=absent) (in check mode - to be deleted).
  type: list
  elements: str
  returned: with O(name)
  sample: [/var/lib/libvirt/images/web1-vda.qcow2, /var/lib/libvirt/images/web1-cidata.iso]
vm:
  description:
    - The VM as M(virtops.kvm.kvm_domain_info) reports a domain (state, memory, disks, interfaces, consoles,
      provenance, ...); null when it is absent (or would be created, in check mode).
  type: dict
  returned: with O(name)
  sample: {name: web1, state: running, vcpus: 2, memory_mib: 2048, autostart: false}
vms:
  description:
    - With O(vms), one result per VM, in order - C(name), C(changed), C(changes), C(pending_restart),
      C(console_log), C(disks), C(seed), C(os_variant), C(removed_files) and C(domain) as above; a VM that
      failed has C(failed), C(msg) and C(error) instead.
  type: list
  elements: dict
  returned: with O(vms)
  sample: [{name: app1, changed: true, changes: [define, start], pending_restart: false}]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._vm.manager import VmManager  # noqa: E402


def main() -> None:
    module = AnsibleModule(**VmManager.module_kwargs())
    run_module(module, VmManager)


if __name__ == "__main__":
    main()
