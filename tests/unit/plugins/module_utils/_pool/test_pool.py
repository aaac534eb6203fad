"""kvm_pool's work: the pool XML rules (pure) and PoolManager against libvirt's test:///default driver."""

from __future__ import annotations

import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._pool import pool_xml as px
from ansible_collections.virtops.kvm.plugins.module_utils._pool.pool_manager import PoolManager

URI = "test:///default"


@pytest.fixture
def name(conn):
    n = f"ut-{secrets.token_hex(4)}"
    yield n
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(n):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    for pool in conn.listAllStoragePools(0):
        if pool.name().startswith(n):
            if pool.isActive():
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
                pool.destroy()
            if pool.isPersistent():
                pool.undefine()


def run(name, check=False, **params):
    c = Connection(URI)
    try:
        return PoolManager(dict(name=name, uri=URI, **params), c, check).run()
    finally:
        c.close()


def four(name, **params):
    return [run(name, check=True, **params), run(name, **params), run(name, **params), run(name, check=True, **params)]


def assert_four(results, first=True):
    assert [r["changed"] for r in results] == [first, first, False, False], [r["changes"] for r in results]
    assert results[0]["changes"] == results[1]["changes"]
    assert results[0]["diff"] == results[1]["diff"], "check mode must predict the real diff"


def domain_xml(name, disk_xml):
    return f"""<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
      <os><type>hvm</type></os><devices>{disk_xml}</devices></domain>"""


# --------------------------------------------------------------------------- pool_xml (pure)


def xml_of(**p):
    return px.from_options(dict(dict(name="p"), **p))


def test_options_build_each_type():
    d = px.read(xml_of(path="/srv/p/"))
    assert (d["type"], d["path"]) == ("dir", "/srv/p")
    n = px.read(xml_of(type="netfs", path="/mnt/n", source_host="nas", source_path="/export/", source_format="nfs"))
    assert n["source"] == dict(hosts=["nas"], dir="/export", devices=[], name=None, format="nfs")
    lv = px.read(xml_of(type="logical", source_devices=["/dev/sdb", "/dev/sdc"], source_name="vg0"))
    assert lv["source"]["devices"] == ["/dev/sdb", "/dev/sdc"] and lv["source"]["name"] == "vg0"
    assert xml_of() is None  # nothing describes the pool: leave its definition alone


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (dict(path="relative/dir"), "absolute"),
        (dict(path="/p", source_host="nas"), "does not apply to a dir pool"),
        (dict(type="logical", source_path="/x"), "does not apply to a logical pool"),
        (dict(type="netfs", path="/m", source_format="lvm2"), "not one of a netfs pool"),
        (dict(type="logical", source_devices=["sdb"]), "absolute"),
        (dict(name="../etc", path="/p"), "name is '../etc': a name is"),
        (dict(xml="<pool type='dir'><name>other</name></pool>"), "names the pool 'other'"),
        (dict(xml="<network/>"), "expected <pool>"),
        (dict(xml="<pool><name>p</name>"), "not well-formed"),
        (dict(xml="<pool><name>p</name></pool>"), "no type"),
    ],
)
def test_bad_options_are_refused(params, message):
    with pytest.raises(InvalidInput, match=message):
        px.from_options(dict(dict(name="p"), **params))


@pytest.mark.parametrize(
    "params",
    [dict(type="dir"), dict(type="netfs", path="/m", source_host="nas"), dict(type="netfs", path="/m")],
)
def test_a_new_pool_needs_what_its_type_needs(params):
    with pytest.raises(InvalidInput, match="needs"):
        px.require_complete(xml_of(**params))


LIBVIRT_NETFS = """<pool type='netfs'>
  <name>p</name>
  <uuid>7b30950c-0943-4ecc-9cd4-f8a8f1594422</uuid>
  <capacity unit='bytes'>107374182400</capacity>
  <allocation unit='bytes'>0</allocation>
  <available unit='bytes'>107374182400</available>
  <source>
    <host name='nas'/>
    <dir path='/export'/>
    <format type='auto'/>
  </source>
  <target>
    <path>/mnt/n</path>
    <permissions><mode>0755</mode><owner>0</owner><group>0</group></permissions>
  </target>
</pool>"""


