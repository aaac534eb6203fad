# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The lxml domain model: parse, read out, and the collection's provenance metadata.

Pure: lxml only, no libvirt connection, so every rule here is unit-testable
without a daemon. (Comparison/normalisation and the clone transform build on
these readers.)
"""

from __future__ import annotations

import copy
import math
import re

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._validate import UNITS  # the one table of size units

# The collection's own XML namespace inside <metadata>.
NS = "https://virtops.dev/xmlns/kvm/1"
NS_PREFIX = "virtops"

_POSITION_SUFFIX = re.compile(r", line \d+, column \d+$")


def parse(xml: str | bytes, what: str = "domain XML", root_tag: str = "domain", dump: str = "virsh dumpxml"):
    """Parse XML text into an lxml ``<root_tag>`` element; a syntax error names line and column.

    ``dump`` names the command that prints such XML, for the hint (other libvirt objects' XML too).
    """
    etree = _deps.etree
    if isinstance(xml, str):
        xml = xml.encode("utf-8")
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        line, col = exc.position if exc.position else (exc.lineno, 0)
        reason = _POSITION_SUFFIX.sub("", exc.msg)
        raise InvalidInput(
            f"The {what} is not well-formed XML: {reason} (line {line}, column {col}).",
            hint=f"Fix the XML (for example compare with '{dump}').",
            line=line,
            column=col,
        ) from exc
    if root.tag != root_tag:
        raise InvalidInput(f"The {what} has root element <{root.tag}>, expected <{root_tag}>.")
    return root


def tostring(root) -> str:
    return _deps.etree.tostring(root, pretty_print=True, encoding="unicode")


def text(root, path: str, default: str | None = None) -> str | None:
    el = root.find(path)
    return el.text if el is not None and el.text is not None else default


def int_of(value: str | None) -> int | None:
    """An attribute's or element's text as an int; None when it is absent or not a whole number."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def name_of(root) -> str | None:
    return text(root, "name")


def uuid_of(root) -> str | None:
    return text(root, "uuid")


def to_kib(value: str | None, unit: str | None) -> int | None:
    """A libvirt size (text and unit, KiB when no unit) in KiB, rounded up; None if unreadable."""
    factor = UNITS.get((unit or "KiB").strip().lower())
    try:
        number = int(value.strip())
    except (AttributeError, ValueError):
        return None
    if factor is None:
        return None
    return math.ceil(number * factor / 1024)


def _mib(el) -> int | None:
    kib = to_kib(el.text, el.get("unit")) if el is not None else None
    return None if kib is None else kib // 1024


def memory_mib(root) -> int | None:
    """The domain's <memory> in whole MiB (None when absent or unreadable)."""
    return _mib(root.find("memory"))


def current_memory_mib(root) -> int | None:
    """The domain's current memory (``<currentMemory>``, else ``<memory>``) in whole MiB."""
    for tag in ("currentMemory", "memory"):
        mib = _mib(root.find(tag))
        if mib is not None:
            return mib
    return None


def vcpus(root) -> int | None:
    el = root.find("vcpu")
    return int(el.text) if el is not None and el.text else None


def online_vcpus(root) -> int | None:
    """The vCPUs online (``<vcpu current=...>``, else its count); None when absent or unreadable."""
    el = root.find("vcpu")
    try:
        return int(el.get("current") or el.text) if el is not None else None
    except (TypeError, ValueError):
        return None


def macs(root) -> list[str]:
    """The interfaces' MAC addresses, lower-cased, in document order."""
    return [i["mac"].lower() for i in interfaces(root) if i["mac"]]


def disk_source(disk_el) -> str | None:
    """What a <disk> reads from: its file, block device, network name or pool volume."""
    src = disk_el.find("source")
    if src is None:
        return None
    return src.get("file") or src.get("dev") or src.get("name") or src.get("volume")


def set_disk_file(disk_el, path: str, fmt: str) -> None:
    """Point a <disk> that has a <source> at image file ``path`` of format ``fmt``; libvirt re-reads its chain."""
    src = disk_el.find("source")
    src.set("file", path)
    src.attrib.pop("index", None)
    for bs in disk_el.findall("backingStore"):
        disk_el.remove(bs)
    drv = disk_el.find("driver")
    if drv is None:
        drv = _deps.etree.Element("driver", name="qemu")
        disk_el.insert(0, drv)
    drv.set("type", fmt)


def disks(root) -> list[dict]:
    """The domain's disks as dicts: target, device, type, path, format, readonly, shareable."""
    out = []
    for d in root.findall("devices/disk"):
        src = d.find("source")
        path = disk_source(d)
        drv = d.find("driver")
        tgt = d.find("target")
        out.append(
            dict(
                target=tgt.get("dev") if tgt is not None else None,
                bus=tgt.get("bus") if tgt is not None else None,
                device=d.get("device", "disk"),
                type=d.get("type", "file"),
                path=path,
                pool=src.get("pool") if src is not None else None,
                format=drv.get("type") if drv is not None else None,
                readonly=d.find("readonly") is not None,
                shareable=d.find("shareable") is not None,
            )
        )
    return out


def writable_file_disks(root) -> list[dict]:
    """File-backed disks the guest can write to (not CD-ROMs, read-only or shareable disks)."""
    return [
        d
        for d in disks(root)
        if d["type"] == "file" and d["path"] and d["device"] == "disk" and not d["readonly"] and not d["shareable"]
    ]


def interfaces(root) -> list[dict]:
    out = []
    for i in root.findall("devices/interface"):
        mac = i.find("mac")
        src = i.find("source")
        model = i.find("model")
        source = None
        if src is not None:
            source = src.get("network") or src.get("bridge") or src.get("dev") or src.get("path")
        out.append(
            dict(
                type=i.get("type"),
                mac=mac.get("address") if mac is not None else None,
                source=source,
                model=model.get("type") if model is not None else None,
            )
        )
    return out


def consoles(root) -> list[dict]:
    out = []
    for kind in ("serial", "console"):
        for c in root.findall(f"devices/{kind}"):
            src = c.find("source")
            tgt = c.find("target")
            log = c.find("log")
            out.append(
                dict(
                    device=kind,
                    type=c.get("type"),
                    path=(src.get("path") if src is not None else None) or c.get("tty"),
                    target_type=tgt.get("type") if tgt is not None else None,
                    port=tgt.get("port") if tgt is not None else None,
                    log=log.get("file") if log is not None else None,
                )
            )
    return out


def provenance(root) -> dict | None:
    """The collection's record in <metadata> (written by kvm_clone), or None."""
    el = root.find(f"metadata/{{{NS}}}clone")
    if el is None:
        return None
    created = []
    for c in el.findall(f"{{{NS}}}disk"):
        entry = dict(path=c.get("path"), base=c.get("base"), mode=c.get("mode"), format=c.get("format"))
        if c.get("base-digest"):  # the base's identity when the overlay was made (_drift.py)
            entry["base_fingerprint"] = dict(
                size=int_of(c.get("base-size")), mtime=int_of(c.get("base-mtime")), digest=c.get("base-digest")
            )
            if c.get("base-file"):  # which file on its host (device:inode); absent in older records
                entry["base_fingerprint"]["file"] = c.get("base-file")
        created.append(entry)
    return dict(
        template=el.get("template"),
        mode=el.get("mode"),
        created_by=el.get("created-by"),
        created_disks=created,
        identity=_identity(el),
        identity_source=el.get("identity-source"),
    )


def read_operations(el, ns: str = NS) -> dict:
    """``{done: [names], skipped: [{operation, reason}]}`` from ``<operation>`` children (namespace ``ns``)."""
    ops = el.findall(f"{{{ns}}}operation")
    return dict(
        done=[o.get("name") for o in ops if o.get("result") == "done"],
        skipped=[dict(operation=o.get("name"), reason=o.get("reason")) for o in ops if o.get("result") == "skipped"],
    )


def write_operations(el, report: dict, ns: str = NS) -> None:
    """``report``'s ``done`` and ``skipped`` as ``<operation>`` children of ``el`` (read back by read_operations)."""
    etree = _deps.etree
    for op in report["done"]:
        etree.SubElement(el, f"{{{ns}}}operation", attrib={"name": op, "result": "done"})
    for s in report["skipped"]:
        attrib = {"name": s["operation"], "result": "skipped", "reason": s["reason"]}
        etree.SubElement(el, f"{{{ns}}}operation", attrib=attrib)


def _identity(clone_el) -> dict | None:
    """The identity reset kvm_clone did before the clone's first boot (see set_identity), or None."""
    el = clone_el.find(f"{{{NS}}}identity")
    if el is None:
        return None
    return dict(
        hostname=el.get("hostname"), **read_operations(el), files=[f.get("path") for f in el.findall(f"{{{NS}}}file")]
    )


def set_identity(root, report: dict) -> None:
    """Record an identity reset (``{hostname, done, skipped, files}``) in the clone's provenance."""
    etree = _deps.etree
    clone = root.find(f"metadata/{{{NS}}}clone")
    for old in clone.findall(f"{{{NS}}}identity"):
        clone.remove(old)
    el = etree.SubElement(clone, f"{{{NS}}}identity", attrib={"hostname": report["hostname"]})
    write_operations(el, report)
    for path in report["files"]:
        etree.SubElement(el, f"{{{NS}}}file", attrib={"path": path})


def set_provenance(root, template: str, mode: str, created_disks: list[dict]) -> None:
    """Record what the collection created for this domain, replacing any older record."""
    etree = _deps.etree
    meta = root.find("metadata")
    if meta is None:
        meta = etree.SubElement(root, "metadata")
    for old in meta.findall(f"{{{NS}}}clone"):
        meta.remove(old)
    el = etree.SubElement(
        meta,
        f"{{{NS}}}clone",
        nsmap={NS_PREFIX: NS},
        attrib={"template": template, "mode": mode, "created-by": "virtops.kvm"},
    )
    for d in created_disks:
        attrs = {k: str(v) for k, v in d.items() if v is not None and k in ("path", "base", "mode", "format")}
        attrs.update(_fingerprint_attrs(d.get("base_fingerprint")))
        etree.SubElement(el, f"{{{NS}}}disk", attrib=attrs)


def _fingerprint_attrs(fp: dict | None) -> dict:
    if not fp:
        return {}
    attrs = {"base-size": str(fp["size"]), "base-mtime": str(fp["mtime"]), "base-digest": fp["digest"]}
    if fp.get("file"):
        attrs["base-file"] = fp["file"]
    return attrs


def set_base_fingerprints(root, now) -> bool:
    """Record ``now(base)`` (a fingerprint, or None to leave it) on every recorded overlay of the clone XML
    ``root``, ``base-file`` dropped when ``now`` gives none; whether anything changed."""
    changed = False
    for c in root.findall(f"metadata/{{{NS}}}clone/{{{NS}}}disk"):
        if c.get("mode") != "overlay" or not c.get("base"):
            continue
        fp = now(c.get("base"))
        if fp is None:
            continue
        attrs = _fingerprint_attrs(fp)
        if any(c.get(k) != v for k, v in attrs.items()) or ("base-file" in c.attrib and "base-file" not in attrs):
            for k, v in attrs.items():
                c.set(k, v)
            if "base-file" not in attrs:
                c.attrib.pop("base-file", None)
            changed = True
    return changed


def metadata_text(el) -> str:
    """Our metadata element as virDomainSetMetadata wants it: without the namespace (libvirt adds it)."""
    etree = _deps.etree
    plain = copy.deepcopy(el)
    for node in plain.iter():
        node.tag = etree.QName(node).localname
    etree.cleanup_namespaces(plain)
    return etree.tostring(plain, encoding="unicode")


def snapshot_bases(snapshot_root) -> dict[str, dict]:
    """``{target: {path, format}}``: the files an external snapshot froze (``<domainsnapshot>`` element).

    libvirt records, per snapshot, the disks it covers and the domain's definition at that moment: for
    an external disk, the source in that definition is the snapshot's base, the file it stands on.
    """
    external = [d.get("name") for d in snapshot_root.findall("disks/disk") if d.get("snapshot") == "external"]
    domain_el = snapshot_root.find("domain")
    if domain_el is None or not external:
        return {}
    by_target = {d["target"]: d for d in disks(domain_el)}
    out = {}
    for target in external:
        found = by_target.get(target)
        if found is not None and found["path"]:
            out[target] = dict(path=found["path"], format=found["format"])
    return out
