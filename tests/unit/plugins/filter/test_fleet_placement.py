"""virtops.kvm.fleet_placement (plugins/filter/fleet_placement.py): a fleet placed over many hypervisors.

Deterministic (ties by host order), sticky (existing clones stay), pins, anti-affinity, unreachable hosts, the
resources rule, input checks; then the same filter through real Ansible and its documentation.
"""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.fleet_placement import FilterModule, fleet_placement

ROOT = Path(__file__).resolve().parents[4]


def hv(name: str, domains=(), cpus=8, free=16384, vcpus=0, **extra) -> dict:
    """A reachable hypervisor as the kvm_fleet role builds it from kvm_host_info."""
    return {
        "name": name,
        "reachable": True,
        "domains": list(domains),
        "cpus": cpus,
        "memory_total_mib": 32768,
        "memory_free_mib": free,
        "vcpus_allocated": vcpus,
        "memory_allocated_mib": 0,
        **extra,
    }


def down(name: str) -> dict:
    return {"name": name, "reachable": False}


def names(n: int, prefix: str = "f") -> list:
    return [f"{prefix}-{i:03d}" for i in range(n)]


def per_host(result: dict) -> dict:
    return {h: [s["name"] for s in share] for h, share in result["hosts"].items()}


def fails(match: str, *args, **kwargs) -> str:
    with pytest.raises(AnsibleFilterError, match=match) as err:
        fleet_placement(*args, **kwargs)
    return str(err.value)


def test_filter_module_exposes_the_filter():
    assert FilterModule().filters() == {"fleet_placement": fleet_placement}


# spread ----------------------------------------------------------------------------------------------------------


def test_spread_round_robin_with_ties_by_host_order():
    out = fleet_placement(["a", "b", "c", "d"], [hv("h1"), hv("h2"), hv("h3")])
    assert out["placement"] == {"a": "h1", "b": "h2", "c": "h3", "d": "h1"}
    assert out["new"] == out["placement"] and out["existing"] == {}
    assert per_host(out) == {"h1": ["a", "d"], "h2": ["b"], "h3": ["c"]}
    assert out["held"] == [] and out["unreachable"] == [] and out["warnings"] == []


def test_host_order_decides_ties():
    hosts = [hv("h1"), hv("h2"), hv("h3")]
    assert fleet_placement(["a"], hosts)["placement"] == {"a": "h1"}
    assert fleet_placement(["a"], hosts[::-1])["placement"] == {"a": "h3"}
    assert list(fleet_placement(["a"], hosts[::-1])["hosts"]) == ["h3", "h2", "h1"]


def test_spread_counts_only_this_fleets_clones():
    # h1 holds many other domains and one clone of the fleet; h2 holds nothing
    hosts = [hv("h1", ["x1", "x2", "x3", "x4", "a"]), hv("h2")]
    out = fleet_placement(["a", "b", "c"], hosts)
    assert out["existing"] == {"a": "h1"}
    assert out["new"] == {"b": "h2", "c": "h1"}


def test_spread_fills_the_emptiest_host_first_and_never_moves_existing():
    hosts = [hv("h1", ["a", "b", "c"]), hv("h2"), hv("h3")]
    out = fleet_placement(["a", "b", "c", "d", "e", "f", "g"], hosts)
    assert out["existing"] == {"a": "h1", "b": "h1", "c": "h1"}
    assert out["new"] == {"d": "h2", "e": "h3", "f": "h2", "g": "h3"}
    assert per_host(out) == {"h1": ["a", "b", "c"], "h2": ["d", "f"], "h3": ["e", "g"]}


def test_300_clones_over_3_hosts_are_100_each():
    clones = names(300)
    out = fleet_placement(clones, [hv("h1"), hv("h2"), hv("h3")])
    assert {h: len(share) for h, share in out["hosts"].items()} == {"h1": 100, "h2": 100, "h3": 100}
    assert list(out["placement"]) == clones and len(out["new"]) == 300
    # each share keeps the order of the clones
    assert per_host(out)["h2"] == clones[1::3]


# determinism and stickiness --------------------------------------------------------------------------------------


