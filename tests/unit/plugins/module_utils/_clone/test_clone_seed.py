"""kvm_clone's cloud-init NoCloud seed: settings, documents, the ISO (made by the real xorriso) and its CD-ROM."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import seed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError

UUID = "8f1c2a3b-1111-2222-3333-444455556666"
WHERE = "cloud_init of clone 'web-1'"

needs_xorriso = pytest.mark.skipif(
    not shutil.which("xorriso"), reason="xorriso is not installed (setup.sh installs it)"
)


def run(argv, env=None):
    """The runner the managers get, minus Ansible: an argument list, never a shell."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def only(*names):
    """A ``which`` that finds only ``names`` (where this machine has them)."""
    return lambda name: shutil.which(name) if name in names else None


# ------------------------------------------------------------------ settings


def test_no_cloud_init_is_no_seed():
    assert seed.check_cloud_init(None, WHERE) is None


@pytest.mark.parametrize("value", [{}, {"user_data": None, "meta_data": None, "network_config": None}])
def test_an_empty_cloud_init_is_a_seed_with_the_defaults(value):
    """cloud_init: {} asks for a seed: instance-id and local-hostname only (a sealed template's clones need it)."""
    assert seed.check_cloud_init(value, WHERE) == {}
    assert seed.merge_cloud_init({}, None) == {} and seed.merge_cloud_init(None, {}) == {}


@pytest.mark.parametrize(
    "value,words",
    [
        ({"userdata": "#cloud-config"}, ["clone 'web-1'", "userdata", "user_data, meta_data, network_config"]),
        (["#cloud-config"], ["must be a dict"]),
        ({"user_data": "packages: [nginx]"}, ["does not start with '#'", "#cloud-config"]),
        ({"user_data": ""}, ["does not start with '#'"]),
        ({"user_data": 3}, ["must be a dict or a string"]),
        ({"meta_data": "instance-id: x"}, ["meta_data of cloud_init of clone 'web-1' must be a dict"]),
        ({"network_config": ""}, ["network_config", "non-empty"]),
        ({"meta_data": {"when": object()}}, ["cannot be written as JSON"]),
    ],
)
def test_bad_settings_say_what_to_fix(value, words):
    with pytest.raises(InvalidInput) as err:
        seed.check_cloud_init(value, WHERE)
    for word in words:
        assert word in err.value.message


def test_settings_are_normalized_to_text():
    cfg = seed.check_cloud_init(
        {
            "user_data": {"packages": ["nginx"], "hostname": "é"},
            "meta_data": {"a": 1},
            "network_config": {"version": 2},
        },
        WHERE,
    )
    assert cfg["user_data"].startswith("#cloud-config\n")
    assert json.loads(cfg["user_data"].split("\n", 1)[1]) == {"packages": ["nginx"], "hostname": "é"}
    assert cfg["meta_data"] == {"a": 1}
    assert json.loads(cfg["network_config"]) == {"version": 2}
    script = "#!/bin/sh\necho hi\n"
    assert seed.check_cloud_init({"user_data": script, "network_config": "version: 2\n"}, WHERE) == {
        "user_data": script,
        "network_config": "version: 2\n",
    }


def test_clone_settings_override_task_settings_and_meta_data_merges():
    task = seed.check_cloud_init({"user_data": "#cloud-config\na: 1\n", "meta_data": {"x": 1, "y": 1}}, WHERE)
    clone = seed.check_cloud_init({"user_data": "#!/bin/sh\n", "meta_data": {"y": 2, "z": 2}}, WHERE)
    merged = seed.merge_cloud_init(task, clone)
    assert merged == {"user_data": "#!/bin/sh\n", "meta_data": {"x": 1, "y": 2, "z": 2}}
    assert task["meta_data"] == {"x": 1, "y": 1}, "the task-level settings are not changed"
    assert seed.merge_cloud_init(task, None) == task
    assert seed.merge_cloud_init(None, clone) == clone
    assert seed.merge_cloud_init(None, None) is None


# ----------------------------------------------------------------- documents


def test_documents_name_the_clone():
    docs = seed.seed_documents("web-1", UUID, "web-1", {})
    assert sorted(docs) == ["meta-data", "user-data"]
    assert json.loads(docs["meta-data"]) == {"instance-id": UUID, "local-hostname": "web-1"}
    assert docs["user-data"] == b"#cloud-config\n{}\n"


