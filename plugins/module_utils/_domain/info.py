# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Reading domains, never changing them: ``virsh dominfo``/``list --all`` as dicts, and kvm_domain_info.

``domain_info`` is the dict both kvm_domain (RV ``domain``) and kvm_domain_info
(RV ``domains``) return; ``list_domains`` builds it for every listed domain
from one ``HostScan``, so each domain's XML is read once. A domain undefined
by someone else while the list is read is simply not listed.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._domain.restart import restart_differences
from ansible_collections.virtops.kvm.plugins.module_utils._drift import Bases
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import (
    HostScan,
    ScannedDomain,
    gone,
    reason_name,
    state_name,
)

# The state names kvm_domain_info filters on ("shutdown" is an alias of "shutoff").
STATE_CHOICES = ["running", "blocked", "paused", "in_shutdown", "shutoff", "shutdown", "crashed", "pmsuspended"]


def config_file(uri: str, name: str) -> str | None:
    """Where libvirt keeps a persistent domain's XML (for qemu:///system and qemu:///session)."""
    parsed = urlparse(uri)
    if parsed.scheme.split("+", 1)[0] != "qemu":
        return None
    if parsed.path == "/system":
        return f"/etc/libvirt/qemu/{name}.xml"
    if parsed.path == "/session" and not parsed.netloc:
        return os.path.expanduser(f"~/.config/libvirt/qemu/{name}.xml")
    return None


def _chain(path: str | None) -> list[dict] | None:
    if not path or not os.path.exists(path):
        return None
    try:
        return [dict(path=c["path"], format=c["format"]) for c in _disk_files.backing_chain(path)[1:]]
    except StorageError:
        return None


def _disk(d: dict) -> dict:
    return dict(
        target=d["target"],
        device=d["device"],
        type=d["type"],
        path=d["path"],
        format=d["format"],
        readonly=d["readonly"],
        backing_chain=_chain(d["path"]) if d["type"] == "file" else None,
    )


def scanned_info(
    scanned: ScannedDomain,
    uri: str,
    with_xml: bool = False,
    pending_restart: bool | None = None,
    bases: Bases | None = None,
) -> dict:
    """The info dict of a domain from its scan (XML parsed once); the libvirt calls may raise libvirtError.

    ``bases``: the run's base identities (each base read once for all domains).
    """
    dom = scanned.dom
    persistent, active = scanned.persistent, scanned.active
    _st, max_kib, cur_kib, nvcpu, cpu_ns = dom.info()
    autostart = bool(dom.autostart()) if persistent else False
    managed_save = bool(dom.hasManagedSaveImage(0)) if persistent else False
    inactive = scanned.inactive
    root = scanned.live if scanned.live is not None else inactive
    if pending_restart is None:
        pending_restart = active and persistent and bool(restart_differences(inactive, root))
    ostype = root.find("os/type")
    info = dict(
        name=scanned.name,
        uuid=scanned.uuid,
        id=dom.ID() if active else None,
        state=state_name(scanned.state),
        state_reason=reason_name(scanned.state, scanned.reason),
        active=active,
        persistent=persistent,
        autostart=autostart,
        managed_save=managed_save,
        vcpus=nvcpu,
        memory_mib=cur_kib // 1024,
        max_memory_mib=max_kib // 1024,
        cpu_time_ns=cpu_ns,
        domain_type=root.get("type"),
        title=dx.text(inactive, "title"),
        description=dx.text(inactive, "description"),
        os=dict(
            type=ostype.text if ostype is not None else None,
            arch=ostype.get("arch") if ostype is not None else None,
            machine=ostype.get("machine") if ostype is not None else None,
        ),
        disks=[_disk(d) for d in dx.disks(root)],
        interfaces=dx.interfaces(root),
        consoles=dx.consoles(root),
        config_file=config_file(uri, scanned.name) if persistent else None,
        provenance=dx.provenance(inactive),
        base_drift=(bases or Bases()).drifts(inactive),
        pending_restart=bool(pending_restart),
    )
    if with_xml:
        info["xml"] = dx.tostring(inactive)
    return info


def domain_info(dom, uri: str, with_xml: bool = False, pending_restart: bool | None = None) -> dict:
    """The ``virsh dominfo`` fields plus disks, interfaces, consoles and the config file path."""
    lv = _deps.libvirt
    try:
        return scanned_info(ScannedDomain(dom), uri, with_xml, pending_restart)
    except lv.libvirtError as exc:
        raise libvirt_failed(exc, f"Reading domain {dom.name()}") from exc


def list_domains(conn, uri: str, names: list | None = None, states: list | None = None, with_xml: bool = False):
    """``virsh list --all`` as dicts, filtered by names and state names; also the names not found."""
    lv = _deps.libvirt
    scan = HostScan.take(conn)
    wanted_states = None
    if states:
        wanted_states = {"shutoff" if s == "shutdown" else s for s in states}
    chosen = [scan.domains[n] for n in names if n in scan] if names else [scan.domains[n] for n in sorted(scan.domains)]
    out = []
    bases = Bases()
    for scanned in chosen:
        if wanted_states is not None and state_name(scanned.state) not in wanted_states:
            continue
        try:
            out.append(scanned_info(scanned, uri, with_xml, bases=bases))
        except lv.libvirtError as exc:
            if gone(exc):
                continue
            raise libvirt_failed(exc, f"Reading domain {scanned.name}") from exc
    missing = [n for n in names or [] if n not in scan]
    return out, missing


class DomainInfoManager(Manager):
    """kvm_domain_info: list domains, read-only."""

    ARGUMENT_SPEC = dict(
        name=dict(type="list", elements="str", aliases=["names"]),
        state=dict(type="list", elements="str", choices=[*STATE_CHOICES, "nostate"]),
        xml=dict(type="bool", default=False),
    )
    READONLY = True

    def run(self) -> dict:
        domains, missing = list_domains(
            self.conn, self.uri, names=self.p["name"], states=self.p["state"], with_xml=self.p["xml"]
        )
        return dict(changed=False, domains=domains, missing=missing)
