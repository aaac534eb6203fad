"""The virtops.kvm.libvirt inventory plugin against libvirt's test driver (real libvirt in this process, no daemon).

Two hypervisors: ``test:///default`` (its running domain ``test``, plus the clones defined here with kvm_clone's
provenance) and a test-driver node file (its own domain ``test``, so the names collide). The plugin is loaded
by Ansible's plugin loader, as ``ansible-inventory`` loads it, and parses a real ``*.libvirt.yml`` file.
"""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest
import yaml
from ansible.errors import AnsibleError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader, inventory_loader

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._inventory import addresses, hosts, read, uris
from tests.harness import playbook_env

ROOT = Path(__file__).resolve().parents[4]
BIN = Path(sys.executable).parent
NAME = "virtops.kvm.libvirt"
DEFAULT = "test:///default"

NODE = """<node>
  <network>
    <name>default</name>
    <bridge name='virbr0'/>
    <ip address='192.168.122.1' netmask='255.255.255.0'>
      <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
    </ip>
  </network>
  <domain type='test'>
    <name>test</name><memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices>
      <interface type='network'><mac address='52:54:00:00:00:01'/><source network='default'/></interface>
    </devices>
  </domain>
  <domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
    <name>solo</name><memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <metadata><virtops:clone xmlns:virtops='https://virtops.dev/xmlns/kvm/1' template='tpl.db' mode='copy'
      created-by='virtops.kvm'/></metadata>
    <test:runstate>5</test:runstate>
  </domain>
</node>
"""


def clone_xml(name: str, mac: str, title: str | None = None) -> str:
    root = dx.parse(
        f"""<domain type='test'><name>{name}</name><memory unit='MiB'>512</memory>
        <currentMemory unit='MiB'>384</currentMemory><vcpu current='1'>2</vcpu><os><type>hvm</type></os>
        {f"<title>{title}</title><description>made by a test</description>" if title else ""}
        <devices><disk type='file' device='disk'><source file='/var/lib/x/{name}.qcow2'/><target dev='vda'/></disk>
        <interface type='network'><mac address='{mac}'/><source network='default'/></interface></devices></domain>"""
    )
    dx.set_provenance(root, "tpl-web", "overlay", [dict(path=f"/var/lib/x/{name}.qcow2", base="/b.qcow2")])
    return dx.tostring(root)


@pytest.fixture(scope="module", autouse=True)
def plugin_loader():
    """Ansible's plugin loader with this checkout as the virtops.kvm collection (as ansible.cfg says).

    The unit tests import the collection as a plain package (tests/conftest.py); Ansible's collection
    loader must import the collection's own package itself to attach its metadata (meta/runtime.yml),
    so that one module is imported again through it. Every other module stays the one the tests use.
    """
    init_plugin_loader([str(ROOT / ".collections")])
    plain = sys.modules.pop("ansible_collections.virtops.kvm", None)
    importlib.import_module("ansible_collections.virtops.kvm")
    yield
    if plain is not None:
        sys.modules["ansible_collections.virtops.kvm"] = plain


@pytest.fixture(scope="module")
def default_host():
    """test:///default with two clones: inv-web1 (shut off, autostart) and inv-web2 (running); kept while open."""
    conn = libvirt.open(DEFAULT)
    web1 = conn.defineXML(clone_xml("inv-web1", "52:54:00:aa:00:01", title="Web one"))
    web1.setAutostart(1)
    web2 = conn.defineXML(clone_xml("inv-web2", "52:54:00:aa:00:02"))
    web2.create()
    yield conn
    web2.destroy()
    for dom in (web1, web2):
        dom.undefine()
    conn.close()


@pytest.fixture(scope="module")
def node_uri(tmp_path_factory) -> str:
    """A second hypervisor: a test-driver node file with its own 'test' (running) and 'solo' (shut off) domains."""
    path = tmp_path_factory.mktemp("node") / "node.xml"
    path.write_text(NODE)
    return f"test://{path}"


