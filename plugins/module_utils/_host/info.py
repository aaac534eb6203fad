# Private to the virtops.kvm collection: not a public API, may change without notice.
"""HostInfoManager: what one hypervisor has and what its domains take, for kvm_host_info (read-only).

The controller places clones across hosts from these numbers, so they come
from libvirt's API (``virNodeGetInfo``, ``virNodeGetFreeMemory``,
``virDomainGetInfo``), never from parsed ``virsh`` output.

Each domain counts what it holds, or would hold once started, as one
``dom.info()`` tells it (``dom.maxVcpus()`` is no use: libvirt refuses it for a
domain that is not running):

- an active domain (it has a QEMU process: running, paused, ...) with its live
  values: the vCPUs online now and its current memory (what a balloon driver in
  the guest left it; without one, all of ``<memory>``);
- an inactive one with what it starts with: the vCPUs online at boot
  (``<vcpu current=...>``, not the maximum it could hot-plug) and ``<memory>``
  (``info()``'s maximum): QEMU gives the guest all of it at start, and only a
  balloon driver in the guest gives the difference to ``<currentMemory>`` back
  (with ``<memballoon model='none'/>`` never). ``info()``'s current memory of an
  inactive domain is only that ``<currentMemory>`` wish, not what it will take.

Domains are listed by ``_scan.HostScan`` (the collection's one reading of a host's
domains; their XML is fetched but, never read here, not parsed: no lxml needed), one
after the other, not atomically: one undefined by someone else while the list is
read is left out (neither listed nor counted). The question here is what the
domains take, not who uses a file, so the counts come from ``dom.info()`` below.
"""

from __future__ import annotations

import json
import os

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _image
from ansible_collections.virtops.kvm.plugins.module_utils._connection import call, libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

# Written by the kvm_drain role on a hypervisor in maintenance: placement keeps new clones off it.
DRAIN_MARKER = "/var/lib/virtops-kvm/drained.json"
_KIB_PER_MIB = 1024
_BYTES_PER_MIB = 1024 * 1024


def domain_usage(dom) -> dict | None:
    """``{name, active, vcpus, memory_kib}`` of one domain, or None when it was undefined under us.

    Active: live vCPUs and current memory; inactive: the vCPUs it boots with and
    ``<memory>``, what it takes at start (see the module docstring).
    """
    lv = _deps.libvirt
    name = dom.name()
    try:
        _state, max_kib, cur_kib, vcpus, _cpu_ns = dom.info()
        active = dom.isActive() == 1
    except lv.libvirtError as exc:
        if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
            return None
        raise libvirt_failed(exc, f"Reading domain {name}") from exc
    return dict(name=name, active=active, vcpus=int(vcpus), memory_kib=int(cur_kib if active else max_kib))


def host_info(conn) -> tuple[dict, list[str]]:
    """(the ``host`` dict, the sorted names of all domains) of the hypervisor behind ``conn``."""
    hostname = call("Reading the hypervisor's host name", conn.getHostname)
    uri = call("Reading the connection's URI", conn.getURI)
    # [model, memory MiB, logical CPUs online, MHz, NUMA nodes, sockets per node, cores, threads]
    node = call("Reading the hypervisor's node info", conn.getInfo)
    free_bytes = call("Reading the hypervisor's free memory", conn.getFreeMemory)
    scan = HostScan.take(conn)  # the collection's one reading of a host's domains
    usages = [u for u in (domain_usage(d.dom) for d in scan.domains.values()) if u is not None]
    running = [u for u in usages if u["active"]]
    host = dict(
        hostname=hostname,
        uri=uri,
        cpus=int(node[2]),
        memory_total_mib=int(node[1]),
        memory_free_mib=int(free_bytes) // _BYTES_PER_MIB,
        domains_total=len(usages),
        domains_running=len(running),
        vcpus_allocated=sum(u["vcpus"] for u in running),
        # summed in KiB, then rounded down once: small domains do not each lose a fraction
        memory_allocated_mib=sum(u["memory_kib"] for u in running) // _KIB_PER_MIB,
        vcpus_defined=sum(u["vcpus"] for u in usages),
        memory_defined_mib=sum(u["memory_kib"] for u in usages) // _KIB_PER_MIB,
    )
    host.update(drain_state())
    return host, sorted(u["name"] for u in usages)


def drain_state(marker: str = DRAIN_MARKER) -> dict:
    """``{drained, drained_moved}`` from the kvm_drain role's marker on the machine the module runs on."""
    try:
        with open(marker, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return dict(drained=False, drained_moved={})
    except (OSError, ValueError):
        return dict(drained=os.path.exists(marker), drained_moved={})  # a marker is a marker, readable or not
    moved = record.get("moved") if isinstance(record, dict) else None
    return dict(drained=True, drained_moved=moved if isinstance(moved, dict) else {})


class HostInfoManager(Manager):
    """kvm_host_info: one hypervisor's capacity and its domains' use of it; changes nothing."""

    ARGUMENT_SPEC: dict = dict(
        images=dict(
            type="list",
            elements="dict",
            default=[],
            options=dict(
                dest=dict(type="path", required=True),
                sha256=dict(type="str", required=True),
                mode=dict(type="raw", default="0444"),
                owner=dict(type="str"),
                group=dict(type="str"),
            ),
        ),
    )
    LIBRARIES = ("libvirt",)
    READONLY = True

    def run(self) -> dict:
        host, domains = host_info(self.conn)
        # Read only: a stat and an xattr read per image (_image.settled), on the machine the module runs on.
        images = [_image.settled(image) for image in self.p.get("images") or []]
        return dict(changed=False, host=host, domains=domains, images=images)
