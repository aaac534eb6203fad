"""VmManager end to end on test:///default, with real qemu-img files in tmp_path and the host's osinfo database."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._vm import osinfo
from ansible_collections.virtops.kvm.plugins.module_utils._vm.manager import VmManager
from tests import fakes


@pytest.fixture
def tconn():
    c, close = fakes.open_conn()
    yield c
    close()


@pytest.fixture
def pool(tconn, tmp_path):
    """A dir pool of test:///default whose directory is tmp_path (so no file lands in /var/lib/libvirt/images)."""
    p = tconn.storagePoolDefineXML(
        f"<pool type='dir'><name>ut-pool</name><target><path>{tmp_path}</path></target></pool>"
    )
    yield "ut-pool"
    p.undefine()


def masked(diff: dict) -> dict:
    """A diff without the new VM's UUID (a check run and a real run each draw one)."""
    return {k: re.sub(r"<uuid>[^<]*</uuid>", "<uuid/>", v) for k, v in diff.items()}


def manager(conn, tmp_path, check=False, lock_timeout=900, **params) -> VmManager:
    return VmManager(
        dict(uri=fakes.URI, **params),
        fakes.Held(conn),
        check,
        runner=fakes.runner,
        lock_path=str(tmp_path / "lock"),
        lock_timeout=lock_timeout,
        osinfo_dirs=osinfo.DB_DIRS,
    )


def run(conn, tmp_path, check=False, **params) -> dict:
    return manager(conn, tmp_path, check, **params).run()


def names(conn) -> set[str]:
    return {d.name() for d in conn.listAllDomains() if d.name().startswith("ut-")}


def files_in(folder) -> set[str]:
    return {f for f in os.listdir(folder) if f != "lock"}


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def img(path, size="16M"):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True, capture_output=True)
    return str(path)


