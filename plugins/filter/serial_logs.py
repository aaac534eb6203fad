# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where each domain's serial console is logged, as a filter.

Pure Python on the controller (standard library only); documented in plugins/filter/serial_logs.yml.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.plugin_utils._filter_input import a_list, kind, named_dicts


def serial_logs(domains) -> dict:
    """Domain name -> the file its first serial port writes (a file console, or a pty's log), when it has one."""
    filt = "serial_logs"
    logs = {}
    for d in named_dicts(domains, filt, "the domains"):
        consoles = d.get("consoles")
        if consoles is None:
            continue
        for i, console in enumerate(a_list(consoles, filt, f"the consoles of {d['name']!r}")):
            if not isinstance(console, Mapping):
                raise AnsibleFilterError(f"{filt}: console {i} of {d['name']!r} must be a dict, got {kind(console)}.")
            if console.get("device") != "serial":
                continue
            if console.get("type") == "file" and console.get("path"):
                logs[d["name"]] = console["path"]
                break
            if console.get("log"):
                logs[d["name"]] = console["log"]
                break
    return logs


class FilterModule:
    """virtops.kvm.serial_logs."""

    def filters(self) -> dict:
        return {"serial_logs": serial_logs}
