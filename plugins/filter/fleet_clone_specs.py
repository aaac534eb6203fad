# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_fleet role's clone specs as a filter: its clones as ONE kvm_clone task's ``clones`` list.

Its rule is module_utils/_fleet/rules.py (kvm_fleet_host runs it on the hypervisor); standard library
only; documented in plugins/filter/fleet_clone_specs.yml.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._fleet import rules
from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import name_set, named_dicts


def fleet_clone_specs(clones, existing_names) -> list:
    """The clones as kvm_clone's O(clones) wants them; creation-time overrides only for clones not there yet."""
    filt = "fleet_clone_specs"
    clones = named_dicts(clones, filt, "the clones")
    existing = name_set(existing_names, filt, "existing_names")
    return rules.clone_specs(clones, existing)


class FilterModule:
    """virtops.kvm.fleet_clone_specs."""

    def filters(self) -> dict:
        return {"fleet_clone_specs": fleet_clone_specs}