def test_what_libvirt_fills_in_is_not_a_change():
    current = px.parse(LIBVIRT_NETFS)
    wanted = xml_of(type="netfs", path="/mnt/n/", source_host="nas", source_path="/export//")
    assert px.differences(wanted, current) == []
    # the same through xml, with a mode written another way
    given = px.parse(
        "<pool type='netfs'><name>p</name><source><host name='nas'/><dir path='/export'/></source>"
        "<target><path>/mnt/n</path><permissions><mode>755</mode></permissions></target></pool>"
    )
    assert px.differences(given, current) == []


def test_real_changes_and_removals_are_seen():
    current = px.parse(LIBVIRT_NETFS)
    changed = px.differences(
        xml_of(type="netfs", path="/mnt/other", source_host="nas2", source_path="/export"), current
    )
    assert "/pool/target/path: '/mnt/n' -> '/mnt/other'" in changed
    assert "/pool/source/host[nas2]: added" in changed and "/pool/source/host[nas]: removed" in changed
    assert px.differences(xml_of(type="netfs", source_format="nfs", source_host="nas", source_path="/export"), current)


def test_predict_keeps_identity_and_drops_measured_sizes():
    current = px.parse(LIBVIRT_NETFS)
    after = px.predict(xml_of(type="netfs", path="/mnt/x", source_host="nas", source_path="/export"), current)
    text = px.tostring(after)
    assert "7b30950c-0943-4ecc-9cd4-f8a8f1594422" in text and "<path>/mnt/x</path>" in text
    assert "capacity" not in text and "permissions" not in text and '<format type="auto"/>' in text
    assert px.differences(after, current) == ["/pool/target/path: '/mnt/n' -> '/mnt/x'"]


# --------------------------------------------------------------------------- PoolManager


def test_lifecycle_four_ways(conn, name):
    results = four(name, path=f"/{name}/", state="active", autostart=True)
    assert_four(results)
    assert results[0]["pool"] is None  # check mode defined nothing
    assert results[1]["changes"] == [
        f"define (dir pool on /{name})",
        "autostart",
        "build (create the directory)",
        "start",
    ]
    pool = conn.storagePoolLookupByName(name)
    assert pool.isActive() and pool.autostart() and results[2]["pool"]["path"] == f"/{name}"
    assert results[2]["pool"]["state"] == "running" and results[2]["pool"]["volumes"] == []

    assert_four(four(name, state="inactive"))
    assert not pool.isActive()
    assert_four(four(name, autostart=False))
    assert not pool.autostart()
    # present leaves the state alone; an existing pool needs no definition options
    assert run(name)["changed"] is False
    assert_four(four(name, state="absent"))
    assert name not in [p.name() for p in conn.listAllStoragePools(0)]


def test_a_changed_definition_of_an_inactive_pool_is_defined_four_ways(conn, name):
    run(name, path=f"/{name}")
    results = four(name, path=f"/{name}-b")
    assert_four(results)
    assert [r["pending_restart"] for r in results] == [False] * 4
    assert results[1]["pool"]["path"] == f"/{name}-b"


def test_a_changed_definition_of_an_active_pool_waits_for_a_restart_unless_asked(conn, name):
    # test:///default keeps no separate persistent definition of an active pool (a define of one is
    # dropped): that the new one applies after the restart is tested against the real daemon
    run(name, path=f"/{name}", state="active")
    r = run(name, path=f"/{name}-b", check=True)
    assert r["pending_restart"] is True and r["changes"] == [f"define: /pool/target/path: '/{name}' -> '/{name}-b'"]
    r = run(name, path=f"/{name}-b", state="active", restart=True)
    assert r["changes"][1:] == ["restart", "build (create the directory)", "start"] and r["pending_restart"] is False


def test_uuid_is_kept_and_type_never_changes(conn, name):
    uuid = run(name, path=f"/{name}")["pool"]["uuid"]
    assert run(name, path=f"/{name}-2")["pool"]["uuid"] == uuid
    with pytest.raises(InvalidInput, match="cannot become a netfs pool"):
        run(name, type="netfs", path="/m", source_host="nas", source_path="/e")
    other = "11111111-2222-3333-4444-555555555555"
    with pytest.raises(InvalidInput, match="UUID"):
        run(
            name, xml=f"<pool type='dir'><name>{name}</name><uuid>{other}</uuid><target><path>/x</path></target></pool>"
        )


