"""NetworkManager against libvirt's test:///default driver (a real libvirt in this process, no daemon).

The test driver keeps one definition per network (no separate persistent
config of a running one) and has no DHCP leases; the rest (define, start,
stop, undefine, autostart, virNetworkUpdate) is libvirt's own code.
"""

from __future__ import annotations

import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._network import checks
from ansible_collections.virtops.kvm.plugins.module_utils._network.manager import NetworkManager

URI = "test:///default"


@pytest.fixture
def name(conn):
    n = f"ut-{secrets.token_hex(4)}"
    yield n
    for dom in conn.listAllDomains():
        if dom.name().startswith("ut-"):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    try:
        net = conn.networkLookupByName(n)
    except libvirt.libvirtError:
        return
    if net.isActive():
        net.destroy()
    if net.isPersistent():
        net.undefine()


def run(keeper, check=False, **params):
    params.setdefault("uri", URI)
    return NetworkManager(params, keeper, check).run()


def four(keeper, first=True, **params):
    """check, real, again, again in check: the house's four ways."""
    results = [run(keeper, check, **params) for check in (True, False, False, True)]
    assert [r["changed"] for r in results] == [first, first, False, False], [r["changes"] for r in results]
    assert results[0]["changes"] == results[1]["changes"]
    assert results[0]["diff"] == results[1]["diff"], "check mode must predict the real diff"
    return results


def lab(name, **kw):
    hosts = kw.pop("hosts", [dict(mac="52:54:00:aa:00:01", ip="10.77.0.10", name="web1")])
    return dict(
        name=name,
        forward_mode="isolated",
        ips=[
            dict(
                address="10.77.0.1", prefix=24, dhcp_ranges=[dict(start="10.77.0.100", end="10.77.0.200")],
                dhcp_hosts=hosts,
            )
        ],
        **kw,
    )  # fmt: skip


def test_define_start_autostart_absent_four_ways(keeper, conn, name):
    r = four(keeper, **lab(name))
    assert r[0]["network"] is None and r[1]["changes"] == ["define"]
    net = conn.networkLookupByName(name)
    assert not net.isActive() and net.isPersistent()
    info = r[2]["network"]
    assert info["forward_mode"] == "isolated" and info["ips"][0]["dhcp_hosts"][0]["ip"] == "10.77.0.10"
    assert "state: inactive" in r[1]["diff"]["after"] and r[1]["diff"]["before"] == ""

    r = four(keeper, name=name, state="active", autostart=True)
    assert r[1]["changes"] == ["start", "autostart on"]
    assert net.isActive() and net.autostart() == 1
    assert r[1]["network"]["active"] is True and r[1]["network"]["leases"] == []

    four(keeper, name=name, autostart=False)
    assert net.autostart() == 0

    r = four(keeper, name=name, state="absent")
    assert r[1]["changes"] == ["stop", "undefine"] and r[1]["network"] is None
    assert name not in [n.name() for n in conn.listAllNetworks()]


def test_from_xml_and_nothing_churned(keeper, conn, name):
    xml = f"""<network><name>{name}</name><forward mode='nat'/>
      <ip address='10.78.0.1' netmask='255.255.255.0'><dhcp><range start='10.78.0.2' end='10.78.0.9'/></dhcp></ip>
      </network>"""
    four(keeper, name=name, xml=xml, state="active")
    uuid = conn.networkLookupByName(name).UUIDString()
    # the XML again, without a name, in another spelling: no change, same UUID
    same = xml.replace(f"<name>{name}</name>", "").replace("netmask='255.255.255.0'", "prefix='24'")
    assert run(keeper, name=name, xml=same)["changed"] is False
    assert conn.networkLookupByName(name).UUIDString() == uuid


def test_host_entries_change_live_without_a_restart(keeper, conn, name):
    run(keeper, state="active", **lab(name))
    net = conn.networkLookupByName(name)
    new = dict(mac="52:54:00:aa:00:02", ip="10.77.0.11", name="db1")
    dns = [dict(ip="10.77.0.11", hostnames=["db1", "db"])]
    r = four(keeper, name=name, ips=[dict(address="10.77.0.1", dhcp_hosts=[new])], dns_hosts=dns)
    assert r[1]["changes"] == [
        "dhcp host add (10.77.0.1): mac=52:54:00:aa:00:02 name=db1 ip=10.77.0.11 (running and defined)",
        "dns host add: 10.77.0.11 db1,db (running and defined)",
    ]
    assert r[1]["pending_restart"] is False and net.isActive()
    hosts = nx.ip_blocks(nx.parse(net.XMLDesc(0)))[0]["hosts"]
    assert [h["name"] for h in hosts] == ["web1", "db1"]  # web1 kept: not listed, not purged
    # move db1 to another address: one delete and one add, still live
    moved = dict(new, ip="10.77.0.12")
    r = four(keeper, name=name, ips=[dict(address="10.77.0.1", dhcp_hosts=[moved])])
    assert [c.split(" (")[0] for c in r[1]["changes"]] == ["dhcp host delete", "dhcp host add"]
    # purge: only what is listed stays
    r = four(keeper, name=name, purge_hosts=True, ips=[dict(address="10.77.0.1", dhcp_hosts=[moved])],
             dns_hosts=[dict(ip="10.77.0.11", hostnames=["db1", "db"])])  # fmt: skip
    assert [h["name"] for h in nx.ip_blocks(nx.parse(net.XMLDesc(0)))[0]["hosts"]] == ["db1"]
    four(keeper, name=name, ips=[dict(address="10.77.0.1", dhcp_hosts=[dict(mac=new["mac"], state="absent")])])
    assert nx.ip_blocks(nx.parse(net.XMLDesc(0)))[0]["hosts"] == []


