"""docs/walkthrough.md runs: its inventory, playbook and teardown, on a simulated hypervisor.

The page marks three fenced blocks (``<!-- walkthrough:inventory -->``, ``playbook``, ``teardown``,
each followed at once by a ```yaml block). A NetHost (tests/nethost.py: libvirtd in its own network
namespace) gets the test guest as the template; the inventory (its ``uris`` set to the NetHost's) and the
playbook are written as the page has them and ``ansible-playbook`` runs inside the NetHost's network
namespace, so every packet to the clones stays there. Two clones; the test guest has no sshd, so the play
is told ``reach_port=8080 reach_http=true configure_over_ssh=false`` (its busybox httpd answers
``VIRTOPS-HTTP hostname=<name>``). The play runs twice (the rerun must change nothing), then the
page's teardown. Results are read from the play's own output (one JSON result a line:
``ANSIBLE_CALLBACK_RESULT_FORMAT=json``, not pretty) and from ``ansible-inventory --list``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import guestlib, nethost
from tests.harness import plain, playbook_env

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "walkthrough.md"
BIN = Path(sys.executable).parent
SUBNET = "192.168.151"  # exists only inside the NetHost's network namespace
MARKER = re.compile(r"<!-- walkthrough:([a-z]+) -->")
# a marker, then at once a fenced yaml block; the block ends at the first line that is only ```
BLOCK = re.compile(r"<!-- walkthrough:([a-z]+) -->\n```yaml\n(.*?)^```$", re.S | re.M)
KINDS = ("inventory", "playbook", "teardown")
RESULT = re.compile(r"^(ok|changed|skipping): \[([^\]]+)\] => (\{.*\})$", re.M)
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
PLAY_TIMEOUT = 900


def walkthrough_blocks(text: str | None = None) -> dict[str, str]:
    """The page's marked blocks, by kind; an AssertionError says what is wrong with the page."""
    text = DOC.read_text() if text is None else text
    markers = MARKER.findall(text)
    assert sorted(markers) == sorted(KINDS), f"{DOC}: want one of each marker {KINDS}, found {markers}"
    blocks = dict(BLOCK.findall(text))
    missing = [k for k in KINDS if k not in blocks]
    assert not missing, f"{DOC}: no ```yaml block right after the marker(s) {missing}"
    return blocks


def _vars(plays: list) -> set[str]:
    return {name for play in plays for name in play.get("vars", {}) or {}}


def check_blocks(blocks: dict[str, str]) -> tuple[dict, list, list]:
    """The blocks parsed, and their shape checked: what the test below relies on."""
    inventory = yaml.safe_load(blocks["inventory"])
    assert isinstance(inventory, dict) and inventory.get("plugin") == "virtops.kvm.libvirt", inventory
    assert isinstance(inventory.get("uris"), list), inventory
    playbook = yaml.safe_load(blocks["playbook"])
    assert isinstance(playbook, list) and len(playbook) == 2, "the playbook block must hold two plays"
    teardown = yaml.safe_load(blocks["teardown"])
    assert isinstance(teardown, list) and len(teardown) == 1, "the teardown block must hold one play"
    modules = [next((k for k in t if "." in k), None) for play in playbook + teardown for t in play["tasks"]]
    for fqcn in ("virtops.kvm.kvm_network", "virtops.kvm.kvm_clone", "virtops.kvm.kvm_domain_address"):
        assert fqcn in modules, f"the walkthrough lost its {fqcn} task"
    assert "ansible.builtin.meta" in modules
    # every variable of the page is one the test sets: none keeps a default that points elsewhere
    unset = (_vars(playbook) | _vars(teardown)) - set(extra_vars("h", "uri", "tpl", ["a"]))
    assert not unset, f"the walkthrough has variables the test does not set: {sorted(unset)}"
    return inventory, playbook, teardown


