"""FleetHostManager (kvm_fleet_host) against libvirt's test:///default driver and real qemu-img in tmp_path.

The seams are the ones the module uses: the connection (holding the test's virConnect), a runner
for qemu-img, and the host lock and journal private to the test.
"""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import DomainNotFound, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._fleet.manager import FleetHostManager
from ansible_collections.virtops.kvm.plugins.module_utils._manager import validated
from tests import fakes

TPL = "ut-tpl"


@pytest.fixture
def conn():
    c, close = fakes.open_conn()
    yield c
    close()


@pytest.fixture
def tpl(conn, tmp_path):
    return fakes.make_template(conn, tmp_path, TPL)


def fleet(conn, tmp_path, check_mode=False, **params) -> FleetHostManager:
    """A FleetHostManager as the module makes one (blank test disks: no identity reset, qemu domains)."""
    params.setdefault("template", TPL)
    params.setdefault("identity", {"operations": []})
    params.setdefault("domain_type", "qemu")
    checked = validated(FleetHostManager, params)
    return FleetHostManager(
        checked,
        fakes.Held(conn),
        check_mode,
        runner=fakes.runner,
        lock_path=str(tmp_path / "lock"),
        journal_dir=str(tmp_path) + "-journal",
    )


def states(conn) -> dict:
    """Every ut- domain and whether it runs."""
    return {d.name(): bool(d.isActive()) for d in conn.listAllDomains() if d.name().startswith("ut-f")}


CLONES = [{"name": "ut-f1"}, {"name": "ut-f2", "state": "shutdown"}, {"name": "ut-f3", "memory": 128, "host": "hv1"}]


def test_one_run_makes_and_starts_the_share_four_ways(conn, tpl, tmp_path):
    check = fleet(conn, tmp_path, True, clones=CLONES).run()
    assert check["changed"] is True
    assert check["created"] == ["ut-f1", "ut-f2", "ut-f3"] and check["existing"] == []
    assert check["domains"] == [] and "states" not in check["steps"]  # not defined yet: nothing to put in a state
    assert states(conn) == {} and sorted(p.name for p in tmp_path.iterdir()) == ["base.qcow2"]

    real = fleet(conn, tmp_path, clones=CLONES).run()
    assert real["changed"] is True and real["steps"] == ["clone", "states"]
    assert real["created"] == ["ut-f1", "ut-f2", "ut-f3"]
    assert states(conn) == {"ut-f1": True, "ut-f2": False, "ut-f3": True}
    assert {d["name"]: d["state"] for d in real["domains"]} == {
        "ut-f1": "running",
        "ut-f2": "shutoff",
        "ut-f3": "running",
    }
    assert conn.lookupByName("ut-f3").maxMemory() == 128 * 1024
    assert [b["path"] for b in real["bases"]] == [str(tpl)]
    assert any(d.get("before_header") == "clone" for d in real["diff"])

    again = fleet(conn, tmp_path, clones=CLONES).run()
    assert again["changed"] is False and again["created"] == [] and again["diff"] == []
    assert again["existing"] == ["ut-f1", "ut-f2", "ut-f3"]
    assert fleet(conn, tmp_path, True, clones=CLONES).run()["changed"] is False


def test_a_later_state_change_goes_to_the_defined_clones_only(conn, tpl, tmp_path):
    fleet(conn, tmp_path, clones=CLONES[:2]).run()
    out = fleet(conn, tmp_path, clones=CLONES[:2], clone_state="shutdown").run()
    assert out["changed"] is True and out["created"] == []
    assert states(conn) == {"ut-f1": False, "ut-f2": False}
    # create=false: nothing is made, the defined clones still get their state
    out = fleet(conn, tmp_path, clones=CLONES, create=False).run()
    assert out["steps"] == ["states"] and states(conn) == {"ut-f1": True, "ut-f2": False}


def test_prune_removes_only_the_fleets_unlisted_clones(conn, tpl, tmp_path):
    fleet(conn, tmp_path, clones=[*CLONES, {"name": "ut-f4"}], clone_state="present").run()
    # a domain with the fleet's prefix that kvm_clone did not make is never pruned
    conn.defineXML(fakes.template_xml("ut-fx", str(fakes.qcow2(tmp_path / "x.qcow2"))))
    check = fleet(conn, tmp_path, True, clones=CLONES, clone_state="present", prune=True, fleet_name="ut").run()
    assert check["pruned"] == ["ut-f4"] and "ut-f4" in states(conn)
    out = fleet(conn, tmp_path, clones=CLONES, clone_state="present", prune=True, fleet_name="ut").run()
    assert out["pruned"] == ["ut-f4"] and out["changed"] is True
    assert set(states(conn)) == {"ut-f1", "ut-f2", "ut-f3", "ut-fx"}
    assert not (tmp_path / "ut-f4.qcow2").exists() and (tmp_path / "x.qcow2").exists()
    again = fleet(conn, tmp_path, clones=CLONES, clone_state="present", prune=True, fleet_name="ut").run()
    assert again["pruned"] == [] and again["changed"] is False