class Run:
    def __init__(self, inventory: InventoryData, warnings: list[str]):
        self.inventory = inventory
        self.warnings = warnings

    def vars(self, host: str) -> dict:
        return dict(self.inventory.get_host(host).get_vars())

    def members(self, group: str) -> set[str]:
        return {h.name for h in self.inventory.groups[group].get_hosts()} if group in self.inventory.groups else set()

    @property
    def hosts(self) -> set[str]:
        return set(self.inventory.hosts)


@pytest.fixture
def run_plugin(tmp_path, monkeypatch):
    """``run_plugin(refresh=False, **config)``: parse a fresh ``test.libvirt.yml`` with a fresh plugin instance.

    ``refresh=True`` parses as ``meta: refresh_inventory`` and ``--flush-cache`` do (``cache=False``).
    """

    def run(refresh: bool = False, **config) -> Run:
        path = tmp_path / "test.libvirt.yml"
        path.write_text(yaml.safe_dump({"plugin": NAME, **config}))
        plugin = inventory_loader.get(NAME)
        assert plugin.verify_file(str(path))
        warnings: list[str] = []
        module = importlib.import_module(type(plugin).__module__)
        monkeypatch.setattr(module.display, "warning", lambda msg, *a, **k: warnings.append(msg))
        inventory = InventoryData()
        plugin.parse(inventory, DataLoader(), str(path), cache=not refresh)
        if config.get("cache"):
            plugin.update_cache_if_changed()  # what ansible's InventoryManager does after parse
        return Run(inventory, warnings)

    return run


@pytest.fixture
def opens(monkeypatch) -> list[str]:
    """Every libvirt connection the plugin opens, by URI."""
    seen: list[str] = []
    for fn in ("open", "openReadOnly"):
        real = getattr(libvirt, fn)

        def counting(uri=None, _real=real):
            seen.append(uri)
            return _real(uri)

        monkeypatch.setattr(libvirt, fn, counting)
    return seen


# ---------------------------------------------------------------- hosts, groups, variables


def test_groups_and_host_variables(default_host, run_plugin):
    r = run_plugin(uris=[DEFAULT])
    assert {"test", "inv-web1", "inv-web2"} <= r.hosts
    assert r.members("hypervisor_localhost") == r.hosts
    assert {"test", "inv-web2"} <= r.members("state_running") and "inv-web1" not in r.members("state_running")
    assert "inv-web1" in r.members("state_shutoff")
    assert r.members("template_tpl_web") == {"inv-web1", "inv-web2"}
    assert r.warnings == []

    web1 = r.vars("inv-web1")
    assert {k: web1[f"virtops_{k}"] for k in ("name", "state", "vcpus", "memory_mib", "autostart", "persistent")} == {
        "name": "inv-web1",
        "state": "shutoff",
        "vcpus": 1,
        "memory_mib": 384,
        "autostart": True,
        "persistent": True,
    }
    assert web1["virtops_disks"] == ["/var/lib/x/inv-web1.qcow2"]
    assert web1["virtops_macs"] == ["52:54:00:aa:00:01"]
    assert web1["virtops_interfaces"] == [dict(mac="52:54:00:aa:00:01", type="network", source="default")]
    assert (web1["virtops_title"], web1["virtops_description"]) == ("Web one", "made by a test")
    assert (web1["virtops_uri"], web1["virtops_hypervisor"]) == (DEFAULT, "localhost")
    prov = web1["virtops_provenance"]
    assert (prov["template"], prov["mode"], prov["created_by"]) == ("tpl-web", "overlay", "virtops.kvm")
    assert prov["created_disks"][0]["path"] == "/var/lib/x/inv-web1.qcow2"
    assert "ansible_host" not in web1 and "ansible_ssh_common_args" not in web1
    assert web1["virtops_address_error"] == "the domain is not running (state: shutoff)"

    web2 = r.vars("inv-web2")
    assert web2["virtops_state"] == "running" and web2["virtops_address_source"] == "lease"
    assert web2["ansible_host"] == web2["virtops_addresses"][0]["address"]
    assert web2["ansible_host"].startswith("192.168.122.") and web2["virtops_address_error"] is None
    assert r.vars("test")["virtops_provenance"] is None and "test" not in r.members("template_tpl_web")


