"""The kvm_fleet role's rules as filters (plugins/filter/fleet.py): clone specs, prune, template name, serial logs."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.fleet import (
    FilterModule,
    domain_name_of,
    fleet_clone_specs,
    fleet_unlisted,
    serial_logs,
)

MINE = {"created_by": "virtops.kvm", "template": "tpl", "mode": "overlay", "created_disks": []}


def dom(name: str, provenance=..., **extra) -> dict:
    """A domain as kvm_domain_info returns it (only the keys the filters read); made by kvm_clone from "tpl"."""
    return {"name": name, "provenance": dict(MINE) if provenance is ... else provenance, **extra}


def test_filter_module_exposes_every_filter():
    assert FilterModule().filters() == {
        "fleet_clone_specs": fleet_clone_specs,
        "fleet_unlisted": fleet_unlisted,
        "domain_name_of": domain_name_of,
        "serial_logs": serial_logs,
    }


# fleet_clone_specs ---------------------------------------------------------------------------------------------


def test_clone_specs_new_clone_gets_creation_overrides():
    clones = [{"name": "f-a", "state": "running", "memory": 512, "vcpus": 2, "autostart": True}]
    assert fleet_clone_specs(clones, []) == [{"name": "f-a", "memory": 512, "vcpus": 2, "autostart": True}]


def test_clone_specs_existing_clone_gets_identity_only():
    clones = [
        {"name": "f-a", "memory": 512, "vcpus": 2, "autostart": False, "macs": ["52:54:00:aa:bb:cc"], "uuid": "u1"}
    ]
    assert fleet_clone_specs(clones, ["f-a"]) == [{"name": "f-a", "macs": ["52:54:00:aa:bb:cc"], "uuid": "u1"}]


def test_clone_specs_keep_order_and_mix_new_and_existing():
    clones = [{"name": "f-b", "memory": 256}, {"name": "f-a", "memory": 512}, {"name": "f-c"}]
    assert fleet_clone_specs(clones, ["f-a", "other"]) == [
        {"name": "f-b", "memory": 256},
        {"name": "f-a"},
        {"name": "f-c"},
    ]


def test_clone_specs_drop_null_values_but_keep_false_and_empty():
    clones = [{"name": "f-a", "memory": None, "vcpus": None, "macs": None, "uuid": None, "autostart": False}]
    assert fleet_clone_specs(clones, []) == [{"name": "f-a", "autostart": False}]
    assert fleet_clone_specs([{"name": "f-a", "macs": []}], ["f-a"]) == [{"name": "f-a", "macs": []}]


def test_clone_specs_never_pass_other_keys():
    assert fleet_clone_specs([{"name": "f-a", "state": "shutdown", "bogus": 1}], []) == [{"name": "f-a"}]


def test_clone_specs_empty():
    assert fleet_clone_specs([], []) == []
    assert fleet_clone_specs((), ("f-a",)) == []


@pytest.mark.parametrize(
    ("clones", "existing", "message"),
    [
        (None, [], "the clones must be a list, got null"),
        ({"name": "f-a"}, [], "the clones must be a list, got a dict"),
        ("f-a", [], "the clones must be a list, got a string"),
        (["f-a"], [], r"the clones\[0\] must be a dict, got a string"),
        ([{"memory": 1}], [], r"the clones\[0\] needs a non-empty string 'name', got null"),
        ([{"name": ""}], [], r"the clones\[0\] needs a non-empty string 'name', got an empty string"),
        ([{"name": 7}], [], r"the clones\[0\] needs a non-empty string 'name', got a value of type int"),
        ([{"name": "f-a"}], None, "existing_names must be a list, got null"),
        ([{"name": "f-a"}], [{"name": "f-a"}], r"existing_names\[0\] must be a string \(a domain name\), got a dict"),
    ],
)
def test_clone_specs_bad_input(clones, existing, message):
    with pytest.raises(AnsibleFilterError, match=f"^fleet_clone_specs: {message}"):
        fleet_clone_specs(clones, existing)


# fleet_unlisted (the prune rule) -------------------------------------------------------------------------------


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


# domain_name_of ------------------------------------------------------------------------------------------------

TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<!-- virsh dumpxml tpl -->
<domain type='kvm' xmlns:vt="https://virtops.example/kvm/1">
  <description>copy of <name>not-this</name></description>
  <metadata><vt:clone template="grand"><vt:name>nor-this</vt:name></vt:clone></metadata>
  <name>
    tpl
  </name>
  <devices/>
</domain>
"""


