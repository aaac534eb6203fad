"""Drain a hypervisor and bring it back (issue 15), with the kvm_drain role on the test ground.

Three simulated hypervisors (tests/ground.py); a fleet made by the kvm_fleet role puts two clones
on hv2 (one running, one shut off, the latter in an anti-affinity group with a clone on hv3).
``kvm_drain`` empties hv2 by migration (live for the running one), marks it drained (a new fleet
then places nothing there), reruns to no change, and brings the domains back. Nothing is lost:
every domain is defined exactly once across the hosts and every disk is where its domain is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import libvirt
import pytest
import yaml

from tests import ground as groundlib
from tests import guestlib
from tests.harness import playbook_env, run_module

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
IMAGES = "/var/lib/libvirt/images"
HOSTS = ("hv1", "hv2", "hv3")


@pytest.fixture(scope="module")
def ground():
    with groundlib.Ground(len(HOSTS)) as g:
        yield g


@pytest.fixture(scope="module")
def inventory(ground, tmp_path_factory) -> Path:
    """The ground's inventory; the controller reaches each libvirt over its unix socket."""
    inv = ground.inventory()
    for name, hostvars in inv["all"]["children"]["hypervisors"]["hosts"].items():
        hostvars["kvm_drain_libvirt_uri"] = ground[name].uri
    path = tmp_path_factory.mktemp("drain") / "inventory.yml"
    path.write_text(json.dumps(inv))
    return path


def run(inventory: Path, tmp: Path, role: str, variables: dict) -> dict:
    """One play of ``role`` over the hypervisors; {host: changed} from the recap (the play must pass)."""
    book = tmp / f"{role}.yml"
    tasks = [{"name": role, "ansible.builtin.include_role": {"name": f"virtops.kvm.{role}"}}]
    book.write_text(
        yaml.safe_dump([{"hosts": "hypervisors", "gather_facts": False, "vars": variables, "tasks": tasks}])
    )
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(book)]
    env = playbook_env(ANSIBLE_TIMEOUT="10", ANSIBLE_FORKS="10")
    proc = subprocess.run(argv, env=env, cwd=str(tmp), capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    recap = {}
    for line in proc.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] in HOSTS and len(fields) > 3 and fields[2].startswith("ok="):
            recap[fields[0]] = int(fields[3].split("=")[1])
    return recap


def fleet(prefix: str, clones: list, **extra) -> dict:
    boot = {"kvm_fleet_boot_marker": guestlib.MARKER, "kvm_fleet_boot_timeout": 240}
    return guestlib.fleet_vars(prefix, clones, IMAGES, **boot, **extra)


def where(ground, prefix: str) -> dict[str, dict[str, int]]:
    """Each hypervisor's domains of ``prefix`` -> state."""
    out = {}
    for host in ground.hosts:
        conn = host.connect()
        try:
            out[host.name] = {d.name(): d.state()[0] for d in conn.listAllDomains() if d.name().startswith(prefix)}
        finally:
            conn.close()
    return out


def disks(ground, name: str, prefix: str) -> list[str]:
    return sorted(
        p.name for p in (ground[name].root / "lib" / "images").glob(f"{prefix}-*.qcow2") if "base" not in p.name
    )


def start_again(ground, host: str, name: str, running: bool) -> None:
    """kvm_domain (run in ``host``, as Ansible would) starts the moved domain there: each hypervisor's copy of
    the base has its own mtime, and the move recorded the destination's. ``running``: leave it running."""
    conn = ground[host].connect()
    try:
        dom = conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        res = run_module("kvm_domain", dict(name=name, state="running"), host=ground[host])
        assert not res.get("failed") and res["changed"] is True, res
        assert res["domain"]["base_drift"] == [], res
        if not running:
            dom.destroy()
    finally:
        conn.close()


