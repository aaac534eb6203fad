"""The host's one write guard (HostScan.dependants / stands_on / guard), and writers outside kvm_snapshot asking it.

Real qcow2 files under tmp_path for the backing chains, libvirt's test:///default driver for the
domains and their snapshots. kvm_snapshot's own refusals are in test_snapshot.py.
"""

from __future__ import annotations

import secrets
import subprocess

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._pool.volume_manager import VolumeManager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

URI = "test:///default"


def qcow2(path, backing=None):
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    argv += ["-b", str(backing), "-F", "qcow2", str(path)] if backing else [str(path), "16M"]
    subprocess.run(argv, check=True, capture_output=True)
    return path


def domain(conn, name, disk):
    return conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )


def external_snapshot(dom, snap, base, overlay):
    """Record an external snapshot as libvirt does: its overlay, and the definition at that time (its base)."""
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace(str(dom_disk(dom)), str(base))
    dom.snapshotCreateXML(
        f"<domainsnapshot><name>{snap}</name><state>shutoff</state><creationTime>1000</creationTime>"
        "<memory snapshot='no'/><disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>"
        f"<source file='{overlay}'/></disk></disks>{xml}</domainsnapshot>",
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE,
    )


def dom_disk(dom):
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return xml.split("<source file='", 1)[1].split("'", 1)[0]


@pytest.fixture
def prefix(conn):
    name = f"ut-{secrets.token_hex(3)}"
    yield name
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(name):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def test_who_stands_on_a_file(conn, tmp_path, prefix):
    base = qcow2(tmp_path / "base.qcow2")
    by_hand = qcow2(tmp_path / "by-hand.qcow2", base)
    clone = qcow2(tmp_path / "clone.qcow2", base)
    domain(conn, f"{prefix}-clone", clone)
    domain(conn, f"{prefix}-user", base)
    scan = HostScan.take(conn)
    assert scan.stands_on(str(base)) == [
        f"{base} (domain {prefix}-user)",
        f"{by_hand} (an overlay file)",
        f"{clone} (domain {prefix}-clone)",
    ]
    # the writer's own disk and own layers are not dependants
    assert scan.stands_on(str(base), f"{prefix}-user", "vda", {str(by_hand)}) == [f"{clone} (domain {prefix}-clone)"]
    # nothing stands on the top of a chain
    assert scan.stands_on(str(clone), f"{prefix}-clone", "vda") == []


def test_a_snapshot_layer_no_disk_holds_any_more_is_a_dependant(conn, tmp_path, prefix):
    old = qcow2(tmp_path / "old.qcow2")
    dom = domain(conn, f"{prefix}-owner", qcow2(tmp_path / "now.qcow2"))
    external_snapshot(dom, "before", old, tmp_path / "layer.qcow2")
    scan = HostScan.take(conn)
    assert scan.stands_on(str(old)) == [f"snapshot before of domain {prefix}-owner"]
    # the owner weighs its own snapshots itself
    assert scan.stands_on(str(old), f"{prefix}-owner") == []
    with pytest.raises(StorageError) as err:
        scan.guard([str(old)], "write it", label="the file")
    msg = err.value.message
    assert msg.startswith(
        f"Refusing to write it: the file ({old}) is the base of snapshot before of domain {prefix}-owner."
    )
    assert "nothing was changed" in msg
    assert err.value.details["dependants"] == [f"snapshot before of domain {prefix}-owner"]
    # nobody but its owner's disk stands on the owner's current file
    scan.guard([str(tmp_path / "now.qcow2")], "write it", f"{prefix}-owner", "vda")
    with pytest.raises(StorageError, match=rf"now.qcow2 \(domain {prefix}-owner\)"):
        scan.guard([str(tmp_path / "now.qcow2")], "write it")


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


def run_volume(pool, name, check=False, **params):
    c = Connection(URI)
    try:
        return VolumeManager(dict(pool=pool, name=name, uri=URI, **params), c, check).run()
    finally:
        c.close()


@pytest.mark.parametrize("check", [True, False])
def test_a_volume_a_snapshot_stands_on_is_not_resized_or_deleted(conn, tmp_path, pool, prefix, check):
    run_volume(pool, "v.qcow2", size="1G")
    path = f"/{pool}/v.qcow2"
    dom = domain(conn, f"{prefix}-owner", qcow2(tmp_path / "now.qcow2"))
    external_snapshot(dom, "s1", path, tmp_path / "layer.qcow2")
    with pytest.raises(Conflict, match=rf"not resized: snapshot s1 of domain {prefix}-owner"):
        run_volume(pool, "v.qcow2", check, size="2G")
    with pytest.raises(Conflict, match=rf"not deleted: snapshot s1 of domain {prefix}-owner"):
        run_volume(pool, "v.qcow2", check, state="absent")
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName("v.qcow2")
    assert vol.info()[1] == 1024**3


def test_a_download_never_replaces_a_base(conn, tmp_path, pool, prefix):
    run_volume(pool, "v.img", size="1M", format="raw")
    base = qcow2(tmp_path / "base.qcow2")
    qcow2(tmp_path / "over.qcow2", base)
    before = base.read_bytes()
    with pytest.raises(
        StorageError, match=r"Refusing to download volume .* over .*base.qcow2.*over.qcow2 \(an overlay file\)"
    ):
        run_volume(pool, "v.img", download=str(base), force=True)
    assert base.read_bytes() == before
