# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The template a batch is cloned from (a shut-off domain or XML text) and its disks, checked.

A template must be shut off (its disk would change under the copies), and
every writable disk must be a file in a format kvm_clone can overlay or copy,
as the image really is (``qemu-img info``), not only as the XML says.
Read-only and shareable disks (a CD-ROM) are shared by the clones, not cloned.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _storage as st
from ansible_collections.virtops.kvm.plugins.module_utils._errors import DomainNotFound, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import SHUTOFF, HostScan, state_name


def load_template(scan: HostScan, runner, template: str | None, template_xml: str | None) -> dict | None:
    """``{name, root, disks: [{target, path, format}], nvram}``, or None when neither is given."""
    if template is None and template_xml is None:
        return None
    if template is not None:
        dx.validate_name(template, "template name")
        found = scan.get(template)
        if found is None:
            raise DomainNotFound(f"The template domain {template!r} is not defined.")
        if found.state != SHUTOFF:
            raise InvalidInput(
                f"The template {template!r} is {state_name(found.state)}; clones need a shut-off template "
                "(its disk would change under the copies).",
                hint="Shut it down first (virtops.kvm.kvm_domain state=shutdown).",
            )
        root = found.inactive
        name = template
    else:
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
