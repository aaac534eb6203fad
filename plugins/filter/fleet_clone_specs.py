# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_fleet role's clone specs as a filter: its clones as ONE kvm_clone task's ``clones`` list.

Pure Python on the controller (standard library only); documented in plugins/filter/fleet_clone_specs.yml.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import name_set, named_dicts

# Options passed to kvm_clone for every clone: its identity, which kvm_clone checks on an existing clone.
IDENTITY_KEYS = ("macs", "uuid", "ip")
# Options that shape a new clone only: kvm_clone refuses an existing clone that differs from them,
# and later changes are kvm_domain's job.
CREATE_KEYS = ("memory", "vcpus", "autostart", "hostname", "files", "cloud_init")


def fleet_clone_specs(clones, existing_names) -> list:
    """The clones as kvm_clone's O(clones) wants them; creation-time overrides only for clones not there yet."""
    filt = "fleet_clone_specs"
    clones = named_dicts(clones, filt, "the clones")
    existing = name_set(existing_names, filt, "existing_names")
    specs = []
    for clone in clones:
        keys = IDENTITY_KEYS if clone["name"] in existing else IDENTITY_KEYS + CREATE_KEYS
        spec = {"name": clone["name"]}
        spec.update((k, clone[k]) for k in keys if clone.get(k) is not None)
        specs.append(spec)
    return specs


class FilterModule:
    """virtops.kvm.fleet_clone_specs."""

    def filters(self) -> dict:
        return {"fleet_clone_specs": fleet_clone_specs}