def test_same_input_same_output_and_input_untouched():
    clones = [{"name": n, "group": f"g{i // 4}", "memory": 256, "state": "running"} for i, n in enumerate(names(40))]
    hosts = [hv("h1", ["f-003"]), hv("h2"), hv("h3", ["other"]), hv("h4")]
    before = copy.deepcopy((clones, hosts))
    first = fleet_placement(clones, hosts, rule="resources")
    assert fleet_placement(copy.deepcopy(clones), copy.deepcopy(hosts), rule="resources") == first
    assert (clones, hosts) == before
    assert json.loads(json.dumps(first)) == first  # plain data: Ansible can keep it as a fact


def test_rerun_with_the_output_as_existing_domains_places_nothing_new():
    clones = [{"name": n, "group": "g" if i < 3 else None} for i, n in enumerate(names(30))]
    hosts = [hv("h1"), hv("h2"), hv("h3")]
    first = fleet_placement(clones, hosts)
    rerun_hosts = [hv(h, ["unrelated"] + per_host(first)[h]) for h in ("h1", "h2", "h3")]
    again = fleet_placement(clones, rerun_hosts)
    assert again["new"] == {}
    assert again["existing"] == again["placement"] == first["placement"]
    assert again["hosts"] == first["hosts"]


def test_adding_clones_places_only_the_new_ones():
    hosts = [hv("h1"), hv("h2"), hv("h3")]
    first = fleet_placement(names(6), hosts)
    grown = names(9)
    later = fleet_placement(grown, [hv(h, per_host(first)[h]) for h in ("h1", "h2", "h3")])
    assert later["existing"] == first["placement"]
    assert later["new"] == {"f-006": "h1", "f-007": "h2", "f-008": "h3"}
    # reversing the host order changes no existing clone, only where the new ones go
    later_rev = fleet_placement(grown, [hv(h, per_host(first)[h]) for h in ("h3", "h2", "h1")])
    assert later_rev["existing"] == first["placement"]
    assert later_rev["new"] == {"f-006": "h3", "f-007": "h2", "f-008": "h1"}


def test_removed_clones_leave_the_others_in_place():
    first = fleet_placement(names(6), [hv("h1"), hv("h2")])
    kept = names(6)[::2]
    later = fleet_placement(kept, [hv(h, per_host(first)[h]) for h in ("h1", "h2")])
    assert later["new"] == {} and later["existing"] == {n: first["placement"][n] for n in kept}


# clone specs -----------------------------------------------------------------------------------------------------


def test_shares_pass_other_keys_through_without_host_and_group():
    clones = [
        "plain",
        {"name": "full", "host": "h2", "group": "g", "memory": 512, "vcpus": 2, "macs": ["52:54:00:00:00:01"]},
        {"name": "nulls", "host": None, "group": None, "state": None, "cloud_init": {"user": "x"}},
    ]
    out = fleet_placement(clones, [hv("h1"), hv("h2"), down("h3")], replace_unreachable=True)
    assert out["hosts"] == {
        "h1": [{"name": "plain"}, {"name": "nulls", "state": None, "cloud_init": {"user": "x"}}],
        "h2": [{"name": "full", "memory": 512, "vcpus": 2, "macs": ["52:54:00:00:00:01"]}],
        "h3": [],
    }
    assert clones[1]["host"] == "h2"  # the input clone keeps its keys


def test_every_host_gets_a_share_even_when_empty():
    out = fleet_placement([], [hv("h1"), down("h2")])
    assert out == {
        "placement": {},
        "hosts": {"h1": [], "h2": []},
        "new": {},
        "existing": {},
        "held": [],
        "unreachable": ["h2"],
        "warnings": [],
    }


# existing clones and pins ----------------------------------------------------------------------------------------


def test_a_clone_on_two_hosts_is_an_error_naming_them():
    msg = fails("exists on several hosts", ["a", "b"], [hv("h1", ["b"]), hv("h2"), hv("h3", ["b"])])
    assert "'b'" in msg and "h1, h3" in msg


