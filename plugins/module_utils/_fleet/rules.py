# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The kvm_fleet role's rules as plain functions: kvm_fleet_host runs them on the hypervisor, and the
role's filters (fleet_clone_specs, fleet_domain_items, fleet_unlisted) run them on the controller after
checking their input. Standard library only: the controller may lack lxml and libvirt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Options passed to kvm_clone for every clone: its identity, which kvm_clone checks on an existing clone.
IDENTITY_KEYS = ("macs", "uuid", "ip")
# Options that shape a new clone only: kvm_clone refuses an existing clone that differs from them,
# and later changes are kvm_domain's job.
CREATE_KEYS = ("memory", "vcpus", "autostart", "hostname", "files", "cloud_init")
# What kvm_domain's batch (its domains option) takes from a clone of the fleet.
DOMAIN_KEYS = ("state", "memory", "vcpus", "autostart")
# Where the fleet_placement filter puts a clone (read on the controller only).
PLACEMENT_KEYS = ("host", "group")
# Every key a clone of the fleet may have.
CLONE_KEYS = ("name", *IDENTITY_KEYS, *CREATE_KEYS, "state", *PLACEMENT_KEYS)
# kvm_clone's mark in a clone's provenance (<metadata>), as kvm_domain_info returns it.
CREATED_BY = "virtops.kvm"


def clone_specs(clones: Iterable[Mapping], existing: Iterable[str]) -> list:
    """The clones as kvm_clone's O(clones) wants them; creation-time overrides only for clones not there yet."""
    existing = set(existing)
    specs = []
    for clone in clones:
        keys = IDENTITY_KEYS if clone["name"] in existing else IDENTITY_KEYS + CREATE_KEYS
        spec = {"name": clone["name"]}
        spec.update((k, clone[k]) for k in keys if clone.get(k) is not None)
        specs.append(spec)
    return specs


def domain_items(clones: Iterable[Mapping], names=None, default_state=None, state=None) -> list:
    """The clones as kvm_domain's O(domains) wants them: name, state, memory, vcpus, autostart (when given).

    Only the clones in ``names`` when it is given (those defined on the host); ``default_state`` for a
    clone that gives no state; ``state`` for every clone, whatever it gives.
    """
    wanted = None if names is None else set(names)
    items = []
    for clone in clones:
        if wanted is not None and clone["name"] not in wanted:
            continue
        item = {"name": clone["name"]}
        item.update((k, clone[k]) for k in DOMAIN_KEYS if clone.get(k) is not None)
        if state is not None:
            item["state"] = state
        elif "state" not in item and default_state is not None:
            item["state"] = default_state
        items.append(item)
    return items


def made_from(provenance, template_name: str | None) -> bool:
    """Whether kvm_clone's provenance record says it made a domain (from this template, when known)."""
    if not provenance or provenance.get("created_by") != CREATED_BY:
        return False
    return not template_name or provenance.get("template") == template_name


def unlisted(domains: Iterable[Mapping], fleet_name: str, listed: Iterable[str], template_name=None) -> list:
    """Names of the fleet's domains that are no longer listed: what prune removes.

    A domain belongs to the fleet only when its name starts with "<fleet_name>-" AND kvm_clone's
    provenance says it made it (from template_name, when that is known). Anything else is never
    returned, whatever its name.
    """
    listed = set(listed)
    prefix = f"{fleet_name}-"
    return [
        d["name"]
        for d in domains
        if d["name"].startswith(prefix) and d["name"] not in listed and made_from(d.get("provenance"), template_name)
    ]
