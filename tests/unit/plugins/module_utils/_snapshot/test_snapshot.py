"""SnapshotManager and SnapshotInfoManager against libvirt's test:///default driver and real qcow2 files.

The test driver keeps snapshot metadata but writes no image files and has no
disk-only snapshots, so internal snapshots run through it end to end, and
external ones are set up as libvirt records them (REDEFINE, with the files
made by qemu-img): the revert and the offline merges then run for real, on
real files. Live external snapshots and merges are in the integration tests.
"""

from __future__ import annotations

import os
import subprocess

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    InvalidInput,
    LibvirtFailed,
    StorageError,
    TimeoutExpired,
)
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import qcow2
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import xml as sx
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.blockjob import BlockJobs
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.context import SnapshotContext
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.info import SnapshotInfoManager
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.manager import SnapshotManager
from ansible_collections.virtops.kvm.plugins.module_utils._wait import Clock
from tests import fakes
from tests.fakes import Held, runner

DOM = "ut-snap"


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qemu_io(path, command):
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True, capture_output=True)


def reads(path, pattern: int, offset: str) -> bool:
    """Whether the guest-visible data of ``path`` at ``offset`` is 4 KiB of ``pattern``."""
    p = subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern:#x} {offset} 4k", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return p.returncode == 0 and "Pattern verification failed" not in p.stdout


def image(path, backing=None, writes=()):
    if backing is None:
        qemu_img("create", "-q", "-f", "qcow2", str(path), "16M")
    else:
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(backing), "-F", "qcow2", str(path))
    for pattern, offset in writes:
        qemu_io(path, f"write -P {pattern:#x} {offset} 4k")
    return path


def domain_xml(name, disks, extra=""):
    devs = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{path}'/>"
        f"<target dev='{target}' bus='virtio'/>{more}</disk>"
        for target, path, fmt, more in disks
    )
    return f"""<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os>{extra}<devices>{devs}</devices></domain>"""


@pytest.fixture
def conn():
    c, close = fakes.open_conn()
    yield c
    close()


def manager(conn, check=False, **params):
    params.setdefault("domain", DOM)
    params.setdefault("name", "s1")
    return SnapshotManager(params, Held(conn), check, runner=runner)


def run(conn, check=False, **params):
    return manager(conn, check, **params).run()


def four(conn, **params):
    return [run(conn, True, **params), run(conn, **params), run(conn, **params), run(conn, True, **params)]


def assert_four(results, first=True):
    assert [r["changed"] for r in results] == [first, first, False, False], [r["changes"] for r in results]
    assert results[0]["changes"] == results[1]["changes"]
    assert results[0]["diff"]["after"] == results[1]["diff"]["after"]


def define(conn, disk, name=DOM, fmt="qcow2", extra="", more=""):
    """Define the domain with ``disk`` as vda, or point an existing one's vda at it."""
    try:
        root = dx.parse(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    except libvirt.libvirtError:
        return conn.defineXML(domain_xml(name, [("vda", str(disk), fmt, more)], extra))
    sx.set_disk_source(root, "vda", str(disk), fmt)
    return conn.defineXML(dx.tostring(root))


def inject_external(conn, snap, base, overlay, when, parent=None, name=DOM):
    """Record an external snapshot as libvirt does: its overlay, and the definition (its base) at that time."""
    dom = conn.lookupByName(name)
    root = dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    sx.set_disk_source(root, "vda", str(base), "qcow2")
    parent_el = f"<parent><name>{parent}</name></parent>" if parent else ""
    xml = (
        f"<domainsnapshot><name>{snap}</name><state>shutoff</state>{parent_el}<creationTime>{when}</creationTime>"
        "<memory snapshot='no'/><disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>"
        f"<source file='{overlay}'/></disk></disks>{dx.tostring(root)}</domainsnapshot>"
    )
    dom.snapshotCreateXML(xml, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT)


def disk_of(conn, name=DOM):
    return dx.disks(dx.parse(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))[0]["path"]


def files(tmp_path):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir())


def names(conn, name=DOM):
    return [s.getName() for s in conn.lookupByName(name).listAllSnapshots()]