def test_pinned_clones_go_to_their_pin_whatever_the_rule():
    clones = [{"name": "a", "host": "h2"}, {"name": "b", "host": "h2"}, {"name": "c", "host": "h2"}, "d"]
    out = fleet_placement(clones, [hv("h1"), hv("h2")])
    assert out["new"] == {"a": "h2", "b": "h2", "c": "h2", "d": "h1"}
    tight = fleet_placement(clones[:1], [hv("h1", free=8000), hv("h2", free=10)], rule="resources")
    assert tight["new"] == {"a": "h2"} and tight["warnings"] == []  # needs 0 MiB: fits anywhere


def test_pinned_clones_are_counted_before_the_others():
    # a comes first in the list but b's pin on h1 is known before a is spread
    out = fleet_placement(["a", {"name": "b", "host": "h1"}], [hv("h1"), hv("h2")])
    assert out["new"] == {"a": "h2", "b": "h1"}
    assert list(out["new"]) == ["a", "b"]  # reported in the order of the clones


def test_a_pin_to_an_unknown_host_is_an_error():
    msg = fails("pinned to host 'nope', which is not one of the hosts", [{"name": "a", "host": "nope"}], [hv("h1")])
    assert "h1" in msg and "fix its 'host'" in msg


def test_an_existing_clone_pinned_elsewhere_is_an_error_naming_both_hosts():
    msg = fails(
        "pinned to host 'h2' but exists on host 'h1'", [{"name": "a", "host": "h2"}], [hv("h1", ["a"]), hv("h2")]
    )
    assert "change its 'host' to 'h1'" in msg and "move the clone" in msg
    # pinned to an unreachable host while it exists on a reachable one: the same error, not a hold
    fails("pinned to host 'h2' but exists on host 'h1'", [{"name": "a", "host": "h2"}], [hv("h1", ["a"]), down("h2")])


def test_an_existing_clone_on_its_pin_stays():
    out = fleet_placement([{"name": "a", "host": "h2"}], [hv("h1"), hv("h2", ["a"])])
    assert out["existing"] == {"a": "h2"} and out["new"] == {}


# anti-affinity ---------------------------------------------------------------------------------------------------


def test_three_members_of_a_group_land_on_three_hosts():
    clones = [{"name": n, "group": "db"} for n in ("db-1", "db-2", "db-3")] + ["w-1", "w-2"]
    # h1 starts with no clone of the fleet, so without the group db-1 and db-2 would both go there
    hosts = [hv("h1"), hv("h2", ["w-1"]), hv("h3", ["w-2"])]
    out = fleet_placement(clones, hosts)
    assert sorted(out["new"].values()) == ["h1", "h2", "h3"]
    assert out["new"] == {"db-1": "h1", "db-2": "h2", "db-3": "h3"}
    resources = fleet_placement(clones, [hv("h1", free=90000), hv("h2", free=10), hv("h3", free=20)], rule="resources")
    assert resources["new"]["db-1"] == "h1" and resources["new"]["db-2"] == "h3" and resources["new"]["db-3"] == "h2"


def test_a_group_skips_the_hosts_its_members_hold_even_against_the_rule():
    clones = [{"name": "a", "group": "g"}, {"name": "b", "group": "g"}, "c"]
    out = fleet_placement(clones, [hv("h1", ["a", "x"]), hv("h2", ["c"])])
    # spread would pick h1 for b (1 clone each), the group sends it to h2
    assert out["new"] == {"b": "h2"}


def test_a_fourth_member_over_three_hosts_is_an_error_naming_group_and_members():
    clones = [{"name": f"m{i}", "group": "quorum"} for i in range(4)]
    msg = fails(
        "no host is left for clone 'm3' of anti-affinity group 'quorum'", clones, [hv("h1"), hv("h2"), hv("h3")]
    )
    assert "m0 (h1), m1 (h2), m2 (h3)" in msg


def test_a_pin_onto_a_member_of_its_group_is_an_error():
    clones = [{"name": "a", "group": "g"}, {"name": "b", "group": "g", "host": "h1"}]
    msg = fails("pinned to host 'h1', where a of its anti-affinity group 'g'", clones, [hv("h1", ["a"]), hv("h2")])
    assert "pin it to another host or take it out of the group" in msg
    two_pins = [{"name": "a", "group": "g", "host": "h2"}, {"name": "b", "group": "g", "host": "h2"}]
    fails("pinned to host 'h2', where a of its anti-affinity group 'g'", two_pins, [hv("h1"), hv("h2")])


