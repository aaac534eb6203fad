"""One validation for what users type (_validate): the checks themselves, then each module refusing clearly.

Every refusal names the option and the bad value and says what is allowed, and
happens before anything is changed: each module test below compares the host
before and after.
"""

from __future__ import annotations

import importlib
import pkgutil
import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins import module_utils
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._domain.info import DomainInfoManager
from ansible_collections.virtops.kvm.plugins.module_utils._domain.manager import DomainManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._host.manager import HostManager
from ansible_collections.virtops.kvm.plugins.module_utils._inventory.address_manager import AddressManager
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._network.manager import NetworkManager
from ansible_collections.virtops.kvm.plugins.module_utils._pool.pool_manager import PoolManager
from ansible_collections.virtops.kvm.plugins.module_utils._pool.volume_manager import VolumeManager
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.manager import SnapshotManager
from tests import fakes

URI = "test:///default"


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(InvalidInput) as info:
        fn(*args, **kwargs)
    return info.value.message


# --------------------------------------------------------------------------- the checks (pure)


@pytest.mark.parametrize("name", ["web01", "a", "db-1.example", "x_y+z", "A" * 64, "9lives"])
def test_names_the_collection_defines(name):
    assert vd.validate_name(name, "name") == name


@pytest.mark.parametrize(
    "name", ["", "a;b", "a b", "../x", "a..b", "-a", ".a", "a/b", "A" * 65, "a\n", "é", None, 7, "a\x00"]
)
def test_names_outside_the_rule_are_refused_with_option_and_value(name):
    message = refused(vd.validate_name, name, "clones[2].name")
    assert message.startswith(f"clones[2].name is {name!r}: a name is 1 to 64 characters")
    assert "docs/names.md" in message


@pytest.mark.parametrize("name", ["odd;name", "with space", "ünïcode", "a..b", "-x"])
def test_existing_names_are_only_looked_up(name):
    assert vd.existing_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a\nb", "a\x1bb", " a", None])
def test_existing_names_still_refuse_paths_and_control_characters(name):
    assert refused(vd.existing_name, name, "name").startswith(f"name is {name!r}: the name of an existing object")


@pytest.mark.parametrize("host", ["web01", "a-b.example.com", "x" * 63, ".".join(["a" * 63] * 3) + ".b"])
def test_rfc1123_host_names(host):
    assert vd.hostname(host) == host and vd.is_hostname(host)


@pytest.mark.parametrize("host", ["web_01;reboot", "-a", "a-", "x" * 64, "a..b", "", "a.", "a b", "a" * 254])
def test_bad_host_names_show_the_value(host):
    assert refused(vd.hostname, host, "hostname").startswith(f"hostname is {vd.shown(host)}: a host name (RFC 1123)")


def test_addresses_and_servers():
    assert vd.address("2001:DB8::1") == "2001:db8::1"
    assert vd.address("192.0.2.1", version=4) == "192.0.2.1"
    assert "an IPv6 address" in refused(vd.address, "192.0.2.1", "ip", 6)
    assert "an IPv4 or IPv6 address" in refused(vd.address, "300.1.1.1", "ip")
    assert vd.host("nas.example") == "nas.example" and vd.host("fe80::1") == "fe80::1"
    for bad in ("-oacc;reboot", "nas example", "nas\n", "", None):
        assert refused(vd.host, bad, "source_host").startswith(f"source_host is {bad!r}: a server is")


@pytest.mark.parametrize("value", ["-o", "-", "/exp ort", "/export\t", "iqn\x00", "/a\u2028b", ""])
def test_mount_arguments_never_read_as_options(value):
    message = refused(vd.mount_arg, value, "source_path")
    assert message.startswith(f"source_path is {value!r}: it is passed to mount(8), iscsiadm or LVM as one argument")


