# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - The libvirt connection URI, for example V(qemu:///system), V(qemu+ssh://root@host/system)
        or V(test:///default).
      - When not set, the E(LIBVIRT_DEFAULT_URI) environment variable of the managed host is used,
        and then V(qemu:///system).
      - One connection is opened per task and closed when the task ends.
    type: str
requirements:
  - libvirt-python (C(python3-libvirt)) on the managed host
  - lxml (C(python3-lxml)) on the managed host
notes:
  - When the libvirt daemon is not running, the task fails with a message saying how to start it
    (virtops.kvm.kvm_host can do it).
"""
