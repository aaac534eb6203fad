"""virtops.kvm.fleet_report and fleet_report_lines (plugins/filter/fleet_report.py): the kvm_fleet role's report."""

from __future__ import annotations

import copy

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.virtops.kvm.plugins.filter.fleet_report import FilterModule, fleet_report, fleet_report_lines

# What fleet_placement returned: hv1 and hv2 answered, hv3 could not be read; hv2 fails later in the play.
RESULT = {
    "placement": {"f-1": "hv1", "f-2": "hv2", "f-3": "hv1", "f-4": "hv2"},
    "hosts": {
        "hv1": [{"name": "f-1"}, {"name": "f-3", "memory": 512}],
        "hv2": [{"name": "f-2"}, {"name": "f-4"}],
        "hv3": [],
    },
    "new": {"f-3": "hv1", "f-4": "hv2"},
    "existing": {"f-1": "hv1", "f-2": "hv2"},
    "held": [{"name": "f-5", "reason": "pinned to host hv3, which is unreachable"}],
    "unreachable": ["hv3"],
    "warnings": ["something to know"],
}
HYPERVISORS = ["hv1", "hv2", "hv3"]


def test_filter_module_exposes_the_filters():
    assert FilterModule().filters() == {"fleet_report": fleet_report, "fleet_report_lines": fleet_report_lines}


def test_report_when_every_hypervisor_stayed_in_the_play():
    report = fleet_report(RESULT, HYPERVISORS, ["hv1", "hv2"])
    assert list(report) == [
        "placement",
        "new",
        "existing",
        "held",
        "unreachable",
        "failed",
        "missing",
        "unconverged",
        "warnings",
    ]
    assert {k: report[k] for k in ("placement", "new", "existing", "held", "unreachable", "warnings")} == {
        k: RESULT[k] for k in ("placement", "new", "existing", "held", "unreachable", "warnings")
    }
    assert report["failed"] == [] and report["missing"] == {} and report["unconverged"] == {}


def test_a_hypervisor_that_left_the_play_has_missing_and_unconverged_clones():
    report = fleet_report(RESULT, HYPERVISORS, ["hv1"])
    assert report["failed"] == ["hv2"]  # hv3 was unreachable before the placement: not failed
    assert report["missing"] == {"hv2": ["f-4"]}
    assert report["unconverged"] == {"hv2": ["f-2"]}


def test_hosts_with_only_new_or_only_existing_clones_get_one_entry():
    result = copy.deepcopy(RESULT)
    result["hosts"]["hv2"] = [{"name": "f-4"}]
    result["hosts"]["hv1"] = [{"name": "f-1"}]
    report = fleet_report(result, HYPERVISORS, [])
    assert report["missing"] == {"hv2": ["f-4"]}
    assert report["unconverged"] == {"hv1": ["f-1"]}
    assert report["failed"] == ["hv1", "hv2"]


def test_lines_per_hypervisor_then_missing_unconverged_held_warnings():
    report = fleet_report(RESULT, HYPERVISORS, ["hv1"])
    assert fleet_report_lines(report, HYPERVISORS) == [
        "hv1: 2 clone(s) (1 new)",
        "hv2: 2 clone(s) (1 new)",
        "hv3: 0 clone(s)",
        "MISSING on hv2 (it failed during the play; rerun when it is back): f-4",
        "NOT CONVERGED on hv2 (it failed during the play): f-2",
        "HELD f-5: pinned to host hv3, which is unreachable",
        "WARNING something to know",
    ]


def test_lines_of_a_quiet_report():
    report = fleet_report(
        {**RESULT, "held": [], "warnings": [], "new": {}, "existing": dict(RESULT["placement"])}, ["hv2"], HYPERVISORS
    )
    assert fleet_report_lines(report, ["hv2"]) == ["hv2: 2 clone(s) (0 new)"]


@pytest.mark.parametrize(
    "args, message",
    [
        (([], HYPERVISORS, []), "the input must be the placement (what fleet_placement returned) (a dict), got a list"),
        (({**RESULT, "hosts": None}, HYPERVISORS, []), "'hosts' of the placement"),
        (({**RESULT, "held": {}}, HYPERVISORS, []), "'held' of the placement (what fleet_placement returned) must be"),
        ((RESULT, "hv1", []), "hypervisors must be a list, got a string"),
        ((RESULT, HYPERVISORS, None), "play_hosts must be a list, got null"),
        (({**RESULT, "hosts": {"hv1": "f-1"}}, HYPERVISORS, []), "the share of host 'hv1' must be a list"),
        (({**RESULT, "hosts": {"hv1": [{}]}}, HYPERVISORS, []), "the share of host 'hv1'[0] must be a clone"),
    ],
)
def test_report_bad_input(args, message):
    with pytest.raises(AnsibleFilterError, match=r"^fleet_report: ") as err:
        fleet_report(*args)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "report, message",
    [
        (None, "the input must be the report (what fleet_report returned) (a dict), got null"),
        ({**RESULT, "missing": {}}, "'unconverged' of the report"),
        ({**RESULT, "missing": {"hv2": "f-4"}, "unconverged": {}}, "the clones missing on 'hv2' must be a list"),
        ({**RESULT, "missing": {}, "unconverged": {}, "held": ["f-5"]}, "held[0] must be a dict"),
    ],
)
def test_lines_bad_input(report, message):
    with pytest.raises(AnsibleFilterError, match=r"^fleet_report_lines: ") as err:
        fleet_report_lines(report, HYPERVISORS)
    assert message in str(err.value)
