"""The pure parts of _snapshot: the snapshot XML, the qcow2 readers (real images from qemu-img), the layer names."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import layers, qcow2
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot import xml as sx

EXTERNAL = """<domainsnapshot>
  <name>pre</name>
  <description>before the upgrade</description>
  <state>disk-snapshot</state>
  <parent><name>older</name></parent>
  <creationTime>1796014000</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/><source file='/img/web.vda.pre.qcow2'/>
    </disk>
    <disk name='hdc' snapshot='no'/>
  </disks>
  <domain type='qemu'><name>web</name><devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/img/web.img' index='1'/>
      <backingStore/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><source file='/img/cd.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>
  </devices></domain>
  <inactiveDomain type='qemu'><name>web</name><devices>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/img/web.img'/>
      <target dev='vda' bus='virtio'/></disk>
  </devices></inactiveDomain>
</domainsnapshot>"""

INTERNAL = """<domainsnapshot><name>i1</name><state>running</state><creationTime>5</creationTime>
  <memory snapshot='internal'/><disks><disk name='vda' snapshot='internal'/></disks>
  <domain type='qemu'><name>web</name><devices><disk type='file' device='disk'>
  <source file='/img/web.qcow2'/><target dev='vda'/></disk></devices></domain></domainsnapshot>"""


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qemu_io(path, command):
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", command, str(path)], check=True, capture_output=True)


def test_read_external_snapshot():
    s = sx.read(EXTERNAL)
    assert s == dict(
        name="pre",
        description="before the upgrade",
        state="disk-snapshot",
        creation_time=1796014000,
        parent="older",
        memory="no",
        kind="external",
        disks=[
            dict(target="vda", snapshot="external", file="/img/web.vda.pre.qcow2"),
            dict(target="hdc", snapshot="no", file=None),
        ],
        bases={"vda": dict(path="/img/web.img", format="raw")},
    )


def test_read_internal_snapshot():
    s = sx.read(INTERNAL)
    assert (s["kind"], s["memory"], s["parent"], s["bases"], s["description"]) == (
        "internal",
        "internal",
        None,
        {},
        None,
    )


def test_read_refuses_what_is_not_a_snapshot():
    with pytest.raises(InvalidInput, match="domainsnapshot"):
        sx.read("<domain/>")
    with pytest.raises(InvalidInput, match="not well-formed"):
        sx.read("<domainsnapshot>")


def test_create_xml_reads_back():
    xml = sx.create_xml(
        "s1",
        "text",
        [
            dict(target="vda", snapshot="external", file="/img/x.vda.s1.qcow2"),
            dict(target="hdc", snapshot="no"),
        ],
        "no",
    )
    s = sx.read(xml)
    assert (s["name"], s["description"], s["memory"], s["kind"]) == ("s1", "text", "no", "external")
    assert s["disks"] == [
        dict(target="vda", snapshot="external", file="/img/x.vda.s1.qcow2"),
        dict(target="hdc", snapshot="no", file=None),
    ]
    bare = sx.read(sx.create_xml("s2", None))
    assert (bare["description"], bare["disks"], bare["memory"]) == (None, [], "no")


def test_redefine_moves_the_base_in_both_definitions_and_sets_the_description():
    xml = sx.redefine_xml(EXTERNAL, description="new", bases={"vda": dict(path="/img/merged.qcow2", format="qcow2")})
    s = sx.read(xml)
    assert s["bases"] == {"vda": dict(path="/img/merged.qcow2", format="qcow2")}
    assert s["description"] == "new"
    root = sx.parse(xml)
    inactive = dx.disks(root.find("inactiveDomain"))
    assert inactive[0]["path"] == "/img/merged.qcow2" and inactive[0]["format"] == "qcow2"
    assert root.find("domain/devices/disk/backingStore") is None
    assert root.find("domain/devices/disk/source").get("index") is None
    # the CD-ROM and the overlay file are untouched
    assert dx.disks(root.find("domain"))[1]["path"] == "/img/cd.iso"
    assert s["disks"][0]["file"] == "/img/web.vda.pre.qcow2"
    assert sx.read(sx.redefine_xml(xml, description=""))["description"] is None
    assert sx.read(sx.redefine_xml(INTERNAL, description="d"))["description"] == "d"


def test_empty_overlay_and_written_one(tmp_path):
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    qemu_io(base, "write -P 0x11 0 64k")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    assert qcow2.is_empty(str(top)) is True
    assert qcow2.is_empty(str(base)) is False
    qemu_io(top, "write -P 0x22 8M 4k")
    assert qcow2.is_empty(str(top)) is False
    raw = tmp_path / "r.img"
    raw.write_bytes(b"\0" * 4096)
    assert qcow2.is_empty(str(raw)) is False
    assert qcow2.active_l1(str(raw)) is None
    assert qcow2.internal_snapshots(str(raw)) == {}


def test_at_internal_follows_writes_and_reverts(tmp_path):
    img = tmp_path / "i.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "16M")
    qemu_io(img, "write -P 0x11 0 64k")
    # names of odd lengths: the snapshot table's entries are padded to 8 bytes
    qemu_img("snapshot", "-c", "a", str(img))
    assert qcow2.at_internal(str(img), "a") is True
    qemu_io(img, "write -P 0x22 4M 4k")
    assert qcow2.at_internal(str(img), "a") is False
    qemu_img("snapshot", "-c", "second.name-x", str(img))
    assert list(qcow2.internal_snapshots(str(img))) == ["a", "second.name-x"]
    assert (qcow2.at_internal(str(img), "a"), qcow2.at_internal(str(img), "second.name-x")) == (False, True)
    qemu_img("snapshot", "-a", "a", str(img))
    assert (qcow2.at_internal(str(img), "a"), qcow2.at_internal(str(img), "second.name-x")) == (True, False)
    qemu_io(img, "write -P 0x33 0 4k")  # into a cluster that existed at the snapshot
    assert qcow2.at_internal(str(img), "a") is False
    assert qcow2.at_internal(str(img), "missing") is False


def test_layer_names_are_fixed_and_reverts_count_up(tmp_path):
    disk = str(tmp_path / "web.qcow2")
    assert layers.overlay_path(disk, "web", "vda", "pre") == str(tmp_path / "web.vda.pre.qcow2")
    first = layers.revert_path(disk, "web", "vda", "pre")
    assert first == str(tmp_path / "web.vda.pre@1.qcow2")
    (tmp_path / "web.vda.pre@1.qcow2").write_bytes(b"")
    assert layers.revert_path(disk, "web", "vda", "pre") == str(tmp_path / "web.vda.pre@2.qcow2")
    taken = {str(tmp_path / "web.vda.pre@2.qcow2")}
    assert layers.revert_path(disk, "web", "vda", "pre", taken) == str(tmp_path / "web.vda.pre@3.qcow2")


def test_chain_and_position(tmp_path):
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(base), "16M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    (tmp_path / "link.qcow2").symlink_to(base)
    files = layers.chain(str(top))
    assert [c["path"] for c in files] == [str(top), str(base)]
    assert layers.position(files, str(tmp_path / "link.qcow2")) == 1
    assert layers.position(files, str(tmp_path / "other.qcow2")) is None
