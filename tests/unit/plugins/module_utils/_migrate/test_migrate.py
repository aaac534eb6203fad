"""kvm_migrate without a daemon: where the domain is (test:// drivers), and the per-disk plan against fake hosts."""

from __future__ import annotations

import re
import threading

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    InvalidInput,
    StorageError,
    TimeoutExpired,
)
from ansible_collections.virtops.kvm.plugins.module_utils._migrate import live
from ansible_collections.virtops.kvm.plugins.module_utils._migrate import plan as planlib
from ansible_collections.virtops.kvm.plugins.module_utils._migrate.manager import MigrateManager
from ansible_collections.virtops.kvm.plugins.module_utils._migrate.volumes import vol_facts
from ansible_collections.virtops.kvm.plugins.module_utils._wait import FakeClock

URI = "test:///default"
NODE = """<node>
  <domain type='test'>
    <name>{name}</name>
    <memory>65536</memory>
    <os><type>hvm</type></os>
  </domain>
</node>"""


@pytest.fixture
def dest(tmp_path):
    """A second, independent test:// hypervisor holding one domain, ``moved``."""

    def make(name: str = "moved") -> Connection:
        node = tmp_path / f"node-{name}.xml"
        node.write_text(NODE.format(name=name))
        return Connection(f"test://{node}")

    made = []
    yield lambda name="moved": made.append(make(name)) or made[-1]
    for c in made:
        c.close()


def _manager(keeper, dest_conn, check=True, **params):
    params = dict(dict(dest_uri=dest_conn.uri, uri=URI), **params)
    return MigrateManager(params, keeper, check, dest_connection=dest_conn)


def test_defined_only_on_the_destination_is_done(keeper, dest):
    d = dest()
    res = _manager(keeper, d, check=False, name="moved").run()
    assert res["changed"] is False and res["mode"] == "none" and res["disks"] == []
    assert res["diff"]["before"] == res["diff"]["after"] == {"host": d.uri}


def test_defined_on_both_is_an_error_naming_both(keeper, dest):
    d = dest("test")  # test:///default's own domain is also called "test"
    with pytest.raises(Conflict) as err:
        _manager(keeper, d, check=False, name="test").run()
    assert URI in err.value.message and d.uri in err.value.message


def test_defined_nowhere_is_an_error(keeper, dest):
    with pytest.raises(DomainNotFound, match="neither"):
        _manager(keeper, dest(), name="nosuch").run()


@pytest.fixture
def running(conn):
    """A running domain without disks on test:///default, removed after the test."""
    dom = conn.defineXML(
        "<domain type='test'><name>mig-nodisk</name><memory>65536</memory><os><type>hvm</type></os></domain>"
    )
    dom.create()
    yield dom
    dom.destroy()
    dom.undefine()


def test_check_mode_plans_and_changes_nothing(keeper, dest, running):
    d = dest()
    res = _manager(keeper, d, check=True, name="mig-nodisk").run()
    assert res["changed"] is True and res["mode"] == "live" and res["transfer"] is None and res["disks"] == []
    assert res["diff"] == {"before": {"host": URI}, "after": {"host": d.uri}}
    assert running.isActive()
    assert "mig-nodisk" not in [x.name() for x in d.conn.listAllDomains()]


def test_a_disk_missing_on_the_source_is_refused_before_anything(keeper, dest):
    d = dest()
    with pytest.raises(StorageError, match=re.escape("/guest/diskimage1 (vda) is missing on test:///default")):
        _manager(keeper, d, check=False, name="test").run()
    assert keeper.conn.lookupByName("test").isActive()
    assert [x.name() for x in d.conn.listAllDomains()] == ["moved"]


@pytest.mark.parametrize(
    "params, error",
    [
        (dict(name="mig-nodisk", live="never"), "running"),
        (dict(timeout=0), "timeout"),
        (dict(bandwidth=0), "bandwidth"),
        (dict(name="../x"), "name is '../x': a name is"),
    ],
)
def test_refused_options(keeper, dest, running, params, error):
    with pytest.raises(InvalidInput, match=error):
        _manager(keeper, dest(), **dict(dict(name="test"), **params)).run()


def test_same_uri_twice_is_refused(keeper):
    with pytest.raises(InvalidInput, match="both"):
        MigrateManager(dict(name="test", uri=URI, dest_uri=URI), keeper, True, dest_connection=keeper).run()