def test_drain_a_hypervisor_and_bring_it_back(ground, inventory, tmp_path):
    prefix = guestlib.new_prefix()
    a, b, c, d = (f"{prefix}-{x}" for x in "abcd")
    clones = [
        {"name": a, "host": "hv2", "state": "running"},
        {"name": b, "host": "hv2", "group": "db"},
        {"name": c, "host": "hv3", "group": "db"},
        {"name": d, "host": "hv1"},
    ]
    run(inventory, tmp_path, "kvm_fleet", fleet(prefix, clones))
    before = where(ground, prefix)
    assert sorted(before["hv2"]) == [a, b] and before["hv2"][a] == libvirt.VIR_DOMAIN_RUNNING

    drain = {"kvm_drain_host": "hv2", "kvm_drain_groups": {b: "db", c: "db"}}
    run(inventory, tmp_path, "kvm_drain", drain)
    after = where(ground, prefix)
    assert after["hv2"] == {}
    moved = {n: h for h, doms in after.items() for n in doms}
    assert Counter(n for doms in after.values() for n in doms) == Counter([a, b, c, d])  # each exactly once
    assert moved[b] != "hv3"  # b and c are kept apart
    assert after[moved[a]][a] == libvirt.VIR_DOMAIN_RUNNING
    conn = ground[moved[a]].connect()
    try:
        state, reason = conn.lookupByName(a).state()
        assert (state, reason) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED)
    finally:
        conn.close()
    # the disks went with their domains
    assert disks(ground, "hv2", prefix) == []
    for name in (a, b):
        assert f"{name}.qcow2" in disks(ground, moved[name], prefix)
    marker = json.loads((ground["hv2"].root / "virtops" / "drained.json").read_text())
    assert marker == {"drained": True, "moved": {a: moved[a], b: moved[b]}}

    # the moved domains start again where they are now
    start_again(ground, moved[a], a, running=True)
    start_again(ground, moved[b], b, running=False)

    # rerun: nothing to do anywhere
    assert set(run(inventory, tmp_path, "kvm_drain", drain).values()) == {0}

    # a fleet placed while hv2 is drained puts nothing there; its clones are new overlays on the same base as the
    # moved ones, on the hosts that received them
    other = guestlib.new_prefix()
    base = f"{IMAGES}/{prefix}-base.qcow2"
    same_base = {
        "kvm_fleet_template_xml": guestlib.domain_xml(
            f"{other}-tpl", base, f"{IMAGES}/{other}-tpl.serial.log", memory_mib=128
        ),
        "kvm_fleet_base_images": [{"src": guestlib.build_guest()["base"], "dest": base}],
    }
    run(inventory, tmp_path, "kvm_fleet", fleet(other, [{"name": f"{other}-{i}"} for i in range(3)], **same_base))
    assert where(ground, other)["hv2"] == {}
    assert len(where(ground, other)["hv1"]) + len(where(ground, other)["hv3"]) == 3

    # undrain: a and b come back to hv2 (a live), the mark goes; rerun changes nothing
    back = dict(drain, kvm_drain_state="undrained")
    run(inventory, tmp_path, "kvm_drain", back)
    home = where(ground, prefix)
    assert sorted(home["hv2"]) == [a, b] and home["hv2"][a] == libvirt.VIR_DOMAIN_RUNNING
    assert Counter(n for doms in home.values() for n in doms) == Counter([a, b, c, d])
    assert sorted(disks(ground, "hv2", prefix)) == sorted([f"{a}.qcow2", f"{b}.qcow2"])
    assert not (ground["hv2"].root / "virtops" / "drained.json").exists()
    assert set(run(inventory, tmp_path, "kvm_drain", back).values()) == {0}
    start_again(ground, "hv2", a, running=True)
    start_again(ground, "hv2", b, running=False)

    for p in (prefix, other):
        names = [{"name": n} for doms in where(ground, p).values() for n in doms]
        run(inventory, tmp_path, "kvm_fleet", fleet(p, names, kvm_fleet_state="absent"))
    assert where(ground, prefix) == {h: {} for h in HOSTS}
