# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_fleet role's prune rule as a filter: the fleet's domains that are no longer listed.

Its rule is module_utils/_fleet/rules.py (kvm_fleet_host runs it on the hypervisor); standard library
only; documented in plugins/filter/fleet_unlisted.yml.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.module_utils._fleet import rules
from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import kind, name_set, named_dicts


def _check_provenance(domain: Mapping, filt: str) -> None:
    """A provenance record is a dict or null, as kvm_domain_info returns it."""
    prov = domain.get("provenance")
    if prov is not None and not isinstance(prov, Mapping):
        raise AnsibleFilterError(
            f"{filt}: the provenance of domain {domain['name']!r} must be a dict or null "
            f"(as kvm_domain_info returns it), got {kind(prov)}."
        )


def fleet_unlisted(domains, fleet_name, listed_names, template_name=None) -> list:
    """Names of the fleet's domains that are no longer listed: what prune removes.

    A domain belongs to the fleet only when its name starts with "<fleet_name>-" AND kvm_clone's
    provenance says it made it (from template_name, when that is known). Anything else is never
    returned, whatever its name.
    """
    filt = "fleet_unlisted"
    domains = named_dicts(domains, filt, "the domains")
    if not isinstance(fleet_name, str) or not fleet_name:
        raise AnsibleFilterError(
            f"{filt}: fleet_name must be a non-empty string (the prefix '<fleet_name>-' marks the fleet's clones), "
            f"got {kind(fleet_name)}."
        )
    listed = name_set(listed_names, filt, "listed_names")
    if template_name is not None and not isinstance(template_name, str):
        raise AnsibleFilterError(f"{filt}: template_name must be a string or null, got {kind(template_name)}.")
    for domain in domains:
        if domain["name"].startswith(f"{fleet_name}-") and domain["name"] not in listed:
            _check_provenance(domain, filt)
    return rules.unlisted(domains, fleet_name, listed, template_name)


class FilterModule:
    """virtops.kvm.fleet_unlisted."""

    def filters(self) -> dict:
        return {"fleet_unlisted": fleet_unlisted}