def test_existing_members_sharing_a_host_are_a_warning_not_a_failure():
    clones = [{"name": n, "group": "g"} for n in ("a", "b", "c")]
    out = fleet_placement(clones, [hv("h1", ["a", "b"]), hv("h2")])
    assert out["existing"] == {"a": "h1", "b": "h1"} and out["new"] == {"c": "h2"}
    assert len(out["warnings"]) == 1
    assert "'g'" in out["warnings"][0] and "a, b" in out["warnings"][0] and "'h1'" in out["warnings"][0]


# unreachable hosts -----------------------------------------------------------------------------------------------


def test_unreachable_host_holds_every_clone_not_found_by_default():
    clones = ["a", "b", {"name": "c", "host": "h1"}, {"name": "d", "host": "h3"}]
    out = fleet_placement(clones, [hv("h1", ["a"]), hv("h2"), down("h3")])
    assert out["existing"] == {"a": "h1"} and out["new"] == {}
    assert out["placement"] == {"a": "h1"}
    assert [h["name"] for h in out["held"]] == ["b", "c", "d"]
    assert "may exist on the unreachable host(s) h3" in out["held"][0]["reason"]
    assert "replace_unreachable=true" in out["held"][0]["reason"]
    assert "pinned to host h3, which is unreachable" in out["held"][2]["reason"]
    assert out["unreachable"] == ["h3"]
    assert per_host(out) == {"h1": ["a"], "h2": [], "h3": []}


def test_replace_unreachable_places_among_reachable_hosts_but_keeps_pins_held():
    clones = ["a", "b", "c", {"name": "d", "host": "h3"}]
    out = fleet_placement(clones, [hv("h1", ["a"]), down("h3"), hv("h2")], replace_unreachable=True)
    assert out["existing"] == {"a": "h1"} and out["new"] == {"b": "h2", "c": "h1"}
    assert out["held"] == [{"name": "d", "reason": out["held"][0]["reason"]}]
    assert "pinned to host h3" in out["held"][0]["reason"]
    assert len(out["warnings"]) == 1 and "h3" in out["warnings"][0] and "defined twice" in out["warnings"][0]
    assert list(out["hosts"]) == ["h1", "h3", "h2"] and out["hosts"]["h3"] == []


def test_no_reachable_host_holds_every_clone():
    for replace in (False, True):
        out = fleet_placement(["a", {"name": "b", "host": "h2"}], [down("h1"), down("h2")], replace_unreachable=replace)
        assert out["placement"] == {} and [h["name"] for h in out["held"]] == ["a", "b"]
        assert out["held"][0]["reason"].startswith("no host is reachable")
    empty = fleet_placement(["a"], [])
    assert empty["held"] == [{"name": "a", "reason": empty["held"][0]["reason"]}] and empty["hosts"] == {}


def test_unreachable_host_data_beyond_its_name_is_ignored():
    out = fleet_placement(["a"], [{"name": "h1", "reachable": False, "domains": "garbage", "cpus": -1}, hv("h2")])
    assert out["held"][0]["name"] == "a"


# resources -------------------------------------------------------------------------------------------------------


def test_resources_picks_most_memory_left_counting_what_it_placed():
    clones = [{"name": "a", "memory": 3000}, {"name": "b", "memory": 3000}, {"name": "c", "memory": 1000}]
    hosts = [hv("h1", free=5000), hv("h2", free=6000), hv("h3", free=1000)]
    out = fleet_placement(clones, hosts, rule="resources")
    # a -> h2 (6000), then h1 5000 vs h2 3000 -> b h1, then h2 3000 vs h1 2000 -> c h2
    assert out["new"] == {"a": "h2", "b": "h1", "c": "h2"}


def test_resources_ties_by_host_order_and_defaults_fill_the_need():
    hosts = [hv("h1", free=4000), hv("h2", free=4000)]
    assert fleet_placement(["a", "b"], hosts, rule="resources", defaults={"memory": 1000})["new"] == {
        "a": "h1",
        "b": "h2",
    }
    # without a known need every clone weighs 0 MiB: the first host keeps the most memory
    assert fleet_placement(["a", "b"], hosts, rule="resources")["new"] == {"a": "h1", "b": "h1"}
    # the clone's own memory wins over the default
    out = fleet_placement([{"name": "a", "memory": 4000}, "b"], hosts, rule="resources", defaults={"memory": 1})
    assert out["new"] == {"a": "h1", "b": "h2"}


