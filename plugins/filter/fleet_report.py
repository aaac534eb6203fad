# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kvm_fleet role's report after a placement over many hypervisors, as filters.

fleet_report: where the clones are and what is missing where (the role's kvm_fleet_report fact);
fleet_report_lines: the same as the lines the role shows. Pure Python on the controller; documented in
plugins/filter/fleet_report.yml and plugins/filter/fleet_report_lines.yml.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import a_list, kind

# What fleet_placement returns, as the report reads it.
RESULT_KEYS = {
    "placement": Mapping,
    "hosts": Mapping,
    "new": Mapping,
    "existing": Mapping,
    "held": list,
    "unreachable": list,
    "warnings": list,
}
REPORT_KEYS = {
    "placement": Mapping,
    "new": Mapping,
    "missing": Mapping,
    "unconverged": Mapping,
    "held": list,
    "warnings": list,
}


def _fields(value, keys: dict, filt: str, what: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise AnsibleFilterError(f"{filt}: the input must be {what} (a dict), got {kind(value)}.")
    for key, typ in keys.items():
        got = value.get(key)
        if not isinstance(got, (list, tuple) if typ is list else typ):
            need = "a list" if typ is list else "a dict"
            raise AnsibleFilterError(f"{filt}: {key!r} of {what} must be {need}, got {kind(got)}.")
    return value


def _share_names(share, filt: str, host: str) -> list:
    names = []
    for i, clone in enumerate(a_list(share, filt, f"the share of host {host!r}")):
        if not isinstance(clone, Mapping) or not isinstance(clone.get("name"), str):
            raise AnsibleFilterError(f"{filt}: the share of host {host!r}[{i}] must be a clone with a 'name'.")
        names.append(clone["name"])
    return names


def fleet_report(result, hypervisors, play_hosts) -> dict:
    """The placement, and per hypervisor that left the play: the clones it should have made (missing) or holds."""
    filt = "fleet_report"
    p = _fields(result, RESULT_KEYS, filt, "the placement (what fleet_placement returned)")
    hypervisors = a_list(hypervisors, filt, "hypervisors")
    in_play = a_list(play_hosts, filt, "play_hosts")
    missing, unconverged = {}, {}
    for host, share in p["hosts"].items():
        if not share or host in in_play:
            continue
        names = _share_names(share, filt, host)
        if [n for n in names if n not in p["existing"]]:
            missing[host] = [n for n in names if n not in p["existing"]]
        if [n for n in names if n in p["existing"]]:
            unconverged[host] = [n for n in names if n in p["existing"]]
    return {
        "placement": p["placement"],
        "new": p["new"],
        "existing": p["existing"],
        "held": p["held"],
        "unreachable": p["unreachable"],
        "failed": [h for h in hypervisors if h not in in_play and h not in p["unreachable"]],
        "missing": missing,
        "unconverged": unconverged,
        "warnings": p["warnings"],
    }


def _join(names, filt: str, what: str) -> str:
    items = a_list(names, filt, what)
    return ", ".join(str(n) for n in items)


def fleet_report_lines(report, hypervisors) -> list:
    """The report as lines to show: clones per hypervisor, then what is missing, not converged, held, warned."""
    filt = "fleet_report_lines"
    r = _fields(report, REPORT_KEYS, filt, "the report (what fleet_report returned)")
    lines = []
    for host in a_list(hypervisors, filt, "hypervisors"):
        here = [name for name, where in r["placement"].items() if where == host]
        new = f" ({len([n for n in here if n in r['new']])} new)" if here else ""
        lines.append(f"{host}: {len(here)} clone(s){new}")
    for host, names in r["missing"].items():
        what = f"the clones missing on {host!r}"
        lines.append(
            f"MISSING on {host} (it failed during the play; rerun when it is back): {_join(names, filt, what)}"
        )
    for host, names in r["unconverged"].items():
        what = f"the clones not converged on {host!r}"
        lines.append(f"NOT CONVERGED on {host} (it failed during the play): {_join(names, filt, what)}")
    for i, item in enumerate(r["held"]):
        if not isinstance(item, Mapping):
            raise AnsibleFilterError(f"{filt}: held[{i}] must be a dict (name, reason), got {kind(item)}.")
        lines.append(f"HELD {item.get('name')}: {item.get('reason')}")
    lines.extend(f"WARNING {w}" for w in r["warnings"])
    return lines


class FilterModule:
    """virtops.kvm.fleet_report and virtops.kvm.fleet_report_lines."""

    def filters(self) -> dict:
        return {"fleet_report": fleet_report, "fleet_report_lines": fleet_report_lines}
