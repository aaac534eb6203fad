# Private to the virtops.kvm collection: not a public API, may change without notice.
"""state=present: a new internal snapshot, or an external disk-only one, refused before anything changes.

Internal (qcow2 internal snapshots, ``virsh snapshot-create-as``): the disks
and, when the domain runs, its memory, kept inside the disk images.

External (``virsh snapshot-create-as --disk-only``): each covered disk gets a
new qcow2 overlay, ``<domain>.<target>.<snapshot>.qcow2`` beside its current
file, which from then on is never written (the course's overlay rule). A
running guest is paused for the instant of the switch, or frozen through its
guest agent (``quiesce``).

Refused, with nothing changed: a disk that others stand on (a clone's base,
a template with clones: the snapshot would write it or move it from under
them), mixing internal and external snapshots on one domain, an internal
snapshot of a non-qcow2 disk or of a UEFI (pflash) domain, a memory snapshot
of a domain with a shared disk, an overlay file that already exists.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    InvalidInput,
    LibvirtFailed,
)
from ansible_collections.virtops.kvm.plugins.module_utils._scan import CRASHED, IN_SHUTDOWN, PAUSED, PMSUSPENDED
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import layers
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import xml as sx
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.context import SnapshotContext

AGENT_CHANNEL = "org.qemu.guest_agent.0"
# States in which libvirt takes no snapshot.
_NOT_NOW = {CRASHED: "crashed", IN_SHUTDOWN: "shutting down", PMSUSPENDED: "suspended (pmsuspended)"}


def _agent_connected(root) -> bool:
    for ch in root.findall("devices/channel"):
        tgt = ch.find("target")
        if tgt is not None and tgt.get("name") == AGENT_CHANNEL and tgt.get("state") == "connected":
            return True
    return False


def _refuse_mixing(ctx: SnapshotContext, kind: str, snapshots: dict) -> None:
    other = sorted(n for n, s in snapshots.items() if s["kind"] != kind)
    if other:
        raise InvalidInput(
            f"Domain {ctx.name} has {'internal' if kind == 'external' else 'external'} snapshot(s) "
            f"({', '.join(other)}); kvm_snapshot keeps one kind per domain (an internal snapshot lives inside "
            "a file that an external one freezes, and reverting one would undo the other's layers).",
            hint=f"Use kind={'internal' if kind == 'external' else 'external'}, or delete those snapshots first.",
        )


def plan(ctx: SnapshotContext, name: str, kind: str, description: str | None, quiesce: str, snapshots: dict) -> dict:
    """What creating snapshot ``name`` would do: ``{kind, live, quiesce, memory, disks: [{target, file, base}]}``."""
    state, _reason = ctx.state()
    if state in _NOT_NOW:
        raise InvalidInput(
            f"Domain {ctx.name} is {_NOT_NOW[state]}; it cannot be snapshotted in that state.",
            hint="Bring it to running, paused or shut off first (virtops.kvm.kvm_domain).",
        )
    _refuse_mixing(ctx, kind, snapshots)
    live = ctx.active()
    root = ctx.root()
    chains = ctx.chains()
    if not chains:
        raise InvalidInput(f"Domain {ctx.name} has no writable disk to snapshot.")
    why = "writes into the file" if kind == "internal" else "moves the domain's disk from under them"
    ctx.guard(sorted(chains), f"create {kind} snapshot {name} (it {why})")
    out = dict(kind=kind, live=live, quiesce="none", description=description, disks=[])
    if kind == "internal":
        for target, files in chains.items():
            if files[0]["format"] != "qcow2":
                raise InvalidInput(
                    f"Disk {target} of domain {ctx.name} ({files[0]['path']}) is a {files[0]['format']} image; "
                    "internal snapshots live inside qcow2 images only.",
                    hint="Use kind=external (a qcow2 overlay works on any image), or convert the disk to qcow2.",
                )
            out["disks"].append(dict(target=target, file=None, base=files[0]["path"]))
        loader = root.find("os/loader")
        if loader is not None and loader.get("type") == "pflash":
            raise InvalidInput(
                f"Domain {ctx.name} boots UEFI firmware from pflash; libvirt cannot take internal snapshots of it.",
                hint="Use kind=external.",
            )
        shared = [d["target"] for d in dx.disks(root) if d["shareable"]]
        if live and shared:
            raise InvalidInput(
                f"Domain {ctx.name} runs with shared disk(s) {', '.join(shared)}; a memory snapshot would restore "
                "a guest whose shared disk others have changed since.",
                hint="Shut it down first (a disk-only internal snapshot), or use kind=external.",
            )
        out["memory"] = "internal" if live else "no"
        return out
    if not ctx.persistent():
        raise InvalidInput(
            f"Domain {ctx.name} is transient; external snapshots need a defined domain (a revert redefines its disks).",
            hint="Define it first (virtops.kvm.kvm_domain state=present).",
        )
    for target, files in chains.items():
        path = layers.overlay_path(files[0]["path"], ctx.name, target, name)
        if os.path.lexists(path):
            raise Conflict(
                f"The overlay file {path} for snapshot {name!r} of disk {target} already exists (not overwritten).",
                hint="Move the file away, or choose another snapshot name.",
            )
        out["disks"].append(dict(target=target, file=path, base=files[0]["path"], base_format=files[0]["format"]))
    if live:
        if quiesce == "auto":
            quiesce = "agent" if _agent_connected(root) else "pause"
        elif quiesce == "agent" and not _agent_connected(root):
            raise InvalidInput(
                f"quiesce=agent, but domain {ctx.name} has no connected guest agent ({AGENT_CHANNEL}).",
                hint="Install and start qemu-guest-agent in the guest, or use quiesce=pause or auto.",
            )
        out["quiesce"] = quiesce
    out["memory"] = "no"
    return out


def describe(name: str, p: dict) -> str:
    if p["kind"] == "internal":
        return f"create internal snapshot {name}" + (" with the guest's memory" if p["memory"] == "internal" else "")
    files = ", ".join(f"{d['target']}: {d['file']}" for d in p["disks"])
    how = {"pause": ", guest paused for it", "agent": ", guest frozen by its agent"}.get(p["quiesce"], "")
    return f"create external snapshot {name} (new overlays {files}{how})"


def create(ctx: SnapshotContext, name: str, p: dict) -> None:
    """Create the planned snapshot (nothing in check mode)."""
    ctx.note(describe(name, p))
    if ctx.check_mode:
        return
    lv = _deps.libvirt
    dom = ctx.dom
    covered_targets = {d["target"] for d in p["disks"]}
    all_disks = [d["target"] for d in dx.disks(ctx.root()) if d["target"]]
    if p["kind"] == "internal":
        disks = [dict(target=t, snapshot="internal" if t in covered_targets else "no") for t in all_disks]
        xml = sx.create_xml(name, p["description"], disks, p["memory"])
        ctx.call(f"Creating snapshot {name}", dom.snapshotCreateXML, xml, 0)
        return
    files = {d["target"]: d for d in p["disks"]}
    disks = [
        dict(target=t, snapshot="external", file=files[t]["file"], format="qcow2")
        if t in files
        else dict(target=t, snapshot="no")
        for t in all_disks
    ]
    xml = sx.create_xml(name, p["description"], disks, "no")
    flags = lv.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
    if p["live"]:
        flags |= lv.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    if p["quiesce"] == "agent":
        flags |= lv.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE
    paused = p["quiesce"] == "pause" and ctx.state()[0] != PAUSED
    if paused:
        ctx.call("Pausing", dom.suspend)
    try:
        ctx.call(f"Creating snapshot {name}", dom.snapshotCreateXML, xml, flags)
    except LibvirtFailed:
        for d in p["disks"]:
            if os.path.exists(d["file"]) and not _in_use(ctx, d["file"]):
                _disk_files.unlink(d["file"])
        raise
    finally:
        if paused:
            ctx.call("Resuming", dom.resume)


def _in_use(ctx: SnapshotContext, path: str) -> bool:
    """Whether libvirt took the new file after all (then it is the domain's disk and stays)."""
    real = layers.real(path)
    return any(layers.real(d["path"]) == real for d in ctx.disks() if d["path"])