def test_resources_vcpus_within_four_to_one_overcommit():
    # h1 has the memory but 2 CPUs * 4 - 7 allocated = 1 vCPU of room; h2 has 4 * 4 - 0
    hosts = [hv("h1", cpus=2, vcpus=7, free=90000), hv("h2", cpus=4, free=1000)]
    out = fleet_placement([{"name": "a", "vcpus": 1}, {"name": "b", "vcpus": 1}], hosts, rule="resources")
    assert out["new"] == {"a": "h1", "b": "h2"}  # a takes h1's last vCPU
    out = fleet_placement(["a"], hosts, rule="resources", defaults={"vcpus": 2})
    assert out["new"] == {"a": "h2"}


def test_resources_no_host_fits_names_clone_need_and_each_hosts_room():
    hosts = [hv("h1", free=1000, cpus=1), hv("h2", free=1500, cpus=1, vcpus=2)]
    msg = fails(
        "no host has room for clone 'big'", [{"name": "big", "memory": 2048, "vcpus": 1}], hosts, rule="resources"
    )
    assert "needs 2048 MiB of memory and 1 vCPU(s)" in msg
    assert "h1 1000 MiB and 4 vCPUs" in msg and "h2 1500 MiB and 2 vCPUs" in msg
    # room already taken by this run counts, and a group's excluded hosts are named
    clones = [{"name": "a", "memory": 900, "group": "g"}, {"name": "b", "memory": 900, "group": "g"}]
    assert fleet_placement(clones, hosts, rule="resources")["new"] == {"a": "h2", "b": "h1"}
    msg = fails("no host has room for clone 'b'", clones, [hv("h1", free=1000), hv("h2", free=500)], rule="resources")
    assert "h2 500 MiB" in msg and "not h1 (group 'g' is there already)" in msg


def test_resources_a_pin_without_room_is_placed_with_a_warning():
    out = fleet_placement([{"name": "a", "host": "h1", "memory": 4096}], [hv("h1", free=100)], rule="resources")
    assert out["new"] == {"a": "h1"}
    assert len(out["warnings"]) == 1 and "no room" in out["warnings"][0] and "4096 MiB" in out["warnings"][0]


def test_resources_needs_the_host_numbers_spread_does_not():
    bare = {"name": "h1", "reachable": True, "domains": []}
    assert fleet_placement(["a"], [bare])["new"] == {"a": "h1"}
    fails(r"host 'h1': cpus is missing", ["a"], [bare], rule="resources")


