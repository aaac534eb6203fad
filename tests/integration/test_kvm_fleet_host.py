"""kvm_fleet_host on the real qemu:///system: a host's share of a fleet in one module run (issue 28).

One template on a private copy of the test guest's base; the tests run in file order and build on each
other. The first run makes three clones with kvm_clone's identity reset (one appliance), boots the new
ones once (their boot marker), leaves one running and two shut off, reads /etc/hostname from the two shut
off (one appliance), four ways. Then the prune drops a clone no longer listed; a failing step (a file
that is not there) says its step and what the steps before it did; state absent removes the rest.
"""

from __future__ import annotations

import libvirt
import pytest

from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module

pytestmark = pytest.mark.slow

MOD = "kvm_fleet_host"


@pytest.fixture(scope="module")
def world(conn, guest):
    with guestlib.scratch_dir(conn=conn) as (prefix, scratch):
        tpl = guestlib.define_template(conn, guest["base"], scratch, prefix)
        yield dict(prefix=prefix, scratch=scratch, tpl=tpl)


def names_of(world, *suffixes) -> list[str]:
    return [f"{world['prefix']}-{s}" for s in suffixes]


def args(world, clones, **extra) -> dict:
    out = dict(
        template=world["tpl"]["name"],
        clones=clones,
        domain_type="qemu",
        clone_state="shutdown",
        first_boot=True,
        boot_marker="VIRTOPS-GUEST-UP",
        boot_timeout=300,
        shutdown_timeout=120,
        verify_paths=["/etc/hostname"],
        verify_mounts={"/dev/sda1": "/"},
    )
    out.update(extra)
    return out


def state_of(conn, name: str):
    try:
        return conn.lookupByName(name).state()[0]
    except libvirt.libvirtError:
        return None


def test_share_made_booted_stated_and_read_four_ways(conn, world):
    a, b, c = names_of(world, "a", "b", "c")
    clones = [{"name": a, "state": "running"}, {"name": b}, {"name": c, "memory": 160}]
    results = four_ways(MOD, args(world, clones))
    assert_four_ways(results)
    check, real, again = results[:3]
    assert check["created"] == [a, b, c] and check["domains"] == [] and check["verified"] == {}
    assert real["created"] == [a, b, c] and real["existing"] == []
    assert real["steps"] == ["clone", "first_boot", "states", "verify"]
    # each new clone booted once as itself (the identity reset named it), then went to its state
    for name in (a, b, c):
        assert guestlib.wait_for_marker(world["scratch"] / f"{name}.log", timeout=5) == [
            f"VIRTOPS-GUEST-UP hostname={name}"
        ]
    assert state_of(conn, a) == libvirt.VIR_DOMAIN_RUNNING
    assert state_of(conn, b) == state_of(conn, c) == libvirt.VIR_DOMAIN_SHUTOFF
    assert {d["name"]: d["state"] for d in real["domains"]} == {a: "running", b: "shutoff", c: "shutoff"}
    assert conn.lookupByName(c).maxMemory() == 160 * 1024
    # read-only reads of the clones left shut off only: a running clone is never read
    assert {n: f["/etc/hostname"].strip() for n, f in real["verified"].items()} == {b: b, c: c}
    assert again["existing"] == [a, b, c] and again["created"] == []
    assert again["steps"] == ["clone", "states", "verify"]  # no first boot for clones that were there


def test_prune_drops_only_the_unlisted_clone(conn, world):
    a, b, c = names_of(world, "a", "b", "c")
    kept = dict(verify_paths=[], first_boot=False, prune=True, fleet_name=world["prefix"])
    clones = [{"name": a, "state": "running"}, {"name": b}]
    results = four_ways(MOD, args(world, clones, **kept))
    assert_four_ways(results)
    assert results[0]["pruned"] == [c] and results[1]["pruned"] == [c] and results[2]["pruned"] == []
    assert state_of(conn, c) is None and not (world["scratch"] / f"{c}.qcow2").exists()
    assert state_of(conn, a) == libvirt.VIR_DOMAIN_RUNNING and state_of(conn, b) == libvirt.VIR_DOMAIN_SHUTOFF
    # the template (the prefix's "-tpl", not made by kvm_clone) is never pruned
    assert state_of(conn, world["tpl"]["name"]) == libvirt.VIR_DOMAIN_SHUTOFF


def test_a_failing_step_says_which_and_what_was_done(conn, world):
    a, b = names_of(world, "a", "b")
    clones = [{"name": a, "state": "running"}, {"name": b}]
    out = run_module(MOD, args(world, clones, first_boot=False, verify_paths=["/etc/no-such-file"]))
    assert out["failed"] and out["step"] == "verify", out
    assert "/etc/no-such-file" in out["msg"]
    assert sorted(out["done"]) == ["clone", "states"] and out["done"]["clone"]["changed"] is False


def test_absent_removes_the_share_and_keeps_the_base(conn, world):
    a, b = names_of(world, "a", "b")
    base_sum = guestlib.sha256(world["tpl"]["disk"])
    clones = [{"name": a}, {"name": b}]
    results = four_ways(MOD, dict(state="absent", clones=clones))
    assert_four_ways(results)
    assert results[0]["removed"] == results[1]["removed"] == [a, b] and results[2]["removed"] == []
    assert state_of(conn, a) is None and state_of(conn, b) is None
    assert not (world["scratch"] / f"{a}.qcow2").exists()
    assert guestlib.sha256(world["tpl"]["disk"]) == base_sum