def test_address_sources_in_order_and_prefix(default_host, run_plugin):
    r = run_plugin(uris=[DEFAULT], address_sources=["agent", "arp"], variable_prefix="kvm_")
    web2 = r.vars("inv-web2")
    # no agent channel in the domain: the agent is not even asked, ARP answers
    assert web2["kvm_address_source"] == "arp" and web2["ansible_host"].startswith("192.168.122.")
    assert not any(k.startswith("virtops_") for k in web2)
    r = run_plugin(uris=[DEFAULT], address_sources=["agent"])
    web2 = r.vars("inv-web2")
    assert "ansible_host" not in web2
    assert web2["virtops_address_error"] == "agent: the domain has no guest agent channel"
    r = run_plugin(uris=[DEFAULT], address_sources=[])
    assert "ansible_host" not in r.vars("inv-web2")
    assert r.vars("inv-web2")["virtops_address_error"] == "address_sources is empty"


def test_compose_groups_and_keyed_groups(default_host, run_plugin):
    r = run_plugin(
        uris=[DEFAULT],
        compose={"ansible_user": "'admin'", "double_mem": "virtops_memory_mib * 2"},
        groups={"small": "virtops_memory_mib < 1024", "autostarted": "virtops_autostart"},
        keyed_groups=[{"key": "virtops_provenance.mode | default('none', true)", "prefix": "mode"}],
    )
    web1 = r.vars("inv-web1")
    assert web1["ansible_user"] == "admin" and str(web1["double_mem"]) == "768"  # a str before ansible-core 2.19
    assert {"inv-web1", "inv-web2"} <= r.members("small") and "test" not in r.members("small")  # test has 2 GiB
    assert r.members("autostarted") == {"inv-web1"}
    assert r.members("mode_overlay") == {"inv-web1", "inv-web2"} and "test" in r.members("mode_none")


# ---------------------------------------------------------------- several URIs


def test_name_collision_is_qualified_by_hypervisor(default_host, node_uri, run_plugin):
    r = run_plugin(uris=[DEFAULT, node_uri])
    assert "test" not in r.hosts and {"test_localhost", "test_localhost_2", "solo", "inv-web1"} <= r.hosts
    assert r.vars("test_localhost_2")["virtops_name"] == "test"
    assert r.vars("test_localhost_2")["virtops_uri"] == node_uri
    assert r.members("hypervisor_localhost_2") == {"test_localhost_2", "solo"}
    assert "test_localhost" in r.members("hypervisor_localhost")
    assert r.members("template_tpl_db") == {"solo"}
    assert r.vars("test_localhost_2")["ansible_host"] == "192.168.122.3"  # the node's network's lease
    assert len(r.warnings) == 1 and "'test'" in r.warnings[0] and node_uri in r.warnings[0]


def test_collision_rules_never_and_always(default_host, node_uri, run_plugin):
    r = run_plugin(uris=[DEFAULT, node_uri], qualify_names="never")
    assert "test" in r.hosts and not any(h.startswith("test_") for h in r.hosts)
    assert r.vars("test")["virtops_uri"] == DEFAULT  # the first URI keeps the name
    assert len(r.warnings) == 1 and "qualify_names: never" in r.warnings[0]
    r = run_plugin(uris=[DEFAULT, node_uri], qualify_names="always")
    assert {"test_localhost", "test_localhost_2", "solo_localhost_2", "inv-web1_localhost"} <= r.hosts
    assert all("_localhost" in h for h in r.hosts) and r.warnings == []