# ---------------------------------------------------------------------- internal


def test_internal_snapshot_of_a_shut_off_domain_four_ways(conn, tmp_path):
    define(conn, image(tmp_path / "d.qcow2"))
    results = four(conn, description="before")
    assert_four(results)
    assert results[0]["snapshot"] is None and names(conn) == ["s1"]
    snap = results[1]["snapshot"]
    assert (snap["kind"], snap["state"], snap["memory"], snap["current"], snap["description"]) == (
        "internal",
        "shutoff",
        False,
        True,
        "before",
    )
    assert results[1]["changes"] == ["create internal snapshot s1"]
    assert "  - s1 (internal)" in results[1]["diff"]["after"] and "(none)" in results[1]["diff"]["before"]
    assert results[1]["created_files"] == [] and results[2]["snapshot"] == snap


def test_internal_snapshot_of_a_running_domain_has_memory_and_reverts_once(conn, tmp_path):
    define(conn, image(tmp_path / "d.qcow2")).create()
    r = run(conn)
    assert r["snapshot"]["memory"] is True and r["snapshot"]["state"] == "running"
    assert "with the guest's memory" in r["changes"][0]
    results = four(conn, state="current")
    assert_four(results)
    assert results[1]["changes"] == ["revert to internal snapshot s1 (the domain's current state is discarded)"]
    state, reason = conn.lookupByName(DOM).state()
    assert (state, reason) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT)
    # paused and resumed by hand: no longer at the snapshot, so it reverts again
    dom = conn.lookupByName(DOM)
    dom.suspend()
    dom.resume()
    assert run(conn, True, state="current")["changed"] is True


def test_internal_delete_four_ways(conn, tmp_path):
    define(conn, image(tmp_path / "d.qcow2"))
    run(conn)
    run(conn, name="s2")
    results = four(conn, state="absent")
    assert_four(results)
    assert names(conn) == ["s2"] and results[1]["snapshot"] is None
    assert results[1]["changes"] == ["delete internal snapshot s1"]
    assert results[0]["diff"]["after"].count(" - ") == 1


def test_description_is_updated_and_kind_must_match(conn, tmp_path):
    define(conn, image(tmp_path / "d.qcow2"))
    run(conn, description="one")
    results = four(conn, description="two")
    assert_four(results)
    assert results[1]["snapshot"]["description"] == "two"
    assert run(conn)["changed"] is False  # no description given: any is fine
    with pytest.raises(Conflict, match="is internal, not external"):
        run(conn, kind="external")


def test_info_lists_the_tree_and_the_current_one(conn, tmp_path):
    define(conn, image(tmp_path / "d.qcow2"))
    run(conn, name="a")
    run(conn, name="b")
    run(conn, name="a", state="current")
    run(conn, name="c")
    r = SnapshotInfoManager(dict(domain=DOM), Held(conn)).run()
    by = {s["name"]: s for s in r["snapshots"]}
    assert [s["name"] for s in r["snapshots"]] == ["a", "b", "c"]
    assert (by["a"]["children"], by["b"]["parent"], by["c"]["parent"]) == (["b", "c"], "a", "a")
    assert r["current"] == "c" and r["roots"] == ["a"] and r["missing"] == []
    assert r["disks"] == [dict(target="vda", chain=[str(tmp_path / "d.qcow2")])]
    r = SnapshotInfoManager(dict(domain=DOM, name=["c", "nope", "a"]), Held(conn)).run()
    assert [s["name"] for s in r["snapshots"]] == ["c", "a"] and r["missing"] == ["nope"]
    with pytest.raises(DomainNotFound):
        SnapshotInfoManager(dict(domain="ut-none"), Held(conn)).run()


# ---------------------------------------------------------------------- refused, nothing changed


