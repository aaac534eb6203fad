"""kvm_network's pure rules: the wanted definition, the semantic compare, the checks, host entry changes.

No libvirt here: element trees in, element trees (or problems) out.
"""

from __future__ import annotations

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _dhcp
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._manager import with_defaults
from ansible_collections.virtops.kvm.plugins.module_utils._network import checks, compare
from ansible_collections.virtops.kvm.plugins.module_utils._network.definition import wanted_root
from ansible_collections.virtops.kvm.plugins.module_utils._network.manager import NetworkManager

# What libvirt 9 holds after defining a NAT network with a range and one host (virsh net-dumpxml --inactive).
DEFINED = """<network>
  <name>lab</name>
  <uuid>bfa09ebd-ddf9-4632-a405-376d74cd4918</uuid>
  <forward mode='nat'>
    <nat><port start='1024' end='65535'/></nat>
  </forward>
  <bridge name='virbr1' stp='on' delay='0'/>
  <mac address='52:54:00:C8:EF:97'/>
  <ip address='172.31.213.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='172.31.213.100' end='172.31.213.200'/>
      <host mac='52:54:00:00:00:01' name='a' ip='172.31.213.10'/>
    </dhcp>
  </ip>
</network>"""


def params(**kw):
    kw.setdefault("name", "lab")
    return with_defaults(NetworkManager.ARGUMENT_SPEC, kw)


def current():
    return nx.parse(DEFINED)


def predicted(cur=None, **kw):
    root, from_xml = wanted_root(params(**kw), cur)
    return compare.predict(root, from_xml, cur)


# --------------------------------------------------------------------------- model


def test_parse_refuses_other_roots_and_names_the_line():
    with pytest.raises(InvalidInput, match="expected <network>"):
        nx.parse("<domain/>")
    with pytest.raises(InvalidInput, match=r"line 2") as err:
        nx.parse("<network>\n<name>x</nam></network>")
    assert err.value.details["line"] == 2


def test_blocks_read_netmask_and_prefix_alike():
    b = nx.ip_blocks(current())[0]
    assert (b["family"], b["address"], b["prefix"], str(b["subnet"])) == ("ipv4", "172.31.213.1", 24, "172.31.213.0/24")
    assert b["ranges"] == [("172.31.213.100", "172.31.213.200")]
    assert b["hosts"] == [dict(mac="52:54:00:00:00:01", id=None, name="a", ip="172.31.213.10")]
    v6 = nx.parse("<network><name>n</name><ip family='ipv6' address='FD00:0::1' prefix='64'/></network>")
    assert nx.ip_blocks(v6)[0]["address"] == "fd00::1" and nx.ip_blocks(v6)[0]["family"] == "ipv6"


@pytest.mark.parametrize(
    "xml, mode",
    [
        ("<network/>", "isolated"),
        ("<network><forward/></network>", "nat"),
        ("<network><forward mode='open'/></network>", "open"),
    ],
)
def test_forward_mode(xml, mode):
    assert nx.forward_mode(nx.parse(xml)) == mode


@pytest.mark.parametrize("mac", ["52:54:00:00:00", "zz:54:00:00:00:01", "01:00:5e:00:00:01", 5])
def test_bad_macs(mac):
    with pytest.raises(InvalidInput):
        nx.normalize_mac(mac)


# --------------------------------------------------------------------------- compare


def test_what_libvirt_fills_in_is_no_change():
    cur = current()
    # the same network written by hand: no uuid, mac, bridge, nat ports; prefix instead of netmask; upper case
    xml = """<network><name>lab</name><forward mode='nat'/>
      <ip address='172.31.213.1' prefix='24'><dhcp><range start='172.31.213.100' end='172.31.213.200'/>
      <host mac='52:54:00:00:00:01' name='a' ip='172.31.213.10'/></dhcp></ip></network>"""
    assert compare.differences(predicted(cur, xml=xml), compare.canonical(cur)) == []
    # the same through options, and with nothing named at all
    opts = dict(forward_mode="nat", ips=[dict(address="172.31.213.1", prefix=24)])
    assert compare.differences(predicted(cur, **opts), compare.canonical(cur)) == []
    assert compare.same(predicted(cur), compare.canonical(cur))


