#!/usr/bin/python
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_host
short_description: Make a host a KVM hypervisor and report what it can run
version_added: 0.1.0
description:
  - Checks the hardware (CPU virtualization flag, C(/dev/kvm), kvm kernel modules, nested virtualization)
    and decides whether guests can use KVM or must use software emulation (domain type V(qemu), TCG).
  - Installs the QEMU/libvirt packages of the host's distribution family in one package manager call,
    only those that are missing.
  - Starts (or stops) and enables the libvirt daemon; without systemd it starts C(virtlogd) and
    C(libvirtd) directly.
  - "Order of work: the hardware-only verdict first (so O(require_hw_virt=true) on a host without usable KVM
    fails before anything is installed), then packages, then the daemon, then the libvirt capability probe
    and the final verdict. libvirt's capability list needs a running daemon, so a host whose hardware looks
    fine but whose libvirt does not offer C(kvm) fails O(require_hw_virt) only after packages and daemon
    were ensured; the failure reports what was installed and started."
author:
  - virtops.kvm developers (@virtops)
requirements:
  - libvirt-python (C(python3-libvirt)) on the managed host, optional (used when present; else C(virsh) is asked)
  - lxml (C(python3-lxml)) on the managed host, optional (used when present; else the standard library's XML parser)
extends_documentation_fragment:
  - virtops.kvm.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reports the packages it would install and the daemons it would start, and installs and starts nothing.
  diff_mode:
    support: full
    details:
      - The diff shows the missing packages and the daemon state and enablement before and after.
  idempotent:
    support: full
options:
  uri:
    description:
      - The libvirt connection URI used for the capability and version probe, asked after the daemon is
        ensured (and not at all when O(daemon_state=stopped)), for example V(qemu:///system).
      - When not set, the E(LIBVIRT_DEFAULT_URI) environment variable of the managed host is used,
        and then V(qemu:///system).
      - Packages and daemons are always those of the managed host itself; a directly started daemon is
        awaited on V(qemu:///system).
      - One connection is opened per task, after the daemon is ensured, and closed when the task ends.
    type: str
  family:
    description:
      - The distribution family, which decides the package names and the package manager.
      - V(auto) reads C(ID) and C(ID_LIKE) from C(/etc/os-release) on the host (no Ansible facts needed).
      - "Package sets: V(debian) C(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
        dnsmasq-base xorriso) with C(apt-get); V(redhat) C(qemu-kvm libvirt-daemon libvirt-client
        libvirt-daemon-driver-qemu dnsmasq xorriso) with C(dnf) or C(yum); V(suse) the same names as RedHat with
        C(zypper). dnsmasq serves DHCP and DNS on libvirt's virtual networks (virtops.kvm.kvm_network)."
    type: str
    choices: [auto, debian, redhat, suse]
    default: auto
  install_packages:
    description:
      - Install the missing packages of the family (plus O(gui), O(python_bindings) and O(extra_packages)).
      - Installed packages are detected with one C(dpkg-query) or C(rpm -q) call, and the missing ones are
        installed with one package manager call (C(apt-get install -y --no-install-recommends) with
        E(DEBIAN_FRONTEND=noninteractive), C(dnf install -y), C(zypper --non-interactive install)).
      - When V(false), no package is queried or installed, and an unknown distribution is not an error.
    type: bool
    default: true
  gui:
    description:
      - Also install C(virt-manager), the graphical manager the course uses.
    type: bool
    default: false
  python_bindings:
    description:
      - Also install the Python libraries the other modules of this collection need on the host.
      - C(python3-libvirt python3-lxml python3-guestfs) on Debian, C(python3-libvirt python3-lxml
        python3-libguestfs) on RedHat, C(python3-libvirt-python python3-lxml python3-libguestfs) on SUSE.
    type: bool
    default: false
  extra_packages:
    description:
      - More package names to install with the same package manager call (names only, no versions). A name
        never starts with C(-) (the package manager would read an option) and holds no whitespace.
    type: list
    elements: str
    default: []
  update_cache:
    description:
      - Refresh the package lists before installing (C(apt-get update), C(dnf --refresh),
        C(zypper refresh)); only done when something is missing, so it costs nothing on a ready host.
    type: bool
    default: false
  daemon:
    description:
      - Which libvirt daemon serves QEMU.
      - V(libvirtd) is the monolithic daemon (Debian, Ubuntu, older RHEL); V(virtqemud) the modular one
        (Fedora 35+, RHEL 9, openSUSE), managed with its sockets.
      - V(auto) uses the one the host ships when it ships only one; when both are there, the one already
        enabled; else the family default (modular on RedHat and SUSE, monolithic on Debian).
    type: str
    choices: [auto, libvirtd, virtqemud]
    default: auto
  daemon_state:
    description:
      - V(started) starts the daemon if it is not running; V(stopped) stops it.
      - With systemd, V(started) starts the daemon's service and sockets and C(virtlogd.socket); a
        socket-activated daemon whose sockets are active counts as started even if its idle process exited.
        V(stopped) stops the daemon's service and sockets and leaves C(virtlogd) alone.
      - Without systemd (containers, some CI machines), V(started) runs C(virtlogd -d) and then
        C(libvirtd -d) (or C(virtqemud -d)) and waits until C(qemu:///system) answers; V(stopped) sends
        SIGTERM to the pid in C(/run/libvirtd.pid). A pid file counts only if its process is alive, not a
        zombie, and is that daemon (stale pid files are common when C(/run) is on disk).
    type: str
    choices: [started, stopped]
    default: started
  daemon_enabled:
    description:
      - Enable (or disable) the daemon at boot with systemd.
      - Without systemd nothing can start it at boot; then the module warns and carries on.
    type: bool
    default: true
  daemon_timeout:
    description:
      - Seconds to wait for a directly started daemon to write its pid file and answer, or to exit; V(0) to
        V(3600).
    type: int
    default: 60
  require_hw_virt:
    description:
      - Fail unless guests can use KVM (RV(host.kvm_usable)); the message gives the reason.
      - Fails in check mode too.
    type: bool
    default: false
notes:
  - The CPU flag is trusted over libvirt's capability list. On a paravirtual or nested KVM (for example
    C(kvm_pvm)) C(/dev/kvm) exists and libvirt lists the C(kvm) domain type, yet the CPU exposes no
    C(vmx)/C(svm) flag and full-virtualization guests hang; the verdict there is V(qemu).
  - Needs root (become) to install packages and manage daemons.
  - Needs no Python library on the managed host (libvirt-python and lxml are used when present), so it can
    install them itself with O(python_bindings=true).
seealso:
  - name: libvirt daemons
    description: Monolithic and modular libvirt daemons.
    link: https://libvirt.org/daemons.html
"""

EXAMPLES = r"""
- name: Make the host a KVM hypervisor (the course's sections 1 and 2)
  virtops.kvm.kvm_host:
    gui: true
    python_bindings: true
  become: true
  register: kvm

- name: Use what the hardware can run
  ansible.builtin.debug:
    msg: "Domain type {{ kvm.host.recommended_domain_type }}: {{ kvm.host.reason }}"

- name: Refuse hosts without real hardware virtualization
  virtops.kvm.kvm_host:
    require_hw_virt: true
  become: true

- name: Only report the facts, change nothing
  virtops.kvm.kvm_host:
    install_packages: false
  check_mode: true
"""

RETURN = r"""
host:
  description: What the host offers and the verdict. In check mode, the daemon state it would have.
  returned: success
  type: dict
  contains:
    family:
      description: Distribution family (V(null) if unknown and O(install_packages=false)).
      type: str
      sample: debian
    os_id:
      description: C(ID) from C(/etc/os-release) (V(null) when O(family) was given).
      type: str
      sample: debian
    init_system:
      description: V(systemd) or V(none).
      type: str
      sample: none
    daemon:
      description: The libvirt daemon managed, V(libvirtd) or V(virtqemud).
      type: str
      sample: libvirtd
    daemon_state:
      description: V(started), V(stopped) or V(partial) (some of its units or virtlogd not running).
      type: str
      sample: started
    daemon_enabled:
      description: Whether it starts at boot; V(null) without systemd.
      type: bool
      sample: null
    cpu_vendor:
      description: V(intel), V(amd), or the lowercased C(vendor_id).
      type: str
      sample: amd
    cpu_vendor_id:
      description: C(vendor_id) from C(/proc/cpuinfo).
      type: str
      sample: AuthenticAMD
    cpu_model:
      description: C(model name) from C(/proc/cpuinfo).
      type: str
      sample: AMD EPYC
    cpu_count:
      description: Number of logical CPUs.
      type: int
      sample: 2
    memory_mib:
      description: Total memory in MiB.
      type: int
      sample: 24105
    virt_flag:
      description: The hardware virtualization CPU flag, V(vmx), V(svm) or V(none).
      type: str
      sample: none
    dev_kvm_exists:
      description: Whether C(/dev/kvm) exists.
      type: bool
      sample: true
    dev_kvm_accessible:
      description: Whether C(/dev/kvm) is readable and writable by the module's user.
      type: bool
      sample: true
    kvm_modules:
      description: Loaded kvm kernel modules.
      type: list
      elements: str
      sample: [kvm, kvm_pvm]
    nested:
      description: The C(nested) parameter of kvm_intel or kvm_amd; V(null) when neither is loaded.
      type: bool
      sample: null
    libvirt_domain_types:
      description: Domain types libvirt lists for its guests; V(null) when the daemon was not asked.
      type: list
      elements: str
      sample: [kvm, qemu]
    libvirt_version:
      description: libvirt version (of the daemon when asked, else of the library).
      type: str
      sample: 9.0.0
    hypervisor:
      description: The hypervisor driver name libvirt reports; V(null) when the daemon was not asked.
      type: str
      sample: QEMU
    qemu_version:
      description: QEMU version (from libvirt, else C(qemu-system-x86_64 --version)).
      type: str
      sample: 7.2.22
    kvm_usable:
      description: Whether guests can use KVM here.
      type: bool
      sample: false
    reason:
      description: Why.
      type: str
      sample: >-
        The CPU exposes no vmx/svm flag, so /dev/kvm is a paravirtual/nested KVM (kernel module kvm_pvm)
        that cannot run full-virtualization guests. Use domain type 'qemu' (TCG software emulation).
    recommended_domain_type:
      description: V(kvm) or V(qemu), for the C(type) of domains on this host.
      type: str
      sample: qemu
installed_packages:
  description: Packages installed (in check mode, that would be installed).
  returned: always
  type: list
  elements: str
  sample: [virt-manager]
started_daemons:
  description: Daemons (without systemd) or units (with systemd) started, or that would be.
  returned: always
  type: list
  elements: str
  sample: [virtlogd, libvirtd]
stopped_daemons:
  description: Daemons or units stopped, or that would be.
  returned: always
  type: list
  elements: str
  sample: []
enabled_units:
  description: systemd units enabled, or that would be.
  returned: always
  type: list
  elements: str
  sample: [libvirtd.service, libvirtd.socket]
disabled_units:
  description: systemd units disabled, or that would be.
  returned: always
  type: list
  elements: str
  sample: []
diff:
  description: Missing packages and daemon state before and after.
  returned: success
  type: dict
  sample:
    before: {packages_missing: [virt-manager], daemon_state: started, daemon_enabled: null}
    after: {packages_missing: [], daemon_state: started, daemon_enabled: null}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.virtops.kvm.plugins.module_utils._host.manager import HostManager  # noqa: E402
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module  # noqa: E402


def main() -> None:
    module = AnsibleModule(**HostManager.module_kwargs())
    run_module(module, HostManager)


if __name__ == "__main__":
    main()
