"""virtops.kvm.fleet_unlisted (plugins/filter/fleet_unlisted.py): the prune rule."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.fleet_unlisted import FilterModule, fleet_unlisted

MINE = {"created_by": "virtops.kvm", "template": "tpl", "mode": "overlay", "created_disks": []}


def dom(name: str, provenance=..., **extra) -> dict:
    """A domain as kvm_domain_info returns it (only the keys the filters read); made by kvm_clone from "tpl"."""
    return {"name": name, "provenance": dict(MINE) if provenance is ... else provenance, **extra}


def test_filter_module_exposes_the_filter():
    assert FilterModule().filters() == {"fleet_unlisted": fleet_unlisted}


def test_unlisted_returns_unlisted_clones_of_the_fleet_in_order():
    domains = [dom("web-3"), dom("web-1"), dom("web-2")]
    assert fleet_unlisted(domains, "web", ["web-1"], "tpl") == ["web-3", "web-2"]


def test_unlisted_never_returns_a_listed_clone():
    assert fleet_unlisted([dom("web-1"), dom("web-2")], "web", ["web-1", "web-2"], "tpl") == []


@pytest.mark.parametrize(
    "name",
    [
        "web2-x",  # another fleet whose name starts with this one's
        "web",  # the fleet name itself, no dash
        "webx",
        "xweb-1",
        "Web-1",  # case matters, as for libvirt names
        "other-1",
    ],
)
def test_unlisted_needs_the_name_prefix(name):
    assert fleet_unlisted([dom(name)], "web", [], "tpl") == []


def test_unlisted_prefix_of_a_dashed_fleet_name():
    domains = [dom("web-2-a"), dom("web-2"), dom("web-20-a")]
    assert fleet_unlisted(domains, "web-2", [], "tpl") == ["web-2-a"]
    assert fleet_unlisted(domains, "web", [], "tpl") == ["web-2-a", "web-2", "web-20-a"]


@pytest.mark.parametrize(
    "provenance",
    [
        None,  # made by hand
        {},  # a record without the mark
        {"created_by": None, "template": "tpl"},
        {"created_by": "someone.else", "template": "tpl"},
        {"template": "tpl"},
    ],
)
def test_unlisted_needs_the_collections_provenance(provenance):
    assert fleet_unlisted([dom("web-1", provenance)], "web", [], "tpl") == []


def test_unlisted_domain_without_provenance_key_is_not_ours():
    assert fleet_unlisted([{"name": "web-1"}], "web", [], "tpl") == []


def test_unlisted_needs_the_fleets_template_when_known():
    other = dict(MINE, template="other-tpl")
    no_template = {"created_by": "virtops.kvm"}
    domains = [dom("web-1"), dom("web-2", other), dom("web-3", no_template)]
    assert fleet_unlisted(domains, "web", [], "tpl") == ["web-1"]


@pytest.mark.parametrize("template_name", [None, ""])
def test_unlisted_unknown_template_checks_prefix_and_provenance_only(template_name):
    domains = [dom("web-1"), dom("web-2", dict(MINE, template="other-tpl")), dom("web-3", None), dom("app-1")]
    assert fleet_unlisted(domains, "web", [], template_name) == ["web-1", "web-2"]
    assert fleet_unlisted(domains, "web", []) == ["web-1", "web-2"]


def test_unlisted_empty_lists():
    assert fleet_unlisted([], "web", [], "tpl") == []
    assert fleet_unlisted([dom("web-1")], "web", [], "tpl") == ["web-1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, "web", [], "tpl"), "the domains must be a list, got null"),
        (([{"provenance": MINE}], "web", [], "tpl"), r"the domains\[0\] needs a non-empty string 'name', got null"),
        (([dom("web-1")], "", [], "tpl"), "fleet_name must be a non-empty string .*, got an empty string"),
        (([dom("web-1")], None, [], "tpl"), "fleet_name must be a non-empty string .*, got null"),
        (([dom("web-1")], ["web"], [], "tpl"), "fleet_name must be a non-empty string .*, got a list"),
        (([dom("web-1")], "web", None, "tpl"), "listed_names must be a list, got null"),
        (([dom("web-1")], "web", "web-1", "tpl"), "listed_names must be a list, got a string"),
        (([dom("web-1")], "web", [1], "tpl"), r"listed_names\[0\] must be a string"),
        (([dom("web-1")], "web", [], 3), "template_name must be a string or null, got a value of type int"),
        (([dom("web-1", "virtops.kvm")], "web", [], "tpl"), "the provenance of domain 'web-1' must be a dict or null"),
    ],
)
def test_unlisted_bad_input(args, message):
    with pytest.raises(AnsibleFilterError, match=f"^fleet_unlisted: {message}"):
        fleet_unlisted(*args)


def test_unlisted_empty_fleet_name_fails_even_with_no_domains():
    """An empty prefix would claim every clone the collection made: never guess."""
    with pytest.raises(AnsibleFilterError, match="fleet_name must be a non-empty string"):
        fleet_unlisted([], "", [], "tpl")