def test_documents_take_the_settings():
    cfg = seed.check_cloud_init(
        {"meta_data": {"local-hostname": "www", "zone": "ü"}, "network_config": {"version": 2}}, WHERE
    )
    docs = seed.seed_documents("web-1", UUID, "web-1", cfg)
    assert json.loads(docs["meta-data"].decode("utf-8")) == {"instance-id": UUID, "local-hostname": "www", "zone": "ü"}
    assert json.loads(docs["network-config"]) == {"version": 2}
    assert docs == seed.seed_documents("web-1", UUID, "web-1", cfg), "deterministic"
    override = seed.seed_documents("web-1", UUID, "h", {"meta_data": {"instance-id": "i-1"}})
    assert json.loads(override["meta-data"])["instance-id"] == "i-1"


def test_seed_path_is_beside_the_disk():
    assert seed.seed_path("/var/lib/libvirt/images", "web-1") == "/var/lib/libvirt/images/web-1-cidata.iso"


# ---------------------------------------------------------------- the ISO


def test_iso_command_prefers_xorriso_then_falls_back():
    paths = {"xorriso": "/x/xorriso", "genisoimage": "/x/genisoimage", "mkisofs": "/x/mkisofs"}
    assert seed.iso_command(paths.get) == ["/x/xorriso", "-as", "mkisofs"]
    paths.pop("xorriso")
    assert seed.iso_command(paths.get) == ["/x/genisoimage"]
    paths.pop("genisoimage")
    assert seed.iso_command(paths.get) == ["/x/mkisofs"]
    with pytest.raises(StorageError) as err:
        seed.iso_command(lambda name: None)
    assert "xorriso" in err.value.message and "Install" in err.value.message


def _round_trip(tmp_path, which):
    cfg = seed.check_cloud_init({"user_data": {"runcmd": [["touch", "/ok"]]}, "network_config": "version: 2\n"}, WHERE)
    docs = seed.seed_documents("web-1", UUID, "web-1", cfg)
    path = seed.seed_path(str(tmp_path), "web-1")
    seed.build_seed(run, which, path, docs)
    label, files = seed.read_seed(path)
    assert label == "cidata"
    assert files == docs
    assert sorted(files) == ["meta-data", "network-config", "user-data"]
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["web-1-cidata.iso"], "no temporary file is left"
    return path


@needs_xorriso
def test_build_and_read_back_with_xorriso(tmp_path):
    path = _round_trip(tmp_path, only("xorriso"))
    if shutil.which("isoinfo"):  # a second opinion on the names, from a reader not written here
        out = run(["isoinfo", "-J", "-f", "-i", path])[1].split()
        assert sorted(out) == ["/meta-data", "/network-config", "/user-data"]


@pytest.mark.skipif(not shutil.which("genisoimage"), reason="genisoimage is not installed")
def test_build_and_read_back_with_genisoimage(tmp_path):
    _round_trip(tmp_path, only("genisoimage"))


@needs_xorriso
def test_a_directory_with_graft_point_characters(tmp_path):
    odd = tmp_path / "a=b\\c d"
    odd.mkdir()
    _round_trip(odd, only("xorriso"))


