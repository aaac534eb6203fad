"""kvm_volume's work: sizes and volume XML (pure), VolumeManager on test:///default, streams with a fake."""

from __future__ import annotations

import hashlib
import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._pool import transfer
from ansible_collections.virtops.kvm.plugins.module_utils._pool import volume_xml as vx
from ansible_collections.virtops.kvm.plugins.module_utils._pool.volume_manager import VolumeManager
from ansible_collections.virtops.kvm.plugins.module_utils._wait import Clock
from tests import fakes

URI = "test:///default"
GIB = 1024**3


@pytest.fixture
def pool(conn):
    """An active dir pool of its own (the test driver keeps volumes in memory, no files)."""
    name = f"ut-{secrets.token_hex(4)}"
    p = conn.storagePoolDefineXML(f"<pool type='dir'><name>{name}</name><target><path>/{name}</path></target></pool>")
    p.create(0)
    yield name
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(name):
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
    for vol in p.listAllVolumes(0):
        vol.delete(0)
    p.destroy()
    p.undefine()


def run(pool, name, check=False, **params):
    c = Connection(URI)
    try:
        mgr = VolumeManager(dict(pool=pool, name=name, uri=URI, **params), c, check)
        result = mgr.run()
        result["warnings"] = mgr.warnings
        return result
    finally:
        c.close()


def four(pool, name, **params):
    return [run(pool, name, check, **params) for check in (True, False, False, True)]


def assert_four(results, first=True):
    assert [r["changed"] for r in results] == [first, first, False, False], [r["changes"] for r in results]
    assert results[0]["changes"] == results[1]["changes"]
    assert results[0]["diff"] == results[1]["diff"], "check mode must predict the real diff"


# --------------------------------------------------------------------------- volume_xml (pure)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10G", 10 * GIB),
        ("10GiB", 10 * GIB),
        ("10GB", 10 * 1000**3),
        ("512M", 512 * 1024**2),
        ("4096", 4096),
        (" 1 TiB ", 1024**4),
        (2048, 2048),
    ],
)
def test_sizes(text, size):
    assert vx.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1.5G", "ten", "-1G", "0", "10Q"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InvalidInput):
        vx.parse_size(text)


def test_rounding_and_human_sizes():
    assert vx.round_up(1000, "dir") == 1024 and vx.round_up(1, "logical") == 4 * 1024**2
    assert vx.human(GIB) == "1 GiB (1073741824 bytes)" and vx.human(1536) == "1.50 KiB (1536 bytes)"
    assert vx.human(None) == "unknown" and vx.human(12) == "12 bytes"


def test_volume_xml_round_trip():
    xml = vx.build("o.qcow2", GIB, "qcow2", backing_path="/p/b.img", backing_format="raw")
    assert '<allocation unit="bytes">0</allocation>' in xml
    read = vx.read(xml.replace("<volume>", "<volume type='file'>"))
    assert read["capacity"] == GIB and read["format"] == "qcow2"
    assert read["backing"] == dict(path="/p/b.img", format="raw")


# --------------------------------------------------------------------------- VolumeManager


def test_create_four_ways(conn, pool):
    results = four(pool, "a.qcow2", size="1G")
    assert_four(results)
    assert results[0]["volume"] is None  # check mode created nothing
    assert results[1]["changes"] == ["create qcow2 1 GiB (1073741824 bytes)"]
    assert results[2]["volume"]["capacity"] == GIB and results[2]["volume"]["format"] == "qcow2"
    assert "capacity: 1 GiB" in results[1]["diff"]["after"] and results[1]["diff"]["before"] == ""
    assert_four(four(pool, "r.img", size="1M", format="raw"))
    assert conn.storagePoolLookupByName(pool).storageVolLookupByName("r.img").info()[1] == 1024**2


def test_a_new_volume_needs_a_size_and_the_pool_must_be_active(conn, pool):
    with pytest.raises(InvalidInput, match="size is needed"):
        run(pool, "x.qcow2")
    conn.storagePoolLookupByName(pool).destroy()
    try:
        with pytest.raises(StorageError, match="not active"):
            run(pool, "x.qcow2", size="1G")
    finally:
        conn.storagePoolLookupByName(pool).create(0)
    with pytest.raises(StorageError, match="does not exist"):
        run(f"{pool}-none", "x.qcow2", size="1G")


def test_overlay_on_a_backing_volume_four_ways(conn, pool):
    run(pool, "base.img", size="2G", format="raw")
    results = four(pool, "o.qcow2", backing_volume="base.img")
    assert_four(results)
    vol = results[2]["volume"]
    assert vol["backing"] == dict(path=f"/{pool}/base.img", format="raw") and vol["capacity"] == 2 * GIB
    # by path too, and the same backing again is no change
    assert run(pool, "o.qcow2", backing_volume=f"/{pool}/base.img")["changed"] is False
    with pytest.raises(InvalidInput, match="does not rebase"):
        run(pool, "base.img", backing_volume="o.qcow2")
    with pytest.raises(InvalidInput, match="smaller than the backing"):
        run(pool, "small.qcow2", backing_volume="base.img", size="1G")
    with pytest.raises(InvalidInput, match="not a volume libvirt knows"):
        run(pool, "n.qcow2", backing_volume="missing.img")
    with pytest.raises(InvalidInput, match="format raw cannot"):
        run(pool, "n.img", backing_volume="base.img", format="raw")