# ---------------------------------------------------------------------- the plan, with fake hosts
BASE = "/images/base.qcow2"
TOP = "/images/c1.qcow2"
FULL = "/images/data.raw"
ISO = "/images/tools.iso"
DIGEST = "sha256-16x64k:" + "ab" * 16


class FakeHost:
    def __init__(self, uri: str, files: dict, digests: dict | None = None, pool_type: str = "dir"):
        self.uri, self.files, self.digests, self.type = uri, files, digests or {}, pool_type
        self.read: list[str] = []
        self.missing_dirs: set = set()

    def facts(self, path):
        return self.files.get(path)

    def pool_type(self, path):
        return self.type

    def directory_exists(self, path):
        return path.rsplit("/", 1)[0] not in self.missing_dirs

    def fingerprint_digest(self, path, size):
        self.read.append(path)
        return self.digests[path]


def _file(physical, allocation=None, backing=None, fmt="qcow2", mtime=7):
    return dict(
        path=None,
        format=fmt,
        capacity=physical,
        allocation=allocation or physical,
        physical=physical,
        mtime=mtime,
        backing=backing,
    )


def _domain(fingerprint=True, extra_disks=""):
    xml = f"""<domain type='qemu'><name>c1</name><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{TOP}'/>
        <target dev='vda' bus='virtio'/></disk>{extra_disks}
    </devices></domain>"""
    root = etree.fromstring(xml)
    fp = dict(size=1000, mtime=1, digest=DIGEST) if fingerprint else None
    dx.set_provenance(root, "tpl", "overlay", [dict(path=TOP, base=BASE, mode="overlay", base_fingerprint=fp)])
    return root


def _hosts(dest_files=None, digests=None, src_extra=None):
    src_files = {TOP: _file(200, 64, backing=BASE), BASE: _file(1000)}
    src_files.update(src_extra or {})
    src = FakeHost("qemu+ssh://hv1/system", src_files)
    dst = FakeHost("qemu+ssh://hv2/system", {BASE: _file(1000)} if dest_files is None else dest_files, digests)
    return src, dst


def test_an_overlay_whose_base_is_on_the_destination_moves_its_top_layer():
    src, dst = _hosts(digests={BASE: DIGEST})
    disks, problems = planlib.plan_disks(_domain(), "auto", src, dst)
    assert problems == []
    # the destination's copy, verified, is what the moved domain will record (its own mtime, 7; not 1)
    identity = dict(size=1000, mtime=7, digest=DIGEST)
    assert disks == [
        dict(
            target="vda",
            path=TOP,
            format="qcow2",
            base=BASE,
            bytes=64,
            action="top",
            reason=disks[0]["reason"],
            base_identity=identity,
        )
    ]
    assert dst.read == [BASE]  # the recorded fingerprint was checked on the destination
    root = _domain()
    root.find(f"metadata/{{{dx.NS}}}clone/{{{dx.NS}}}disk").set("base-file", "2049:12")  # the source's file
    assert planlib.record_bases(root, disks) is True
    recorded = dx.provenance(root)["created_disks"][0]["base_fingerprint"]
    assert recorded == identity  # no "file": the source's inode means nothing on the destination
    assert planlib.record_bases(root, disks) is False  # already recorded


def test_no_record_or_no_timestamp_leaves_the_record_as_it_is():
    src, dst = _hosts(digests={BASE: DIGEST})
    disks, problems = planlib.plan_disks(_domain(fingerprint=False), "auto", src, dst)
    assert problems == [] and disks[0]["base_identity"] is None and dst.read == []
    src, dst = _hosts(dest_files={BASE: _file(1000, mtime=None)}, digests={BASE: DIGEST})
    disks, problems = planlib.plan_disks(_domain(), "auto", src, dst)
    assert problems == [] and disks[0]["base_identity"] is None
    root = _domain()
    assert planlib.record_bases(root, disks) is False
    assert dx.provenance(root)["created_disks"][0]["base_fingerprint"]["mtime"] == 1


@pytest.mark.parametrize(
    "dest_files, digests, expected",
    [
        ({}, {}, "is missing on qemu+ssh://hv2/system"),
        ({BASE: _file(999)}, {}, "is 999 bytes on qemu+ssh://hv2/system, 1000 bytes on qemu+ssh://hv1/system"),
        ({BASE: _file(1000)}, {BASE: "sha256-16x64k:other"}, "other content"),
        ({BASE: _file(1000), TOP: _file(5)}, {BASE: DIGEST}, "already exists on qemu+ssh://hv2/system"),
    ],
    ids=["base-missing", "base-size", "base-content", "would-overwrite"],
)
def test_a_destination_that_lacks_or_differs_is_a_problem(dest_files, digests, expected):
    src, dst = _hosts(dest_files, digests)
    _disks, problems = planlib.plan_disks(_domain(), "auto", src, dst)
    assert len(problems) == 1 and expected in problems[0], problems
    err = planlib.refusal("c1", dst.uri, problems)
    assert isinstance(err, StorageError) and dst.uri in err.message and "Nothing was changed" in err.message