def test_name_of_reads_the_roots_own_name():
    assert domain_name_of(TEMPLATE) == "tpl"


def test_name_of_plain_and_bytes():
    assert domain_name_of("<domain><name>centos7</name></domain>") == "centos7"
    assert domain_name_of("<domain><name>été</name></domain>".encode()) == "été"


def test_name_of_name_after_other_elements():
    assert domain_name_of("<domain><uuid>u</uuid><title>T</title><name>n1</name></domain>") == "n1"


@pytest.mark.parametrize("text", [None, "", "  \n "])
def test_name_of_no_xml_is_empty(text):
    assert domain_name_of(text) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<domain><name>x</name>", "the input is not well-formed XML: "),
        ("name: x", "the input is not well-formed XML: "),
        ("<network><name>default</name></network>", r"the XML's root element is <network>, expected <domain>"),
        ("<domain type='kvm'><uuid>u</uuid></domain>", "the domain XML has no <name>"),
        ("<domain><name>  </name></domain>", "the domain XML has no <name>"),
        ("<domain><name/></domain>", "the domain XML has no <name>"),
        ("<domain><devices><name>x</name></devices></domain>", "the domain XML has no <name>"),
        (["<domain/>"], "the input must be domain XML text, got a list"),
        (42, "the input must be domain XML text, got a value of type int"),
    ],
)
def test_name_of_bad_input(text, message):
    with pytest.raises(AnsibleFilterError, match=f"^domain_name_of: {message}"):
        domain_name_of(text)


# serial_logs ---------------------------------------------------------------------------------------------------


def console(device="serial", type_="file", path="/img/x.log") -> dict:
    return {"device": device, "type": type_, "path": path, "target_type": "isa-serial", "port": "0"}


def test_serial_logs_first_file_serial_per_domain():
    domains = [
        dom(
            "a",
            consoles=[console(type_="pty", path="/dev/pts/3"), console(path="/img/a.log"), console(path="/img/a2.log")],
        ),
        dom("b", consoles=[console(device="console", path="/img/b-console.log"), console(path="/img/b.log")]),
    ]
    assert serial_logs(domains) == {"a": "/img/a.log", "b": "/img/b.log"}


@pytest.mark.parametrize(
    "consoles",
    [
        None,
        [],
        [console(type_="pty", path="/dev/pts/1")],
        [console(device="console", path="/img/c.log")],
        [console(path=None)],
        [console(path="")],
        [{"device": "serial", "type": "file"}],
    ],
)
def test_serial_logs_domains_without_a_file_serial_are_left_out(consoles):
    assert serial_logs([dom("a", consoles=consoles)]) == {}


def test_serial_logs_without_consoles_key_and_empty():
    assert serial_logs([{"name": "a"}]) == {}
    assert serial_logs([]) == {}


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        (None, "the domains must be a list, got null"),
        ({"name": "a"}, "the domains must be a list, got a dict"),
        ([None], r"the domains\[0\] must be a dict, got null"),
        ([{"consoles": []}], r"the domains\[0\] needs a non-empty string 'name', got null"),
        ([dom("a", consoles="pty")], "the consoles of 'a' must be a list, got a string"),
        ([dom("a", consoles=["/img/a.log"])], "console 0 of 'a' must be a dict, got a string"),
    ],
)
def test_serial_logs_bad_input(domains, message):
    with pytest.raises(AnsibleFilterError, match=f"^serial_logs: {message}"):
        serial_logs(domains)