def test_bad_input_changes_nothing(conn, tmp_path):
    define(conn, image(tmp_path / "d.qcow2"))
    before = files(tmp_path)
    with pytest.raises(DomainNotFound, match="ut-none"):
        run(conn, domain="ut-none")
    with pytest.raises(InvalidInput, match=r"name is '\.\./x': a name is"):
        run(conn, name="../x")
    with pytest.raises(InvalidInput, match="no snapshot named 'gone'"):
        run(conn, name="gone", state="current")
    assert run(conn, name="gone", state="absent")["changed"] is False
    raw = tmp_path / "r.img"
    raw.write_bytes(b"\0" * 65536)
    define(conn, raw, name="ut-raw", fmt="raw")
    with pytest.raises(InvalidInput, match="internal snapshots live inside qcow2"):
        run(conn, domain="ut-raw")
    shared = image(tmp_path / "s.qcow2")
    conn.defineXML(
        domain_xml("ut-shared", [("vda", tmp_path / "d2.qcow2", "qcow2", ""), ("vdb", shared, "qcow2", "<shareable/>")])
    )
    image(tmp_path / "d2.qcow2")
    conn.lookupByName("ut-shared").create()
    with pytest.raises(InvalidInput, match="shared disk"):
        run(conn, domain="ut-shared")
    define(conn, image(tmp_path / "u.qcow2"), name="ut-uefi", extra="")
    dom = conn.lookupByName("ut-uefi")
    root = dx.parse(dom.XMLDesc(0))
    loader = root.find("os").makeelement("loader", {"type": "pflash", "readonly": "yes"})
    loader.text = "/usr/share/OVMF/OVMF_CODE.fd"
    root.find("os").append(loader)
    conn.defineXML(dx.tostring(root))
    with pytest.raises(InvalidInput, match="pflash"):
        run(conn, domain="ut-uefi")
    with pytest.raises(InvalidInput, match="timeout"):
        run(conn, timeout=0)
    assert names(conn) == [] and names(conn, "ut-raw") == [] and names(conn, "ut-shared") == []
    after = [f for f in files(tmp_path) if f[0] in {b[0] for b in before}]
    assert after == before


def test_kinds_are_not_mixed(conn, tmp_path):
    define(conn, image(tmp_path / "d.qcow2"))
    run(conn, name="i")
    with pytest.raises(InvalidInput, match="one kind per domain"):
        run(conn, name="e", kind="external")
    run(conn, name="i", state="absent")
    base = tmp_path / "d.qcow2"
    overlay = image(tmp_path / f"{DOM}.vda.e.qcow2", base)
    define(conn, overlay)
    inject_external(conn, "e", base, overlay, 10)
    with pytest.raises(InvalidInput, match="one kind per domain"):
        run(conn, name="i")


def test_a_disk_others_stand_on_gets_no_snapshot(conn, tmp_path):
    base = image(tmp_path / "tpl.qcow2")
    define(conn, base, name="ut-tpl")
    clone = image(tmp_path / "clone.qcow2", base)
    define(conn, clone, name="ut-clone")
    for kind in ("internal", "external"):
        with pytest.raises(StorageError, match=r"is the base of .*clone.qcow2 \(domain ut-clone\)"):
            run(conn, domain="ut-tpl", kind=kind)
    assert names(conn, "ut-tpl") == []
    # the clone itself can: its snapshot never touches the base
    r = run(conn, True, domain="ut-clone", kind="external")
    assert r["created_files"] == [str(tmp_path / "ut-clone.vda.s1.qcow2")]
    assert r["diff"]["after"].count(str(base)) == 1


@pytest.mark.parametrize("dependant", ["domain", "file"])
def test_no_revert_to_an_internal_snapshot_of_a_disk_others_stand_on(conn, tmp_path, dependant):
    """The data-loss bug of issue 24: libvirt's revert rewrites the file an overlay relies on."""
    disk = image(tmp_path / "tpl.qcow2", writes=[(0x41, "0")])
    define(conn, disk)
    dom = conn.lookupByName(DOM)
    # a memory snapshot: the test driver reverts it for real (state reason from_snapshot)
    dom.create()
    run(conn)
    dom.destroy()
    overlay = image(tmp_path / "over.qcow2", disk)
    if dependant == "domain":
        define(conn, overlay, name="ut-over")
    before = files(tmp_path)
    for check in (True, False):
        with pytest.raises(StorageError, match=r"Refusing to revert to internal snapshot s1") as err:
            run(conn, check, state="current")
        assert str(overlay) in err.value.message
        assert "nothing was changed" in err.value.message
    assert files(tmp_path) == before
    assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert reads(overlay, 0x41, "0")


