# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_fleet role's rules as filters: clone specs, fleet membership (prune), template name, serial logs.

They run on the controller, which may lack lxml: pure Python, standard library only.
Each filter is documented in plugins/filter/<filter name>.yml.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# kvm_clone's mark in a clone's provenance (<metadata>), as kvm_domain_info returns it.
CREATED_BY = "virtops.kvm"
# Options passed to kvm_clone for every clone: its identity, which kvm_clone checks on an existing clone.
IDENTITY_KEYS = ("macs", "uuid", "ip")
# Options that shape a new clone only: kvm_clone refuses an existing clone that differs from them,
# and later changes are kvm_domain's job.
CREATE_KEYS = ("memory", "vcpus", "autostart", "hostname", "files", "cloud_init")


def _kind(value) -> str:
    """How an error message names what it got instead."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, Mapping):
        return "a dict"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a value of type {type(value).__name__}"


def _list(value, filt: str, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise AnsibleFilterError(f"{filt}: {what} must be a list, got {_kind(value)}.")
    return list(value)


def _named_dicts(value, filt: str, what: str) -> list:
    """A list of dicts that each have a non-empty string 'name'."""
    items = _list(value, filt, what)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise AnsibleFilterError(f"{filt}: {what}[{i}] must be a dict, got {_kind(item)}.")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise AnsibleFilterError(f"{filt}: {what}[{i}] needs a non-empty string 'name', got {_kind(name)}.")
    return items


def _names(value, filt: str, what: str) -> set:
    names = _list(value, filt, what)
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise AnsibleFilterError(f"{filt}: {what}[{i}] must be a string (a domain name), got {_kind(name)}.")
    return set(names)


def fleet_clone_specs(clones, existing_names) -> list:
    """The clones as kvm_clone's O(clones) wants them; creation-time overrides only for clones not there yet."""
    filt = "fleet_clone_specs"
    clones = _named_dicts(clones, filt, "the clones")
    existing = _names(existing_names, filt, "existing_names")
    specs = []
    for clone in clones:
        keys = IDENTITY_KEYS if clone["name"] in existing else IDENTITY_KEYS + CREATE_KEYS
        spec = {"name": clone["name"]}
        spec.update((k, clone[k]) for k in keys if clone.get(k) is not None)
        specs.append(spec)
    return specs


def _made_from(domain: Mapping, template_name: str, filt: str) -> bool:
    """Whether kvm_clone's provenance record says it made this domain (from this template, when known)."""
    prov = domain.get("provenance")
    if prov is None:
        return False
    if not isinstance(prov, Mapping):
        raise AnsibleFilterError(
            f"{filt}: the provenance of domain {domain['name']!r} must be a dict or null "
            f"(as kvm_domain_info returns it), got {_kind(prov)}."
        )
    if prov.get("created_by") != CREATED_BY:
        return False
    return not template_name or prov.get("template") == template_name


def fleet_unlisted(domains, fleet_name, listed_names, template_name=None) -> list:
    """Names of the fleet's domains that are no longer listed: what prune removes.

    A domain belongs to the fleet only when its name starts with "<fleet_name>-" AND kvm_clone's
    provenance says it made it (from template_name, when that is known). Anything else is never
    returned, whatever its name.
    """
    filt = "fleet_unlisted"
    domains = _named_dicts(domains, filt, "the domains")
    if not isinstance(fleet_name, str) or not fleet_name:
        raise AnsibleFilterError(
            f"{filt}: fleet_name must be a non-empty string (the prefix '<fleet_name>-' marks the fleet's clones), "
            f"got {_kind(fleet_name)}."
        )
    listed = _names(listed_names, filt, "listed_names")
    if template_name is not None and not isinstance(template_name, str):
        raise AnsibleFilterError(f"{filt}: template_name must be a string or null, got {_kind(template_name)}.")
    prefix = f"{fleet_name}-"
    return [
        d["name"]
        for d in domains
        if d["name"].startswith(prefix) and d["name"] not in listed and _made_from(d, template_name, filt)
    ]


def domain_name_of(xml_text) -> str:
    """The <name> of a domain XML (what kvm_clone records as the template), or "" for no XML at all."""
    filt = "domain_name_of"
    if xml_text is None:
        return ""
    if not isinstance(xml_text, (str, bytes)):
        raise AnsibleFilterError(f"{filt}: the input must be domain XML text, got {_kind(xml_text)}.")
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


def serial_logs(domains) -> dict:
    """Domain name -> path of its first <serial type='file'> log, for the domains that have one."""
    filt = "serial_logs"
    logs = {}
    for d in _named_dicts(domains, filt, "the domains"):
        consoles = d.get("consoles")
        if consoles is None:
            continue
        for i, console in enumerate(_list(consoles, filt, f"the consoles of {d['name']!r}")):
            if not isinstance(console, Mapping):
                raise AnsibleFilterError(f"{filt}: console {i} of {d['name']!r} must be a dict, got {_kind(console)}.")
            if console.get("device") == "serial" and console.get("type") == "file" and console.get("path"):
                logs[d["name"]] = console["path"]
                break
    return logs


class FilterModule:
    """virtops.kvm's filters for the kvm_fleet role."""

    def filters(self) -> dict:
        return {
            "fleet_clone_specs": fleet_clone_specs,
            "fleet_unlisted": fleet_unlisted,
            "domain_name_of": domain_name_of,
            "serial_logs": serial_logs,
        }