def test_xml_omissions_keep_libvirts_values_and_removals_count():
    cur = current()
    xml = """<network><name>lab</name><forward mode='nat'/><bridge stp='off'/>
      <ip address='172.31.213.1' prefix='24'><dhcp><range start='172.31.213.50' end='172.31.213.60'/></dhcp></ip>
      </network>"""
    after = predicted(cur, xml=xml)
    diffs = compare.differences(after, compare.canonical(cur))
    assert "/network/bridge/@stp: 'on' -> 'off'" in diffs
    assert any("range[172.31.213.50,172.31.213.60]: added" in d for d in diffs)
    assert any("range[172.31.213.100,172.31.213.200]: removed" in d for d in diffs)
    assert after.find("uuid").text == "bfa09ebd-ddf9-4632-a405-376d74cd4918"  # identity kept
    assert after.find("bridge").get("name") == "virbr1" and after.find("forward/nat") is not None
    # the host entry the XML does not list is kept (purge_hosts is off)
    assert nx.ip_blocks(after)[0]["hosts"][0]["mac"] == "52:54:00:00:00:01"
    # an XML without <forward> makes the network isolated: that removal counts
    iso = predicted(cur, xml="<network><name>lab</name><ip address='172.31.213.1' prefix='24'/></network>")
    assert "/network/forward: removed" in compare.differences(iso, compare.canonical(cur))


def test_options_change_only_what_they_name():
    cur = current()
    after = predicted(cur, forward_mode="route")
    diffs = compare.differences(after, compare.canonical(cur))
    assert diffs == ["/network/forward/@mode: 'nat' -> 'route'", "/network/forward/nat: removed"]
    assert nx.ip_blocks(after)[0]["ranges"] == [("172.31.213.100", "172.31.213.200")]


def test_bridge_mode_starts_afresh():
    after = predicted(current(), forward_mode="bridge", bridge="br0", ips=[])
    assert nx.forward_mode(after) == "bridge" and nx.bridge_name(after) == "br0"
    assert after.find("bridge").get("stp") is None and after.find("mac") is None and not nx.ip_blocks(after)
    assert after.find("uuid") is not None
    xml = "<network><name>lab</name><forward mode='bridge'/><bridge name='br0'/></network>"
    from_xml = predicted(current(), xml=xml)
    assert from_xml.find("mac") is None and from_xml.find("uuid") is not None


def test_xml_name_and_uuid_must_be_the_networks():
    with pytest.raises(InvalidInput, match="names the network 'other'"):
        predicted(None, xml="<network><name>other</name></network>")
    with pytest.raises(InvalidInput, match="UUID"):
        predicted(current(), xml="<network><name>lab</name><uuid>00000000-0000-0000-0000-000000000001</uuid></network>")


# --------------------------------------------------------------------------- host entries


def test_hosts_merge_purge_and_absent():
    cur = current()
    new = dict(mac="52:54:00:00:00:02", ip="172.31.213.11", name="b")
    after = predicted(cur, ips=[dict(address="172.31.213.1", dhcp_hosts=[new])])
    assert [h["name"] for h in nx.ip_blocks(after)[0]["hosts"]] == ["a", "b"]
    purged = predicted(cur, purge_hosts=True, ips=[dict(address="172.31.213.1", dhcp_hosts=[new])])
    assert [h["name"] for h in nx.ip_blocks(purged)[0]["hosts"]] == ["b"]
    gone = predicted(
        cur, ips=[dict(address="172.31.213.1", dhcp_hosts=[dict(mac="52:54:00:00:00:01", state="absent")])]
    )
    assert nx.ip_blocks(gone)[0]["hosts"] == []
    moved = dict(mac="52:54:00:00:00:01", ip="172.31.213.12", name="a")
    changed = predicted(cur, ips=[dict(address="172.31.213.1", dhcp_hosts=[moved])])
    assert [h["ip"] for h in nx.ip_blocks(changed)[0]["hosts"]] == ["172.31.213.12"]


def test_a_kept_host_colliding_with_a_listed_one_is_an_error():
    clash = dict(mac="52:54:00:00:00:02", ip="172.31.213.10", name="b")  # a's address
    with pytest.raises(Conflict, match="purge_hosts"):
        predicted(current(), ips=[dict(address="172.31.213.1", dhcp_hosts=[clash])])


def test_dns_hosts_merge():
    base = nx.parse(
        "<network><name>lab</name><dns><host ip='10.0.0.5'><hostname>x</hostname></host></dns>"
        "<ip address='10.0.0.1' prefix='24'/></network>"
    )
    after = predicted(base, dns_hosts=[dict(ip="10.0.0.6", hostnames=["y", "y2"])])
    assert nx.dns_hosts(after) == [dict(ip="10.0.0.5", hostnames=["x"]), dict(ip="10.0.0.6", hostnames=["y", "y2"])]
    with pytest.raises(Conflict):
        predicted(base, dns_hosts=[dict(ip="10.0.0.7", hostnames=["x"])])
    assert nx.dns_hosts(predicted(base, dns_hosts=[dict(ip="10.0.0.5", state="absent")])) == []


