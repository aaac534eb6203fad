"""The virtops.kvm.libvirt inventory plugin through ``ansible-inventory``, against the real qemu:///system.

Three URIs: the local daemon, the same daemon again over ``qemu+ssh://`` to an sshd this file starts on
127.0.0.2 (its own host key, a client key, root's authorized_keys in a temporary AuthorizedKeysFile; no
file of the machine's own ssh setup is read or written), and 127.0.0.3 where nothing listens. One clone of
the test guest runs on an isolated libvirt network with DHCP, so its ``ansible_host`` comes from the lease.

Network rule: nothing is sent to a guest. The tests talk to 127.0.0.2/127.0.0.3 (sshd) and libvirt only;
the guest's address is read from its serial console and from libvirt.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from tests import guestlib
from tests.harness import ansible_inventory as inventory
from tests.harness import plain as _plain
from tests.harness import run_module

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
SSH_HOST = "127.0.0.2"
DEAD_HOST = "127.0.0.3"
CANDIDATES = ["10.213.57.0/24", "172.31.217.0/24", "192.168.217.0/24", "10.213.58.0/24"]
IP_LINE = re.compile(r"VIRTOPS-IP (\S+) (\d+\.\d+\.\d+\.\d+)")


def _used_networks(conn) -> list:
    used = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for word in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", text):
            try:
                used.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                pass
    for net in conn.listAllNetworks(0):
        for addr, mask in re.findall(r"<ip address='([\d.]+)' (?:netmask|prefix)='([\d.]+)'", net.XMLDesc(0)):
            used.append(ipaddress.ip_network(f"{addr}/{mask}", strict=False))
    return [u for u in used if u.prefixlen > 0]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.2 that lets root in with a key of its own; the URI parameters to use it."""
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} is missing: apt-get install openssh-server (scripts/setup.sh does)", pytrace=False)
    d = tmp_path_factory.mktemp("sshd")
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key")])
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")])
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port(SSH_HOST)
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress {SSH_HOST}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n"
        f"AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\n"
    )
    # libvirt runs this as its ssh: the host key goes to our own known_hosts, never to root's ~/.ssh
    wrapper = d / "ssh"
    wrapper.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"os.execvp('ssh', ['ssh', '-o', 'UserKnownHostsFile={d}/known_hosts', '-o', 'GlobalKnownHostsFile=/dev/null',"
        " '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', *sys.argv[1:]])\n"
    )
    wrapper.chmod(0o755)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log = open(d / "sshd.log", "w")  # open for the life of the daemon
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not _listening(SSH_HOST, port):
            assert proc.poll() is None, f"sshd exited: {(d / 'sshd.log').read_text()}"
            assert time.monotonic() < deadline, "sshd did not listen within 15 s"
            time.sleep(0.1)
        assert not _listening(DEAD_HOST, 22), f"something listens on {DEAD_HOST}:22; the dead URI would not be dead"
        yield dict(port=port, params=f"keyfile={d}/client_key&no_verify=1&no_tty=1&command={wrapper}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def lab(conn, guest):
    """An isolated DHCP network, a running clone on it (its lease awaited) and a shut-off plain domain."""
    used = _used_networks(conn)
    free = [ipaddress.ip_network(c) for c in CANDIDATES]
    free = [c for c in free if not any(c.overlaps(u) for u in used)]
    if not free:
        pytest.fail(f"refusing to run: none of {CANDIDATES} is free on this host", pytrace=False)
    subnet = free[0]
    with guestlib.scratch_dir(conn=conn) as (prefix, scratch):
        net_name = f"{prefix}-inv"
        a = [str(subnet.network_address + n) for n in (1, 100, 120)]
        net = conn.networkDefineXML(
            f"<network><name>{net_name}</name><ip address='{a[0]}' netmask='255.255.255.0'>"
            f"<dhcp><range start='{a[1]}' end='{a[2]}'/></dhcp></ip></network>"
        )
        try:
            net.create()
            tpl_disk = guestlib.make_overlay(guest["base"], scratch / "tpl.qcow2")
            tpl_xml = guestlib.domain_xml(f"{prefix}-tpl", tpl_disk, scratch / f"{prefix}-tpl.log")
            clone = f"{prefix}-c1"
            started = time.monotonic()
            r = run_module(
                "kvm_clone",
                dict(
                    template_xml=tpl_xml,
                    clones=[clone],
                    network=net_name,
                    domain_type="qemu",
                    state="running",
                    identity=dict(operations=[]),
                ),
            )
            assert not r.get("failed"), r.get("msg")
            ip, mac = r["clones"][0]["ip"], r["clones"][0]["macs"][0]
            log = scratch / f"{clone}.log"
            _wait_for(lambda: ("eth0", ip) in IP_LINE.findall(log.read_text(errors="replace")) if log.exists() else 0)
            dom = conn.lookupByName(clone)
            src = libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE
            _wait_for(lambda: any(a["addr"] == ip for i in dom.interfaceAddresses(src).values() for a in i["addrs"]))
            booted = time.monotonic() - started
            off = f"{prefix}-off"
            conn.defineXML(guestlib.domain_xml(off, None, scratch / f"{off}.log", kind="kernel"))
            yield dict(prefix=prefix, scratch=scratch, clone=clone, ip=ip, mac=mac, off=off, booted=booted)
        finally:
            guestlib.cleanup_domains(conn, prefix)
            if net.isActive():
                net.destroy()
            net.undefine()


def _wait_for(check, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true after {timeout} s: {check}"
        time.sleep(0.5)


def three_uris(sshd) -> list[str]:
    return [
        "qemu:///system",
        f"qemu+ssh://root@{SSH_HOST}:{sshd['port']}/system?{sshd['params']}",
        f"qemu+ssh://root@{DEAD_HOST}/system?{sshd['params']}",
    ]


def test_two_hypervisors_and_a_dead_one(lab, sshd, tmp_path):
    uris = three_uris(sshd)
    config = dict(uris=uris, proxy_jump=True)
    start = time.monotonic()
    listed = inventory(tmp_path, config, "--list")
    took = time.monotonic() - start
    assert listed.returncode == 0, listed.stderr
    said = " ".join(listed.stderr.split())
    assert f"the domains of {uris[2]} are not listed" in said and "Connection refused" in said, said
    data = _plain(json.loads(listed.stdout))
    hostvars = data["_meta"]["hostvars"]
    # the same daemon through two URIs: every name collides, so each host is <domain>_<hypervisor>
    c_local, c_ssh = f"{lab['clone']}_localhost", f"{lab['clone']}_127_0_0_2"
    off_local, off_ssh = f"{lab['off']}_localhost", f"{lab['off']}_127_0_0_2"
    assert lab["clone"] not in hostvars and {c_local, c_ssh, off_local, off_ssh} <= set(hostvars)
    assert {c_local, off_local} <= set(data["hypervisor_localhost"]["hosts"])
    assert {c_ssh, off_ssh} <= set(data["hypervisor_127_0_0_2"]["hosts"])
    assert not set(data["hypervisor_localhost"]["hosts"]) & set(data["hypervisor_127_0_0_2"]["hosts"])
    assert "hypervisor_127_0_0_3" not in data
    template = "template_" + f"{lab['prefix']}-tpl".replace("-", "_")
    assert sorted(data[template]["hosts"]) == sorted([c_local, c_ssh])
    assert {c_local, c_ssh} <= set(data["state_running"]["hosts"])
    assert {off_local, off_ssh} <= set(data["state_shutoff"]["hosts"])

    for host, uri, hypervisor in ((c_local, uris[0], "localhost"), (c_ssh, uris[1], SSH_HOST)):
        hv = hostvars[host]
        assert hv["ansible_host"] == lab["ip"] and hv["virtops_address_source"] == "lease", hv
        assert hv["virtops_addresses"][0] == dict(mac=lab["mac"], address=lab["ip"], prefix=24, family="ipv4")
        assert (hv["virtops_uri"], hv["virtops_hypervisor"], hv["virtops_name"]) == (uri, hypervisor, lab["clone"])
        assert hv["virtops_state"] == "running" and hv["virtops_macs"] == [lab["mac"]]
        assert hv["virtops_provenance"]["template"] == f"{lab['prefix']}-tpl"
        assert hv["virtops_provenance"]["created_by"] == "virtops.kvm"
        assert hv["virtops_disks"] and all(p.startswith(str(lab["scratch"])) for p in hv["virtops_disks"])
        assert hv["virtops_memory_mib"] == 256 and hv["virtops_vcpus"] >= 1
    assert "ansible_ssh_common_args" not in hostvars[c_local]
    assert hostvars[c_ssh]["ansible_ssh_common_args"] == f"-o ProxyJump=root@{SSH_HOST}:{sshd['port']}"
    off = hostvars[off_ssh]
    assert "ansible_host" not in off and off["virtops_provenance"] is None
    assert off["virtops_address_error"] == "the domain is not running (state: shutoff)"

    graph = inventory(tmp_path, config, "--graph")
    assert graph.returncode == 0, graph.stderr
    for group in ("@hypervisor_localhost:", "@hypervisor_127_0_0_2:", f"@{template}:", "@state_running:"):
        assert group in graph.stdout, graph.stdout
    assert f"|--{c_ssh}" in graph.stdout and "127_0_0_3" not in graph.stdout
    print(f"clone booted with its lease in {lab['booted']:.1f} s; ansible-inventory --list of 3 URIs: {took:.1f} s")


def test_strict_makes_the_dead_uri_fail_the_source(lab, sshd, tmp_path):
    config = dict(uris=three_uris(sshd), strict=True)
    r = inventory(tmp_path, config, "--list", env=dict(ANSIBLE_INVENTORY_UNPARSED_FAILED="true"))
    assert r.returncode != 0
    said = " ".join(r.stderr.split())
    assert "1 of 3 URIs could not be read (strict: true)" in said and DEAD_HOST in said, said


def test_cache_second_call_uses_the_cache(lab, conn, tmp_path):
    config = dict(
        uris=["qemu:///system"],
        cache=True,
        cache_plugin="ansible.builtin.jsonfile",
        cache_connection=str(tmp_path / "cache"),
    )
    first = inventory(tmp_path, config, "--list")
    assert first.returncode == 0, first.stderr
    assert lab["clone"] in json.loads(first.stdout)["_meta"]["hostvars"]
    late = f"{lab['prefix']}-late"
    conn.defineXML(guestlib.domain_xml(late, None, lab["scratch"] / f"{late}.log", kind="kernel"))
    second = inventory(tmp_path, config, "--list")
    assert second.returncode == 0, second.stderr
    assert late not in json.loads(second.stdout)["_meta"]["hostvars"], "the second call did not use the cache"
    assert json.loads(second.stdout)["_meta"] == json.loads(first.stdout)["_meta"]
    flushed = inventory(tmp_path, config, "--list", "--flush-cache")
    assert flushed.returncode == 0, flushed.stderr
    hostvars = _plain(json.loads(flushed.stdout))["_meta"]["hostvars"]
    assert hostvars[late]["virtops_state"] == "shutoff"


def test_kvm_domain_address_gives_the_address_the_inventory_gives(lab):
    # the booted clone: found at once, from its lease, the inventory's ansible_host
    r = run_module("kvm_domain_address", dict(name=[lab["clone"]], sources=["lease"], timeout=60))
    assert not r.get("failed"), r.get("msg")
    assert r["hosts"] == {lab["clone"]: lab["ip"]} and r["changed"] is False
    assert r["addresses"][lab["clone"]]["source"] == "lease"
    # a shut-off domain fails at once (no waiting for an address it cannot get), the other is still reported
    r = run_module("kvm_domain_address", dict(name=[lab["clone"], lab["off"]], timeout=300))
    assert r.get("failed") and r["missing"] == [lab["off"]] and r["waited"] < 30, r
    assert f"{lab['off']}: the domain is not running" in r["msg"] and r["hosts"] == {lab["clone"]: lab["ip"]}
    # check mode: a clone only planned so far is reported, not an error, and nothing is waited for
    planned = f"{lab['prefix']}-planned"
    r = run_module("kvm_domain_address", dict(name=[lab["clone"], planned]), check=True)
    assert not r.get("failed"), r.get("msg")
    assert r["addresses"][planned]["error"] == f"domain {planned} is not defined" and r["waited"] < 30
