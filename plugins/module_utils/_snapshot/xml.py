# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The snapshot XML (pure lxml, no connection): read a snapshot, and write the XML that creates or redefines one.

libvirt keeps, per snapshot, the disks it covers (``internal``, ``external``
with the new overlay file, or ``no``) and the domain definition at that moment
(``<domain>``, and for running domains also ``<inactiveDomain>``). For an
external snapshot the disk source in that definition is the file the snapshot
froze: its *base*, the image a revert puts a fresh overlay on. This file reads
those bases and, when a merge moves a layer, rewrites them (``redefine``).
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx

# The embedded definitions whose disk sources are the snapshot's bases.
_DEFINITIONS = ("domain", "inactiveDomain")


def parse(xml: str | bytes):
    """The ``<domainsnapshot>`` element of ``xml``."""
    return dx.parse(xml, "snapshot XML", root_tag="domainsnapshot", dump="virsh snapshot-dumpxml")


def read(xml: str | bytes) -> dict:
    """One snapshot as a dict: name, description, state, creation_time, parent, memory, kind, disks, bases.

    ``disks``: ``[{target, snapshot, file}]`` as the snapshot lists them (``file`` is the overlay an
    external snapshot made); ``bases``: ``{target: {path, format}}`` for its external disks, from the
    definition it recorded.
    """
    root = parse(xml)
    memory_el = root.find("memory")
    memory = memory_el.get("snapshot", "no") if memory_el is not None else "no"
    disks = []
    for d in root.findall("disks/disk"):
        src = d.find("source")
        disks.append(
            dict(
                target=d.get("name"),
                snapshot=d.get("snapshot") or "internal",
                file=src.get("file") if src is not None else None,
            )
        )
    external = [d["target"] for d in disks if d["snapshot"] == "external"]
    bases = dx.snapshot_bases(root)
    return dict(
        name=dx.text(root, "name"),
        description=dx.text(root, "description"),
        state=dx.text(root, "state"),
        creation_time=dx.int_of(dx.text(root, "creationTime")),
        parent=dx.text(root, "parent/name"),
        memory=memory,
        kind="external" if external or memory == "external" else "internal",
        disks=disks,
        bases=bases,
    )


def create_xml(name: str, description: str | None, disks: list[dict] | None = None, memory: str | None = None) -> str:
    """The XML that asks libvirt for a new snapshot.

    ``disks``: ``[{target, snapshot, file?, format?}]`` (None: libvirt's default for every disk);
    ``memory``: ``no``/``internal`` or None (libvirt's default for the domain's state).
    """
    etree = _deps.etree
    root = etree.Element("domainsnapshot")
    etree.SubElement(root, "name").text = name
    if description:
        etree.SubElement(root, "description").text = description
    if memory is not None:
        etree.SubElement(root, "memory", snapshot=memory)
    if disks is not None:
        disks_el = etree.SubElement(root, "disks")
        for d in disks:
            el = etree.SubElement(disks_el, "disk", name=d["target"], snapshot=d["snapshot"])
            if d["snapshot"] == "external":
                el.set("type", "file")
                etree.SubElement(el, "driver", type=d.get("format") or "qcow2")
                etree.SubElement(el, "source", file=d["file"])
    return etree.tostring(root, encoding="unicode")


def redefine_xml(xml: str | bytes, description: str | None = None, bases: dict[str, dict] | None = None) -> str:
    """``xml`` with a new description (None: keep) and, per target in ``bases``, a new base ``{path, format}``."""
    etree = _deps.etree
    root = parse(xml)
    if description is not None:
        el = root.find("description")
        if description == "":
            if el is not None:
                root.remove(el)
        else:
            if el is None:
                el = etree.Element("description")
                root.insert(1, el)
            el.text = description
    for target, new in (bases or {}).items():
        for tag in _DEFINITIONS:
            definition = root.find(tag)
            if definition is not None:
                set_disk_source(definition, target, new["path"], new.get("format") or "qcow2")
    return etree.tostring(root, encoding="unicode")


def set_disk_source(domain_root, target: str, path: str, fmt: str) -> bool:
    """Point disk ``target`` of a domain definition at ``path`` (format ``fmt``); whether it was found."""
    for disk in domain_root.findall("devices/disk"):
        tgt = disk.find("target")
        src = disk.find("source")
        if tgt is None or tgt.get("dev") != target or src is None:
            continue
        dx.set_disk_file(disk, path, fmt)
        return True
    return False
