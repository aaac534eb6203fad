# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fleet's clones placed over many hypervisors: the kvm_fleet role's placement rule as a filter.

It runs ONCE on the controller (run_once) after every hypervisor said what it has (kvm_host_info), so it is
pure Python, standard library only, and a pure function of its input: the same input gives the same output
(ties go by the order of the hosts, never by hashing), and a clone that exists stays where it is (sticky).
Documented in plugins/filter/fleet_placement.yml.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import a_list, kind

FILT = "fleet_placement"
RULES = ("spread", "resources")
# The resources rule lets a host's vCPUs be overcommitted up to this many per logical CPU.
OVERCOMMIT = 4
# Keys of a clone that steer the placement only: they are not passed on in a host's share.
PLACEMENT_KEYS = ("host", "group")
DEFAULT_KEYS = ("memory", "vcpus")
HOST_NUMBERS = ("cpus", "memory_total_mib", "memory_free_mib", "vcpus_allocated", "memory_allocated_mib")
# What the resources rule reads of each reachable host.
RESOURCE_NUMBERS = ("cpus", "memory_free_mib", "vcpus_allocated")
# A whole number as text: before ansible-core 2.19 a templated number inside a list or dict arrives as a string.
INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _fail(message: str):
    raise AnsibleFilterError(f"{FILT}: {message}")


def _count(value, what: str, required: bool = False) -> int | None:
    """A whole number >= 0 (an int or its decimal text, never a bool), or None when not given and not required."""
    if value is None:
        if required:
            _fail(f"{what} is missing: give a whole number >= 0.")
        return None
    if isinstance(value, str) and INT_TEXT.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        got = f"the string {value!r}" if isinstance(value, str) and value else kind(value)
        _fail(f"{what} must be a whole number >= 0, got {got}.")
    if value < 0:
        _fail(f"{what} must not be negative, got {value}.")
    return value


def _label(value, what: str) -> str | None:
    """An optional non-empty string (a pin, a group): None when not given."""
    if value is not None and (not isinstance(value, str) or not value):
        _fail(f"{what} must be a non-empty string or null, got {kind(value)}.")
    return value


@dataclass
class _Clone:
    name: str
    spec: dict  # name + the passthrough keys: what the host's share gets
    pin: str | None
    group: str | None
    memory: int  # MiB the resources rule counts
    vcpus: int


@dataclass
class _Host:
    name: str
    reachable: bool
    domains: frozenset = frozenset()
    cpus: int = 0
    memory_free_mib: int = 0
    vcpus_allocated: int = 0
    drained: bool = False  # in maintenance (kvm_host_info's host.drained): keeps its clones, gets no new one


