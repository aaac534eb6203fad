"""A guest on a private libvirt network is reached over its address, from inside a NetHost only.

``tests/nethost.py`` starts a simulated hypervisor (its own libvirtd in private network, mount
and UTS namespaces). In it: a NAT network with DHCP, the test guest booted on it, its lease
read through libvirt, and its TCP service (busybox httpd on the manifest's ``http_port``)
fetched at that lease by a program run inside the NetHost's network namespace. The host's own
network namespace gets no route to the network and sends it nothing; the host's libvirtd does
not see the domain or the network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from lxml import etree

from tests import guestlib, nethost

BOOT_TIMEOUT = 240  # TCG on 2 shared cores; the lease comes ~10 s after the boot marker
SUBNET = "192.168.150"  # any private range: it exists only inside the NetHost's network namespace
FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode(), end='')"


@pytest.fixture
def host() -> Iterator[nethost.NetHost]:
    """A started NetHost, stopped (domains, processes, directories) at teardown, also on failure."""
    nh = nethost.NetHost(guestlib.new_prefix())
    try:
        nh.start()
        yield nh
    finally:
        nh.stop()
        assert not nh.root.exists() and nethost.members(nh.root) == []


def _network_xml(name: str, bridge: str) -> str:
    return (
        f"<network><name>{name}</name><forward mode='nat'/><bridge name='{bridge}'/>"
        f"<ip address='{SUBNET}.1' netmask='255.255.255.0'>"
        f"<dhcp><range start='{SUBNET}.100' end='{SUBNET}.150'/></dhcp></ip></network>"
    )


def _on_network(xml: str, network: str) -> str:
    """The test guest's domain XML with its NIC on the libvirt network ``network`` (virtio)."""
    root = etree.fromstring(xml)
    devices = root.find("devices")
    for old in devices.findall("interface"):
        devices.remove(old)
    iface = etree.SubElement(devices, "interface", type="network")
    etree.SubElement(iface, "source", network=network)
    etree.SubElement(iface, "model", type="virtio")
    return etree.tostring(root, encoding="unicode")


def _wait_lease(net, mac: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for lease in net.DHCPLeases():
            if lease["mac"] == mac:
                return lease
        time.sleep(0.5)
    raise TimeoutError(f"no DHCP lease for {mac} on {net.name()} after {timeout} s")


def _fetch_inside(nh: nethost.NetHost, url: str, timeout: float = 60) -> str:
    """GET ``url`` from inside the NetHost's network namespace, retried until it answers."""
    deadline = time.monotonic() + timeout
    while True:
        proc = nh.run([sys.executable, "-c", FETCH, url], capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            assert proc.returncode == 0, proc.stderr[-1500:]
            return proc.stdout
        time.sleep(1)


def _host_route(address: str) -> dict:
    """The host's own route to ``address`` (``ip route get`` looks it up; it sends no packet)."""
    out = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True, check=False)
    return json.loads(out.stdout)[0] if out.returncode == 0 and out.stdout.strip() else {}


@pytest.mark.slow
def test_a_guest_on_a_nethost_network_is_reached_from_inside_it_only(guest, conn, host):
    t0 = time.monotonic()
    net_name, bridge = f"{host.name}-nat", "vnh" + host.name[3:]  # vt-xxxxxxxx -> vnhxxxxxxxx (11 chars)
    dom_name = f"{host.name}-g1"
    hconn = host.connect()
    try:
        assert hconn.getHostname() == host.hostname  # its own UTS namespace
        net = hconn.networkCreateXML(_network_xml(net_name, bridge))
        assert net.bridgeName() == bridge
        base = host.copy_image(guest["base"], "base.qcow2")  # /var/lib/libvirt is the NetHost's own inside it
        overlay = guestlib.make_overlay(base, host.images / "g1.qcow2")
        log = host.images / "g1-serial.log"
        dom = hconn.createXML(_on_network(guestlib.domain_xml(dom_name, overlay, log), net_name))
        mac = etree.fromstring(dom.XMLDesc(0)).find("devices/interface/mac").get("address")
        assert guestlib.wait_for_marker(log, BOOT_TIMEOUT) == ["VIRTOPS-GUEST-UP hostname=virtops-base"]
        lease = _wait_lease(net, mac, BOOT_TIMEOUT)
        address = lease["ipaddr"]
        assert address.startswith(SUBNET + ".") and lease["hostname"] == "virtops-base", lease
        leased = time.monotonic() - t0

        # from inside the NetHost's network namespace, the guest's service answers at its lease
        body = _fetch_inside(host, f"http://{address}:{guest['http_port']}/")
        assert body == f"{guest['http_marker']} hostname=virtops-base\n"
        inside = host.run(["ip", "-j", "route", "get", address], capture_output=True, text=True, check=True)
        assert json.loads(inside.stdout)[0]["dev"] == bridge

        # the host's own network namespace: no such bridge, no route through it (nothing is sent)
        host_links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
        assert bridge not in {link["ifname"] for link in host_links}
        assert _host_route(address).get("dev") != bridge
        # the host's libvirtd sees neither the domain nor the network
        assert dom_name not in {d.name() for d in conn.listAllDomains()}
        assert net_name not in {n.name() for n in conn.listAllNetworks()}
    finally:
        hconn.close()
    print(
        f"\nNetHost start {host.start_seconds:.2f} s; guest leased {address} after {leased:.1f} s; "
        f"test body {time.monotonic() - t0:.1f} s"
    )
