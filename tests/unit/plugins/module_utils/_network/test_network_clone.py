"""kvm_clone with a network: each clone's NIC on it and a deterministic DHCP reservation per clone.

Against libvirt's test:///default driver (networks and virNetworkUpdate are
libvirt's own code there) and real qemu-img in tmp_path, through the same
seams as test_clone_manager.
"""

from __future__ import annotations

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils._clone.transform import attach_network
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput
from tests import fakes

TPL = "ut-ntpl"
NET = "ut-fleetnet"


@pytest.fixture
def conn():
    c, close = fakes.open_conn()
    yield c
    close()


@pytest.fixture
def tpl(conn, tmp_path):
    return fakes.make_template(conn, tmp_path, TPL)


@pytest.fixture
def net(conn):
    n = conn.networkDefineXML(f"""<network><name>{NET}</name><bridge name='ut-virbr9'/>
      <ip address='10.66.0.1' prefix='24'><dhcp><range start='10.66.0.100' end='10.66.0.110'/>
      <host mac='52:54:00:ff:00:01' name='someone' ip='10.66.0.100'/></dhcp></ip></network>""")
    n.create()
    return n


def run(conn, tmp_path, check=False, **params):
    params.setdefault("template", TPL)
    params.setdefault("identity", {"operations": []})  # blank test disks: the reset has its own tests
    params.setdefault("network", NET)
    return fakes.clone_manager(conn, tmp_path, check, **params).run()


def hosts(net) -> list[dict]:
    return nx.ip_blocks(nx.parse(net.XMLDesc(0)))[0]["hosts"]


def test_attach_network_keeps_model_mac_and_address():
    root = dx.parse("""<domain><name>x</name><devices><interface type='user'><mac address='52:54:00:00:00:05'/>
      <model type='virtio'/><backend type='passt'/><ip address='10.0.2.15' family='ipv4'/>
      <address type='pci' domain='0' bus='0' slot='3' function='0'/></interface></devices></domain>""")
    attach_network(root.find("devices"), "lab")
    iface = root.find("devices/interface")
    assert iface.get("type") == "network" and iface.find("source").get("network") == "lab"
    assert [c.tag for c in iface] == ["mac", "source", "model", "address"]


def test_fleet_reservations_four_ways_and_removal(conn, tpl, tmp_path, net):
    kw = dict(clones=["ut-a", {"name": "ut-b", "ip": "10.66.0.105"}, "ut-c"])
    before = hosts(net)
    check = run(conn, tmp_path, True, **kw)
    # deterministic: lowest free address of the range (10.66.0.100 is someone's), in batch order
    assert [(c["name"], c["network"], c["ip"]) for c in check["clones"]] == [
        ("ut-a", NET, "10.66.0.101"),
        ("ut-b", NET, "10.66.0.105"),
        ("ut-c", NET, "10.66.0.102"),
    ]
    assert hosts(net) == before  # check mode reserved nothing
    real = run(conn, tmp_path, **kw)
    assert [c["ip"] for c in real["clones"]] == [c["ip"] for c in check["clones"]]
    assert real["diff"]["after"]["clones"]["ut-a"]["ip"] == "10.66.0.101"
    for c in real["clones"]:
        root = dx.parse(conn.lookupByName(c["name"]).XMLDesc(0))
        iface = dx.interfaces(root)[0]
        assert (iface["type"], iface["source"]) == ("network", NET)
        assert dict(mac=c["macs"][0], id=None, name=c["name"], ip=c["ip"]) in hosts(net)
    assert hosts(net)[0]["name"] == "someone"
    again = run(conn, tmp_path, **kw)
    assert again["changed"] is False and [c["ip"] for c in again["clones"]] == [c["ip"] for c in real["clones"]]
    assert run(conn, tmp_path, True, **kw)["changed"] is False

    # an entry lost by hand comes back, with the same address
    net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
               nx.dhcp_host_xml(real["clones"][2]["macs"][0], "10.66.0.102", "ut-c"),
               libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG)  # fmt: skip
    fixed = run(conn, tmp_path, **kw)
    assert fixed["changed"] is True and [c["changed"] for c in fixed["clones"]] == [False, False, True]
    assert fixed["clones"][2]["ip"] == "10.66.0.102"

    # removal takes each clone's entry with it (the network option is not needed), and nothing else
    gone = dict(clones=["ut-a", "ut-b", "ut-c"], state="absent", network=None)
    assert run(conn, tmp_path, True, **gone)["changed"] is True
    assert len(hosts(net)) == 4
    run(conn, tmp_path, **gone)
    assert [h["name"] for h in hosts(net)] == ["someone"]
    assert run(conn, tmp_path, **gone)["changed"] is False

    # made again with new MACs: the same addresses (the batch order decides)
    remade = run(conn, tmp_path, **kw)
    assert [c["ip"] for c in remade["clones"]] == ["10.66.0.101", "10.66.0.105", "10.66.0.102"]


