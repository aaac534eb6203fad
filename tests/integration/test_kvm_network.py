"""kvm_network (and kvm_clone's network attachment and reservations) against the real qemu:///system.

Network rule: no test sends anything to a guest's address, nor to any address
that is not loopback. DHCP is proven by what libvirt reports (the network's
leases, its DHCP host entries) and by the line the test guest prints on its
own serial console (``VIRTOPS-IP eth0 <address>``). Networks are isolated (no
forward) unless a test is about NAT, routed or open networks, which are only
defined or started. Subnets are /24s that no host interface, route or libvirt
network has; the tests refuse to run when none is free. Every network and
bridge a test makes is removed in a finally block.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import time
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from tests import guestlib
from tests.harness import assert_four_ways, four_ways, run_module

pytestmark = pytest.mark.slow

MOD = "kvm_network"
CANDIDATES = ["172.31.213.0/24", "172.31.214.0/24", "10.213.47.0/24", "10.213.48.0/24", "192.168.213.0/24"]
IP_LINE = re.compile(r"VIRTOPS-IP (\S+) (\d+\.\d+\.\d+\.\d+)")


def _host_networks() -> list:
    out = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        text = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        for word in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)\b", text):
            try:
                out.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                pass
    return out


def _libvirt_networks(conn) -> list:
    out = []
    for net in conn.listAllNetworks(0):
        root = etree.fromstring(net.XMLDesc(0).encode())
        for ip in root.findall("ip"):
            if ip.get("family", "ipv4") == "ipv4" and ip.get("address"):
                mask = ip.get("prefix") or ip.get("netmask") or "24"
                out.append(ipaddress.ip_network(f"{ip.get('address')}/{mask}", strict=False))
    return out


@pytest.fixture(scope="module")
def subnets(conn) -> list:
    """Two free private /24s (as ip_network), or the tests refuse to run."""
    used = _host_networks() + _libvirt_networks(conn)
    free = [ipaddress.ip_network(c) for c in CANDIDATES]
    free = [c for c in free if not any(c.overlaps(u) for u in used if u.prefixlen > 0)]
    if len(free) < 2:
        pytest.fail(f"refusing to run: fewer than two of {CANDIDATES} are free on this host ({used})", pytrace=False)
    return free[:2]


@pytest.fixture
def nets(conn):
    """A list to append network names to; each is stopped and undefined at teardown."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            net = conn.networkLookupByName(name)
        except libvirt.libvirtError:
            continue
        if net.isActive():
            net.destroy()
        if net.isPersistent():
            net.undefine()


def four(args, first=True):
    results = four_ways(MOD, args)
    assert_four_ways(results, first_changes=first)
    assert results[0]["diff"] == results[1]["diff"], "check mode must predict the real diff"
    assert results[0]["changes"] == results[1]["changes"]
    return results


def addr(subnet, n: int) -> str:
    return str(subnet.network_address + n)


def lab_args(name, subnet, hosts=None, **kw):
    return dict(
        name=name,
        forward_mode="isolated",
        ips=[
            dict(
                address=addr(subnet, 1),
                prefix=24,
                dhcp_ranges=[dict(start=addr(subnet, 100), end=addr(subnet, 120))],
                dhcp_hosts=hosts if hosts is not None else [],
            )
        ],
        **kw,
    )


def dnsmasq_pid(name: str) -> int:
    pid = int(Path(f"/run/libvirt/network/{name}.pid").read_text().strip())
    os.kill(pid, 0)  # alive
    return pid


def live_hosts(conn, name: str) -> list[tuple]:
    root = etree.fromstring(conn.networkLookupByName(name).XMLDesc(0).encode())
    return sorted((h.get("mac"), h.get("name"), h.get("ip")) for h in root.iter("host") if h.get("mac"))


