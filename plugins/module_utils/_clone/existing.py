# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Clones already on the host: does one match the task, what to update, what ``absent`` removes.

A domain counts as a clone only with kvm_clone's provenance in its metadata.
An existing clone must be exactly what this run would make (template, mode,
disk paths, base, overrides); anything else is a Conflict naming each
difference, never an overwrite. For ``absent``, only the files the provenance
records and the domain really uses are candidates for deletion (a forged
record deletes nothing else), and an XML file only while it is still that
clone's XML.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import NONE, REMOVE, REMOVE_XML, UPDATE, Item
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import SEED_SUFFIX
from ansible_collections.virtops.kvm.plugins.module_utils._clone.transform import clone_disk_path
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, KvmError, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import ScannedDomain


def xml_path(xml_dir: str | None, name: str) -> str | None:
    """The clone's XML file in ``xml_dir`` (None without an xml_dir)."""
    return os.path.join(xml_dir, f"{name}.xml") if xml_dir else None


def our_xml_file(path: str, name: str, uuid: str | None) -> bool:
    """Whether ``path`` still holds the XML of clone ``name`` (its provenance, and its UUID if given)."""
    try:
        with open(path, encoding="utf-8") as f:
            root = dx.parse(f.read())
    except (OSError, KvmError):
        return False
    prov = dx.provenance(root)
    return bool(prov and dx.name_of(root) == name and (uuid is None or dx.uuid_of(root) == uuid))


def existing_disks(root) -> list[dict]:
    """A clone's writable disks as the result reports them (backing file read from the image)."""
    prov = dx.provenance(root) or {}
    modes = {c["path"]: c["mode"] for c in prov.get("created_disks", [])}
    out = []
    for d in dx.writable_file_disks(root):
        hdr = None
        if os.path.exists(d["path"]):
            try:
                hdr = st.qcow2_header(d["path"])
            except StorageError:
                hdr = None
        out.append(
            dict(
                target=d["target"],
                path=d["path"],
                format=d["format"],
                backing_file=hdr["backing_file"] if hdr else None,
                backing_format=hdr["backing_format"] if hdr else None,
                mode=modes.get(d["path"]),
            )
        )
    return out


def differences(
    s: dict, found: ScannedDomain, tpl: dict, mode: str, domain_type: str, dest_dir: str | None
) -> list[str]:
    """How the existing clone differs from what this task would make (empty: it matches)."""
    root = found.inactive
    prov = dx.provenance(root)
    diffs = []
    if prov["template"] != tpl["name"]:
        diffs.append(f"it was cloned from {prov['template']!r}, not {tpl['name']!r}")
    if prov["mode"] != mode:
        diffs.append(f"it is a {prov['mode']} clone, not {mode}")
    have = {d["target"]: d for d in dx.writable_file_disks(root)}
    for i, d in enumerate(tpl["disks"]):
        cur = have.get(d["target"])
        if cur is None:
            diffs.append(f"it has no disk {d['target']}")
            continue
        if dest_dir is not None:
            want = clone_disk_path(dest_dir, s["name"], i, d, mode)
            if os.path.realpath(cur["path"]) != os.path.realpath(want):
                diffs.append(f"disk {d['target']} is {cur['path']}, expected {want}")
                continue
        if not os.path.exists(cur["path"]):
            diffs.append(f"disk file {cur['path']} is missing")
            continue
        if mode == "overlay":
            hdr = st.qcow2_header(cur["path"])
            backing = hdr["backing_file"] if hdr else None
            if backing is None or os.path.realpath(backing) != os.path.realpath(d["path"]):
                diffs.append(f"disk {cur['path']} overlays {backing or 'nothing'}, expected {d['path']}")
    if s["uuid"] and s["uuid"] != found.uuid:
        diffs.append(f"its UUID is {found.uuid}, expected {s['uuid']}")
    cur_macs = dx.macs(root)
    if s["macs"] and cur_macs[: len(s["macs"])] != s["macs"]:
        diffs.append(f"its MACs are {', '.join(cur_macs) or 'none'}, expected {', '.join(s['macs'])}")
    if s["memory"] is not None and dx.memory_mib(root) != s["memory"]:
        diffs.append(f"its memory is {dx.memory_mib(root)} MiB, expected {s['memory']} MiB")
    if s["vcpus"] is not None and dx.vcpus(root) != s["vcpus"]:
        diffs.append(f"it has {dx.vcpus(root)} vCPU(s), expected {s['vcpus']}")
    if domain_type in ("kvm", "qemu") and root.get("type") != domain_type:
        diffs.append(f"its domain type is {root.get('type')}, expected {domain_type}")
    return diffs


