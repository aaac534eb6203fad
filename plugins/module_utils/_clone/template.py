# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The template a batch is cloned from (a shut-off domain or XML text) and its disks, checked.

A template must be shut off (its disk would change under the copies), and
every writable disk must be a file in a format kvm_clone can overlay or copy,
as the image really is (``qemu-img info``), not only as the XML says.
Read-only and shareable disks (a CD-ROM) are shared by the clones, not cloned.

A template whose disks are external snapshot layers (virtops.kvm.kvm_snapshot
kind=external) is refused unless ``layer`` names one of its external
snapshots: the clones are then made from the images that snapshot froze,
which are never written again, instead of the current layer, which is.
"""

from __future__ import annotations

import copy
import os

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone.transform import _set_disks
from ansible_collections.virtops.kvm.plugins.module_utils._errors import DomainNotFound, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import SHUTOFF, HostScan, state_name


def load_template(
    scan: HostScan, runner, template: str | None, template_xml: str | None, layer: str | None = None
) -> dict | None:
    """``{name, root, disks: [{target, path, format}], nvram}``, or None when neither is given.

    ``layer``: the external snapshot of the template whose frozen images are cloned (see the module doc).
    """
    if template is None and template_xml is None:
        return None
    if template is not None:
        vd.validate_name(template, "template")
        found = scan.get(template)
        if found is None:
            raise DomainNotFound(f"The template domain {template!r} is not defined.")
        if found.state != SHUTOFF:
            raise InvalidInput(
                f"The template {template!r} is {state_name(found.state)}; clones need a shut-off template "
                "(its disk would change under the copies).",
                hint="Shut it down first (virtops.kvm.kvm_domain state=shutdown).",
            )
        root = _layer_root(found, found.inactive, layer)
        name = template
    else:
        if layer is not None:
            raise InvalidInput("template_snapshot needs a template domain (its snapshots), not template_xml.")
        root = dx.parse(template_xml, "template_xml")
        name = dx.name_of(root)
        if not name:
            raise InvalidInput("template_xml has no <name>; it names the template in the clones' provenance.")
    disks = [_checked_disk(runner, d) for d in dx.disks(root) if not _shared(d)]
    nvram = root.find("os/nvram")
    return dict(name=name, root=root, disks=disks, nvram=nvram.text if nvram is not None else None)


def _shared(disk: dict) -> bool:
    """Whether the clones share this disk with the template instead of getting their own."""
    return disk["readonly"] or disk["shareable"] or disk["device"] != "disk"


def _checked_disk(runner, d: dict) -> dict:
    """A writable template disk as ``{target, path, format}``: a file that exists, in a supported format."""
    if d["type"] != "file" or not d["path"]:
        raise InvalidInput(
            f"Template disk {d['target']} is a {d['type']} disk; kvm_clone clones file-backed disks only.",
            hint="Mark it <readonly/> or <shareable/> to share it, or convert it to a file.",
        )
    path = d["path"]
    if not os.path.isfile(path):
        raise StorageError(
            f"Template disk {path} ({d['target']}) does not exist.",
            hint="Fix the template's disk path or restore the image.",
        )
    convert = f"Convert it to {' or '.join(st.SUPPORTED_FORMATS)} with qemu-img convert."
    declared = d["format"]
    if declared is not None and declared not in st.SUPPORTED_FORMATS:
        raise StorageError(
            f"Template disk {path} has format {declared!r}, which kvm_clone does not support.", hint=convert
        )
    real = st.image_info(runner, path).get("format")
    if real not in st.SUPPORTED_FORMATS:
        raise StorageError(f"Template disk {path} is a {real!r} image, which kvm_clone does not support.", hint=convert)
    if declared is not None and declared != real:
        raise StorageError(
            f"Template disk {path} is declared as {declared} in the XML but is a {real} image.",
            hint="Fix <driver type=...> in the template.",
        )
    return dict(target=d["target"], path=path, format=real)


def _external_snapshots(dom) -> dict[str, dict[str, str]]:
    """``{snapshot: {target: base}}``: each external snapshot of ``dom`` and the images it froze."""
    etree = _deps.etree
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    out = {}
    for snap in dom.listAllSnapshots(_deps.libvirt.VIR_DOMAIN_SNAPSHOT_LIST_EXTERNAL):
        el = etree.fromstring(snap.getXMLDesc(0).encode("utf-8"), parser)
        targets = [d.get("name") for d in el.findall("disks/disk") if d.get("snapshot") == "external"]
        defined = el.find("domain")
        sources = {d["target"]: d["path"] for d in dx.disks(defined)} if defined is not None else {}
        out[snap.getName()] = {t: sources[t] for t in targets if sources.get(t)}
    return out


def _layer_root(found, root, layer: str | None):
    """The template's XML, or with ``layer`` a copy whose disks are that snapshot's frozen images."""
    snapshots = _external_snapshots(found.dom)
    if layer is None and not snapshots:
        return root
    if layer is None:
        frozen = {os.path.realpath(p) for bases in snapshots.values() for p in bases.values()}
        for d in dx.disks(root):
            if d["type"] != "file" or not d["path"] or _shared(d) or not os.path.exists(d["path"]):
                continue
            below = {os.path.realpath(c["path"]) for c in st.backing_chain(d["path"])[1:]}
            if below & frozen:
                raise InvalidInput(
                    f"Disk {d['target']} of template {found.name!r} ({d['path']}) is an external snapshot layer, "
                    "which the template writes when it runs; kvm_clone will not put clones on it.",
                    hint="Say which layer to clone with template_snapshot: one of "
                    f"{', '.join(sorted(snapshots))} (the disks as that snapshot froze them).",
                )
        return root
    if layer not in snapshots:
        raise InvalidInput(
            f"Template {found.name!r} has no external snapshot {layer!r} (template_snapshot); it has: "
            f"{', '.join(sorted(snapshots)) or 'none'}.",
        )
    root = copy.deepcopy(root)
    bases = snapshots[layer]
    disk_map = {
        d["path"]: dict(path=bases[d["target"]], format=st.detect_format(bases[d["target"]]))
        for d in dx.disks(root)
        if d["path"] and d["target"] in bases
    }
    _set_disks(root.find("devices"), disk_map)
    return root
