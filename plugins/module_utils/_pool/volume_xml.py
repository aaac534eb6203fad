# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Volume sizes, the volume definition kvm_volume asks libvirt for, and the facts read back from it.

Pure lxml, no connection. Sizes are bytes everywhere inside; the ``size``
option takes a number with a unit as libvirt and qemu-img write them
(``10G`` and ``10GiB`` are 10 * 1024**3, ``10GB`` is 10 * 1000**3), parsed and
bounded by ``_validate.size``.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd

VOLUME_FORMATS = ("raw", "qcow2")
# How far a backend may round a requested capacity up (qcow2: 1 KiB; LVM: one 4 MiB extent).
GRANULARITY = {"dir": 1024, "fs": 1024, "netfs": 1024, "logical": 4 * 1024**2}
_DEFAULT_GRANULARITY = 1024**2


def parse_size(value, option: str = "size") -> int:
    """Bytes from ``10G``, ``512MiB``, ``1000000000`` (bytes) ...: 1 byte to ``_validate.MAX_SIZE``."""
    return vd.size(value, option)


def round_up(size: int, pool_type: str) -> int:
    step = GRANULARITY.get(pool_type, _DEFAULT_GRANULARITY)
    return -(-size // step) * step


def human(size: int | None) -> str:
    """``1073741824`` -> ``1 GiB (1073741824 bytes)`` for messages and diffs."""
    if size is None:
        return "unknown"
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            value = size / factor
            shown = f"{value:.0f}" if value == int(value) else f"{value:.2f}"
            return f"{shown} {unit} ({size} bytes)"
    return f"{size} bytes"


def build(
    name: str,
    capacity: int,
    fmt: str | None,
    *,
    allocation: int | None = 0,
    backing_path: str | None = None,
    backing_format: str | None = None,
) -> str:
    """The ``<volume>`` XML for virStorageVolCreateXML(From); allocation 0 makes a sparse file."""
    etree = _deps.etree
    root = etree.Element("volume")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "capacity", unit="bytes").text = str(capacity)
    if allocation is not None:
        etree.SubElement(root, "allocation", unit="bytes").text = str(allocation)
    if fmt is not None:
        target = etree.SubElement(root, "target")
        etree.SubElement(target, "format", type=fmt)
    if backing_path is not None:
        backing = etree.SubElement(root, "backingStore")
        etree.SubElement(backing, "path").text = backing_path
        if backing_format is not None:
            etree.SubElement(backing, "format", type=backing_format)
    return etree.tostring(root, encoding="unicode")


def _bytes(root, path: str) -> int | None:
    el = root.find(path)
    if el is None or el.text is None:
        return None
    kib_factor = dx.UNITS.get((el.get("unit") or "bytes").lower())
    try:
        return int(el.text.strip()) * kib_factor if kib_factor else None
    except ValueError:
        return None


def read(xml: str) -> dict:
    """A volume's facts from its XML: name, key, type, path, format, sizes and backing store."""
    root = dx.parse(xml, "volume XML", root_tag="volume", dump="virsh vol-dumpxml")
    fmt = root.find("target/format")
    backing = root.find("backingStore")
    backing_info = None
    if backing is not None and dx.text(backing, "path"):
        bfmt = backing.find("format")
        backing_info = dict(path=dx.text(backing, "path"), format=bfmt.get("type") if bfmt is not None else None)
    return dict(
        name=dx.text(root, "name"),
        key=dx.text(root, "key"),
        type=root.get("type"),
        path=dx.text(root, "target/path"),
        format=fmt.get("type") if fmt is not None else None,
        capacity=_bytes(root, "capacity"),
        allocation=_bytes(root, "allocation"),
        physical=_bytes(root, "physical"),
        backing=backing_info,
    )


def snapshot(info: dict | None, extra: dict | None = None) -> str:
    """The diff's text for a volume (empty when it does not exist)."""
    if info is None:
        return ""
    lines = [
        f"volume: {info['name']}",
        f"format: {info['format']}",
        f"capacity: {human(info['capacity'])}",
    ]
    if info.get("backing"):
        lines.append(f"backing: {info['backing']['path']} ({info['backing']['format']})")
    for key, value in (extra or {}).items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n"