def test_mount_arguments_that_are_fine():
    for value in ("/export/vms", "iqn.2004-04.com.example:storage", "/dev/sdb", "gv0"):
        assert vd.mount_arg(value, "x") == value


@pytest.mark.parametrize(
    ("text", "size"),
    [("10G", 10 * 1024**3), ("10GiB", 10 * 1024**3), ("10GB", 10 * 1000**3), (" 1 TiB ", 1024**4), (5, 5)],
)
def test_sizes_with_units(text, size):
    assert vd.size(text) == size


@pytest.mark.parametrize(
    "text", ["99999999999999999999T", "2P", "1025TiB", "0", "-1G", "1.5G", "\uff11G", "ten", "", True, None, "10Q"]
)
def test_sizes_are_bounded_and_name_the_option(text):
    message = refused(vd.size, text, "size")
    assert message.startswith(f"size is {text!r}: a size is a whole number with an optional unit")
    assert f"to {vd.MAX_SIZE} bytes" in message


def test_the_largest_size_is_allowed():
    assert vd.size("1PiB") == vd.MAX_SIZE == 1024**5


def test_numbers_are_bounded():
    assert vd.number(0, "t", 0, 10) == 0
    for bad in (-1, 11, True, "5", None):
        assert refused(vd.number, bad, "daemon_timeout", 0, 10, "seconds") == (
            f"daemon_timeout is {bad!r}: allowed are 0 to 10 seconds."
        )


def test_limits_by_option_name():
    assert vd.limit("shutdown_timeout") == vd.LIMITS["timeout"]
    assert vd.limit("vcpus") == (1, 4096, "virtual CPUs")
    assert vd.limit("daemon_timeout", {"daemon_timeout": (0, 5, "s")}) == (0, 5, "s")
    assert vd.limit("something_counted") == (0, vd.INT_MAX, "")


def test_numbers_walks_suboptions_and_names_every_bad_one():
    spec = dict(
        timeout=dict(type="int"),
        items=dict(type="list", elements="dict", options=dict(memory=dict(type="int"))),
        one=dict(type="dict", options=dict(prefix=dict(type="int"))),
    )
    vd.numbers(spec, dict(timeout=1, items=[dict(memory=1)], one=dict(prefix=24)))
    message = refused(vd.numbers, spec, dict(timeout=-1, items=[dict(memory=1), dict(memory=0)], one=dict(prefix=200)))
    assert "timeout is -1: allowed are 0 to 604800 seconds." in message
    assert "items[1].memory is 0: allowed are 1 to" in message
    assert "one.prefix is 200: allowed are 0 to 128 bits." in message


@pytest.mark.parametrize(
    ("text", "single"), [("a\x00b", False), ("\x1b[31m", False), ("a\nb", True), ("\ud800", False)]
)
def test_xml_text_refuses_control_characters(text, single):
    assert refused(vd.xml_text, text, "title", single).startswith(f"title is {text!r}: ")


def test_xml_text_keeps_ordinary_text():
    assert vd.xml_text("Web server\tünïcode ✓", "title", True)
    assert vd.xml_text("line one\nline two\r\n", "description") == "line one\nline two\r\n"


def test_long_values_are_shortened_in_messages():
    message = refused(vd.hostname, "x" * 500, "hostname")
    assert len(message) < 400 and "..." in message


# --------------------------------------------------------------------------- every module's numbers


def _managers() -> list[type]:
    for info in pkgutil.walk_packages(module_utils.__path__, module_utils.__name__ + "."):
        importlib.import_module(info.name)
    out, todo = set(), [Manager]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.add(sub)
            todo.append(sub)
    return sorted(out, key=lambda c: c.__name__)


def _int_options(spec: dict, prefix=()):
    for name, opt in spec.items():
        if opt.get("type") in ("int", "float"):
            yield (*prefix, name)
        elif opt.get("options") and opt.get("type") in ("dict", "list"):
            yield from _int_options(opt["options"], (*prefix, (name, opt["type"])))