@needs_xorriso
def test_rock_ridge_names_without_joliet(tmp_path):
    """An ISO without Joliet (made by someone else) still reads back by its Rock Ridge names."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "meta-data").write_bytes(b"{}\n")
    iso = str(tmp_path / "x.iso")
    argv = ["xorriso", "-as", "mkisofs", "-output", iso, "-volid", "CIDATA", "-rock", "-quiet", str(tmp_path / "d")]
    assert run(argv)[0] == 0
    assert seed.read_seed(iso) == ("CIDATA", {"meta-data": b"{}\n"})


@pytest.mark.parametrize("content", [b"", b"not an iso" * 1000, b"\0" * 40960])
def test_reading_a_file_that_is_no_iso_fails_cleanly(tmp_path, content):
    path = tmp_path / "web-1-cidata.iso"
    path.write_bytes(content)
    with pytest.raises(StorageError, match="is not an ISO 9660"):
        seed.read_seed(str(path))
    with pytest.raises(StorageError, match="Cannot read"):
        seed.read_seed(str(tmp_path / "missing.iso"))


def test_an_existing_file_is_never_overwritten(tmp_path):
    path = seed.seed_path(str(tmp_path), "web-1")
    with open(path, "wb") as f:
        f.write(b"someone else's")
    with pytest.raises(Conflict, match="left alone"):
        seed.build_seed(run, only("xorriso"), path, seed.seed_documents("web-1", UUID, "web-1", {}))
    with open(path, "rb") as f:
        assert f.read() == b"someone else's"
    assert os.listdir(tmp_path) == ["web-1-cidata.iso"]


@needs_xorriso
def test_a_file_that_appears_meanwhile_is_not_overwritten(tmp_path):
    path = seed.seed_path(str(tmp_path), "web-1")

    def racing(argv, env=None):
        with open(path, "wb") as f:
            f.write(b"raced")
        return run(argv)

    with pytest.raises(Conflict, match="appeared"):
        seed.build_seed(racing, only("xorriso"), path, seed.seed_documents("web-1", UUID, "web-1", {}))
    with open(path, "rb") as f:
        assert f.read() == b"raced"
    assert os.listdir(tmp_path) == ["web-1-cidata.iso"]


@needs_xorriso
def test_a_file_system_without_hard_links_gets_a_copy(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(seed.os, "link", no_links)
    _round_trip(tmp_path, only("xorriso"))


def test_a_failing_tool_leaves_nothing(tmp_path):
    path = seed.seed_path(str(tmp_path), "web-1")

    def failing(argv, env=None):
        with open(argv[argv.index("-output") + 1], "wb") as f:
            f.write(b"half an ISO")
        return 1, "", "xorriso : FAILURE : no space left\n"

    with pytest.raises(StorageError, match="no space left"):
        seed.build_seed(failing, {"xorriso": "/usr/bin/xorriso"}.get, path, {"meta-data": b"{}"})
    assert os.listdir(tmp_path) == []


def test_an_unwritable_directory_is_named(tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(StorageError) as err:
        seed.build_seed(run, {"xorriso": "/usr/bin/xorriso"}.get, str(missing / "web-1-cidata.iso"), {})
    assert str(missing) in err.value.message


# --------------------------------------------------------------- the CD-ROM


DOMAIN = """
<domain type='kvm'>
  <name>web-1</name>
  <os><type arch='{arch}' machine='{machine}'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/var/lib/libvirt/images/web-1.qcow2'/><target dev='vda' bus='virtio'/>
    </disk>
    {extra}
    <interface type='network'><source network='default'/></interface>
  </devices>
</domain>
"""


def domain(machine="pc-i440fx-7.2", arch="x86_64", extra=""):
    return dx.parse(DOMAIN.format(machine=machine, arch=arch, extra=extra))


@pytest.mark.parametrize(
    "machine,arch,extra,dev,bus",
    [
        ("pc-i440fx-7.2", "x86_64", "", "hdc", "ide"),
        ("pc-q35-7.2", "x86_64", "", "sda", "sata"),
        ("q35", "x86_64", "<disk device='cdrom'><target dev='sda' bus='sata'/></disk>", "sdb", "sata"),
        ("pc", "x86_64", "<disk device='cdrom'><target dev='hdc' bus='ide'/></disk>", "hdd", "ide"),
        ("virt-8.0", "aarch64", "", "sda", "scsi"),
    ],
)
def test_the_seed_is_a_readonly_cdrom_on_a_free_target(machine, arch, extra, dev, bus):
    root = domain(machine, arch, extra)
    path = "/var/lib/libvirt/images/web-1-cidata.iso"
    assert seed.attach_cdrom(root, path) == dev
    added = [d for d in dx.disks(root) if d["path"] == path]
    assert added == [
        dict(
            target=dev,
            bus=bus,
            device="cdrom",
            type="file",
            path=path,
            pool=None,
            format="raw",
            readonly=True,
            shareable=False,
        )
    ]
    assert root.find("devices")[-2].tag == "disk", "added after the other disks, before the interface"
    assert seed.seed_disks(root) == [path]


def test_ide_targets_run_out():
    used = "".join(f"<disk device='cdrom'><target dev='{d}' bus='ide'/></disk>" for d in ("hda", "hdb", "hdc", "hdd"))
    root = domain(extra=used)
    with pytest.raises(Conflict, match="no free ide target"):
        seed.attach_cdrom(root, "/x/web-1-cidata.iso")
    assert len(root.findall("devices/disk")) == 5, "nothing was added"


def test_seed_disks_ignores_other_cdroms():
    extra = (
        "<disk type='file' device='cdrom'><source file='/iso/debian.iso'/><target dev='hda'/></disk>"
        "<disk type='file' device='disk'><source file='/x/data-cidata.iso'/><target dev='vdb'/></disk>"
        "<disk type='file' device='cdrom'><target dev='hdb'/></disk>"
    )
    assert seed.seed_disks(domain(extra=extra)) == []