def test_host_changes_and_predict_agree():
    cur = compare.canonical(current())
    want = predicted(
        current(),
        ips=[dict(address="172.31.213.1", dhcp_hosts=[dict(mac="52:54:00:00:00:01", ip="172.31.213.12", name="a"),
                                                      dict(mac="52:54:00:00:00:02", ip="172.31.213.13", name="b")])],
        dns_hosts=[dict(ip="172.31.213.13", hostnames=["b"])],
    )  # fmt: skip
    changes = _dhcp.host_changes(cur, want)
    assert [(c["command"], c["section"]) for c in changes] == [
        ("delete", "dhcp-host"),
        ("add", "dhcp-host"),
        ("add", "dhcp-host"),
        ("add", "dns-host"),
    ]
    assert changes[0]["xml"] == '<host mac="52:54:00:00:00:01" name="a" ip="172.31.213.10"/>'
    assert compare.same(compare.canonical(_dhcp.predict(cur, changes)), want)


def test_merged_makes_a_change_both_need_once():
    a = dict(command="add", section="dhcp-host", index=0, xml="<host/>", label="a")
    d = dict(command="delete", section="dhcp-host", index=0, xml="<host x='1'/>", label="d")
    live_only = dict(a, xml="<host y='1'/>")
    assert _dhcp.merged([a, d], [a, live_only]) == [(d, False, True), (a, True, True), (live_only, True, False)]


# --------------------------------------------------------------------------- checks


def problems(xml: str) -> list[str]:
    return checks.definition_problems(nx.parse(xml))


R1 = "start='10.5.5.2' end='10.5.5.9'"
H1 = "mac='52:54:00:00:00:01'"
V6 = "family='ipv6' address='fd00::1' prefix='64'"


def net(ip_inner: str = "", attrs: str = "address='10.5.5.1' prefix='24'", extra: str = "") -> str:
    return f"<network><name>n</name>{extra}<ip {attrs}>{ip_inner}</ip></network>"


@pytest.mark.parametrize(
    "xml, text",
    [
        (net(attrs="address='10.5.5.999' prefix='24'"), "not an IPv4 or IPv6 address"),
        (net(attrs="address='10.5.5.1' prefix='33'"), "prefix 33"),
        (net(attrs="address='10.5.5.0' prefix='24'"), "network or broadcast"),
        (net("<dhcp><range start='10.5.6.2' end='10.5.6.9'/></dhcp>"), "not inside the subnet"),
        (net("<dhcp><range start='10.5.5.9' end='10.5.5.2'/></dhcp>"), "starts after it ends"),
        (net("<dhcp><range start='10.5.5.1' end='10.5.5.9'/></dhcp>"), "contains the network's own address"),
        (net(f"<dhcp><range {R1}/><range start='10.5.5.5' end='10.5.5.20'/></dhcp>"), "overlaps"),
        (net("<dhcp><host mac='52:54:00:00:00:zz' ip='10.5.5.3'/></dhcp>"), "not of the form"),
        (net("<dhcp><host mac='52:54:00:00:00:01' ip='10.5.9.3'/></dhcp>"), "not inside the subnet"),
        (net("<dhcp><host mac='52:54:00:00:00:01' ip='10.5.5.1'/></dhcp>"), "network's own address"),
        (net(f"<dhcp><host {H1} ip='10.5.5.3'/><host mac='52:54:00:00:00:02' ip='10.5.5.3'/></dhcp>"), "same ip"),
        (net("<dhcp><host mac='52:54:00:00:00:01'/></dhcp>"), "needs an ip"),
        (net(attrs=V6, ip_inner=f"<dhcp><host {H1} name='x' ip='fd00::5'/></dhcp>"), "IPv6 hosts"),
        (net(extra="<ip address='10.5.0.1' prefix='16'/>"), "overlap"),
        (net(extra="<forward mode='bridge'/><bridge name='br0'/>"), "bridge mode has no addresses"),
        (net(extra="<bridge name='this-name-is-too-long'/>"), "not a valid interface name"),
        (net(extra="<dns><host ip='10.5.5.9'/></dns>"), "needs at least one hostname"),
    ],
)  # fmt: skip
def test_definition_problems(xml, text):
    found = problems(xml)
    assert any(text in p for p in found), found


def test_a_good_definition_has_no_problems():
    assert problems(DEFINED) == []
    with pytest.raises(InvalidInput, match="Nothing was changed") as err:
        checks.refuse_problems(nx.parse(net("<dhcp><range start='10.5.6.2' end='10.5.6.9'/></dhcp>")))
    assert err.value.details["problems"]


@pytest.mark.parametrize(
    "uri, local",
    [("qemu:///system", True), ("test:///default", True), ("qemu+ssh://root@h/system", False)],
)
def test_is_local(uri, local):
    assert checks.is_local(uri) is local