def _params(path, value) -> tuple[dict, str]:
    """Options with ``value`` at ``path`` (suboptions nested as the spec says) and that option's shown name."""
    *parents, leaf = path
    inner: dict = {leaf: value}
    shown = leaf
    for name, kind in reversed(parents):
        inner = {name: [inner] if kind == "list" else inner}
        shown = f"{name}[0].{shown}" if kind == "list" else f"{name}.{shown}"
    return inner, shown


CASES = [
    pytest.param(cls, path, id=f"{cls.__name__}-{'.'.join(p if isinstance(p, str) else p[0] for p in path)}")
    for cls in _managers()
    for path in _int_options(cls.argument_spec())
]


def test_every_module_has_numeric_options_checked():
    names = {c.values[0].__name__ for c in CASES}
    assert {"HostManager", "DomainManager", "SnapshotManager", "MigrateManager", "VolumeManager"} <= names


@pytest.mark.parametrize(("cls", "path"), CASES)
def test_every_timeout_and_count_is_non_negative_and_bounded(cls, path):
    leaf = path[-1]
    low, high, _unit = vd.limit(leaf, cls.LIMITS)
    for bad in (low - 1, high + 1):
        params, shown = _params(path, bad)
        message = refused(cls, params, fakes.Held(None))
        assert f"{shown} is {bad}: allowed are {low} to {high}" in message


def test_kvm_host_daemon_timeout_minus_one_is_refused():
    message = refused(HostManager, dict(daemon_timeout=-1), fakes.Held(None))
    assert message.startswith("daemon_timeout is -1: allowed are 0 to 3600 seconds.")


def test_kvm_host_extra_packages_are_never_options(tmp_path):
    mgr = HostManager(dict(extra_packages=["qemu-img", "-oAPT::Update::Pre-Invoke::=reboot"]), fakes.Held(None))
    calls = []
    mgr.runner = lambda argv, env=None: calls.append(argv) or (0, "", "")
    message = refused(mgr.run)
    assert message.startswith("extra_packages[1] is '-oAPT::Update::Pre-Invoke::=reboot': it is passed to the package")
    assert calls == []


# --------------------------------------------------------------------------- the modules refuse, nothing changes


def everything(conn) -> tuple:
    return (
        sorted(d.name() for d in conn.listAllDomains(0)),
        sorted(p.name() for p in conn.listAllStoragePools(0)),
        sorted((p.name(), v.name()) for p in conn.listAllStoragePools(0) if p.isActive() for v in p.listAllVolumes(0)),
    )


def manage(cls, conn, check=False, **params):
    return cls(dict(uri=URI, **params), fakes.Held(conn), check).run()


@pytest.mark.parametrize(
    ("params", "option", "value"),
    [
        (dict(source_host="-oacc;reboot"), "source_host", "-oacc;reboot"),
        (dict(source_host="nas", source_path="/export/a b"), "source_path", "/export/a b"),
        (dict(source_host="nas", source_path="/export\n"), "source_path", "/export\n"),
    ],
)
def test_kvm_pool_netfs_sources_are_never_mount_options(conn, params, option, value):
    name = f"ut-{secrets.token_hex(4)}"
    before = everything(conn)
    for check in (True, False):
        message = refused(manage, PoolManager, conn, check, name=name, type="netfs", path="/mnt/x", **params)
        assert message.startswith(f"{option} is {value!r}: ")
    assert everything(conn) == before


def test_kvm_pool_xml_sources_are_checked_too(conn):
    name = f"ut-{secrets.token_hex(4)}"
    before = everything(conn)
    xml = (
        f"<pool type='iscsi'><name>{name}</name><source><host name='san'/>"
        "<device path='-iqn.evil'/></source><target><path>/dev/disk/by-path</path></target></pool>"
    )
    assert refused(manage, PoolManager, conn, name=name, xml=xml).startswith("source_devices is '-iqn.evil': ")
    assert everything(conn) == before


