"""The host's one write guard (HostScan.dependants / stands_on / guard), and writers outside kvm_snapshot asking it.

Real qcow2 files under tmp_path for the backing chains, libvirt's test:///default driver for the
domains and their snapshots. kvm_snapshot's own refusals are in _snapshot/test_snapshot.py, kvm_volume's
in _pool/test_volume.py.
"""

from __future__ import annotations

import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan
from tests import fakes

URI = "test:///default"


@pytest.fixture
def prefix(conn):
    name = f"ut-{secrets.token_hex(3)}"
    yield name
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(name):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def test_who_stands_on_a_file(conn, tmp_path, prefix):
    base = fakes.qcow2(tmp_path / "base.qcow2")
    by_hand = fakes.qcow2(tmp_path / "by-hand.qcow2", base)
    clone = fakes.qcow2(tmp_path / "clone.qcow2", base)
    fakes.disk_domain(conn, f"{prefix}-clone", clone)
    fakes.disk_domain(conn, f"{prefix}-user", base)
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
    old = fakes.qcow2(tmp_path / "old.qcow2")
    dom = fakes.disk_domain(conn, f"{prefix}-owner", fakes.qcow2(tmp_path / "now.qcow2"))
    fakes.external_snapshot(dom, "before", old, tmp_path / "layer.qcow2")
    scan = HostScan.take(conn)
    assert scan.stands_on(str(old)) == [f"snapshot before of domain {prefix}-owner"]
    # the owner weighs its own snapshots itself
    assert scan.stands_on(str(old), f"{prefix}-owner") == []
    # ... unless it asks for them (a writer no snapshot of its own may stand under: kvm_customize)
    assert scan.stands_on(str(old), f"{prefix}-owner", own_snapshots=True) == [
        f"snapshot before of domain {prefix}-owner"
    ]
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
