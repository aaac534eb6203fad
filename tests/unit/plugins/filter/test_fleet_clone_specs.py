"""virtops.kvm.fleet_clone_specs (plugins/filter/fleet_clone_specs.py): the fleet's clones as kvm_clone's ``clones``."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.fleet_clone_specs import FilterModule, fleet_clone_specs


def test_filter_module_exposes_the_filter():
    assert FilterModule().filters() == {"fleet_clone_specs": fleet_clone_specs}


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