def extra_vars(name: str, uri: str, template: str, clones: list[str]) -> dict:
    return dict(
        hypervisor="localhost",
        libvirt_uri=uri,
        template=template,
        class_network=f"{name}-lab",
        class_subnet=SUBNET,
        class_clones=clones,
        reach_port=8080,
        reach_http=True,
        configure_over_ssh=False,
    )


def ansible_env(tmp: Path) -> dict:
    return playbook_env(
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_CALLBACK_FORMAT_PRETTY="false",
        ANSIBLE_INVENTORY_UNPARSED_FAILED="true",  # an inventory that cannot be read fails the run
    )


def recap(stdout: str) -> dict[str, dict[str, int]]:
    keys = ("ok", "changed", "unreachable", "failed")
    return {m.group(1): dict(zip(keys, map(int, m.groups()[1:]))) for m in RECAP.finditer(stdout)}


def results(stdout: str) -> list[tuple[str, str, dict]]:
    """(status, host, result) of every task result the play printed (debug results, mainly)."""
    return [(m.group(1), m.group(2), json.loads(m.group(3))) for m in RESULT.finditer(stdout)]


def test_the_page_has_its_blocks_and_a_broken_page_fails(tmp_path):
    blocks = walkthrough_blocks()
    check_blocks(blocks)
    text = DOC.read_text()
    for broken in (
        text.replace("<!-- walkthrough:teardown -->\n```yaml", "<!-- walkthrough:teardown -->\n\n```yaml"),
        text.replace("<!-- walkthrough:playbook -->", "<!-- walkthrough:plays -->"),
        text + "\n<!-- walkthrough:inventory -->\n```yaml\nplugin: x\n```\n",
    ):
        with pytest.raises(AssertionError):
            walkthrough_blocks(broken)
    # Ansible itself accepts the playbooks (no daemon needed for a syntax check)
    for kind in ("playbook", "teardown"):
        book = tmp_path / f"{kind}.yml"
        book.write_text(blocks[kind])
        argv = [str(BIN / "ansible-playbook"), "--syntax-check", "-i", "localhost,", str(book)]
        proc = subprocess.run(
            argv, cwd=tmp_path, env=ansible_env(tmp_path), capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def nh() -> Iterator[nethost.NetHost]:
    """A started NetHost, stopped (domains, processes, directories) at teardown, also on failure."""
    host = nethost.NetHost(guestlib.new_prefix())
    try:
        host.start()
        yield host
    finally:
        host.stop()
        assert not host.root.exists() and nethost.members(host.root) == []


def _play(nh: nethost.NetHost, tmp: Path, *argv: str) -> subprocess.CompletedProcess:
    """An Ansible command of this venv, run in the NetHost's network namespace; its output kept in ``tmp``."""
    proc = nh.run(
        [str(BIN / argv[0]), *argv[1:]], cwd=tmp, env=ansible_env(tmp), capture_output=True, text=True,
        timeout=PLAY_TIMEOUT, check=False,
    )  # fmt: skip
    with (tmp / "output.log").open("a") as log:
        log.write(f"$ {' '.join(argv)}\nrc={proc.returncode}\n{proc.stdout}\n{proc.stderr}\n")
    return proc


def _said(proc: subprocess.CompletedProcess) -> str:
    return f"rc={proc.returncode}\n--- stdout\n{proc.stdout[-8000:]}\n--- stderr\n{proc.stderr[-3000:]}"


@pytest.mark.slow
def test_the_walkthrough_clones_a_class_and_reaches_every_clone(guest, nh, tmp_path):
    t0 = time.monotonic()
    inventory = check_blocks(walkthrough_blocks())[0]
    blocks = walkthrough_blocks()
    template, clones = f"{nh.name}-tpl", [f"{nh.name}-c1", f"{nh.name}-c2"]
    conn = nh.connect()
    try:
        disk = nh.copy_image(guest["base"], "tpl.qcow2")
        conn.defineXML(guestlib.domain_xml(template, disk, nh.images / f"{template}.log"))
        networks_before = sorted(n.name() for n in conn.listAllNetworks())

        inv = tmp_path / "class.libvirt.yml"
        inv.write_text(yaml.safe_dump(dict(inventory, uris=[nh.uri])))
        (tmp_path / "class.yml").write_text(blocks["playbook"])
        (tmp_path / "class-teardown.yml").write_text(blocks["teardown"])
        values = extra_vars(nh.name, nh.uri, template, clones)
        (tmp_path / "vars.json").write_text(json.dumps(values))

        t_play = time.monotonic()
        proc = _play(nh, tmp_path, "ansible-playbook", "-i", str(inv), "class.yml", "-e", "@vars.json")
        played = time.monotonic() - t_play
        assert proc.returncode == 0, _said(proc)
        stats = recap(proc.stdout)
        assert set(stats) == {"localhost", *clones}, _said(proc)
        assert all(s["failed"] == 0 and s["unreachable"] == 0 for s in stats.values()), _said(proc)

        printed = results(proc.stdout)
        waited = [entry[2]["class_addresses.hosts"] for entry in printed if "class_addresses.hosts" in entry[2]]
        assert len(waited) == 1, _said(proc)
        addresses = waited[0]
        subnet = ipaddress.ip_network(f"{SUBNET}.0/24")
        assert sorted(addresses) == sorted(clones) and len(set(addresses.values())) == 2, addresses
        assert all(ipaddress.ip_address(a) in subnet for a in addresses.values()), addresses

        # each clone answered at its address, with a page naming its own hostname (the identity reset)
        said = {host: r["msg"] for status, host, r in printed if "answers at" in str(r.get("msg"))}
        assert said == {
            c: f"{c} answers at {addresses[c]}:8080, its page says: {guest['http_marker']} hostname={c}" for c in clones
        }, _said(proc)

        # a rerun changes nothing and finds the same addresses (the reservations keep them)
        again = _play(nh, tmp_path, "ansible-playbook", "-i", str(inv), "class.yml", "-e", "@vars.json")
        assert again.returncode == 0 and recap(again.stdout)["localhost"]["changed"] == 0, _said(again)
        rerun = [e[2]["class_addresses.hosts"] for e in results(again.stdout) if "class_addresses.hosts" in e[2]]
        assert rerun == [addresses], _said(again)
        reran = time.monotonic() - t_play - played

        # the inventory, read again from inside the namespace, gives the addresses the play waited for
        listed = _play(nh, tmp_path, "ansible-inventory", "-i", str(inv), "--list")
        assert listed.returncode == 0, _said(listed)
        data = plain(json.loads(listed.stdout))
        group = "template_" + re.sub(r"[^A-Za-z0-9_]", "_", template)
        assert sorted(data[group]["hosts"]) == sorted(clones), data.get(group)
        hostvars = data["_meta"]["hostvars"]
        for clone in clones:
            hv = hostvars[clone]
            assert hv["ansible_host"] == addresses[clone] and hv["virtops_address_source"] == "lease", hv
            assert hv["virtops_state"] == "running" and hv["virtops_provenance"]["template"] == template, hv

        # the page's teardown leaves nothing but the template
        down = _play(nh, tmp_path, "ansible-playbook", "-i", str(inv), "class-teardown.yml", "-e", "@vars.json")
        assert down.returncode == 0, _said(down)
        assert recap(down.stdout)["localhost"]["failed"] == 0 and recap(down.stdout)["localhost"]["changed"] == 2
        assert [d.name() for d in conn.listAllDomains()] == [template]
        assert sorted(n.name() for n in conn.listAllNetworks()) == networks_before
        left = sorted(p.name for p in nh.images.iterdir() if p.suffix in (".qcow2", ".iso", ".img"))
        assert left == ["tpl.qcow2"], left
    finally:
        conn.close()
    print(
        f"\nNetHost start {nh.start_seconds:.1f} s; walkthrough play {played:.1f} s, rerun {reran:.1f} s; "
        f"whole test body {time.monotonic() - t0:.1f} s"
    )
