# Private to the virtops.kvm collection: not a public API, it may change at any time.
# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The input checks every filter of plugins/filter/ shares, so bad input fails with the same kind of message.

The filters run on the controller, which may lack lxml: pure Python, standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError


def kind(value) -> str:
    """How an error message names what it got instead."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, Mapping):
        return "a dict"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a value of type {type(value).__name__}"


def a_list(value, filt: str, what: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise AnsibleFilterError(f"{filt}: {what} must be a list, got {kind(value)}.")
    return list(value)


def named_dicts(value, filt: str, what: str) -> list:
    """A list of dicts that each have a non-empty string 'name'."""
    items = a_list(value, filt, what)
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise AnsibleFilterError(f"{filt}: {what}[{i}] must be a dict, got {kind(item)}.")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise AnsibleFilterError(f"{filt}: {what}[{i}] needs a non-empty string 'name', got {kind(name)}.")
    return items


def name_set(value, filt: str, what: str) -> set:
    """A list of domain names, as a set."""
    items = a_list(value, filt, what)
    for i, name in enumerate(items):
        if not isinstance(name, str):
            raise AnsibleFilterError(f"{filt}: {what}[{i}] must be a string (a domain name), got {kind(name)}.")
    return set(items)
