# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_fleet role's batch rule as a filter: its clones as ONE kvm_domain task's ``domains`` list.

Its rule is module_utils/_fleet/rules.py (kvm_fleet_host runs it on the hypervisor; input checks shared
with the other filters: plugin_utils/_filter_input.py);
documented in plugins/filter/fleet_domain_items.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.module_utils._fleet import rules
from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import kind, name_set, named_dicts


def fleet_domain_items(clones, names=None, default_state=None, state=None) -> list:
    """The clones as kvm_domain's O(domains) wants them: name, state, memory, vcpus, autostart (when given).

    Only the clones in ``names`` when it is given (those defined on the host); ``default_state`` for a clone
    that gives no state; ``state`` for every clone, whatever it gives.
    """
    filt = "fleet_domain_items"
    clones = named_dicts(clones, filt, "the clones")
    wanted = None if names is None else name_set(names, filt, "names")
    for what, value in (("default_state", default_state), ("state", state)):
        if value is not None and (not isinstance(value, str) or not value):
            raise AnsibleFilterError(f"{filt}: {what} must be a state name or null, got {kind(value)}.")
    return rules.domain_items(clones, wanted, default_state, state)


class FilterModule:
    """virtops.kvm's batch filter for the kvm_fleet role."""

    def filters(self) -> dict:
        return {"fleet_domain_items": fleet_domain_items}