def test_a_recreated_clone_keeps_its_address_by_name(conn, tpl, tmp_path, net):
    first = run(conn, tmp_path, clones=["ut-a", "ut-b"])
    conn.lookupByName("ut-a").undefine()  # removed by hand (kvm_domain): its entry stays behind
    (tmp_path / "ut-a.qcow2").unlink()
    again = run(conn, tmp_path, clones=["ut-b", "ut-a"])
    by_name = {c["name"]: c for c in again["clones"]}
    assert by_name["ut-a"]["ip"] == first["clones"][0]["ip"]
    assert [h["name"] for h in hosts(net)].count("ut-a") == 1


def test_refusals_change_nothing(conn, tpl, tmp_path, net):
    cases = [
        (dict(name="ut-a", network="ut-nonet"), InvalidInput, "not defined"),
        (dict(clones=[{"name": "ut-a", "ip": "10.66.0.100"}]), Conflict, "already the entry"),
        (dict(clones=[{"name": "ut-a", "ip": "10.67.0.5"}]), InvalidInput, "not a free host address"),
        (dict(clones=[{"name": "ut-a", "ip": "10.66.0.1"}]), InvalidInput, "not a free host address"),
        (dict(clones=[{"name": "ut-a", "ip": "10.66.0.5"}], network=None), InvalidInput, "needs the network"),
        (dict(clones=[{"name": "ut-a", "ip": "fd00::5"}]), InvalidInput, "not IPv4"),
        (dict(clones=["ut_a"]), InvalidInput, "the host name of its DHCP reservation"),
        (dict(clones=[f"ut-{i}" for i in range(11)]), Conflict, "no free address"),
    ]
    before = (hosts(net), sorted(d.name() for d in conn.listAllDomains()))
    for params, error, text in cases:
        for check in (True, False):
            with pytest.raises(error, match=text):
                run(conn, tmp_path, check, **params)
    assert (hosts(net), sorted(d.name() for d in conn.listAllDomains())) == before


def test_an_existing_clone_on_another_network_is_a_conflict(conn, tpl, tmp_path, net):
    run(conn, tmp_path, name="ut-a", network=None)
    with pytest.raises(Conflict, match="not on network"):
        run(conn, tmp_path, name="ut-a")
    plain = run(conn, tmp_path, name="ut-b", network=NET, dhcp_reservations=False)
    assert plain["clones"][0]["ip"] is None and len(hosts(net)) == 1


def test_a_new_clone_first_in_the_batch_takes_no_address_of_the_others(conn, tpl, tmp_path, net):
    first = run(conn, tmp_path, clones=["ut-a", "ut-b"])
    assert [c["ip"] for c in first["clones"]] == ["10.66.0.101", "10.66.0.102"]
    more = run(conn, tmp_path, clones=["ut-new", "ut-a", "ut-b"])
    assert [(c["name"], c["ip"], c["changed"]) for c in more["clones"]] == [
        ("ut-new", "10.66.0.103", True),
        ("ut-a", "10.66.0.101", False),
        ("ut-b", "10.66.0.102", False),
    ]