def test_another_domains_snapshot_layer_is_never_written(conn, tmp_path):
    """A file only a snapshot stands on (no domain's disk chain holds it any more) is still a base."""
    base = image(tmp_path / "base.qcow2")
    define(conn, base, name="ut-owner")
    # ut-owner's snapshot froze base.qcow2; then its disk moved elsewhere (as after a revert to a branch)
    inject_external(conn, "snap", base, tmp_path / "ut-owner.vda.snap.qcow2", 1000, name="ut-owner")
    define(conn, image(tmp_path / "elsewhere.qcow2"), name="ut-owner")
    # another domain with base.qcow2 as its own disk may not write it by a snapshot
    define(conn, base, name="ut-writer")
    with pytest.raises(StorageError, match=r"is the base of snapshot snap of domain ut-owner"):
        run(conn, domain="ut-writer", kind="internal")
    assert names(conn, "ut-writer") == []


def test_external_create_in_check_mode_names_the_overlays_and_creates_nothing(conn, tmp_path):
    disk = image(tmp_path / "d.qcow2")
    define(conn, disk)
    before = files(tmp_path)
    r = run(conn, True, kind="external")
    new = str(tmp_path / f"{DOM}.vda.s1.qcow2")
    assert r["changed"] is True and r["created_files"] == [new]
    assert r["changes"] == [f"create external snapshot s1 (new overlays vda: {new})"]
    assert f"vda: {new} <- {disk}" in r["diff"]["after"]
    assert files(tmp_path) == before and names(conn) == []
    conn.lookupByName(DOM).create()
    r = run(conn, True, kind="external")
    assert r["changes"] == [f"create external snapshot s1 (new overlays vda: {new}, guest paused for it)"]
    with pytest.raises(InvalidInput, match="no connected guest agent"):
        run(conn, True, kind="external", quiesce="agent")
    assert "paused" not in run(conn, True, kind="external", quiesce="none")["changes"][0]
    (tmp_path / f"{DOM}.vda.s1.qcow2").write_bytes(b"someone's")
    with pytest.raises(Conflict, match="already exists"):
        run(conn, True, kind="external")


# ---------------------------------------------------------------------- external revert and delete (offline)


@pytest.fixture
def chain2(conn, tmp_path):
    """d0 (0x11 at 0) <- s1's layer (0x22 at 0, 0x33 at 1M) = the domain's disk; snapshot s1 on d0."""
    d0 = image(tmp_path / "d0.qcow2", writes=[(0x11, 0)])
    o1 = image(tmp_path / f"{DOM}.vda.s1.qcow2", d0)
    define(conn, o1)
    inject_external(conn, "s1", d0, o1, 10)
    qemu_io(o1, "write -P 0x22 0 4k")
    qemu_io(o1, "write -P 0x33 1M 4k")
    return d0, o1


def test_external_revert_four_ways_keeps_the_later_state(conn, tmp_path, chain2):
    d0, o1 = chain2
    results = four(conn, state="current")
    assert_four(results)
    new = str(tmp_path / f"{DOM}.vda.s1@1.qcow2")
    assert results[0]["created_files"] == results[1]["created_files"] == [new]
    assert results[1]["kept_files"] == [str(o1)] and results[1]["removed_files"] == []
    assert results[1]["changes"] == [f"disk vda: new overlay {new} on {d0}", "make s1 the current snapshot"]
    assert disk_of(conn) == new and qcow2.is_empty(new) and reads(new, 0x11, 0)
    assert os.path.exists(o1) and reads(o1, 0x22, 0)
    assert results[1]["snapshot"]["current"] is True
    assert f"vda: {new} <- {d0}" in results[1]["diff"]["after"]
    m = manager(conn, state="current")
    qemu_io(new, "write -P 0x44 0 4k")  # written since the revert: reverts again, to @2
    r = m.run()
    assert r["created_files"] == [str(tmp_path / f"{DOM}.vda.s1@2.qcow2")] and r["kept_files"] == [new]
    assert "drop_later_state=true" in m.warnings[0]


