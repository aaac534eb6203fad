"""A fleet over three hypervisors from one play (issue 14), on the test ground (tests/ground.py).

Three simulated hypervisors hv1..hv3, each with its own libvirtd and an sshd on 127.0.0.2..4,
are driven by real ``ansible-playbook`` over SSH with the kvm_fleet role in placement mode:
the base image is distributed from the controller (kvm_image), clones are placed (pinned,
spread, anti-affinity), created on their hypervisors in parallel, rerun to no change, grown,
torn down; and one hypervisor is cut in the middle of a play in each failure mode (sshd gone,
sshd hung, libvirtd dead, powered off): the others converge, the report names what is missing
where, and a rerun after it heals converges. Nothing is sent but to 127.0.0.0/8.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests import ground as groundlib
from tests import guestlib
from tests.harness import ROOT, playbook_env

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
IMAGES = "/var/lib/libvirt/images"
HOSTS = ("hv1", "hv2", "hv3")
RECAP = re.compile(r"^(hv\d+)\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@pytest.fixture(scope="module")
def ground():
    g = groundlib.Ground(len(HOSTS))
    with g:
        yield g


@pytest.fixture(scope="module")
def inventory(ground, tmp_path_factory) -> Path:
    return ground.write_inventory(tmp_path_factory.mktemp("ground") / "inventory.yml")


def fleet_vars(prefix: str, clones: list, **extra) -> dict:
    return guestlib.fleet_vars(prefix, clones, IMAGES, **extra)


def play(tmp: Path, fleet: dict, fault: tuple[str, str] | None = None) -> Path:
    """A playbook over the ground: the role (or place, a fault, converge), then the report to a file."""
    if fault is None:
        tasks = [{"name": "The fleet", "ansible.builtin.include_role": {"name": "virtops.kvm.kvm_fleet"}}]
    else:
        host, mode = fault
        cut = [sys.executable, "-m", "tests.ground", "fault", host, mode]  # run from the repo root (chdir)
        tasks = [
            {"name": "Place", "ansible.builtin.include_role": {"name": "virtops.kvm.kvm_fleet", "tasks_from": "place"}},
            {"name": f"Cut {host} ({mode})", "ansible.builtin.command": {"argv": cut, "chdir": str(ROOT)},
             "changed_when": True, "delegate_to": "localhost", "run_once": True},
            {"name": "Converge",
             "ansible.builtin.include_role": {"name": "virtops.kvm.kvm_fleet", "tasks_from": "converge"}},
        ]  # fmt: skip
    tasks.append(
        {"name": "Save the report", "ansible.builtin.copy": {"content": "{{ kvm_fleet_report | to_json }}",
         "dest": str(tmp / "report.json"), "mode": "0644"}, "delegate_to": "localhost", "run_once": True,
         "when": "kvm_fleet_report is defined", "check_mode": False, "changed_when": False}
    )  # fmt: skip
    tasks.append(
        {"name": "Save what kvm_image did here", "ansible.builtin.copy": {"content": "{{ kvm_fleet_images | to_json }}",
         "dest": str(tmp / "images-{{ inventory_hostname }}.json"), "mode": "0644"}, "delegate_to": "localhost",
         "when": "kvm_fleet_images is defined", "check_mode": False, "changed_when": False}
    )  # fmt: skip
    book = tmp / "play.yml"
    book.write_text(yaml.safe_dump([{"hosts": "hypervisors", "gather_facts": False, "vars": fleet, "tasks": tasks}]))
    return book


def run(inventory: Path, book: Path, *args: str, check: bool = False) -> tuple[int, dict, str]:
    """ansible-playbook; (rc, host -> (changed, unreachable, failed), output)."""
    env = playbook_env(ANSIBLE_TIMEOUT="5", ANSIBLE_FORKS="10")
    for old in (book.parent / "report.json", *book.parent.glob("images-*.json")):
        old.unlink(missing_ok=True)
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(book), *args]
    proc = subprocess.run(argv, env=env, cwd=str(book.parent), capture_output=True, text=True, timeout=900, check=False)
    out = proc.stdout + proc.stderr
    recap = {m[0]: (int(m[2]), int(m[3]), int(m[4])) for m in RECAP.findall(out)}
    if check:
        assert proc.returncode == 0, out[-6000:]
    return proc.returncode, recap, out


def report(book: Path) -> dict:
    return json.loads((book.parent / "report.json").read_text())


def images(book: Path) -> dict[str, list[tuple]]:
    """Per hypervisor, (copied, settled) of each base as the role published it (kvm_fleet_images)."""
    return {
        path.stem.split("-", 1)[1]: [(i.get("copied"), i.get("settled", False)) for i in json.loads(path.read_text())]
        for path in sorted(book.parent.glob("images-*.json"))
    }


def where(ground, prefix: str, names: tuple[str, ...] = HOSTS) -> dict[str, list[str]]:
    """Every domain of the fleet on each hypervisor (of ``names``), read from its own libvirtd."""
    out = {}
    for host in (ground[n] for n in names):
        conn = host.connect()
        try:
            out[host.name] = sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(prefix + "-"))
        finally:
            conn.close()
    return out


def on_host(ground, name: str, argv: list[str]) -> subprocess.CompletedProcess:
    return ground[name].run(argv, capture_output=True, text=True, timeout=120, check=True)


def test_a_fleet_is_placed_distributed_converged_and_torn_down_over_three_hypervisors(ground, inventory, tmp_path):
    prefix = guestlib.new_prefix()
    base = f"{IMAGES}/{prefix}-base.qcow2"
    clones = [
        {"name": f"{prefix}-pin", "host": "hv3"},
        *({"name": f"{prefix}-db{i}", "group": "db"} for i in range(3)),
        *({"name": f"{prefix}-web{i}"} for i in range(3)),
    ]
    book = play(tmp_path, fleet_vars(prefix, clones))

    # check mode: the placement is reported, nothing is made anywhere
    rc, recap, out = run(inventory, book, "--check")
    assert rc == 0, out[-6000:]
    assert sorted(report(book)["placement"]) == sorted(c["name"] for c in clones)
    assert where(ground, prefix) == {h: [] for h in HOSTS}
    for h in HOSTS:
        assert on_host(ground, h, ["ls", IMAGES]).stdout.split().count(f"{prefix}-base.qcow2") == 0

    recap, out = run(inventory, book, check=True)[1:]
    placed = where(ground, prefix)
    # every clone exactly once, 7 over 3 hosts spread evenly (3/2/2), the pin on hv3
    every = [n for names in placed.values() for n in names]
    assert sorted(every) == sorted(c["name"] for c in clones)
    assert sorted(len(v) for v in placed.values()) == [2, 2, 3], placed
    assert f"{prefix}-pin" in placed["hv3"]
    # anti-affinity: the three db members on three different hypervisors
    assert sorted(h for h, names in placed.items() for n in names if "-db" in n) == list(HOSTS)
    assert report(book)["placement"] == {n: h for h, names in placed.items() for n in names}
    assert images(book) == {h: [(True, False)] for h in HOSTS}  # copied by kvm_image
    # the base went to each hypervisor once, identical, read-only
    digest = guestlib.sha256(guestlib.build_guest()["base"])
    for h in HOSTS:
        got = on_host(ground, h, ["sha256sum", base]).stdout.split()[0]
        assert got == digest
        assert on_host(ground, h, ["stat", "-c", "%a", base]).stdout.strip() == "444"

    # rerun: nothing changes anywhere, nothing placed anew
    recap, out = run(inventory, book, check=True)[1:]
    assert {h: recap[h][0] for h in HOSTS} == {h: 0 for h in HOSTS}, out[-6000:]
    assert report(book)["new"] == {}
    assert where(ground, prefix) == placed
    # each hypervisor said it holds the base (kvm_host_info): kvm_image did not run at all
    assert images(book) == {h: [(False, True)] for h in HOSTS}
    assert "Put the fleet's base images on this hypervisor" in out and not re.search(r"ok: \[hv\d\] => \(item=", out)

    # growing the fleet places only the new clones; the old ones stay where they are
    more = [*clones, *({"name": f"{prefix}-web{i}"} for i in (3, 4))]
    book = play(tmp_path, fleet_vars(prefix, more))
    recap, out = run(inventory, book, check=True)[1:]
    grown = where(ground, prefix)
    assert sorted(report(book)["new"]) == [f"{prefix}-web3", f"{prefix}-web4"]
    for h in HOSTS:
        assert set(placed[h]) <= set(grown[h])
    assert sorted(len(v) for v in grown.values()) == [3, 3, 3], grown

    # teardown on every hypervisor; the bases are data and stay
    book = play(tmp_path, fleet_vars(prefix, more, kvm_fleet_state="absent"))
    recap, out = run(inventory, book, check=True)[1:]
    assert where(ground, prefix) == {h: [] for h in HOSTS}
    for h in HOSTS:
        listing = on_host(ground, h, ["ls", IMAGES]).stdout.split()
        assert f"{prefix}-base.qcow2" in listing
        assert not [f for f in listing if f.startswith(prefix + "-web") or f.startswith(prefix + "-db")]


def test_a_different_base_on_one_hypervisor_is_refused_there_only(ground, inventory, tmp_path):
    prefix = guestlib.new_prefix()
    base = f"{IMAGES}/{prefix}-base.qcow2"
    on_host(ground, "hv2", ["sh", "-c", f"echo not-the-base > {base}"])  # a file of someone else's
    clones = [{"name": f"{prefix}-c{i}"} for i in range(3)]
    book = play(tmp_path, fleet_vars(prefix, clones))
    rc, recap, out = run(inventory, book)
    assert rc != 0 and recap["hv2"][2] == 1, out[-6000:]
    digest = guestlib.sha256(guestlib.build_guest()["base"])
    theirs = on_host(ground, "hv2", ["sha256sum", base]).stdout.split()[0]
    assert digest in out and theirs in out  # both checksums named
    assert on_host(ground, "hv2", ["cat", base]).stdout == "not-the-base\n"  # untouched
    placed = where(ground, prefix)
    assert placed["hv2"] == [] and len(placed["hv1"]) == len(placed["hv3"]) == 1
    report_text = (tmp_path / "report.json").read_text()
    assert json.loads(report_text)["missing"] == {"hv2": [f"{prefix}-c1"]}
    run(inventory, play(tmp_path, fleet_vars(prefix, clones, kvm_fleet_state="absent")), check=True)


@pytest.mark.parametrize("mode", groundlib.FAULTS)
def test_a_hypervisor_cut_mid_play_leaves_the_others_converged_and_heals(ground, inventory, tmp_path, mode):
    prefix = guestlib.new_prefix()
    clones = [{"name": f"{prefix}-c{i}"} for i in range(6)]
    book = play(tmp_path, fleet_vars(prefix, clones), fault=("hv2", mode))
    try:
        rc, recap, out = run(inventory, book)
        assert rc != 0, out[-6000:]
        assert recap["hv2"][1] + recap["hv2"][2] >= 1, out[-6000:]  # unreachable or failed
        placed = report(book)["placement"]
        lost = sorted(n for n, h in placed.items() if h == "hv2")
        assert len(lost) == 2
        assert report(book)["missing"] == {"hv2": lost}
        assert "MISSING on hv2" in out
        after = where(ground, prefix, ("hv1", "hv3"))  # hv2's libvirtd may be down: not asked
        assert len(after["hv1"]) == len(after["hv3"]) == 2  # the others converged
    finally:
        ground.heal("hv2")
    assert where(ground, prefix)["hv2"] == []
    book = play(tmp_path, fleet_vars(prefix, clones))
    recap, out = run(inventory, book, check=True)[1:]
    healed = where(ground, prefix)
    assert healed["hv2"] == lost  # the same share, placed back where it was meant to be
    assert Counter(n for v in healed.values() for n in v) == Counter(c["name"] for c in clones)
    run(inventory, play(tmp_path, fleet_vars(prefix, clones, kvm_fleet_state="absent")), check=True)


def test_clones_that_may_be_on_an_unreachable_hypervisor_are_held_unless_replaced(ground, inventory, tmp_path):
    prefix = guestlib.new_prefix()
    clones = [{"name": f"{prefix}-c{i}"} for i in range(3)]
    run(inventory, play(tmp_path, fleet_vars(prefix, clones)), check=True)
    first = where(ground, prefix)
    ground.fault("hv3", "unreachable")
    try:
        grown = [*clones, {"name": f"{prefix}-c3"}]
        book = play(tmp_path, fleet_vars(prefix, grown))
        rc, recap, out = run(inventory, book)
        assert rc != 0 and recap["hv3"][1] == 1, out[-6000:]
        held = report(book)["held"]
        # c3 is new, but it could be on hv3 for all the play knows; the clone hv3 holds is not re-made
        assert sorted(h["name"] for h in held) == sorted([*first["hv3"], f"{prefix}-c3"])
        assert where(ground, prefix)["hv1"] == first["hv1"] and where(ground, prefix)["hv2"] == first["hv2"]
        book = play(tmp_path, fleet_vars(prefix, grown, kvm_fleet_replace_unreachable=True))
        rc, recap, out = run(inventory, book)
        assert report(book)["held"] == [], out[-6000:]
        now = where(ground, prefix)
        assert f"{prefix}-c3" in now["hv1"] + now["hv2"]
    finally:
        ground.heal("hv3")
    run(inventory, play(tmp_path, fleet_vars(prefix, grown, kvm_fleet_state="absent")), check=True)
    assert where(ground, prefix) == {h: [] for h in HOSTS}


def test_the_host_role_converges_every_hypervisor_of_the_group(ground, inventory, tmp_path):
    """playbooks/site.yml over the group: hv2's libvirtd is down; the role starts it there (in hv2, not here)."""
    ground.fault("hv2", "daemon")
    assert not ground["hv2"].processes("libvirtd")
    env_book = tmp_path / "site.yml"
    env_book.write_text((ROOT / "playbooks" / "site.yml").read_text())
    recap, out = run(inventory, env_book, "-e", "kvm_host_require_hw_virt=false", check=True)[1:]
    assert {h: recap[h][0] for h in HOSTS} == {"hv1": 0, "hv2": 1, "hv3": 0}, out[-6000:]
    assert ground["hv2"].processes("libvirtd")
    conn = ground["hv2"].connect()  # its own daemon answers on its own socket
    conn.close()
    recap, out = run(inventory, env_book, "-e", "kvm_host_require_hw_virt=false", check=True)[1:]
    assert {h: recap[h][0] for h in HOSTS} == {h: 0 for h in HOSTS}, out[-6000:]