def plan_existing(
    s: dict,
    found: ScannedDomain,
    tpl: dict,
    mode: str,
    domain_type: str,
    dest_dir: str | None,
    xml_dir: str | None,
) -> Item:
    """The item for a clone that exists: nothing, or start / autostart / write its XML file."""
    prov = dx.provenance(found.inactive)
    if prov is None or prov.get("created_by") != "virtops.kvm":
        raise Conflict(
            f"Domain {s['name']!r} exists and was not created by virtops.kvm.kvm_clone (no provenance in its "
            "metadata); it is not overwritten.",
            hint="Choose another clone name, or remove that domain first.",
        )
    diffs = differences(s, found, tpl, mode, domain_type, dest_dir)
    if diffs:
        raise Conflict(
            f"Clone {s['name']!r} exists but does not match: {'; '.join(diffs)}. It is not overwritten.",
            hint="Remove it (state=absent) to recreate it, or change the task to match.",
            clone=s["name"],
            differences=diffs,
        )
    actions = []
    if s["state"] == "running" and not found.active:
        actions.append("start")
    dom = found.dom
    if s["autostart"] is not None and bool(dom.autostart()) != s["autostart"]:
        actions.append("autostart")
    path = xml_path(xml_dir, s["name"])
    xml_text = None
    if path:
        xml_text = dom.XMLDesc(_deps.libvirt.VIR_DOMAIN_XML_INACTIVE)
        if not os.path.lexists(path):
            actions.append("write_xml")
        else:
            if not our_xml_file(path, s["name"], found.uuid):
                raise Conflict(
                    f"XML file {path} exists but is not the XML of clone {s['name']!r}; it is not overwritten."
                )
            with open(path, encoding="utf-8") as f:
                if f.read() != xml_text:
                    actions.append("write_xml")
    return Item(
        action=UPDATE if actions else NONE,
        actions=actions,
        spec=s,
        name=s["name"],
        uuid=found.uuid,
        macs=dx.macs(found.inactive),
        disks=existing_disks(found.inactive),
        dom=dom,
        active=found.active,
        xml_path=path,
        xml=xml_text,
        identity_record=prov.get("identity"),
        identity_source=prov.get("identity_source"),
        seed_file=next((c["path"] for c in prov["created_disks"] if c["mode"] == "seed"), None),
    )


def plan_absent(s: dict, found: ScannedDomain | None, tpl: dict | None, xml_dir: str | None) -> Item:
    """The item for a clone to remove: the domain, and the files it created that it still uses."""
    if found is None:
        path = xml_path(xml_dir, s["name"])
        stale_xml = path if path and our_xml_file(path, s["name"], None) else None
        return Item(
            action=REMOVE_XML if stale_xml else NONE,
            spec=s,
            name=s["name"],
            uuid=None,
            macs=[],
            disks=[],
            files=[],
            xml_path=stale_xml,
            xml_paths=[stale_xml] if stale_xml else [],
            absent=True,
        )
    root = found.inactive
    prov = dx.provenance(root)
    if prov is None or prov.get("created_by") != "virtops.kvm":
        raise Conflict(
            f"Domain {s['name']!r} was not created by virtops.kvm.kvm_clone; kvm_clone does not remove it.",
            hint="Use virtops.kvm.kvm_domain state=absent for domains kvm_clone did not make.",
        )
    if tpl is not None and prov["template"] != tpl["name"]:
        raise Conflict(f"Clone {s['name']!r} was cloned from {prov['template']!r}, not {tpl['name']!r}; not removed.")
    # Only files the provenance records AND the domain really uses (a forged record deletes nothing else).
    in_use = {d["path"] for d in dx.disks(root) if d["path"]}
    nv = root.find("os/nvram")
    nvram = nv.text if nv is not None else None
    files = []
    for c in prov["created_disks"]:
        if c["mode"] == "nvram":
            if c["path"] == nvram:
                files.append(dict(path=c["path"], nvram=True))
        elif c["mode"] == "seed":
            if c["path"] in in_use and c["path"].endswith(SEED_SUFFIX):
                files.append(dict(path=c["path"], nvram=False))
        elif c["path"] in in_use:
            files.append(dict(path=c["path"], nvram=False))
    xml_paths = _xml_files_to_remove(prov, xml_dir, s["name"], found.uuid)
    return Item(
        action=REMOVE,
        spec=s,
        name=s["name"],
        uuid=found.uuid,
        macs=dx.macs(root),
        disks=existing_disks(root),
        files=files,
        dom=found.dom,
        active=found.active,
        xml_path=xml_paths[0] if xml_paths else None,
        xml_paths=xml_paths,
        absent=True,
    )


def _xml_files_to_remove(prov: dict, xml_dir: str | None, name: str, uuid: str) -> list[str]:
    """The clone's XML files: the one its provenance records, and the one in xml_dir if given.

    Each only if it is still this clone's XML (name, UUID, provenance), so
    a forged record or a replaced file deletes nothing else. Clones made
    before the record existed are found through xml_dir alone.
    """
    recorded = [
        c["path"]
        for c in prov["created_disks"]
        if c["mode"] == "xml"
        and c["path"]
        and os.path.isabs(c["path"])
        and os.path.basename(c["path"]) == f"{name}.xml"
    ]
    given = xml_path(xml_dir, name)
    out, seen = [], set()
    for path in [*recorded, *([given] if given else [])]:
        real = os.path.realpath(path)
        if real in seen or not our_xml_file(path, name, uuid):
            continue
        seen.add(real)
        out.append(path)
    return out