def test_kvm_pool_logical_devices(conn):
    name = f"ut-{secrets.token_hex(4)}"
    message = refused(manage, PoolManager, conn, name=name, type="logical", source_devices=["/dev/sd b"])
    assert message.startswith("source_devices is '/dev/sd b': ")


def domain_xml(name: str, title: str = "") -> str:
    return (
        f"<domain type='test'><name>{name}</name>{title}<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )


@pytest.fixture
def odd(conn):
    """A domain defined outside the collection, under a name its rule does not allow."""
    name = f"ut odd;{secrets.token_hex(3)}"
    conn.defineXML(domain_xml(name))
    yield name
    try:
        conn.lookupByName(name).undefine()
    except libvirt.libvirtError:
        pass


def test_kvm_domain_defines_only_names_of_the_one_rule(conn):
    before = everything(conn)
    name = f"ut-{secrets.token_hex(3)};reboot"
    message = refused(manage, DomainManager, conn, name=name, xml=domain_xml(name))
    assert message.startswith(f"name is {name!r}: a name is 1 to 64 characters")
    message = refused(manage, DomainManager, conn, xml=domain_xml(name))
    assert message.startswith(f"the <name> in xml is {name!r}: a name is")
    message = refused(manage, DomainManager, conn, domains=[dict(xml=domain_xml(name))])
    assert f"the <name> in xml is {name!r}" in message and "nothing was changed" in message
    assert everything(conn) == before


def test_kvm_domain_still_reads_stops_and_removes_existing_odd_names(conn, odd):
    info = DomainInfoManager(dict(uri=URI, name=[odd]), fakes.Held(conn), True).run()
    assert [d["name"] for d in info["domains"]] == [odd]
    assert manage(DomainManager, conn, name=odd, state="running", shutdown_timeout=5)["changed"]
    assert manage(DomainManager, conn, name=odd, state="absent", shutdown_timeout=5, force=True)["changed"]
    assert odd not in everything(conn)[0]
    # ... but a name with a '/' or a control character is never looked up
    for bad in ("a/b", "a\nb"):
        assert refused(manage, DomainManager, conn, name=bad, state="absent").startswith(f"name is {bad!r}: ")


@pytest.mark.parametrize(
    ("option", "value"),
    [("title", "web\x07server"), ("title", "two\nlines"), ("description", "nul\x00byte"), ("description", "\x1b[2J")],
)
def test_kvm_domain_free_text_never_reaches_lxml_raw(conn, option, value):
    name = f"ut-{secrets.token_hex(4)}"
    before = everything(conn)
    message = refused(manage, DomainManager, conn, name=name, xml=domain_xml(name), **{option: value})
    assert message.startswith(f"{option} is {value!r}: ") and "control characters" in message
    assert everything(conn) == before
    assert "All strings must be XML compatible" not in message


def test_kvm_domain_free_text_on_an_existing_domain_changes_nothing(conn):
    name = f"ut-{secrets.token_hex(4)}"
    conn.defineXML(domain_xml(name, "<title>kept</title>"))
    try:
        assert refused(manage, DomainManager, conn, name=name, title="x\x00").startswith("title is 'x\\x00': ")
        assert "<title>kept</title>" in conn.lookupByName(name).XMLDesc(0)
    finally:
        conn.lookupByName(name).undefine()


@pytest.fixture
def pool(conn):
    name = f"ut-{secrets.token_hex(4)}"
    p = conn.storagePoolDefineXML(f"<pool type='dir'><name>{name}</name><target><path>/{name}</path></target></pool>")
    p.create(0)
    yield name
    for vol in p.listAllVolumes(0):
        vol.delete(0)
    p.destroy()
    p.undefine()


@pytest.mark.parametrize("size", ["99999999999999999999T", "2PiB", "0", "1.5G"])
def test_kvm_volume_size_is_named_and_bounded(conn, pool, size):
    before = everything(conn)
    for check in (True, False):
        message = refused(manage, VolumeManager, conn, check, pool=pool, name="v.qcow2", size=size)
        assert message.startswith(f"size is {size!r}: a size is a whole number") and "malformed" not in message
    assert everything(conn) == before


@pytest.fixture
def clone_conn():
    c, close = fakes.open_conn(("ut-",))
    yield c
    close()


@pytest.mark.parametrize(
    ("clones", "start"),
    [
        ([{"name": "web_01", "hostname": "web_01;reboot"}], "hostname of clone 'web_01' is 'web_01;reboot': "),
        ([{"name": "ut-a", "hostname": ""}], "hostname of clone 'ut-a' is '': "),
        ([{"name": "ut-a", "hostname": "-x"}], "hostname of clone 'ut-a' is '-x': "),
        ([{"name": "ut-a", "memory": 0}], "memory of clone 'ut-a' is 0: allowed are 1 to"),
        ([{"name": "ut-a", "vcpus": 5000}], "vcpus of clone 'ut-a' is 5000: allowed are 1 to 4096"),
    ],
)
def test_kvm_clone_blames_the_bad_value(clone_conn, tmp_path, clones, start):
    fakes.make_template(clone_conn, tmp_path, "ut-tpl")
    before = (everything(clone_conn), sorted(p.name for p in tmp_path.iterdir()))
    message = refused(fakes.clone_manager, clone_conn, tmp_path, False, template="ut-tpl", clones=clones)
    assert message.startswith(start), message
    assert "RFC 1123" in message or "allowed are" in message
    assert (everything(clone_conn), sorted(p.name for p in tmp_path.iterdir())) == before


def test_kvm_clone_dirs_hold_no_control_characters(clone_conn, tmp_path):
    message = refused(fakes.clone_manager, clone_conn, tmp_path, False, name="ut-a", dest_dir="/srv/a\nb")
    assert message.startswith("dest_dir is '/srv/a\\nb': a path")


def networks(conn) -> list:
    return sorted(n.name() for n in conn.listAllNetworks())


@pytest.mark.parametrize(
    ("ip", "dns", "start"),
    [
        (dict(address="10.78.0.1", prefix=33), None, "ips[0].prefix is 33: allowed are 0 to 32 bits."),
        (dict(address="fd00:78::1", prefix=129), None, "ips[0].prefix is 129: allowed are 0 to 128 bits."),
        (
            dict(address="10.78.0.1", dhcp_hosts=[dict(mac="52:54:00:aa:00:01", ip="10.78.0.10", name="web_1")]),
            None,
            "ips[0].dhcp_hosts[0].name is 'web_1': a host name (RFC 1123)",
        ),
        (dict(address="10.78.0.1"), [dict(ip="10.78.0.5", hostnames=["ok", "-x"])], "dns_hosts[0].hostnames[1] is"),
    ],
)
def test_kvm_network_prefixes_and_host_names(conn, ip, dns, start):
    name = f"ut-{secrets.token_hex(4)}"
    before = networks(conn)
    params = dict(name=name, forward_mode="isolated", ips=[ip], dns_hosts=dns)
    for check in (True, False):
        message = refused(manage, NetworkManager, conn, check, **params)
        assert message.startswith(start), message
    assert networks(conn) == before


def test_kvm_snapshot_description_is_refused_before_the_domain_is_read(conn):
    message = refused(manage, SnapshotManager, conn, domain="ut-none", name="s1", description="bell\x07")
    assert message.startswith("description is 'bell\\x07': text without control characters")


def test_kvm_domain_address_looks_up_existing_odd_names(odd):
    assert AddressManager(dict(name=[odd], timeout=0), fakes.Held(None)).names == [odd]
    assert refused(AddressManager, dict(name=["a/b"]), fakes.Held(None)).startswith("name is 'a/b': ")