def test_external_revert_drops_only_what_no_snapshot_needs(conn, tmp_path, chain2):
    _d0, o1 = chain2
    o2 = image(tmp_path / f"{DOM}.vda.s2.qcow2", o1, writes=[(0x55, 0)])
    define(conn, o2)
    inject_external(conn, "s2", o1, o2, 20, parent="s1")
    r = run(conn, state="current", drop_later_state=True)
    assert r["removed_files"] == [str(o2)] and r["kept_files"] == []  # o1 is s2's base: kept
    assert not os.path.exists(o2) and os.path.exists(o1)
    assert run(conn, state="current", drop_later_state=True)["changed"] is False
    r = run(conn, name="s2", state="current")
    assert r["created_files"] == [str(tmp_path / f"{DOM}.vda.s2@1.qcow2")]
    assert r["kept_files"] == [str(tmp_path / f"{DOM}.vda.s1@1.qcow2")]
    assert reads(disk_of(conn), 0x22, 0) and reads(disk_of(conn), 0x33, "1M")


def test_external_delete_commits_the_layer_four_ways(conn, tmp_path, chain2):
    d0, o1 = chain2
    results = four(conn, state="absent")
    assert_four(results)
    r = results[1]
    assert r["merged"] == [dict(target="vda", method="commit", base=str(d0), layer=str(o1))]
    assert results[0]["removed_files"] == r["removed_files"] == [str(o1)]
    assert not os.path.exists(o1) and disk_of(conn) == str(d0)
    assert reads(d0, 0x22, 0) and reads(d0, 0x33, "1M")
    assert names(conn) == [] and r["snapshot"] is None
    assert f"vda: {d0}\n" in r["diff"]["after"]


def test_deleting_a_middle_snapshot_moves_the_next_one_onto_the_merged_file(conn, tmp_path, chain2):
    d0, o1 = chain2
    o2 = image(tmp_path / f"{DOM}.vda.s2.qcow2", o1, writes=[(0x55, "2M")])
    define(conn, o2)
    inject_external(conn, "s2", o1, o2, 20, parent="s1")
    r = run(conn, state="absent")
    assert r["changes"][1] == f"snapshot s2: its base is now {d0}"
    assert not os.path.exists(o1) and disk_of(conn) == str(o2)
    assert [c["path"] for c in SnapshotContext(Held(conn), DOM, True, runner).chains()["vda"]] == [str(o2), str(d0)]
    assert reads(o2, 0x22, 0) and reads(o2, 0x33, "1M") and reads(o2, 0x55, "2M")
    info = SnapshotInfoManager(dict(domain=DOM), Held(conn)).run()
    assert [s["name"] for s in info["snapshots"]] == ["s2"]
    assert info["snapshots"][0]["disks"][0]["base"] == str(d0) and info["snapshots"][0]["disks"][0]["in_chain"]
    # and s2 still reverts to what it froze: d0 now holds s1's layer merged
    r = run(conn, name="s2", state="current")
    assert reads(r["created_files"][0], 0x22, 0)


def test_a_shared_base_is_pulled_up_never_written(conn, tmp_path, chain2):
    d0, o1 = chain2
    define(conn, image(tmp_path / "other.qcow2", d0), name="ut-other")
    before = subprocess.run(["sha256sum", str(d0)], capture_output=True, text=True, check=True).stdout
    results = four(conn, state="absent")
    assert_four(results)
    r = results[1]
    assert r["merged"] == [dict(target="vda", method="pull", base=str(d0), layer=str(o1))]
    assert r["removed_files"] == []
    assert subprocess.run(["sha256sum", str(d0)], capture_output=True, text=True, check=True).stdout == before
    assert [c["path"] for c in SnapshotContext(Held(conn), DOM, True, runner).chains()["vda"]] == [str(o1)]
    assert reads(o1, 0x22, 0) and reads(o1, 0x33, "1M") and reads(o1, 0x11, "0") is False
    assert disk_of(conn) == str(o1)