def test_isolated_network_lifecycle(conn, nets, subnets):
    net_a = subnets[0]
    name = f"{guestlib.new_prefix()}-iso"
    nets.append(name)
    args = lab_args(name, net_a, hosts=[dict(mac="52:54:00:5a:00:01", ip=addr(net_a, 10), name="web1")],
                    dns_hosts=[dict(ip=addr(net_a, 10), hostnames=["web1", "www"])])  # fmt: skip
    r = four(args)
    assert r[0]["network"] is None and r[1]["changes"] == ["define"]
    net = conn.networkLookupByName(name)
    assert net.isPersistent() and not net.isActive()

    r = four(dict(name=name, state="active", autostart=True))
    assert r[1]["changes"] == ["start", "autostart on"]
    assert net.isActive() and net.autostart() == 1
    bridge = net.bridgeName()
    assert os.path.isdir(f"/sys/class/net/{bridge}/bridge") and r[2]["network"]["bridge"] == bridge
    pid = dnsmasq_pid(name)

    # libvirt's own XML of it, given back without uuid/mac/bridge: nothing to change (semantic compare)
    dumped = etree.fromstring(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE).encode())
    for tag in ("uuid", "mac", "bridge"):
        dumped.remove(dumped.find(tag))
    r = run_module(MOD, dict(name=name, xml=etree.tostring(dumped, encoding="unicode")))
    assert r["changed"] is False and not r.get("failed"), r.get("msg")
    assert run_module(MOD, args)["changed"] is False

    # a new DHCP range needs a restart: defined, reported, not done
    new_range = dict(address=addr(net_a, 1), dhcp_ranges=[dict(start=addr(net_a, 150), end=addr(net_a, 160))])
    r = four(dict(name=name, ips=[new_range]))
    assert [x["pending_restart"] for x in r] == [True] * 4
    assert r[1]["changes"][-1] == "define"
    assert dnsmasq_pid(name) == pid and net.isActive()
    assert addr(net_a, 100) in net.XMLDesc(0) and addr(net_a, 150) in net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    # ... and done when asked: restart once, then nothing is pending
    r = four(dict(name=name, ips=[new_range], restart=True))
    assert r[1]["changes"] == ["restart"] and r[1]["pending_restart"] is False and r[2]["pending_restart"] is False
    assert addr(net_a, 150) in net.XMLDesc(0) and dnsmasq_pid(name) != pid
    assert ("52:54:00:5a:00:01", "web1", addr(net_a, 10)) in live_hosts(conn, name)  # kept through it all

    four(dict(name=name, state="inactive"))
    assert not net.isActive() and not os.path.exists(f"/sys/class/net/{bridge}")
    four(dict(name=name, state="absent"))
    assert name not in [n.name() for n in conn.listAllNetworks()]


def test_nat_route_open_and_a_host_bridge(conn, nets, subnets):
    net_b = subnets[1]
    prefix = guestlib.new_prefix()
    nat = f"{prefix}-nat"
    nets.append(nat)
    # NAT: defined and started (iptables rules and dnsmasq), no traffic sent anywhere
    four(dict(name=nat, forward_mode="nat", ips=[dict(address=addr(net_b, 1), prefix=24,
              dhcp_ranges=[dict(start=addr(net_b, 2), end=addr(net_b, 9))])], state="active"))  # fmt: skip
    root = etree.fromstring(conn.networkLookupByName(nat).XMLDesc(0).encode())
    assert root.find("forward").get("mode") == "nat" and root.find("forward/nat/port") is not None
    four(dict(name=nat, state="absent"))
    for mode in ("route", "open"):
        name = f"{prefix}-{mode}"
        nets.append(name)
        r = four(dict(name=name, forward_mode=mode, ips=[dict(address=addr(net_b, 1), prefix=24)]))
        assert r[2]["network"]["forward_mode"] == mode and r[2]["network"]["active"] is False
        four(dict(name=name, forward_mode="isolated"))  # a changed mode is a definition change
        assert etree.fromstring(conn.networkLookupByName(name).XMLDesc(0).encode()).find("forward") is None
        four(dict(name=name, state="absent"))
    # an existing host bridge (made here, removed in finally)
    bridge, name = f"vtb{prefix[3:]}", f"{prefix}-br"
    nets.append(name)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        r = four(dict(name=name, forward_mode="bridge", bridge=bridge, state="active"))
        assert r[2]["network"]["bridge"] == bridge and r[2]["network"]["forward_mode"] == "bridge"
        four(dict(name=name, state="absent"))
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False)


def test_bad_input_changes_nothing(conn, nets, subnets):
    net_a = subnets[0]
    name = f"{guestlib.new_prefix()}-bad"
    nets.append(name)
    before = sorted(n.name() for n in conn.listAllNetworks())
    host = dict(mac="52:54:00:5a:00:01", ip=addr(net_a, 10))
    cases = [
        (
            dict(
                ips=[
                    dict(
                        address=addr(net_a, 1),
                        dhcp_ranges=[
                            dict(start=addr(net_a, 2), end=addr(net_a, 20)),
                            dict(start=addr(net_a, 10), end=addr(net_a, 30)),
                        ],
                    )
                ]
            ),
            "overlaps",
        ),
        (dict(ips=[dict(address=addr(net_a, 1), dhcp_ranges=[dict(start="10.255.255.2", end="10.255.255.9")])]),
         "not inside the subnet"),
        (dict(ips=[dict(address=addr(net_a, 1), dhcp_hosts=[dict(host, ip="10.255.255.5")])]), "not inside the subnet"),
        (dict(ips=[dict(address=addr(net_a, 1), dhcp_hosts=[dict(host, mac="52:54:00:5a:00:0x")])]), "not of the form"),
        (dict(ips=[dict(address=addr(net_a, 1), dhcp_hosts=[dict(host, mac="01:00:5e:00:00:01")])]), "multicast"),
        (dict(forward_mode="bridge", bridge="vtnosuchbr0"), "does not exist"),
        (dict(forward_mode="nat", ips=[dict(address="not-an-address")]), "not an IPv4 or IPv6 address"),
        (dict(xml="<network><name>x</name></network>"), "names the network"),
        (dict(forward_mode="nat", uri="qemu+unix:///system?socket=/tmp/nonexistent.sock"), "not running"),
    ]  # fmt: skip
    for extra, text in cases:
        for check in (True, False):
            r = run_module(MOD, dict(name=name, **extra), check=check)
            assert r.get("failed") and text in r["msg"], (extra, r.get("msg"))
    assert sorted(n.name() for n in conn.listAllNetworks()) == before