def test_dead_uri_is_a_warning_unless_strict(default_host, run_plugin, tmp_path):
    dead = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
    r = run_plugin(uris=[dead, DEFAULT])
    assert {"test", "inv-web1", "inv-web2"} <= r.hosts
    assert len(r.warnings) == 1 and dead in r.warnings[0] and "no-such.sock" in r.warnings[0]
    # hypervisor names come from the list, reachable or not: a URI that is down renames no group
    assert "hypervisor_localhost" not in r.inventory.groups
    assert {"test", "inv-web1", "inv-web2"} <= r.members("hypervisor_localhost_2")
    with pytest.raises(AnsibleError, match=r"1 of 2 URIs could not be read \(strict: true\).*no-such\.sock"):
        run_plugin(uris=[dead, DEFAULT], strict=True)


def test_a_uri_that_does_not_answer_in_time(default_host, run_plugin, tmp_path):
    # a socket that accepts the connection and never answers: libvirt waits, the plugin does not
    path = tmp_path / "mute.sock"
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(path))
    mute.listen(4)
    hung = f"qemu+unix:///system?socket={path}"
    try:
        start = time.monotonic()
        r = run_plugin(uris=[hung, DEFAULT], timeout=1)
        assert time.monotonic() - start < 5
    finally:
        mute.close()  # the abandoned reader thread then gets its EOF and ends
    assert "inv-web2" in r.hosts
    assert len(r.warnings) == 1 and f"No answer from {hung} within 1 s" in r.warnings[0]


def test_uris_are_read_concurrently(default_host, node_uri, run_plugin, monkeypatch):
    real = read.read_uri

    def slow(p, sources):
        time.sleep(1.5)
        return real(p, sources)

    monkeypatch.setattr(read, "read_uri", slow)
    start = time.monotonic()
    r = run_plugin(uris=[DEFAULT, node_uri, f"{node_uri}?x=1"])
    assert time.monotonic() - start < 4.0, "three URIs of 1.5 s each were read one after the other"
    assert "solo" not in r.hosts and {"solo_localhost_2", "solo_localhost_3"} <= r.hosts


# ---------------------------------------------------------------- cache


def test_cache_second_call_does_not_connect(default_host, node_uri, run_plugin, opens, tmp_path):
    cache = dict(cache=True, cache_plugin="ansible.builtin.jsonfile", cache_connection=str(tmp_path / "cache"))
    first = run_plugin(uris=[DEFAULT, node_uri], **cache)
    assert sorted(opens) == sorted([DEFAULT, node_uri])
    second = run_plugin(uris=[DEFAULT, node_uri], **cache)
    assert len(opens) == 2, "the second call connected again instead of reading the cache"
    assert second.hosts == first.hosts and second.vars("solo") == first.vars("solo")
    assert second.members("template_tpl_web") == {"inv-web1", "inv-web2"}
    # refresh (meta: refresh_inventory, --flush-cache) reads again; another query is no cache hit
    run_plugin(refresh=True, uris=[DEFAULT, node_uri], **cache)
    assert len(opens) == 4
    run_plugin(uris=[DEFAULT, node_uri], address_sources=["arp"], **cache)
    assert len(opens) == 6