def test_clone_four_ways_and_format_is_never_converted_in_place(conn, pool):
    run(pool, "src.qcow2", size="1G")
    results = four(pool, "copy.img", clone_from="src.qcow2", format="raw")
    assert_four(results)
    assert results[2]["volume"]["format"] == "raw" and results[2]["volume"]["capacity"] == GIB
    with pytest.raises(InvalidInput, match="does not convert"):
        run(pool, "copy.img", format="qcow2")
    with pytest.raises(InvalidInput, match="not in pool"):
        run(pool, "c2", clone_from="nope")
    with pytest.raises(InvalidInput, match="names the volume itself"):
        run(pool, "c3", clone_from="c3")


def test_grow_is_planned_and_shrink_refused_unless_allowed(conn, pool):
    run(pool, "g.qcow2", size="1G")
    # (test:///default cannot resize: the plan is checked in check mode, the resize in the integration tests)
    r = run(pool, "g.qcow2", check=True, size="2G")
    assert r["changes"] == ["grow from 1 GiB (1073741824 bytes) to 2 GiB (2147483648 bytes)"]
    assert "capacity: 2 GiB" in r["diff"]["after"]
    with pytest.raises(InvalidInput, match="would shrink it"):
        run(pool, "g.qcow2", check=True, size="512M")
    r = run(pool, "g.qcow2", check=True, size="512M", allow_shrink=True)
    assert r["changes"][0].startswith("shrink from 1 GiB")
    # within the backend's rounding is no change
    assert run(pool, "g.qcow2", size=str(GIB - 100))["changed"] is False


def test_delete_four_ways_and_never_what_is_used(conn, pool):
    run(pool, "base.qcow2", size="1G")
    run(pool, "top.qcow2", backing_volume="base.qcow2")
    with pytest.raises(Conflict, match=f"volume {pool}/top.qcow2"):
        run(pool, "base.qcow2", state="absent")
    conn.defineXML(
        f"""<domain type='test'><name>{pool}-dom</name><memory>65536</memory><os><type>hvm</type></os><devices>
        <disk type='volume'><source pool='{pool}' volume='top.qcow2'/><target dev='vda'/></disk></devices></domain>"""
    )
    for check in (True, False):
        with pytest.raises(Conflict, match=f"domain {pool}-dom") as err:
            run(pool, "top.qcow2", check=check, state="absent")
        assert err.value.details["users"]
    # a shut off domain's disk may grow (the guest sees it at its next start); a base may not
    assert run(pool, "top.qcow2", check=True, size="2G")["changes"][0].startswith("grow")
    with pytest.raises(Conflict, match="not resized"):
        run(pool, "base.qcow2", check=True, size="2G")
    conn.lookupByName(f"{pool}-dom").undefine()
    assert_four(four(pool, "top.qcow2", state="absent"))
    assert_four(four(pool, "base.qcow2", state="absent"))
    assert_four(four(pool, "never-was.qcow2", state="absent"), first=False)


def test_a_domain_file_disk_blocks_deletion(conn, pool):
    run(pool, "d.img", size="1M", format="raw")
    conn.defineXML(
        f"""<domain type='test'><name>{pool}-f</name><memory>65536</memory><os><type>hvm</type></os><devices>
        <disk type='file'><source file='/{pool}/d.img'/><target dev='vda'/></disk></devices></domain>"""
    )
    with pytest.raises(Conflict, match="disk vda"):
        run(pool, "d.img", state="absent")


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        (dict(name="../x", size="1G"), InvalidInput, "name is '../x': a name is"),
        (dict(size="1G", checksum="abc"), InvalidInput, "not a sha256"),
        (dict(size="1G", checksum="a" * 64), InvalidInput, "upload or download only"),
        (dict(upload="/nonexistent/file"), InvalidInput, "not a file"),
        (dict(download="/nonexistent/dir/file"), InvalidInput, "existing directory"),
        (dict(size="1G", progress_mib=-1), InvalidInput, "progress_mib"),
        (dict(download="/tmp/x.img"), StorageError, "nothing to download"),
    ],
)
def test_bad_input_is_refused_before_anything(conn, pool, params, error, message):
    params = dict(dict(name="v.qcow2"), **params)
    name = params.pop("name")
    with pytest.raises(error, match=message):
        run(pool, name, **params)
    assert conn.storagePoolLookupByName(pool).listVolumes() == []