def _defaults(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(f"defaults must be a dict (memory, vcpus), got {kind(value)}.")
    unknown = sorted(str(k) for k in value if k not in DEFAULT_KEYS)
    if unknown:
        _fail(f"defaults takes only {', '.join(DEFAULT_KEYS)}, got {', '.join(unknown)}: remove them.")
    return {k: _count(value.get(k), f"defaults.{k}") for k in DEFAULT_KEYS}


def _named(items: list, where: str, shape: str, whose: str, twice: str):
    """``(item, name)`` for each item of ``items``, which must be dicts with unique non-empty string names.

    The messages name ``where[i]``; ``shape`` says what an item must be, ``whose`` what its name is, and
    ``twice`` (formatted with name, first and i) what is wrong with a name listed twice.
    """
    seen: dict = {}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            _fail(f"{where}[{i}] must be {shape}, got {kind(item)}.")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            _fail(f"{where}[{i}] needs a non-empty string 'name'{whose}, got {kind(name)}.")
        if name in seen:
            _fail(twice.format(name=name, first=seen[name], i=i))
        seen[name] = i
        yield item, name


def _clones(value, defaults: dict) -> list:
    clones = []
    items = [{"name": c} if isinstance(c, str) else c for c in a_list(value, FILT, "the clones (the filter's input)")]
    twice = "clone {name!r} is listed twice (clones[{first}] and clones[{i}]): clone names must be unique."
    for item, name in _named(items, "clones", "a clone name or a dict with a 'name'", "", twice):
        pin = _label(item.get("host"), f"the host (pin) of clone {name!r}")
        group = _label(item.get("group"), f"the anti-affinity group of clone {name!r}")
        memory = _count(item.get("memory"), f"the memory (MiB) of clone {name!r}")
        vcpus = _count(item.get("vcpus"), f"the vcpus of clone {name!r}")
        spec = {"name": name}
        spec.update((k, v) for k, v in item.items() if k != "name" and k not in PLACEMENT_KEYS)
        memory = defaults.get("memory") if memory is None else memory
        vcpus = defaults.get("vcpus") if vcpus is None else vcpus
        clones.append(_Clone(name, spec, pin, group, memory or 0, vcpus or 0))
    return clones


def _hosts(value, rule: str) -> list:
    hosts = []
    for item, name in _named(
        a_list(value, FILT, "hosts"),
        "hosts",
        "a dict (name, reachable, domains, cpus, memory...)",
        " (its inventory host name)",
        "host {name!r} is listed twice in hosts: host names must be unique.",
    ):
        reachable = item.get("reachable")
        if not isinstance(reachable, bool):
            _fail(f"host {name!r}: 'reachable' must be true or false, got {kind(reachable)}.")
        if not reachable:
            hosts.append(_Host(name, False))
            continue
        drained = item.get("drained", False)
        if not isinstance(drained, bool):
            _fail(f"host {name!r}: 'drained' must be true or false, got {kind(drained)}.")
        domains = item.get("domains")
        if not isinstance(domains, (list, tuple)) or not all(isinstance(d, str) for d in domains):
            _fail(
                f"host {name!r}: 'domains' must be the list of the names of ALL domains defined on it "
                f"(kvm_host_info's domains), got {kind(domains)}."
            )
        numbers = {
            k: _count(item.get(k), f"host {name!r}: {k}", required=rule == "resources" and k in RESOURCE_NUMBERS)
            for k in HOST_NUMBERS
        }
        hosts.append(
            _Host(
                name,
                True,
                frozenset(domains),
                numbers["cpus"] or 0,
                numbers["memory_free_mib"] or 0,
                numbers["vcpus_allocated"] or 0,
                drained,
            )
        )
    return hosts


@dataclass
class _Plan:
    """Where the clones are (existing) or go (new), and what that leaves on each host."""

    rule: str
    where: dict = field(default_factory=dict)  # clone name -> host name
    count: dict = field(default_factory=dict)  # host name -> clones of this fleet there
    memory: dict = field(default_factory=dict)  # host name -> MiB placed there by this run
    vcpus: dict = field(default_factory=dict)  # host name -> vCPUs placed there by this run
    groups: dict = field(default_factory=dict)  # group -> {host name: [member names]}

    def put(self, clone: _Clone, host: str, new: bool) -> None:
        self.where[clone.name] = host
        self.count[host] = self.count.get(host, 0) + 1
        if new:
            self.memory[host] = self.memory.get(host, 0) + clone.memory
            self.vcpus[host] = self.vcpus.get(host, 0) + clone.vcpus
        if clone.group is not None:
            self.groups.setdefault(clone.group, {}).setdefault(host, []).append(clone.name)

    def room(self, host: _Host) -> tuple:
        """(MiB, vCPUs) left on a host: its free memory and 4:1 vCPUs minus what is allocated and placed."""
        memory = host.memory_free_mib - self.memory.get(host.name, 0)
        vcpus = host.cpus * OVERCOMMIT - host.vcpus_allocated - self.vcpus.get(host.name, 0)
        return memory, vcpus

    def fits(self, clone: _Clone, host: _Host) -> bool:
        memory, vcpus = self.room(host)
        return clone.memory <= memory and clone.vcpus <= vcpus

    def members(self, group: str) -> str:
        """The placed members of a group with their hosts, for a message."""
        on = self.groups.get(group, {})
        return ", ".join(f"{m} ({h})" for h, names in on.items() for m in names)


def _existing(clones: list, reachable: list, plan: _Plan) -> dict:
    """Place every clone that exists on a reachable host there (sticky); errors for duplicates and moved pins."""
    existing = {}
    for clone in clones:
        on = [h.name for h in reachable if clone.name in h.domains]
        if len(on) > 1:
            _fail(
                f"clone {clone.name!r} exists on several hosts ({', '.join(on)}): remove all but one of them "
                f"(virtops.kvm.kvm_clone with state=absent there), then rerun."
            )
        if not on:
            continue
        if clone.pin is not None and clone.pin != on[0]:
            _fail(
                f"clone {clone.name!r} is pinned to host {clone.pin!r} but exists on host {on[0]!r}: "
                f"change its 'host' to {on[0]!r}, or move the clone (remove it from {on[0]!r}) and rerun."
            )
        plan.put(clone, on[0], new=False)
        existing[clone.name] = on[0]
    return existing


def _shared_groups(plan: _Plan) -> list:
    """Warnings for existing members of a group that share a host (they are never moved)."""
    warnings = []
    for group, on in plan.groups.items():
        for host, names in on.items():
            if len(names) > 1:
                warnings.append(
                    f"anti-affinity group {group!r}: clones {', '.join(names)} already exist together on host "
                    f"{host!r}; existing clones are never moved (move one by hand to keep the group apart)."
                )
    return warnings


def _choose(clone: _Clone, reachable: list, plan: _Plan) -> str:
    """The host for a new clone without a pin, by the rule, among the hosts its group leaves."""
    taken = plan.groups.get(clone.group, {}) if clone.group is not None else {}
    open_hosts = [h for h in reachable if not h.drained]
    if not open_hosts:
        _fail(
            f"no host is left for clone {clone.name!r}: every reachable host is drained "
            f"({', '.join(h.name for h in reachable)}). Undrain one, or add a host."
        )
    candidates = [h for h in open_hosts if h.name not in taken]
    if not candidates:
        _fail(
            f"no host is left for clone {clone.name!r} of anti-affinity group {clone.group!r}: its members "
            f"{plan.members(clone.group)} already hold every reachable host. Add a host, or take clones out of "
            f"the group."
        )
    if plan.rule == "spread":
        # min() keeps the first of equal hosts: ties go by the order of the hosts.
        return min(candidates, key=lambda h: plan.count.get(h.name, 0)).name
    fitting = [h for h in candidates if plan.fits(clone, h)]
    if not fitting:
        rooms = "; ".join(f"{h.name} {plan.room(h)[0]} MiB and {plan.room(h)[1]} vCPUs" for h in candidates)
        apart = [h.name for h in reachable if h.name in taken]
        if apart:
            rooms += f"; not {', '.join(apart)} (group {clone.group!r} is there already)"
        _fail(
            f"no host has room for clone {clone.name!r}: it needs {clone.memory} MiB of memory and {clone.vcpus} "
            f"vCPU(s); room left (free memory minus what this run placed, vCPUs up to {OVERCOMMIT} per CPU minus "
            f"those allocated and placed): {rooms}. Give the clone less, free a host or add one."
        )
    # max() keeps the first of equal hosts: ties go by the order of the hosts.
    return max(fitting, key=lambda h: plan.room(h)[0]).name


def _hold_reason(clone: _Clone, by_name: dict, reachable: list, unreachable: list, replace: bool) -> str | None:
    """Why a clone not found on a reachable host may not be placed now, or None when it may."""
    if clone.pin is not None and by_name[clone.pin].reachable and by_name[clone.pin].drained:
        return f"pinned to host {clone.pin}, which is drained (in maintenance); it is placed when the host is undrained"
    if clone.pin is not None and not by_name[clone.pin].reachable:
        return (
            f"pinned to host {clone.pin}, which is unreachable (its facts could not be read); it is placed when "
            f"that host answers or its pin changes"
        )
    if not reachable:
        return "no host is reachable (none of them could be read)"
    if unreachable and not replace:
        return (
            f"not found on a reachable host; it may exist on the unreachable host(s) {', '.join(unreachable)}, so it "
            f"is held until they answer (replace_unreachable=true places it on the reachable hosts)"
        )
    return None


def fleet_placement(clones, hosts, rule="spread", replace_unreachable=False, defaults=None) -> dict:
    """Which hypervisor each clone of the fleet is on or goes to: deterministic, sticky, anti-affinity kept."""
    if not isinstance(rule, str) or rule not in RULES:
        _fail(f"rule must be one of {', '.join(RULES)}, got {rule!r}.")
    if not isinstance(replace_unreachable, bool):
        _fail(f"replace_unreachable must be true or false, got {kind(replace_unreachable)}.")
    hosts = _hosts(hosts, rule)
    clones = _clones(clones, _defaults(defaults))
    by_name = {h.name: h for h in hosts}
    for clone in clones:
        if clone.pin is not None and clone.pin not in by_name:
            _fail(
                f"clone {clone.name!r} is pinned to host {clone.pin!r}, which is not one of the hosts "
                f"({', '.join(by_name) or 'none'}): fix its 'host' or add the host."
            )
    reachable = [h for h in hosts if h.reachable]
    unreachable = [h.name for h in hosts if not h.reachable]

    plan = _Plan(rule)
    existing = _existing(clones, reachable, plan)
    warnings = _shared_groups(plan)
    new, held = {}, {}
    # Pinned clones first, so the others keep out of their groups' hosts; each in the order of the clones.
    for pinned in (True, False):
        for clone in clones:
            if clone.name in existing or (clone.pin is not None) != pinned:
                continue
            reason = _hold_reason(clone, by_name, reachable, unreachable, replace_unreachable)
            if reason is not None:
                held[clone.name] = reason
                continue
            if pinned:
                there = plan.groups.get(clone.group, {}).get(clone.pin) if clone.group is not None else None
                if there:
                    _fail(
                        f"clone {clone.name!r} is pinned to host {clone.pin!r}, where {', '.join(there)} of its "
                        f"anti-affinity group {clone.group!r} already is: pin it to another host or take it out "
                        f"of the group."
                    )
                if rule == "resources" and not plan.fits(clone, by_name[clone.pin]):
                    memory, vcpus = plan.room(by_name[clone.pin])
                    warnings.append(
                        f"clone {clone.name!r} is pinned to host {clone.pin!r}, which has no room for it "
                        f"(it needs {clone.memory} MiB and {clone.vcpus} vCPUs, {memory} MiB and {vcpus} vCPUs "
                        f"are left); it is placed there as pinned."
                    )
                host = clone.pin
            else:
                host = _choose(clone, reachable, plan)
            plan.put(clone, host, new=True)
            new[clone.name] = host
    if new and unreachable and replace_unreachable:
        warnings.append(
            f"{len(new)} clone(s) placed while host(s) {', '.join(unreachable)} could not be read "
            f"(replace_unreachable=true): any of them that exists there is now defined twice."
        )

    order = [c.name for c in clones]
    shares = {h.name: [] for h in hosts}
    for clone in clones:
        if clone.name in plan.where:
            shares[plan.where[clone.name]].append(dict(clone.spec))
    return {
        "placement": {n: plan.where[n] for n in order if n in plan.where},
        "hosts": shares,
        "new": {n: new[n] for n in order if n in new},
        "existing": {n: existing[n] for n in order if n in existing},
        "held": [{"name": n, "reason": held[n]} for n in order if n in held],
        "unreachable": unreachable,
        "warnings": warnings,
    }


class FilterModule:
    """virtops.kvm's placement filter for a fleet over many hypervisors."""

    def filters(self) -> dict:
        return {"fleet_placement": fleet_placement}