def test_a_failed_uri_is_not_cached(default_host, run_plugin, opens, tmp_path):
    cache = dict(cache=True, cache_plugin="ansible.builtin.jsonfile", cache_connection=str(tmp_path / "cache"))
    dead = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
    for attempt in (1, 2):
        r = run_plugin(uris=[DEFAULT, dead], **cache)
        assert len(r.warnings) == 1, attempt
    assert opens.count(dead) == 2 and opens.count(DEFAULT) == 2


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(uris=["qemu/system"]), "has no 'driver://' part"),
        (dict(uris=["qemu+foo:///system"]), "unknown transport 'foo'"),
        (dict(uris=["qemu+ssh://h:twenty/system"]), "invalid port"),
        (dict(uris=["qemu:///system "]), "white space"),
        (dict(uris=["Q!:///x"]), "invalid scheme"),
        (dict(uris=[]), "uris option is empty"),
        (dict(uris=[DEFAULT, DEFAULT]), "listed twice"),
        (dict(address_sources=["lease", "dns"]), "dns"),
        (dict(address_sources=["lease", "lease"]), "listed twice in address_sources"),
        (dict(variable_prefix="9lives"), "cannot start a variable name"),
        (dict(timeout=0), "positive number of seconds"),
        (dict(qualify_names="sometimes"), "sometimes"),
    ],
)
def test_bad_options_are_errors_before_connecting(config, message, run_plugin, opens):
    with pytest.raises(AnsibleError) as err:
        run_plugin(**config)
    assert message in str(err.value)
    assert opens == []


def test_unknown_address_source_names_the_valid_ones():
    with pytest.raises(InvalidInput, match=r"Unknown address source 'dns'.*lease, agent, arp"):
        addresses.check_sources(["dns"])


@pytest.mark.parametrize(
    "path, mine",
    [("a.libvirt.yml", True), ("libvirt.yaml", True), ("kvm.libvirt.yaml", True), ("a.yml", False), ("a.json", False)],
)
def test_verify_file(tmp_path, path, mine):
    f = tmp_path / path
    f.write_text("plugin: virtops.kvm.libvirt\n")
    assert inventory_loader.get(NAME).verify_file(str(f)) is mine


# ---------------------------------------------------------------- the pure rules


@pytest.mark.parametrize(
    "uri, target",
    [
        ("qemu+ssh://root@kvm1.example.com/system?keyfile=/k", "root@kvm1.example.com"),
        ("qemu+ssh://ops@kvm1:2222/system", "ops@kvm1:2222"),
        ("qemu+libssh2://kvm2/system", "kvm2"),
        ("qemu+tcp://sasluser@kvm3:16509/system", "kvm3"),  # tcp: user and port are libvirt's, not ssh's
        ("qemu+ssh://root@[fd00::5]:22/system", "root@[fd00::5]:22"),
        ("qemu:///system", None),
        ("qemu+unix:///system?socket=/run/x.sock", None),
        ("test:///default", None),
    ],
)
def test_proxy_jump_target(uri, target):
    assert uris.jump_target(uris.parse(uri)) == target


def test_proxy_jump_only_for_remote_uris():
    ok = dict(ok=True, error=None)
    rec = dict(
        name="c1",
        state="running",
        provenance=None,
        address="10.0.0.5",
        **{k: None for k in hosts.VARIABLES if k not in ("name", "state", "provenance")},
    )
    results = [
        dict(ok, uri="qemu:///system", hypervisor="localhost", domains=[rec]),
        dict(ok, uri="qemu+ssh://root@kvm1/system", hypervisor="kvm1", domains=[dict(rec, name="c2")]),
    ]
    jumps = {r["uri"]: uris.jump_target(uris.parse(r["uri"])) for r in results}
    built = hosts.build(results, jumps)
    assert "ansible_ssh_common_args" not in built["hosts"]["c1"]
    assert built["hosts"]["c2"]["ansible_ssh_common_args"] == "-o ProxyJump=root@kvm1"
    assert built["hosts"]["c2"]["ansible_host"] == "10.0.0.5"
    assert "ansible_ssh_common_args" not in hosts.build(results, {})["hosts"]["c2"]  # proxy_jump off


def test_hypervisor_names_are_unique_and_safe():
    parsed = uris.parse_all(["qemu:///system", "qemu:///session", "qemu+ssh://root@KVM-1.example.com/system"])
    assert [p["hypervisor"] for p in parsed] == ["localhost", "localhost_2", "kvm-1.example.com"]
    assert uris.safe("kvm-1.example.com") == "kvm_1_example_com"