def test_a_definition_change_of_an_inactive_network_is_defined(keeper, conn, name):
    run(keeper, **lab(name))
    r = four(
        keeper, name=name, ips=[dict(address="10.77.0.1", dhcp_ranges=[dict(start="10.77.0.50", end="10.77.0.60")])]
    )
    assert r[1]["changes"][-1] == "define" and any("range[10.77.0.50,10.77.0.60]: added" in c for c in r[1]["changes"])
    assert r[1]["pending_restart"] is False
    root = nx.parse(conn.networkLookupByName(name).XMLDesc(0))
    assert nx.ip_blocks(root)[0]["ranges"] == [("10.77.0.50", "10.77.0.60")]
    assert nx.ip_blocks(root)[0]["hosts"][0]["name"] == "web1"


def _guest(conn, name, net_name, active=True):
    xml = f"""<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os>
      <devices><interface type='network'><mac address='52:54:00:aa:00:09'/><source network='{net_name}'/></interface>
      </devices></domain>"""
    dom = conn.defineXML(xml)
    if active:
        dom.create()
    return dom


def test_a_used_network_is_not_stopped_or_removed_without_force(keeper, conn, name):
    run(keeper, state="active", **lab(name))
    _guest(conn, f"{name}-vm", name)
    for state in ("inactive", "absent"):
        for check in (True, False):
            with pytest.raises(Conflict, match="force: true") as err:
                run(keeper, check, name=name, state=state)
            assert err.value.details["used_by"] == [f"{name}-vm"]
    assert conn.networkLookupByName(name).isActive()
    r = run(keeper, name=name)
    assert r["network"]["used_by"] == [dict(domain=f"{name}-vm", active=True)]
    r = run(keeper, name=name, state="inactive", force=True)
    assert r["changes"] == ["stop"] and not conn.networkLookupByName(name).isActive()


def test_removing_warns_about_defined_domains(keeper, conn, name):
    run(keeper, **lab(name))
    _guest(conn, f"{name}-off", name, active=False)
    m = NetworkManager(dict(name=name, state="absent", uri=URI), keeper, False)
    assert m.run()["changes"] == ["undefine"]
    assert any(f"{name}-off" in w for w in m.warnings)


def test_bad_input_changes_nothing(keeper, conn, name):
    run(keeper, **lab(name))
    before = conn.networkLookupByName(name).XMLDesc(0)
    cases = [
        (lab(name, hosts=[dict(mac="52:54:00:aa:00:0g", ip="10.77.0.10")]), InvalidInput, "not of the form"),
        (lab(name, hosts=[dict(mac="52:54:00:aa:00:03", ip="10.99.0.10")]), InvalidInput, "not inside the subnet"),
        (
            dict(
                name=name,
                ips=[
                    dict(
                        address="10.77.0.1",
                        dhcp_ranges=[
                            dict(start="10.77.0.2", end="10.77.0.9"),
                            dict(start="10.77.0.5", end="10.77.0.12"),
                        ],
                    )
                ],
            ),
            InvalidInput,
            "overlaps",
        ),
        (dict(name=name, forward_mode="bridge", bridge="vt-nosuchbr0", ips=[]), InvalidInput, "does not exist"),
        (dict(name=f"{name}-new"), InvalidInput, "gives nothing to define"),
        (dict(name="bad/name", forward_mode="nat"), InvalidInput, "name is 'bad/name': a name is"),
        (dict(name=name, xml="<network><name>x</name></network>"), InvalidInput, "names the network"),
    ]  # fmt: skip
    for params, error, text in cases:
        for check in (True, False):
            with pytest.raises(error, match=text):
                run(keeper, check, **params)
    assert conn.networkLookupByName(name).XMLDesc(0) == before
    assert f"{name}-new" not in [n.name() for n in conn.listAllNetworks()]


def test_host_bridge_mode(keeper, conn, name, tmp_path, monkeypatch):
    (tmp_path / "br-ut" / "bridge").mkdir(parents=True)
    (tmp_path / "eth-ut").mkdir()
    monkeypatch.setattr(checks, "SYS_CLASS_NET", str(tmp_path))
    with pytest.raises(InvalidInput, match="not a bridge"):
        run(keeper, name=name, forward_mode="bridge", bridge="eth-ut")
    r = four(keeper, name=name, forward_mode="bridge", bridge="br-ut", state="active")
    assert r[2]["network"]["forward_mode"] == "bridge" and r[2]["network"]["bridge"] == "br-ut"
    with pytest.raises(Conflict, match="already a network interface"):
        run(keeper, name=f"{name}-x", forward_mode="nat", bridge="eth-ut", ips=[dict(address="10.79.0.1")])


def test_overlap_with_an_active_network_is_refused(keeper, conn, name):
    run(keeper, state="active", **lab(name))
    other = dict(lab(f"{name}-b"), state="active")
    with pytest.raises(Conflict, match="overlaps"):
        run(keeper, **other)
    other["state"] = "present"
    run(keeper, **other)  # defined, not started: no collision yet
    with pytest.raises(Conflict, match="overlaps"):
        run(keeper, name=f"{name}-b", state="active")
    run(keeper, name=f"{name}-b", state="absent")