def test_a_directory_missing_on_the_destination_is_a_problem():
    src, dst = _hosts(digests={BASE: DIGEST})
    dst.missing_dirs.add("/images")
    dst.files = {}
    _disks, problems = planlib.plan_disks(_domain(), "auto", src, dst)
    assert problems == [
        f"the directory of {TOP} (vda) does not exist on {dst.uri} (make it there)",
        f"the base {BASE} of {TOP} is missing on {dst.uri} (put the same file at the same path there)",
    ]


def test_without_a_recorded_fingerprint_only_path_and_size_count():
    src, dst = _hosts(digests={})
    _disks, problems = planlib.plan_disks(_domain(fingerprint=False), "auto", src, dst)
    assert problems == [] and dst.read == []


def test_whole_shared_and_read_only_disks():
    extra = f"""<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{FULL}'/>
        <target dev='vdb' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><source file='{ISO}'/><target dev='sda' bus='sata'/><readonly/></disk>
      <disk type='file' device='cdrom'><target dev='sdb' bus='sata'/><readonly/></disk>"""
    src, dst = _hosts(digests={BASE: DIGEST}, src_extra={FULL: _file(4096, 1024, fmt="raw")})
    disks, problems = planlib.plan_disks(_domain(extra_disks=extra), "auto", src, dst)
    assert [(d["target"], d["action"]) for d in disks] == [
        ("vda", "top"),
        ("vdb", "whole"),
        ("sda", "shared"),
        ("sdb", "none"),
    ]
    assert disks[1]["bytes"] == 1024
    assert problems == [f"{ISO} (sda) is missing on {dst.uri}"]


SEED = "/images/c1-cidata.iso"


def _seeded():
    """The domain with the cloud-init seed kvm_clone made for it (recorded in its provenance) and a tools ISO."""
    extra = f"""<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{SEED}'/>
        <target dev='sda' bus='sata'/><readonly/></disk>
      <disk type='file' device='cdrom'><source file='{ISO}'/><target dev='sdb' bus='sata'/><readonly/></disk>"""
    root = _domain(extra_disks=extra)
    fp = dict(size=1000, mtime=1, digest=DIGEST)
    created = [dict(path=TOP, base=BASE, mode="overlay", base_fingerprint=fp), dict(path=SEED, mode="seed")]
    dx.set_provenance(root, "tpl", "overlay", created)
    return root


def test_the_seed_made_for_the_domain_moves_with_it_and_is_removed_after():
    src, dst = _hosts(digests={BASE: DIGEST}, src_extra={SEED: _file(374784, fmt="raw")})
    dst.files[ISO] = _file(10)
    disks, problems = planlib.plan_disks(_seeded(), "auto", src, dst)
    assert problems == []
    assert [(d["target"], d["action"]) for d in disks] == [("vda", "top"), ("sda", "seed"), ("sdb", "shared")]
    assert disks[1]["bytes"] == 374784 and disks[1]["format"] == "raw"
    assert planlib.removable(dx.provenance(_seeded()), disks, set()) == [TOP, SEED]  # never the tools ISO

    dst.files[SEED] = _file(374784, fmt="raw")  # a leftover there: never overwritten
    _disks, problems = planlib.plan_disks(_seeded(), "auto", src, dst)
    assert problems == [f"{SEED} (sda) already exists on {dst.uri}: a copy would overwrite it (remove it there if it "
                        "is a leftover)"]  # fmt: skip
    del dst.files[SEED]
    dst.missing_dirs.add("/images")
    _disks, problems = planlib.plan_disks(_seeded(), "auto", src, dst)
    assert f"the directory of {SEED} (sda) does not exist on {dst.uri} (make it there)" in problems
    # storage=shared copies nothing, the seed neither
    src2, dst2 = _hosts(dest_files={TOP: _file(200), ISO: _file(10), SEED: _file(5)})
    disks, problems = planlib.plan_disks(_seeded(), "shared", src2, dst2)
    assert problems == [] and {d["action"] for d in disks} == {"shared"}