def test_logical_and_netfs_definitions_are_idempotent(conn, name):
    assert_four(four(f"{name}-lv", type="logical", source_devices=["/dev/sdz"], state="active"))
    info = run(f"{name}-lv")["pool"]
    assert info["type"] == "logical" and info["source"]["name"] == f"{name}-lv" and info["path"] == f"/dev/{name}-lv"
    nfs = dict(type="netfs", path=f"/mnt/{name}", source_host="nas", source_path="/export")
    assert_four(four(f"{name}-nfs", **nfs))
    assert run(f"{name}-nfs")["pool"]["source"]["format"] == "auto"


def test_a_directory_another_pool_has_is_refused(conn, name):
    run(name, path=f"/{name}")
    with pytest.raises(Conflict, match=f"{name}' already uses the directory"):
        run(f"{name}-2", path=f"/{name}/", check=True)


def test_a_new_pool_needs_a_definition(conn, name):
    with pytest.raises(InvalidInput, match="not defined"):
        run(name, state="active")


def test_removal_is_refused_while_a_domain_has_a_disk_inside(conn, name):
    run(name, path=f"/{name}", state="active")
    conn.defineXML(
        domain_xml(f"{name}-dom", f"<disk type='file'><source file='/{name}/sub/d.img'/><target dev='vda'/></disk>")
    )
    for check in (True, False):
        with pytest.raises(Conflict, match=f"domain {name}-dom") as err:
            run(name, check=check, state="absent")
        assert err.value.details["users"]
    assert conn.storagePoolLookupByName(name).isActive()  # nothing changed
    conn.lookupByName(f"{name}-dom").undefine()
    assert run(name, state="absent")["changed"] is True


def test_removal_is_refused_while_a_domain_names_the_pool(conn, name):
    run(name, path=f"/{name}", state="active")
    disk = f"<disk type='volume'><source pool='{name}' volume='v1'/><target dev='vda'/></disk>"
    conn.defineXML(domain_xml(f"{name}-dom", disk))
    with pytest.raises(Conflict, match=f"{name}/v1"):
        run(name, state="absent")
    # stopping is allowed, with a warning that the domain cannot start meanwhile
    mgr = PoolManager(dict(name=name, uri=URI, state="inactive"), Connection(URI), False)
    assert mgr.run()["changed"] and "cannot start" in mgr.warnings[0]


def test_delete_removes_the_volumes_only_when_asked(conn, name):
    run(name, path=f"/{name}", state="active")
    pool = conn.storagePoolLookupByName(name)
    pool.createXML("<volume><name>a.img</name><capacity>1024</capacity></volume>", 0)
    r = run(name, check=True, state="absent", delete=True)
    assert r["deleted_volumes"] == [f"/{name}/a.img"] and r["changed"]
    assert [v.name() for v in pool.listAllVolumes(0)] == ["a.img"]
    r = run(name, state="absent", delete=True)
    assert r["deleted_volumes"] == [f"/{name}/a.img"]
    assert name not in [p.name() for p in conn.listAllStoragePools(0)]


def test_delete_needs_an_active_pool_unless_dir(conn, name):
    run(name, type="logical", source_devices=["/dev/sdz"])
    with pytest.raises(StorageError, match="cannot be listed"):
        run(name, state="absent", delete=True)


def test_delete_refuses_a_directory_it_could_not_empty(conn, name, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "keep.txt").write_text("data")
    run(name, path=str(tmp_path), state="active")
    with pytest.raises(StorageError, match="is not empty"):
        run(name, state="absent", delete=True)
    assert (tmp_path / "sub" / "keep.txt").exists()
    assert run(name, state="absent")["changed"] is True  # without delete the files stay
    assert (tmp_path / "sub" / "keep.txt").exists()


def test_refresh_is_not_a_change(conn, name):
    run(name, path=f"/{name}", state="active")
    r = run(name, state="active", refresh=True)
    assert r["changed"] is False and r["refreshed"] is True
    assert run(name, check=True, state="active", refresh=True)["refreshed"] is False


def test_test_driver_without_inactive_xml_is_read(conn, name):
    # test:///default rejects VIR_STORAGE_XML_INACTIVE: the live XML stands in for it
    run(name, path=f"/{name}")
    assert run(name, path=f"/{name}")["changed"] is False
    with pytest.raises(libvirt.libvirtError):
        conn.storagePoolLookupByName(name).XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