def test_blank_disk_vm_check_then_real_then_rerun(tconn, tmp_path):
    disk = str(tmp_path / "web.qcow2")
    params = dict(name="ut-web", memory=256, vcpus=2, disks=[dict(size="8M", path=disk)], networks=[])

    check = run(tconn, tmp_path, check=True, **params)
    assert check["changed"] is True
    assert check["changes"] == [f"create disk vda (blank qcow2): {disk}", "define"]
    assert "ut-web" not in names(tconn) and files_in(tmp_path) == set(), "check mode makes nothing"
    assert not (tmp_path / "lock").exists(), "check mode takes no lock"

    real = run(tconn, tmp_path, **params)
    assert real["changed"] is True and real["changes"] == check["changes"]
    assert masked(real["diff"]) == masked(check["diff"]), "check mode predicts the real diff"
    assert files_in(tmp_path) == {"web.qcow2"}
    assert real["disks"] == [dict(target="vda", path=disk, mode="blank", format="qcow2", image=None)]
    assert real["vm"]["memory_mib"] == 256 and real["vm"]["vcpus"] == 2 and real["vm"]["state"] == "shutoff"
    root = dx.parse(tconn.lookupByName("ut-web").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert [(c["path"], c["mode"]) for c in dx.provenance(root)["created_disks"]] == [(disk, "blank")]
    assert root.get("type") in ("kvm", "qemu")

    again = run(tconn, tmp_path, **params)
    assert again["changed"] is False and again["changes"] == []
    assert run(tconn, tmp_path, check=True, **params)["changed"] is False


def test_overlay_in_a_pool_protects_its_base(tconn, tmp_path, pool):
    base = img(tmp_path / "base.qcow2")
    os.chmod(base, 0o644)
    params = dict(name="ut-ovl", disks=[dict(image=base, size="32M")], pool=pool)
    check = run(tconn, tmp_path, check=True, **params)
    assert f"protect base {base} (read-only: overlays stand on it)" in check["changes"]
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o644
    real = run(tconn, tmp_path, **params)
    assert real["changes"] == check["changes"]
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o444
    over = real["disks"][0]["path"]
    assert over == str(tmp_path / "ut-ovl-vda.qcow2")
    assert run(tconn, tmp_path, **params)["changed"] is False


def test_a_base_made_read_only_for_vms_that_all_failed_gets_its_mode_back(tconn, tmp_path, pool):
    """The bases are protected before anything is made; when every VM of the run on a base fails (its overlay
    rolled back), the base gets its mode back: a failed run leaves the files as they were."""
    base = img(tmp_path / "base.qcow2")
    os.chmod(base, 0o640)
    kept = img(tmp_path / "kept.qcow2")
    os.chmod(kept, 0o644)

    def runner(argv, env=None):
        if "-b" in argv and base in argv:  # the overlay on base cannot be made (a full disk)
            return 1, "", "No space left on device"
        return fakes.runner(argv, env)

    vms = [dict(name="ut-fb", disks=[dict(image=base)]), dict(name="ut-ok", disks=[dict(image=kept)])]
    m = manager(tconn, tmp_path, vms=vms, pool=pool)
    m.runner = runner
    with pytest.raises(KvmError, match="1 of 2 VMs failed: ut-fb"):
        m.run()
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o640  # as before the run
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o444  # ut-ok stands on it
    assert names(tconn) == {"ut-ok"}


def test_batch_with_a_name_twice_is_refused_before_anything(tconn, tmp_path):
    vms = [dict(name="ut-b1", disks=[dict(size="8M", path=str(tmp_path / f"b{i}.qcow2"))]) for i in range(2)]
    with pytest.raises(InvalidInput, match="vms names ut-b1 more than once"):
        manager(tconn, tmp_path, vms=vms)
    assert names(tconn) == set() and files_in(tmp_path) == set()


def test_two_vms_claiming_one_path_make_nothing(tconn, tmp_path):
    path = str(tmp_path / "shared.qcow2")
    vms = [dict(name="ut-c1", disks=[dict(size="8M", path=path)]), dict(name="ut-c2", disks=[dict(size="8M")])]
    vms[1]["disks"][0]["path"] = path
    for check in (True, False):
        with pytest.raises(Conflict, match=f"{path} is claimed by VM ut-c1 disk vda and VM ut-c2 disk vda"):
            run(tconn, tmp_path, check=check, vms=vms)
        assert names(tconn) == set() and files_in(tmp_path) == set()


def test_batch_made_together_and_item_options(tconn, tmp_path):
    vms = [
        dict(name="ut-d1", disks=[dict(size="8M", path=str(tmp_path / "d1.qcow2"))]),
        dict(name="ut-d2", memory="512", disks=[dict(size="8M", path=str(tmp_path / "d2.img"), format="raw")]),
    ]
    out = run(tconn, tmp_path, vms=vms, memory=256)
    assert out["changed"] is True and [v["name"] for v in out["vms"]] == ["ut-d1", "ut-d2"]
    assert [v["domain"]["memory_mib"] for v in out["vms"]] == [256, 512], "an item's '512' over the top level"
    assert files_in(tmp_path) == {"d1.qcow2", "d2.img"}
    assert run(tconn, tmp_path, vms=vms, memory=256)["changed"] is False


def test_absent_removes_only_the_files_it_made(tconn, tmp_path):
    image = img(tmp_path / "mine.qcow2")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", image], check=False, capture_output=True)
    before = digest(image)
    params = dict(name="ut-gone", disks=[dict(image=image, mode="as_is"), dict(size="8M")])
    data = str(tmp_path / "ut-gone-vdb.qcow2")
    params["disks"][1]["path"] = data
    run(tconn, tmp_path, **params)
    assert files_in(tmp_path) == {"mine.qcow2", "ut-gone-vdb.qcow2"}

    check = run(tconn, tmp_path, check=True, name="ut-gone", state="absent")
    assert check["changed"] is True and check["removed_files"] == [data]
    assert "ut-gone" in names(tconn) and os.path.exists(data)

    real = run(tconn, tmp_path, name="ut-gone", state="absent")
    assert real["changed"] is True and real["removed_files"] == [data]
    assert "ut-gone" not in names(tconn)
    assert files_in(tmp_path) == {"mine.qcow2"}
    assert digest(image) == before, "the as_is image is left byte for byte"
    assert run(tconn, tmp_path, name="ut-gone", state="absent")["changed"] is False


def test_unknown_os_variant_names_close_matches(tconn, tmp_path):
    with pytest.raises(InvalidInput) as e:
        manager(tconn, tmp_path, name="ut-os", os_variant="debian1", disks=[dict(size="8M")])
    assert "Unknown os_variant 'debian1'" in e.value.message and "close matches: debian1" in e.value.message
    assert names(tconn) == set()


def test_os_variant_defaults_reach_the_domain(tconn, tmp_path):
    out = run(tconn, tmp_path, name="ut-win", os_variant="win11", disks=[dict(size="8M", path=str(tmp_path / "w"))])
    assert out["os_variant"] == "win11"
    assert out["disks"][0]["target"] == "sda", "win11 has no virtio: a sata disk"
    assert out["vm"]["memory_mib"] == 4096


def test_a_failing_vm_fails_alone_in_a_batch(tconn, tmp_path):
    f2 = str(tmp_path / "f2.qcow2")

    def runner(argv, env=None):
        if f2 in argv:  # qemu-img creates the file, then fails (a full disk)
            fakes.runner(argv, env)
            return 1, "", "No space left on device"
        return fakes.runner(argv, env)

    vms = [
        dict(name="ut-f1", disks=[dict(size="8M", path=str(tmp_path / "f1.qcow2"))]),
        dict(name="ut-f2", disks=[dict(size="8M", path=f2)]),
    ]
    m = manager(tconn, tmp_path, vms=vms)
    m.runner = runner
    with pytest.raises(KvmError) as e:
        m.run()
    assert "1 of 2 VMs failed: ut-f2; the others were made" in e.value.message
    results = {v["name"]: v for v in e.value.details["vms"]}
    assert results["ut-f1"]["changed"] is True
    assert results["ut-f2"]["failed"] is True and "No space left on device" in results["ut-f2"]["msg"]
    assert names(tconn) == {"ut-f1"}
    assert files_in(tmp_path) == {"f1.qcow2"}, "the failed VM's disk was not left behind"


def test_cloud_init_seed_made_kept_and_removed(tconn, tmp_path, pool):
    base = img(tmp_path / "cloud.qcow2")
    seed = str(tmp_path / "ut-ci-cidata.iso")
    params = dict(name="ut-ci", disks=[dict(image=base)], pool=pool, cloud_init=dict(user_data="#cloud-config\n"))
    check = run(tconn, tmp_path, check=True, **params)
    assert f"create cloud-init seed: {seed}" in check["changes"] and not os.path.exists(seed)
    real = run(tconn, tmp_path, **params)
    assert real["changes"] == check["changes"] and real["seed"] == seed and os.path.getsize(seed) > 0
    root = dx.parse(tconn.lookupByName("ut-ci").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert ("seed", seed) in [(c["mode"], c["path"]) for c in dx.provenance(root)["created_disks"]]
    assert run(tconn, tmp_path, **params)["changed"] is False
    gone = run(tconn, tmp_path, name="ut-ci", state="absent")
    assert sorted(gone["removed_files"]) == sorted([str(tmp_path / "ut-ci-vda.qcow2"), seed])
    assert files_in(tmp_path) == {"cloud.qcow2"}, "the base stays"


def test_cloud_init_seed_rewritten_when_the_documents_change(tconn, tmp_path, pool):
    base = img(tmp_path / "cloud.qcow2")
    seed = str(tmp_path / "ut-cr-cidata.iso")
    common = dict(name="ut-cr", disks=[dict(image=base)], pool=pool)
    run(tconn, tmp_path, **common, cloud_init=dict(user_data="#cloud-config\n"))
    old = digest(seed)
    changed = dict(common, cloud_init=dict(user_data="#cloud-config\nhostname: x\n"))
    check = run(tconn, tmp_path, check=True, **changed)
    assert check["changes"] == [f"rewrite cloud-init seed: {seed}"] and digest(seed) == old
    assert run(tconn, tmp_path, **changed)["changes"] == check["changes"]
    assert digest(seed) != old
    assert run(tconn, tmp_path, **changed)["changed"] is False


def test_dropped_files_stay_recorded_until_deleted(tconn, tmp_path, pool):
    """A dropped disk's file and a dropped cloud_init's seed are kept and still recorded: taken back by a later
    run at the same path (not made again), deleted by remove_detached or by state=absent, never left orphaned."""
    base = img(tmp_path / "cloud.qcow2")
    seed, vdb = str(tmp_path / "ut-dr-cidata.iso"), str(tmp_path / "ut-dr-vdb.qcow2")
    common, two = dict(name="ut-dr", pool=pool), [dict(image=base), dict(size="16M")]
    full = dict(common, disks=two, cloud_init={})
    run(tconn, tmp_path, **full)
    assert os.path.exists(seed) and os.path.exists(vdb)
    bare = dict(common, disks=[dict(image=base)], cloud_init=None)
    assert not any(c.startswith("delete") for c in run(tconn, tmp_path, **bare)["changes"])
    recorded = {c["path"] for c in dx.provenance(dx.parse(tconn.lookupByName("ut-dr").XMLDesc(2)))["created_disks"]}
    assert {seed, vdb} <= recorded and os.path.exists(seed) and os.path.exists(vdb)
    back = run(tconn, tmp_path, **dict(common, disks=two, cloud_init=None))
    assert not any(c.startswith("create disk vdb") for c in back["changes"]), back["changes"]
    run(tconn, tmp_path, **bare)
    gone = run(tconn, tmp_path, state="absent", name="ut-dr", pool=pool)
    assert {seed, vdb} <= set(gone["removed_files"]) and not os.path.exists(seed) and not os.path.exists(vdb)
    assert os.path.exists(base), "the image is never deleted"


def test_a_refusal_does_not_wait_for_the_host_lock(tconn, tmp_path):
    """Another task holding the host lock: a VM refused by its plan (a missing image) fails at once."""
    import fcntl

    with open(tmp_path / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(KvmError, match="does not exist") as exc:
            run(tconn, tmp_path, name="ut-lk", disks=[dict(image=str(tmp_path / "missing.qcow2"))], lock_timeout=1)
        assert "lock" not in exc.value.message
    assert "ut-lk" not in names(tconn)
