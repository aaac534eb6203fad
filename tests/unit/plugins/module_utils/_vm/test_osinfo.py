"""Unit tests of _vm.osinfo: the real osinfo-db on this host, and small fake databases for inheritance rules."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._vm import osinfo

SYSTEM = "/usr/share/osinfo"
real_db = pytest.mark.skipif(not os.path.isdir(SYSTEM + "/os"), reason="osinfo-db is not installed")
GIB = 1024**3

HEAD = '<?xml version="1.0"?>\n<libosinfo version="0.0.1">\n'


def _os(uri: str, short_ids: list[str], body: str = "") -> str:
    ids = "".join(f"<short-id>{s}</short-id>" for s in short_ids)
    return f'{HEAD}<os id="{uri}">{ids}{body}</os>\n</libosinfo>\n'


def _write(base: Path, rel: str, text: str) -> None:
    path = base / "os" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


BASE = "http://example.org/base/1"
CHILD = "http://example.org/child/2"
CLONE = "http://example.org/clone/3"


@pytest.fixture
def fake_db(tmp_path: Path) -> tuple[str, ...]:
    """base1 <- child2 (derives-from) <- clone3 (clones), an old OS, and a driver folder that must be ignored."""
    _write(
        tmp_path,
        "example.org/base-1.xml",
        _os(
            BASE,
            ["base1"],
            "<name>Base 1</name><name xml:lang='de'>Basis 1</name><family>linux</family>"
            "<release-date>2015-01-01</release-date>"
            '<resources arch="all"><minimum><n-cpus>1</n-cpus><ram>1073741824</ram></minimum>'
            "<recommended><ram>2147483648</ram><n-cpus>2</n-cpus></recommended></resources>"
            '<resources arch="x86_64"><recommended><ram>3221225472</ram></recommended></resources>'
            '<devices><device id="http://pcisig.com/pci/1af4/1001"/><device id="http://pcisig.com/pci/1af4/1000"/>'
            "</devices>",
        ),
    )
    _write(
        tmp_path,
        "example.org/child-2.xml",
        _os(
            CHILD,
            ["child2", "childtwo"],
            f'<name>Child 2</name><derives-from id="{BASE}"/>'
            '<devices><device id="http://pcisig.com/pci/1af4/1000" supported="false"/>'
            '<device id="http://pcisig.com/pci/8086/10d3"/></devices>',
        ),
    )
    _write(
        tmp_path,
        "example.org/clone-3.xml",
        _os(
            CLONE,
            ["clone3"],
            f'<name>Clone 3</name><clones id="{CHILD}"/>'
            '<firmware arch="x86_64" type="efi"><feature name="secure-boot" supported="true"/></firmware>'
            '<firmware arch="x86_64" type="bios" supported="false"/>',
        ),
    )
    _write(
        tmp_path,
        "example.org/old-1.xml",
        _os(
            "http://example.org/old/1",
            ["old1"],
            "<name>Old 1</name><family>winnt</family><release-date>2001-10-25</release-date>",
        ),
    )
    # installable drivers, as win-10.d holds: neither an OS of their own nor devices the OS supports
    _write(
        tmp_path,
        "example.org/base-1.d/drivers.xml",
        _os(BASE, ["driveronly"], '<devices><device id="http://pcisig.com/pci/1af4/1041"/></devices>'),
    )
    return (str(tmp_path),)


def test_derives_from_gives_devices_and_resources(fake_db):
    child = osinfo.lookup("child2", dirs=fake_db)
    assert child["name"] == "Child 2"
    assert child["id"] == CHILD
    assert child["family"] == "linux"  # inherited from base1
    # virtio-block inherited; virtio-net inherited but withdrawn by supported="false"
    assert (child["virtio"], child["virtio_net"]) == (True, False)
    assert (child["disk_bus"], child["nic_model"]) == ("virtio", "e1000e")
    # x86_64 resources beat the "all" ones; the minimum comes from "all"
    assert (child["memory_mib"], child["min_memory_mib"], child["vcpus"]) == (3072, 1024, 2)
    assert (child["firmware"], child["secure_boot"], child["machine"]) == (None, False, None)
    # an alias short id is the same OS
    assert osinfo.lookup("childtwo", dirs=fake_db)["id"] == CHILD


def test_arch_without_own_resources_falls_back_to_all(fake_db):
    assert osinfo.lookup("child2", dirs=fake_db, arch="aarch64")["memory_mib"] == 2048
    assert osinfo.lookup("clone3", dirs=fake_db, arch="aarch64")["firmware"] is None  # its efi is x86_64 only


def test_clones_and_efi_only_firmware(fake_db):
    clone = osinfo.lookup("clone3", dirs=fake_db)
    assert clone["name"] == "Clone 3"
    assert clone["virtio"] is True and clone["memory_mib"] == 3072  # through child2 to base1
    assert (clone["firmware"], clone["secure_boot"], clone["machine"]) == ("efi", True, "q35")
    assert (
        osinfo.summary(clone) == "Clone 3 (clone3): virtio disk, e1000e NIC, 3072 MiB, 2 vCPUs, UEFI secure boot, q35"
    )


def test_old_os_gets_ide_on_i440fx(fake_db):
    old = osinfo.lookup("old1", dirs=fake_db)
    assert (old["disk_bus"], old["nic_model"], old["machine"]) == ("ide", "e1000", "pc")
    assert old["memory_mib"] is None and old["vcpus"] is None


def test_driver_folders_are_not_read(fake_db):
    assert osinfo.lookup("base1", dirs=fake_db)["virtio_net"] is True
    with pytest.raises(InvalidInput, match="driveronly"):
        osinfo.lookup("driveronly", dirs=fake_db)


def test_later_folder_overrides_same_os(fake_db, tmp_path):
    local = tmp_path / "local"
    _write(local, "base.xml", _os(BASE, ["base1"], "<name>Base 1 updated</name><family>linux</family>"))
    dirs = (*fake_db, str(local))
    assert osinfo.lookup("base1", dirs=dirs)["name"] == "Base 1 updated"
    # child2 now derives from the updated base1, which has no virtio-block any more
    assert osinfo.lookup("child2", dirs=dirs)["virtio"] is False


def test_derives_from_cycle_and_missing_parent_end(tmp_path):
    _write(tmp_path, "a.xml", _os("http://x/a", ["a1"], '<derives-from id="http://x/b"/>'))
    _write(tmp_path, "b.xml", _os("http://x/b", ["b1"], '<derives-from id="http://x/a"/><family>linux</family>'))
    _write(tmp_path, "c.xml", _os("http://x/c", ["c1"], '<derives-from id="http://x/nowhere"/>'))
    assert osinfo.lookup("a1", dirs=(str(tmp_path),))["family"] == "linux"
    assert osinfo.lookup("c1", dirs=(str(tmp_path),))["family"] is None


def test_unknown_id_names_close_matches(fake_db):
    with pytest.raises(InvalidInput) as err:
        osinfo.lookup("chidl2", dirs=fake_db)
    assert err.value.msg.startswith("Unknown os_variant 'chidl2': close matches: child2")
    assert "<short-id>" in err.value.hint or "osinfo-query os" in err.value.hint


def test_missing_database(tmp_path):
    with pytest.raises(HostError) as err:
        osinfo.lookup("debian11", dirs=(str(tmp_path / "none"),))
    assert "apt-get install osinfo-db" in err.value.message and "dnf install osinfo-db" in err.value.message
    # generic needs no database
    generic = osinfo.lookup("generic", dirs=(str(tmp_path / "none"),))
    assert (generic["disk_bus"], generic["nic_model"], generic["virtio"]) == ("sata", "e1000e", False)


def test_default_dirs_follow_libosinfo_env(monkeypatch):
    monkeypatch.setenv("OSINFO_SYSTEM_DIR", "/s")
    monkeypatch.setenv("OSINFO_LOCAL_DIR", "/l")
    monkeypatch.setenv("OSINFO_USER_DIR", "/u")
    assert osinfo._default_dirs() == ("/s", "/l", "/u")
    for name in ("OSINFO_SYSTEM_DIR", "OSINFO_LOCAL_DIR", "OSINFO_USER_DIR"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("OSINFO_DATA_DIR", "/old")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/cfg")
    assert osinfo._default_dirs() == ("/old", "/etc/osinfo", "/cfg/osinfo")


def test_result_is_a_copy(fake_db):
    osinfo.lookup("base1", dirs=fake_db)["disk_bus"] = "scsi"
    assert osinfo.lookup("base1", dirs=fake_db)["disk_bus"] == "virtio"


def _newest_debian() -> str:
    ids = osinfo._index((SYSTEM,))["short"]
    return max((s for s in ids if re.fullmatch(r"debian\d+", s)), key=lambda s: int(s[6:]))


@real_db
def test_real_newest_debian_through_its_chain(monkeypatch):
    monkeypatch.setattr(osinfo, "_PARSED", {})
    monkeypatch.setattr(osinfo, "_RESULTS", {})
    sid = _newest_debian()
    info = osinfo.lookup(sid, dirs=(SYSTEM,))
    assert info["name"].startswith("Debian") and info["family"] == "linux"
    assert (info["virtio"], info["disk_bus"], info["nic_model"]) == (True, "virtio", "virtio")
    assert isinstance(info["memory_mib"], int) and info["memory_mib"] >= 512
    assert info["firmware"] is None and info["machine"] is None
    # its own file declares no virtio block device: that comes down the derives-from chain
    own = Path(osinfo._index((SYSTEM,))["uri"][info["id"]]).read_bytes()
    assert b"1af4/1001" not in own and b"1af4/1042" not in own
    # only the chain was parsed, not the ~900 files
    assert 1 < len(osinfo._PARSED) < 30


@real_db
def test_real_windows_11_needs_efi_on_sata():
    info = osinfo.lookup("win11", dirs=(SYSTEM,))
    assert info["family"] == "winnt"
    assert (info["virtio"], info["disk_bus"], info["nic_model"]) == (False, "sata", "e1000e")
    assert (info["firmware"], info["machine"]) == ("efi", "q35")
    assert info["min_memory_mib"] >= 4096 and info["memory_mib"] >= info["min_memory_mib"]
    assert info["vcpus"] >= 2
    # win10's virtio drivers (win-10.d) are installable, not native
    assert osinfo.lookup("win10", dirs=(SYSTEM,))["virtio"] is False


@real_db
def test_real_generic_linux_inherits_resources():
    linux = osinfo.lookup("linux2022", dirs=(SYSTEM,))
    ubuntu = osinfo.lookup("ubuntu22.04", dirs=(SYSTEM,))
    assert linux["virtio"] is True and linux["memory_mib"] is not None
    assert linux["memory_mib"] == ubuntu["memory_mib"]  # <resources arch="all" inherit="true"/>


@real_db
def test_real_unknown_id_suggests_the_right_one():
    with pytest.raises(InvalidInput) as err:
        osinfo.lookup("debain11", dirs=(SYSTEM,))
    assert "Unknown os_variant 'debain11': close matches:" in err.value.msg
    assert "debian11" in err.value.msg.split("close matches:")[1]