def test_storage_shared_copies_nothing_and_needs_every_path():
    src, dst = _hosts()
    disks, problems = planlib.plan_disks(_domain(), "shared", src, dst)
    assert disks[0]["action"] == "shared" and problems == [f"{TOP} (vda) is missing on {dst.uri} (storage=shared)"]
    dst.files[TOP] = _file(200)
    assert planlib.plan_disks(_domain(), "shared", src, dst)[1] == []


def test_auto_leaves_disks_of_a_shared_pool_in_place_and_copy_does_not():
    src, dst = _hosts(dest_files={BASE: _file(1000), TOP: _file(200)}, digests={BASE: DIGEST})
    src.type = "netfs"
    assert planlib.plan_disks(_domain(), "auto", src, dst)[0][0]["action"] == "shared"
    disks, problems = planlib.plan_disks(_domain(), "copy", src, dst)
    assert disks[0]["action"] == "top" and "already exists" in problems[0]


def test_only_recorded_moved_unused_files_are_removed():
    root = _domain()
    prov = dx.provenance(root)
    disks = [
        dict(path=TOP, action="top", base=BASE),
        dict(path=FULL, action="whole", base=None),  # not made by the collection: kept
        dict(path=ISO, action="shared", base=None),
    ]
    assert planlib.removable(prov, disks, set()) == [TOP]
    assert planlib.removable(prov, disks, {TOP}) == []  # another domain uses it
    assert planlib.removable(prov, [dict(path=TOP, action="shared", base=None)], set()) == []


def test_volume_facts_read_from_volume_xml():
    xml = f"""<volume type='file'><name>c1.qcow2</name><capacity unit='bytes'>134217728</capacity>
      <allocation unit='bytes'>602112</allocation><physical unit='bytes'>655360</physical>
      <target><path>{TOP}</path><format type='qcow2'/>
        <timestamps><atime>1796657430.5</atime><mtime>1796657430.693138116</mtime></timestamps></target>
      <backingStore><path>{BASE}</path><format type='qcow2'/></backingStore></volume>"""
    assert vol_facts(xml) == dict(
        path=TOP,
        format="qcow2",
        capacity=134217728,
        allocation=602112,
        physical=655360,
        mtime=1796657430693138116,  # as os.stat's st_mtime_ns
        backing=BASE,
        backing_format="qcow2",
    )
    whole = xml.replace("1796657430.693138116", "1796657430")  # a file system without nanoseconds
    assert vol_facts(whole)["mtime"] == 1796657430 * 10**9
    assert vol_facts(xml.replace("1796657430.693138116", "soon"))["mtime"] is None


def test_live_flags_and_parameters():
    import libvirt

    flags, params = live.flags_and_params(["vda"], "tcp://10.0.0.2", 5)
    assert flags & libvirt.VIR_MIGRATE_NON_SHARED_INC and flags & libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    assert params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda"]
    assert (
        params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://10.0.0.2" and params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 5
    )
    flags, params = live.flags_and_params([], None, None)
    assert not flags & libvirt.VIR_MIGRATE_NON_SHARED_INC and params == {}
    assert len(live.pick([dict(n=i) for i in range(100)])) == live.POINTS
    _flags, params = live.flags_and_params(["vda"], "tcp://10.0.0.2:49200", None)
    assert params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] == "tcp://10.0.0.2"  # not the migration's own port
    _flags, params = live.flags_and_params(["vda"], "tcp://[fd00::2]:49200", None)
    assert params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] == "tcp://[fd00::2]"


class _StuckJob:
    """A domain whose live migration runs until it is aborted; each look at the job costs ``step`` seconds."""

    def __init__(self, clock: FakeClock, step: float):
        self.clock = clock
        self.step = step
        self.aborted = threading.Event()

    def name(self) -> str:
        return "stuck"

    def migrate3(self, _dconn, _params, _flags):
        self.aborted.wait(30)
        raise libvirt.libvirtError("migration job: canceled by client")

    def jobStats(self, _flags):
        self.clock.sleep(self.step)
        return {}

    def abortJob(self):
        self.aborted.set()


def test_live_migration_times_out_on_the_clock_it_is_given():
    """The timeout is read on the one clock seam: a fake clock past it aborts the job at the first look."""
    clock = FakeClock()
    dom = _StuckJob(clock, step=700)
    with pytest.raises(TimeoutExpired, match="more than 600 s"):
        live.migrate(dom, None, 0, {}, 600, clock=clock)
    assert dom.aborted.is_set()
