# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The name of a domain XML as a filter: what kvm_clone records as a clone's template.

Pure Python on the controller (standard library only); documented in plugins/filter/domain_name_of.yml.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import kind


def domain_name_of(xml_text) -> str:
    """The <name> of a domain XML (what kvm_clone records as the template), or "" for no XML at all."""
    filt = "domain_name_of"
    if xml_text is None:
        return ""
    if not isinstance(xml_text, (str, bytes)):
        raise AnsibleFilterError(f"{filt}: the input must be domain XML text, got {kind(xml_text)}.")
    if not xml_text.strip():
        return ""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise AnsibleFilterError(f"{filt}: the input is not well-formed XML: {exc}.") from exc
    if root.tag != "domain":
        raise AnsibleFilterError(f"{filt}: the XML's root element is <{root.tag}>, expected <domain>.")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise AnsibleFilterError(f"{filt}: the domain XML has no <name>.")
    return name


class FilterModule:
    """virtops.kvm.domain_name_of."""

    def filters(self) -> dict:
        return {"domain_name_of": domain_name_of}