# invalid input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clones", "hosts", "kwargs", "match"),
    [
        ("a", [hv("h1")], {}, r"the clones \(the filter's input\) must be a list, got a string"),
        ({"name": "a"}, [hv("h1")], {}, "must be a list, got a dict"),
        ([{"memory": 1}], [hv("h1")], {}, r"clones\[0\] needs a non-empty string 'name', got null"),
        ([""], [hv("h1")], {}, r"clones\[0\] needs a non-empty string 'name', got an empty string"),
        ([3], [hv("h1")], {}, r"clones\[0\] must be a clone name or a dict with a 'name', got a value of type int"),
        (["a", {"name": "a"}], [hv("h1")], {}, r"clone 'a' is listed twice \(clones\[0\] and clones\[1\]\)"),
        ([{"name": "a", "memory": "512M"}], [hv("h1")], {}, r"memory \(MiB\) of clone 'a' .* got the string '512M'"),
        ([{"name": "a", "memory": 1.5}], [hv("h1")], {}, r"memory \(MiB\) of clone 'a' must be a whole number"),
        ([{"name": "a", "memory": "-3"}], [hv("h1")], {}, r"memory \(MiB\) of clone 'a' must not be negative"),
        ([{"name": "a", "vcpus": True}], [hv("h1")], {}, "vcpus of clone 'a' must be a whole number"),
        ([{"name": "a", "memory": -1}], [hv("h1")], {}, "memory .* must not be negative, got -1"),
        ([{"name": "a", "host": ""}], [hv("h1")], {}, r"host \(pin\) of clone 'a' must be a non-empty string"),
        ([{"name": "a", "group": 7}], [hv("h1")], {}, "anti-affinity group of clone 'a' must be a non-empty string"),
        (["a"], "h1", {}, "hosts must be a list, got a string"),
        (["a"], ["h1"], {}, r"hosts\[0\] must be a dict"),
        (["a"], [{"reachable": True}], {}, r"hosts\[0\] needs a non-empty string 'name'"),
        (["a"], [hv("h1"), down("h1")], {}, "host 'h1' is listed twice"),
        (["a"], [{"name": "h1", "domains": []}], {}, "host 'h1': 'reachable' must be true or false, got null"),
        (["a"], [{"name": "h1", "reachable": "yes"}], {}, "'reachable' must be true or false, got a string"),
        (
            ["a"],
            [{**hv("h1"), "domains": "a"}],
            {},
            "host 'h1': 'domains' must be the list of the names of ALL domains",
        ),
        (["a"], [hv("h1", domains=[1])], {}, "'domains' must be the list"),
        (["a"], [hv("h1", free=-5)], {}, "host 'h1': memory_free_mib must not be negative, got -5"),
        (["a"], [hv("h1", cpus=2.5)], {}, "host 'h1': cpus must be a whole number >= 0, got a value of type float"),
        (["a"], [hv("h1")], {"rule": "random"}, "rule must be one of spread, resources, got 'random'"),
        (["a"], [hv("h1")], {"rule": None}, "rule must be one of spread, resources, got None"),
        (["a"], [hv("h1")], {"replace_unreachable": "yes"}, "replace_unreachable must be true or false"),
        (["a"], [hv("h1")], {"defaults": []}, r"defaults must be a dict \(memory, vcpus\), got a list"),
        (["a"], [hv("h1")], {"defaults": {"mem": 1}}, "defaults takes only memory, vcpus, got mem: remove them"),
        (["a"], [hv("h1")], {"defaults": {"memory": -1}}, "defaults.memory must not be negative"),
    ],
)
def test_invalid_input_says_what_to_fix(clones, hosts, kwargs, match):
    msg = fails(match, clones, hosts, **kwargs)
    assert msg.startswith("fleet_placement: ")


def test_numbers_as_decimal_text_count_and_pass_through_untouched():
    # before ansible-core 2.19, "{{ mem }}" inside a clone's dict arrives as the string "2048"
    clones = [{"name": "a", "memory": "2048"}, "b"]
    hosts = [hv("h1", free="3000", cpus="2"), hv("h2", free=2500)]
    out = fleet_placement(clones, hosts, rule="resources", defaults={"memory": " 1000 "})
    assert out["new"] == {"a": "h1", "b": "h2"}  # h1 3000 -> 952 left, h2 2500
    assert out["hosts"]["h1"] == [{"name": "a", "memory": "2048"}]


def test_null_defaults_and_empty_defaults_are_the_same():
    hosts = [hv("h1"), hv("h2")]
    assert fleet_placement(["a"], hosts, defaults=None) == fleet_placement(["a"], hosts, defaults={})


# documentation and real Ansible ----------------------------------------------------------------------------------


def test_doc_says_the_defaults_choices_and_returns():
    """What test_docs.py checks of every filter's doc (name, positional, options, required) is not repeated here."""
    doc = yaml.safe_load((ROOT / "plugins" / "filter" / "fleet_placement.yml").read_text())
    spec = doc["DOCUMENTATION"]
    for p in list(inspect.signature(fleet_placement).parameters.values())[1:]:
        if p.default is not inspect.Parameter.empty:
            assert spec["options"][p.name]["default"] == ({} if p.default is None else p.default), p.name
    assert spec["options"]["rule"]["choices"] == ["spread", "resources"]
    assert sorted(doc["RETURN"]["_value"]["contains"]) == sorted(fleet_placement([], [])), "RETURN keys"