def test_absent_removes_the_listed_clones_and_their_files(conn, tpl, tmp_path):
    fleet(conn, tmp_path, clones=CLONES, clone_state="present").run()
    check = fleet(conn, tmp_path, True, clones=CLONES, state="absent").run()
    assert check["changed"] is True and len(states(conn)) == 3
    out = fleet(conn, tmp_path, clones=CLONES, state="absent").run()
    assert out["removed"] == ["ut-f1", "ut-f2", "ut-f3"] and states(conn) == {}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "lock") == ["base.qcow2"]
    assert fleet(conn, tmp_path, clones=CLONES, state="absent").run()["changed"] is False


def test_template_xml_file_is_read_on_the_host(conn, tpl, tmp_path):
    xml = tmp_path.parent / "tpl.xml"
    xml.write_text(conn.lookupByName(TPL).XMLDesc(0).replace(f"<name>{TPL}</name>", "<name>ut-filetpl</name>"))
    conn.lookupByName(TPL).undefine()
    out = fleet(conn, tmp_path, clones=CLONES[:1], template=None, template_xml_file=str(xml)).run()
    assert out["created"] == ["ut-f1"]
    # the prune rule knows the template by the name in the file
    pruned = fleet(
        conn, tmp_path, clones=[], template=None, template_xml_file=str(xml), prune=True, fleet_name="ut"
    ).run()
    assert pruned["pruned"] == ["ut-f1"]


def test_a_failing_step_says_which_and_what_was_done(conn, tpl, tmp_path):
    fleet(conn, tmp_path, clones=CLONES[:1], clone_state="present").run()
    with pytest.raises(DomainNotFound) as err:
        fleet(conn, tmp_path, clones=CLONES, template="ut-nosuch").run()
    assert err.value.details["step"] == "clone" and err.value.details["done"] == {}
    assert set(states(conn)) == {"ut-f1"}


@pytest.mark.parametrize(
    "params, words",
    [
        (dict(clones=[{"name": "ut-f1"}, {"name": "ut-f1"}]), "more than once"),
        (dict(clones=[{"name": "ut-f1", "colour": "red"}]), "unknown key(s) colour"),
        (dict(clones=[{"name": "ut-f1", "state": "asleep"}]), "state 'asleep'"),
        (dict(clones=[{"name": "../x"}]), "clones[0].name"),
        (dict(clones=[{"name": "ut-f1"}], template=None), "needs the template"),
        (dict(clones=[{"name": "ut-f1"}], template_xml_file="/nonexistent/t.xml", template=None), "cannot be read"),
    ],
)
def test_bad_input_changes_nothing(conn, tpl, tmp_path, params, words):
    with pytest.raises(InvalidInput) as err:
        fleet(conn, tmp_path, **params).run()
    assert words in err.value.message
    assert states(conn) == {}


def test_options_a_step_refuses_are_named_and_change_nothing(conn, tpl, tmp_path):
    with pytest.raises(InvalidInput) as err:
        fleet(conn, tmp_path, clones=[{"name": "ut-f1", "memory": "lots"}]).run()
    assert "memory of clone 'ut-f1'" in err.value.message and err.value.details["step"] == "clone"
    assert states(conn) == {}


def test_check_and_prune_options_are_validated_like_the_module():
    with pytest.raises(InvalidInput, match="fleet_name"):
        validated(FleetHostManager, dict(prune=True))
    with pytest.raises(InvalidInput, match="boot_marker"):
        validated(FleetHostManager, dict(first_boot=True))
    with pytest.raises(InvalidInput, match="mutually exclusive"):
        validated(FleetHostManager, dict(template="a", template_xml="<domain/>"))


def test_libguestfs_is_needed_only_for_the_appliance_steps():
    assert "guestfs" not in FleetHostManager.needs(dict(template="t"))
    assert "guestfs" in FleetHostManager.needs(dict(template="t", seal=True))
    assert "guestfs" in FleetHostManager.needs(dict(verify_paths=["/etc/hostname"]))
    assert "guestfs" not in FleetHostManager.needs(dict(state="absent", verify_paths=["/etc/hostname"]))


def test_compose_checks_a_steps_options_as_its_module_would(conn, tmp_path):
    outer = fleet(conn, tmp_path, clones=[])
    sub = outer.compose(CloneManager, dict(clones=["ut-a"], state="absent"))
    assert sub.p["mode"] == "overlay" and sub.p["uri"] == fakes.URI
    assert sub.lock_path == str(tmp_path / "lock") and sub.connection is outer.connection
    with pytest.raises(InvalidInput, match="mutually exclusive"):
        outer.compose(CloneManager, dict(clones=["ut-a"], name="ut-b", state="absent"))