def test_merge_refused_when_others_stand_on_both_files(conn, tmp_path, chain2):
    d0, o1 = chain2
    define(conn, image(tmp_path / "other.qcow2", d0), name="ut-other")
    image(tmp_path / "by-hand.qcow2", o1)
    before = files(tmp_path)
    with pytest.raises(StorageError, match=r"by-hand.qcow2 \(an overlay file\).*other.qcow2 \(domain ut-other\)"):
        run(conn, state="absent")
    assert files(tmp_path) == before and names(conn) == ["s1"]


def test_revert_needs_the_base(conn, tmp_path, chain2):
    d0, _o1 = chain2
    os.rename(d0, tmp_path / "moved.qcow2")
    with pytest.raises(StorageError, match=r"d0\.qcow2 does not exist"):
        run(conn, state="current")
    assert names(conn) == ["s1"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "moved.qcow2",
        f"{DOM}.vda.s1.qcow2",
    ]


# ---------------------------------------------------------------------- live block jobs (bounded waits)


class FakeDom:
    """A running domain's block job as libvirt reports it: ``ready_after`` looks until the pivot is accepted."""

    def __init__(self, ready_after=2, vanish=False):
        self.looks = 0
        self.ready_after = ready_after
        self.vanish = vanish
        self.calls = []

    def name(self):
        return DOM

    def blockCommit(self, *args):
        self.calls.append(("commit", *args))

    def blockRebase(self, *args):
        self.calls.append(("rebase", *args))

    def blockJobInfo(self, target, flags):
        self.looks += 1
        if self.vanish or ("pivot" in self.calls or "cancel" in self.calls):
            return {}
        return dict(type=4, bandwidth=0, cur=min(self.looks, 3), end=3)

    def blockJobAbort(self, target, flags):
        if flags & libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT:
            if self.looks < self.ready_after:
                raise libvirt.libvirtError("block job not ready for pivot yet")
            self.calls.append("pivot")
        else:
            self.calls.append("cancel")


def jobs(fake, timeout=5, sleeps=None):
    ctx = SnapshotContext(Held(None), DOM, False, runner)
    ctx._dom = fake  # pylint: disable=protected-access
    ticks = iter(range(1000))  # one second more at each look at the time
    clock = Clock(lambda: next(ticks), (sleeps if sleeps is not None else []).append)
    return BlockJobs(ctx, timeout, clock=clock)


def test_active_commit_pivots_once_ready():
    fake = FakeDom(ready_after=4)
    jobs(fake).commit("vda", "/b.qcow2", "/t.qcow2", active=True)
    assert fake.calls[0] == ("commit", "vda", "/b.qcow2", None, 0, libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE)
    assert fake.calls[1:] == ["pivot"]


def test_a_job_that_never_gets_ready_is_cancelled_at_the_timeout():
    fake = FakeDom(ready_after=10**6)
    sleeps = []
    with pytest.raises(TimeoutExpired, match="cancelled"):
        jobs(fake, timeout=7, sleeps=sleeps).commit("vda", "/b.qcow2", "/t.qcow2", active=True)
    assert fake.calls[-1] == "cancel"
    assert sleeps == [0.01, 0.02, 0.04, 0.08, 0.16, 0.25]  # looks soon, then backs off to a bounded interval


def test_a_commit_that_ends_without_pivot_is_an_error():
    with pytest.raises(LibvirtFailed, match="ended before"):
        jobs(FakeDom(vanish=True)).commit("vda", "/b.qcow2", "/t.qcow2", active=True)


def test_pull_and_inner_commit_wait_for_the_job_to_end():
    fake = FakeDom(vanish=True)
    j = jobs(fake)
    j.pull("vda", None)
    j.commit("vda", "/b.qcow2", "/m.qcow2", active=False)
    assert fake.calls == [("rebase", "vda", None, 0, 0), ("commit", "vda", "/b.qcow2", "/m.qcow2", 0, 0)]
    with pytest.raises(TimeoutExpired, match="block pull"):
        jobs(FakeDom(), timeout=2).pull("vda", "/b.qcow2")