def test_ansible_doc_renders_the_filter(ansible_cli):
    proc = ansible_cli("ansible-doc", "-t", "filter", "--json", "virtops.kvm.fleet_placement")
    doc = json.loads(proc.stdout)["virtops.kvm.fleet_placement"]
    assert doc["doc"]["options"]["_input"]["description"] and doc["examples"]
    assert sorted(doc["return"]["_value"]["contains"]) == [
        "existing",
        "held",
        "hosts",
        "new",
        "placement",
        "unreachable",
        "warnings",
    ]
    text = ansible_cli("ansible-doc", "-t", "filter", "virtops.kvm.fleet_placement").stdout
    assert "4:1" in text and "replace_unreachable" in text


VARS = """
clones:
  - {name: web-1, group: web}
  - {name: web-2, group: web, memory: "{{ big }}", state: running}
  - {name: web-3, group: web}
  - {name: db-1, host: hv3, macs: null}
  - name: gone-1
big: "{{ 1024 * 2 }}"
hypervisors:
  - {name: hv1, reachable: true, domains: [web-1, other], cpus: 8, memory_total_mib: 32000,
     memory_free_mib: 20000, vcpus_allocated: 4, memory_allocated_mib: 8192}
  - {name: hv2, reachable: true, domains: [], cpus: 8, memory_total_mib: 32000,
     memory_free_mib: 30000, vcpus_allocated: 0, memory_allocated_mib: 0}
  - {name: hv3, reachable: true, domains: [], cpus: 8, memory_total_mib: 32000,
     memory_free_mib: 30000, vcpus_allocated: 0, memory_allocated_mib: 0}
  - {name: hv4, reachable: false}
"""


def test_the_filter_through_ansible(tmp_path, ansible_cli):
    (tmp_path / "vars.yml").write_text(VARS)
    expr = "{{ clones | virtops.kvm.fleet_placement(hypervisors, rule='resources', replace_unreachable=true) }}"
    proc = ansible_cli(
        "ansible", "localhost", "-i", "localhost,", "-c", "local", "-m", "ansible.builtin.debug",
        "-a", f"msg={expr}", "-e", "@vars.yml",
    )  # fmt: skip
    head, sep, body = proc.stdout.partition(" => ")
    assert head == "localhost | SUCCESS" and sep, proc.stdout
    out = yaml.safe_load(body)["msg"]  # ansible.cfg: callback_result_format = yaml
    assert out["existing"] == {"web-1": "hv1"}
    assert out["new"] == {"web-2": "hv2", "web-3": "hv3", "db-1": "hv3", "gone-1": "hv3"}
    # the templated memory is passed through as Ansible gave it: an int from ansible-core 2.19, its text before
    assert str(out["hosts"]["hv2"][0].pop("memory")) == "2048"
    assert out["hosts"] == {
        "hv1": [{"name": "web-1"}],
        "hv2": [{"name": "web-2", "state": "running"}],
        "hv3": [{"name": "web-3"}, {"name": "db-1", "macs": None}, {"name": "gone-1"}],
        "hv4": [],
    }
    assert out["unreachable"] == ["hv4"] and out["held"] == [] and len(out["warnings"]) == 1


def test_a_drained_host_keeps_its_clones_and_gets_no_new_one():
    hosts = [
        {"name": "hv1", "reachable": True, "domains": ["old"], "drained": True},
        {"name": "hv2", "reachable": True, "domains": []},
        {"name": "hv3", "reachable": True, "domains": []},
    ]
    out = fleet_placement(["old", "a", "b", "c", {"name": "p", "host": "hv1"}], hosts)
    assert out["existing"] == {"old": "hv1"}
    assert sorted(out["new"].values()) == ["hv2", "hv2", "hv3"] and "hv1" not in out["new"].values()
    assert out["held"] == [{"name": "p", "reason": out["held"][0]["reason"]}] and "drained" in out["held"][0]["reason"]


def test_every_host_drained_is_an_error_that_says_so():
    hosts = [{"name": "hv1", "reachable": True, "domains": [], "drained": True}]
    with pytest.raises(AnsibleFilterError, match="every reachable host is drained"):
        fleet_placement(["a"], hosts)
    with pytest.raises(AnsibleFilterError, match="'drained' must be true or false"):
        fleet_placement(["a"], [{"name": "hv1", "reachable": True, "domains": [], "drained": "yes"}])
