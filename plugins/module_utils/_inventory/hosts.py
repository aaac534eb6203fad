# Private to the virtops.kvm collection: not a public API, may change without notice.
"""From the URIs' records to inventory hosts: names, groups and variables (pure, no Ansible).

Names: a host is named after its domain. The same domain name under several URIs
(two hypervisors, or one daemon reached by two URIs) is a collision, settled by
``qualify_names``, always the same way for the same ``uris`` list:

* ``on_collision`` (default): every domain whose name is listed by more than one URI
  is named ``<domain>_<hypervisor>`` (hypervisor name made safe), the others keep
  their name; a warning names the collision;
* ``always``: every host is ``<domain>_<hypervisor>``;
* ``never``: the first URI in ``uris`` keeps the name, the others' domains of that
  name are left out with a warning.

A name that is still taken (a qualified name equal to another domain's name) is
left out with a warning too. Groups: ``hypervisor_<hypervisor>``,
``state_<state>`` and ``template_<template>`` (kvm_clone's provenance).
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._inventory.uris import safe

QUALIFY = ("on_collision", "always", "never")
_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The record keys that become host variables (with the prefix), in this order.
VARIABLES = (
    "name",
    "uuid",
    "state",
    "persistent",
    "autostart",
    "vcpus",
    "memory_mib",
    "disks",
    "macs",
    "interfaces",
    "title",
    "description",
    "provenance",
    "addresses",
    "address_source",
    "address_error",
)


def check_prefix(prefix) -> str:
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise InvalidInput(
            f"variable_prefix {prefix!r} cannot start a variable name.",
            hint="Use letters, digits and '_', not starting with a digit, for example virtops_.",
        )
    return prefix


def check_qualify(value) -> str:
    if value not in QUALIFY:
        raise InvalidInput(f"qualify_names {value!r} is not one of {', '.join(QUALIFY)}.")
    return value


def qualified(name: str, hypervisor: str) -> str:
    return f"{name}_{safe(hypervisor)}"


def _names(results: list[dict], qualify: str) -> tuple[list[tuple[dict, dict, str]], list[str]]:
    """[(result, record, host name)] in the order of ``uris`` then domain name, and the warnings."""
    listed_by: dict[str, list[str]] = {}
    for res in results:
        for rec in res["domains"]:
            listed_by.setdefault(rec["name"], []).append(res["uri"])
    warnings = []
    for name, uris in sorted(listed_by.items()):
        if len(uris) > 1 and qualify != "always":
            if qualify == "on_collision":
                what = "each is named <domain>_<hypervisor>"
            else:
                what = f"only the one of {uris[0]} is listed (qualify_names: never)"
            warnings.append(f"The domain name {name!r} is listed by {len(uris)} URIs ({', '.join(uris)}): {what}.")
    taken: dict[str, str] = {}
    out = []
    for res in results:
        for rec in res["domains"]:
            name = rec["name"]
            clash = len(listed_by[name]) > 1
            host = (
                qualified(name, res["hypervisor"])
                if qualify == "always" or (clash and qualify == "on_collision")
                else name
            )
            if host in taken:
                if not (qualify == "never" and clash):  # that case is already said above
                    warnings.append(
                        f"The domain {name!r} of {res['uri']} is left out: the host name {host!r} is "
                        f"already the domain of {taken[host]}."
                    )
                continue
            taken[host] = res["uri"]
            out.append((res, rec, host))
    return out, warnings


def build(results: list[dict], jumps: dict, prefix: str = "virtops_", qualify: str = "on_collision") -> dict:
    """``{hosts: {host: vars}, groups: {group: [hosts]}, warnings: [...]}`` from ``gather`` results.

    ``jumps`` maps a URI to its ProxyJump target; a URI with one gives its hosts
    ``ansible_ssh_common_args: -o ProxyJump=<target>`` (only when the plugin's
    ``proxy_jump`` is on does it pass any).
    """
    named, warnings = _names([r for r in results if r["ok"]], qualify)
    hosts: dict[str, dict] = {}
    groups: dict[str, list[str]] = {}
    for res, rec, host in named:
        hv = dict((f"{prefix}{key}", rec[key]) for key in VARIABLES)
        hv[f"{prefix}uri"] = res["uri"]
        hv[f"{prefix}hypervisor"] = res["hypervisor"]
        if rec["address"]:
            hv["ansible_host"] = rec["address"]
        target = jumps.get(res["uri"])
        if target:
            hv["ansible_ssh_common_args"] = f"-o ProxyJump={target}"
        hosts[host] = hv
        wanted = [f"hypervisor_{safe(res['hypervisor'])}", f"state_{safe(rec['state'])}"]
        template = (rec["provenance"] or {}).get("template")
        if template:
            wanted.append(f"template_{safe(template)}")
        for group in wanted:
            groups.setdefault(group, []).append(host)
    return dict(hosts=hosts, groups=groups, warnings=warnings)
