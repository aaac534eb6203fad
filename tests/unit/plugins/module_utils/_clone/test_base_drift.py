"""Base drift: the identity kvm_clone records for an overlay's base, and who refuses what when it changes.

Real qcow2 files in tmp_path and libvirt's test:///default driver (no daemon). The
integration test writes into a real base with qemu-io; here the base is changed
with plain file writes, which is what the fingerprint sees either way.
"""

from __future__ import annotations

import os

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _drift
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._domain.info import list_domains
from ansible_collections.virtops.kvm.plugins.module_utils._domain.manager import DomainManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict
from tests import fakes

URI = fakes.URI
TPL = "ut-drift-tpl"


@pytest.fixture
def base(conn, tmp_path):
    return fakes.make_template(conn, tmp_path, TPL, "64M")


def clone(conn, tmp_path, check=False, **params):
    params = dict(dict(template=TPL, identity={"operations": []}), **params)
    return fakes.clone_manager(conn, tmp_path, check, **params).run()


def domain(name, check=False, **params):
    p = dict(name=name, state="present", shutdown_timeout=5, force=False, remove_storage="none", uri=URI)
    p.update(params)
    c = Connection(URI)
    try:
        return DomainManager(p, c, check).run()
    finally:
        c.close()


def write_into(path, offset: int, data: bytes) -> None:
    """Change the base behind the overlays' back (root ignores the read-only mode kvm_clone set)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_the_fingerprint_sees_size_content_and_mtime_and_reads_little(tmp_path):
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.truncate(10 * 2**30)  # a sparse 10 GiB base
    first = _drift.fingerprint(str(path))
    assert first["size"] == 10 * 2**30 and first["digest"].startswith("sha256-16x64k:")
    assert _drift.changes(first, _drift.fingerprint(str(path))) == []
    write_into(path, 5 * 2**30, b"x")  # inside the sample taken at the middle of the file
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, first["mtime"]))  # even with the old mtime put back
    assert _drift.changes(first, _drift.fingerprint(str(path))) == ["content"]
    os.utime(path, ns=(st.st_atime_ns, first["mtime"] + 10**9))
    assert "modification time" in _drift.changes(first, _drift.fingerprint(str(path)))
    with open(path, "ab") as f:
        f.write(b"y")
    assert _drift.changes(first, _drift.fingerprint(str(path)))[0] == f"size {2**30 * 10} -> {2**30 * 10 + 1} bytes"
    assert _drift.changes(first, None) == ["the file is gone"]


def test_mtime_counts_only_on_the_recorded_file(tmp_path):
    """A copy of the base at the same path (another host's, a restored backup) is checked by size and digest;
    on the recorded file another mtime is drift, and an equal size and mtime is taken without reading."""
    path = tmp_path / "base.img"
    path.write_bytes(b"b" * 300_000)
    first = _drift.fingerprint(str(path))
    assert first["file"] == _drift.file_id(os.stat(path))
    later = first["mtime"] + 10**9
    os.utime(path, ns=(later, later))
    assert _drift.changes(first, _drift.fingerprint(str(path))) == ["modification time"]
    legacy = {k: v for k, v in first.items() if k != "file"}  # a record made before file ids: the same file
    assert _drift.changes(legacy, _drift.fingerprint(str(path))) == ["modification time"]

    copy = tmp_path / "copy.img"
    copy.write_bytes(path.read_bytes())  # another file: its own inode and mtime
    os.replace(copy, path)
    now = _drift.fingerprint(str(path))
    assert now["file"] != first["file"] and now["mtime"] != first["mtime"]
    assert _drift.changes(first, now) == []
    assert _drift.Bases().changes(first, str(path)) == []
    write_into(path, 0, b"other")
    assert _drift.Bases().changes(first, str(path)) == ["content"]  # the copy differs: drift all the same

    # the fast path: the recorded file with its size and mtime is not read at all
    record = _drift.fingerprint(str(path))
    bases = _drift.Bases()
    os.chmod(path, 0)  # unreadable (for root too, nothing is opened: only stat'ed)
    bases.now = lambda base: pytest.fail("read the base although size and mtime were as recorded")
    assert bases.changes(record, str(path)) == []


def test_clone_records_its_base_then_refuses_new_overlays_on_a_changed_base(conn, base, tmp_path):
    clone(conn, tmp_path, name="ut-drift-a")
    prov = dx.provenance(dx.parse(conn.lookupByName("ut-drift-a").XMLDesc(0)))
    recorded = prov["created_disks"][0]["base_fingerprint"]
    assert recorded == _drift.fingerprint(str(base))

    write_into(base, 0x10000, b"written after the overlay")  # the second 64 KiB sample
    with pytest.raises(Conflict) as info:
        clone(conn, tmp_path, clones=["ut-drift-a", "ut-drift-b"])
    msg = info.value.message
    assert f"Refusing to add overlays: the base changed after overlays were made on it: {base} (content" in msg
    assert "Domains on it: ut-drift-a" in msg and "accept_base_change" in msg
    assert "ut-drift-b" not in [d.name() for d in conn.listAllDomains()]
    assert not (tmp_path / "ut-drift-b.qcow2").exists()

    # the existing clone alone: a warning, nothing refused, nothing changed
    m = fakes.clone_manager(conn, tmp_path, template=TPL, name="ut-drift-a", identity={"operations": []})
    assert m.run()["changed"] is False
    assert any("The base of domain ut-drift-a changed" in w for w in m.warnings)

    # accepted: the base is recorded anew in the clone that was on it, and the new clone is made
    check = clone(conn, tmp_path, check=True, clones=["ut-drift-a", "ut-drift-b"], accept_base_change=True)
    assert check["changed"] is True and check["base_change_accepted"] == ["ut-drift-a"]
    done = clone(conn, tmp_path, clones=["ut-drift-a", "ut-drift-b"], accept_base_change=True)
    assert done["base_change_accepted"] == ["ut-drift-a"]
    for name in ("ut-drift-a", "ut-drift-b"):
        prov = dx.provenance(dx.parse(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
        assert prov["created_disks"][0]["base_fingerprint"] == _drift.fingerprint(str(base)), name
    again = clone(conn, tmp_path, clones=["ut-drift-a", "ut-drift-b"], accept_base_change=True)
    assert again["changed"] is False and "base_change_accepted" not in again


def test_kvm_domain_refuses_to_start_a_clone_on_a_changed_base_and_info_reports_it(conn, base, tmp_path):
    clone(conn, tmp_path, clones=["ut-drift-a", "ut-drift-c"])
    assert domain("ut-drift-a", state="running")["changed"] is True
    domain("ut-drift-a", state="destroyed")
    listed, _missing = list_domains(conn, URI, names=["ut-drift-a"])
    assert listed[0]["base_drift"] == []

    write_into(base, 0, b"QFI\xfb")  # rewrite the header's magic in place: same bytes, new mtime
    st = os.stat(base)
    os.utime(base, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    listed, _missing = list_domains(conn, URI, names=["ut-drift-a", "ut-drift-c"])
    for d in listed:
        assert d["base_drift"] == [
            dict(disk=str(tmp_path / f"{d['name']}.qcow2"), base=str(base), changes=["modification time"])
        ]
    with pytest.raises(Conflict) as info:
        domain("ut-drift-a", state="running")
    assert "Refusing to start domain ut-drift-a: the base changed" in info.value.message
    assert "Domains on it: ut-drift-a, ut-drift-c" in info.value.message
    assert not conn.lookupByName("ut-drift-a").isActive()

    r = domain("ut-drift-a", check=True, state="running", accept_base_change=True)
    assert r["changed"] is True and not conn.lookupByName("ut-drift-a").isActive()
    r = domain("ut-drift-a", state="running", accept_base_change=True)
    assert r["changed"] is True and conn.lookupByName("ut-drift-a").isActive()
    listed, _missing = list_domains(conn, URI, names=["ut-drift-a", "ut-drift-c"])
    assert [d["base_drift"] for d in listed] == [[], listed[1]["base_drift"]] and listed[1]["base_drift"]