def test_address_candidates_prefer_ipv4_on_the_domains_own_nics():
    reported = {
        "lo": {"hwaddr": "00:00:00:00:00:00", "addrs": [{"addr": "127.0.0.1", "prefix": 8, "type": 0}]},
        "eth1": {"hwaddr": "52:54:00:00:00:02", "addrs": [{"addr": "10.1.0.9", "prefix": 24, "type": 0}]},
        "eth0": {
            "hwaddr": "52:54:00:00:00:01",
            "addrs": [
                {"addr": "fe80::1", "prefix": 64, "type": 1},
                {"addr": "fd00::9", "prefix": 64, "type": 1},
                {"addr": "10.0.0.9", "prefix": 24, "type": 0},
            ],
        },
        "docker0": {"hwaddr": "02:42:ac:11:00:01", "addrs": [{"addr": "172.17.0.1", "prefix": 16, "type": 0}]},
    }
    found = addresses.candidates(reported, ["52:54:00:00:00:01", "52:54:00:00:00:02"])
    assert [c["address"] for c in found] == ["10.0.0.9", "10.1.0.9", "fd00::9"]
    only_v6 = {"eth0": {"hwaddr": "52:54:00:00:00:01", "addrs": [{"addr": "fd00::9", "prefix": 64, "type": 1}]}}
    assert addresses.candidates(only_v6, ["52:54:00:00:00:01"])[0]["family"] == "ipv6"


@pytest.mark.parametrize(
    "channel, reason",
    [
        ("", "the domain has no guest agent channel"),
        ("<target type='virtio' name='org.qemu.guest_agent.0' state='disconnected'/>", "not connected"),
        ("<target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>", None),
        ("<target type='virtio' name='org.qemu.guest_agent.0'/>", None),
    ],
)
def test_agent_is_asked_only_when_its_channel_is_there(channel, reason):
    ch = f"<channel type='unix'>{channel}</channel>" if channel else ""
    root = dx.parse(f"<domain><name>x</name><devices>{ch}</devices></domain>")
    got = addresses.agent_state(root)
    assert got == reason if reason is None else reason in got


# ---------------------------------------------------------------- through Ansible's own programs


@pytest.fixture
def ansible_env(tmp_path) -> dict:
    return playbook_env(ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"))


def test_ansible_inventory_graph_and_list(tmp_path, node_uri, ansible_env):
    dead = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
    inv = tmp_path / "two.libvirt.yml"
    inv.write_text(yaml.safe_dump(dict(plugin=NAME, uris=[node_uri, dead])))
    argv = [str(BIN / "ansible-inventory"), "-i", str(inv)]
    graph = subprocess.run(
        [*argv, "--graph"], env=ansible_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert graph.returncode == 0, graph.stderr
    assert "@hypervisor_localhost:" in graph.stdout and "@template_tpl_db:" in graph.stdout and "solo" in graph.stdout
    said = "".join(graph.stderr.split())  # older ansible-core wraps warnings at 80 columns
    assert dead in said and "arenotlisted" in said
    listed = subprocess.run(
        [*argv, "--list"], env=ansible_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert sorted(data["state_running"]["hosts"]) == ["test"] and sorted(data["state_shutoff"]["hosts"]) == ["solo"]
    assert "solo" in data["_meta"]["hostvars"]


def test_ansible_doc_renders(ansible_env, tmp_path):
    proc = subprocess.run(
        [str(BIN / "ansible-doc"), "-t", "inventory", "--json", NAME],
        env=ansible_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)[NAME]
    options = doc["doc"]["options"]
    for key in ("uris", "address_sources", "timeout", "proxy_jump", "qualify_names", "strict", "compose", "cache"):
        assert options[key]["description"], key
    assert options["address_sources"]["default"] == ["lease", "agent", "arp"]
    assert "plugin: virtops.kvm.libvirt" in doc["examples"]