def _wait_ip(log: Path, timeout: float = 240) -> tuple[str, str]:
    """The (interface, address) the guest printed after its DHCP lease (TimeoutError with the log's tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = IP_LINE.findall(text)
        if found:
            return found[-1]
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no serial log)"
    raise TimeoutError(f"no VIRTOPS-IP line in {log} after {timeout} s:\n{tail}")


def test_a_clone_gets_its_reservation_and_host_entries_change_live(conn, guest, prefix, scratch, nets, subnets):
    net_a = subnets[0]
    name = f"{prefix}-lab"
    nets.append(name)
    other = dict(mac="52:54:00:5a:00:77", ip=addr(net_a, 77), name="other")
    r = run_module(MOD, dict(lab_args(name, net_a, hosts=[other]), state="active"))
    assert not r.get("failed"), r.get("msg")
    tpl_disk = guestlib.make_overlay(guest["base"], scratch / "tpl.qcow2")
    tpl_xml = guestlib.domain_xml(f"{prefix}-tpl", tpl_disk, scratch / f"{prefix}-tpl.log")
    clone = f"{prefix}-c1"
    clone_args = dict(template_xml=tpl_xml, clones=[clone], network=name, domain_type="qemu", state="running")
    results = four_ways("kvm_clone", clone_args)
    assert_four_ways(results)
    reserved = results[1]["clones"][0]["ip"]
    assert reserved == addr(net_a, 100) == results[0]["clones"][0]["ip"]  # lowest free, predicted in check mode
    assert [x["clones"][0]["ip"] for x in results] == [reserved] * 4
    mac = results[1]["clones"][0]["macs"][0]
    assert (mac, clone, reserved) in live_hosts(conn, name)
    dom = conn.lookupByName(clone)

    # the guest asked the network's DHCP and got its reservation: its own console line and libvirt's lease say so
    log = scratch / f"{clone}.log"
    assert _wait_ip(log) == ("eth0", reserved)
    leases = run_module(MOD, dict(name=name))["network"]["leases"]
    assert any(lease["mac"] == mac and lease["ip"] == reserved for lease in leases), leases

    # live host entry changes with the guest running: no restart, the guest keeps running
    dom_id, pid, bridge = dom.ID(), dnsmasq_pid(name), conn.networkLookupByName(name).bridgeName()
    new = dict(mac="52:54:00:5a:00:78", ip=addr(net_a, 78), name="db1")
    r = four(dict(name=name, ips=[dict(address=addr(net_a, 1), dhcp_hosts=[new, dict(other, ip=addr(net_a, 79))])],
                  dns_hosts=[dict(ip=addr(net_a, 78), hostnames=["db1", "db"])]))  # fmt: skip
    assert all(c.endswith("(running and defined)") for c in r[1]["changes"]) and len(r[1]["changes"]) == 4
    assert r[1]["pending_restart"] is False
    assert (dom.state()[0], dom.ID()) == (libvirt.VIR_DOMAIN_RUNNING, dom_id)
    assert dnsmasq_pid(name) == pid and conn.networkLookupByName(name).bridgeName() == bridge
    assert live_hosts(conn, name) == sorted(
        [
            (mac, clone, reserved),
            ("52:54:00:5a:00:78", "db1", addr(net_a, 78)),
            (other["mac"], "other", addr(net_a, 79)),
        ]
    )  # the clone's reservation was not listed and is kept
    assert r[2]["network"]["used_by"] == [dict(domain=clone, active=True)]

    # a network running guests use is not stopped, restarted or removed without force
    wider = dict(address=addr(net_a, 1), dhcp_ranges=[dict(start=addr(net_a, 100), end=addr(net_a, 130))])
    pending = dict(name=name, ips=[wider], restart=True)
    for args in (dict(name=name, state="inactive"), dict(name=name, state="absent"), pending):
        for check in (True, False):
            r = run_module(MOD, args, check=check)
            assert r.get("failed") and "force: true" in r["msg"] and clone in r["msg"], r.get("msg")
    assert conn.networkLookupByName(name).isActive() and dnsmasq_pid(name) == pid

    # removing the clone removes its reservation, and only that
    gone = four_ways("kvm_clone", dict(clones=[clone], state="absent"))
    assert_four_ways(gone)
    assert live_hosts(conn, name) == sorted(
        [("52:54:00:5a:00:78", "db1", addr(net_a, 78)), (other["mac"], "other", addr(net_a, 79))]
    )
    four(dict(name=name, state="absent"))