def test_upload_checks_the_file_before_anything(conn, pool, tmp_path):
    img = tmp_path / "disk.raw"
    img.write_bytes(b"x" * 4096)
    digest = hashlib.sha256(img.read_bytes()).hexdigest()
    with pytest.raises(InvalidInput, match="not the expected checksum"):
        run(pool, "u.img", upload=str(img), checksum="0" * 64)
    with pytest.raises(InvalidInput, match="is a raw image, not qcow2"):
        run(pool, "u.img", upload=str(img), format="qcow2")
    r = run(pool, "u.img", check=True, upload=str(img), checksum=f"sha256:{digest}")
    assert r["changed"] and r["sha256"] == digest and r["transfer"] is None and r["volume"] is None
    assert "content: sha256:" + digest in r["diff"]["after"]
    # a volume with other content is replaced only with force
    run(pool, "u.img", size="1M", format="raw")
    with pytest.raises(Conflict, match="force=true"):
        run(pool, "u.img", check=True, upload=str(img))
    assert run(pool, "u.img", check=True, upload=str(img), force=True)["changes"][0].startswith("replace the content")


# --------------------------------------------------------------------------- transfer (a fake stream)


class FakeStream:
    def __init__(self, data=b"", short=False, fail_at=None):
        self.data, self.short, self.fail_at = data, short, fail_at
        self.sent = bytearray()
        self.finished = self.aborted = False

    def send(self, data):
        if self.fail_at is not None and len(self.sent) >= self.fail_at:
            raise libvirt.libvirtError("stream broke")
        n = max(1, len(data) // 2) if self.short else len(data)  # a short write, as virStreamSend may do
        self.sent += data[:n]
        return n

    def recv(self, n):
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def finish(self):
        self.finished = True

    def abort(self):
        self.aborted = True


class FakeConn:
    def __init__(self, stream):
        self.stream = stream

    def newStream(self, _flags):
        return self.stream


class FakeVol:
    def name(self):
        return "v"

    def upload(self, stream, offset, length, flags):
        self.args = (offset, length, flags)

    download = upload


def test_upload_sends_everything_hashes_and_reports_progress(tmp_path):
    data = secrets.token_bytes(3 * transfer.CHUNK + 17)
    src = tmp_path / "f"
    src.write_bytes(data)
    stream = FakeStream(short=True)
    ticks = iter(range(100)).__next__
    meter = transfer.Meter(every=transfer.CHUNK, clock=Clock(lambda: float(ticks())))
    digest = transfer.upload(FakeConn(stream), FakeVol(), str(src), len(data), meter)
    assert bytes(stream.sent) == data and stream.finished and digest == hashlib.sha256(data).hexdigest()
    assert [p["bytes"] for p in meter.progress] == [transfer.CHUNK, 2 * transfer.CHUNK, 3 * transfer.CHUNK]
    result = meter.result("upload", digest)
    assert result["bytes"] == len(data) and result["seconds"] > 0 and result["mib_per_second"] > 0


def test_a_broken_stream_is_aborted_and_reported(tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"y" * (2 * transfer.CHUNK))
    stream = FakeStream(fail_at=transfer.CHUNK)
    with pytest.raises(StorageError, match="stream broke"):
        transfer.upload(FakeConn(stream), FakeVol(), str(src), 2 * transfer.CHUNK, transfer.Meter())
    assert stream.aborted and not stream.finished
    with pytest.raises(StorageError, match="changed meanwhile"):
        transfer.upload(FakeConn(FakeStream()), FakeVol(), str(src), 3 * transfer.CHUNK, transfer.Meter())


def test_download_writes_and_hashes(tmp_path):
    data = secrets.token_bytes(transfer.CHUNK + 5)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        digest = transfer.download(FakeConn(FakeStream(data)), FakeVol(), f, 0, transfer.Meter())
    assert out.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()
    assert transfer.download(FakeConn(FakeStream(data)), FakeVol(), None, 0, transfer.Meter()) == digest
    assert transfer.file_digest(str(out)) == (digest, len(data))
    assert transfer.file_digest(str(out), limit=5) == (hashlib.sha256(data[:5]).hexdigest(), 5)


# --------------------------------------------------------------------------- the host's write guard (HostScan)


@pytest.mark.parametrize("check", [True, False])
def test_a_volume_a_snapshot_stands_on_is_not_resized_or_deleted(conn, tmp_path, pool, check):
    run(pool, "v.qcow2", size="1G")
    path = f"/{pool}/v.qcow2"
    dom = fakes.disk_domain(conn, f"{pool}-owner", fakes.qcow2(tmp_path / "now.qcow2"))
    fakes.external_snapshot(dom, "s1", path, tmp_path / "layer.qcow2")
    with pytest.raises(Conflict, match=rf"not resized: snapshot s1 of domain {pool}-owner"):
        run(pool, "v.qcow2", check, size="2G")
    with pytest.raises(Conflict, match=rf"not deleted: snapshot s1 of domain {pool}-owner"):
        run(pool, "v.qcow2", check, state="absent")
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName("v.qcow2")
    assert vol.info()[1] == 1024**3


def test_a_download_never_replaces_a_base(conn, tmp_path, pool):
    run(pool, "v.img", size="1M", format="raw")
    base = fakes.qcow2(tmp_path / "base.qcow2")
    fakes.qcow2(tmp_path / "over.qcow2", base)
    before = base.read_bytes()
    with pytest.raises(
        StorageError, match=r"Refusing to download volume .* over .*base.qcow2.*over.qcow2 \(an overlay file\)"
    ):
        run(pool, "v.img", download=str(base), force=True)
    assert base.read_bytes() == before
