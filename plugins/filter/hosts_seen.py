# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each hypervisor said (kvm_host_info), as virtops.kvm.fleet_placement takes its hosts: a filter.

The kvm_fleet role (place.yml) and the kvm_drain role (drain.yml) both read every hypervisor with
kvm_host_info, then place once on the controller: this is their shared step from the registered results
to the placement's input. Pure Python on the controller; documented in plugins/filter/hosts_seen.yml.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import a_list, kind

FILT = "hosts_seen"
# What fleet_placement reads of a reachable host, from kvm_host_info's host.
HOST_KEYS = ("cpus", "memory_total_mib", "memory_free_mib", "vcpus_allocated", "memory_allocated_mib")


def _host_names(value, what: str) -> list:
    items = a_list(value, FILT, what)
    for i, name in enumerate(items):
        if not isinstance(name, str) or not name:
            raise AnsibleFilterError(f"{FILT}: {what}[{i}] must be an inventory host name, got {kind(name)}.")
    return items


def hosts_seen(hypervisors, hostvars, info_var, play_hosts) -> list:
    """Per hypervisor, in order: what its kvm_host_info result (host var ``info_var``) says, or unreachable.

    A hypervisor is reachable when it is still in the play and its result has a ``host``; any other (it left
    the play, it was never read) is ``{name, reachable: false}``.
    """
    names = _host_names(hypervisors, "the hypervisors")
    if not isinstance(hostvars, Mapping):
        raise AnsibleFilterError(f"{FILT}: hostvars must be a dict (Ansible's hostvars), got {kind(hostvars)}.")
    if not isinstance(info_var, str) or not info_var:
        raise AnsibleFilterError(
            f"{FILT}: info_var must be the name of the host var kvm_host_info was registered in, got {kind(info_var)}."
        )
    in_play = set(_host_names(play_hosts, "play_hosts"))
    seen = []
    for name in names:
        host_vars = hostvars.get(name) if name in in_play else None
        info = host_vars.get(info_var) if isinstance(host_vars, Mapping) else None
        if not isinstance(info, Mapping) or "host" not in info:
            seen.append({"name": name, "reachable": False})
            continue
        host = info["host"]
        if not isinstance(host, Mapping):
            raise AnsibleFilterError(
                f"{FILT}: {info_var}.host of {name!r} must be a dict (kvm_host_info's host), got {kind(host)}."
            )
        item = {"name": name, "reachable": True, "domains": info.get("domains")}
        item.update((k, host.get(k)) for k in HOST_KEYS)
        item["drained"] = host.get("drained", False)
        seen.append(item)
    return seen


class FilterModule:
    """virtops.kvm.hosts_seen."""

    def filters(self) -> dict:
        return {"hosts_seen": hosts_seen}
