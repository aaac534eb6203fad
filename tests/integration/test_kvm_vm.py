"""kvm_vm against the real qemu:///system daemon with the busybox test guest.

Every scenario that changes something runs four ways (check, real, again, again in
check). Every file is made in a scratch directory (``disks[].path``, a pool defined
there, ``console_log``), never in /var/lib/libvirt/images itself, and every image is a
private copy of the guest's base, so the shared base is never made read-only.

TCG boots are slow on this machine: one VM (``booted``, module scope) is created
running and then shared by the live-change, hot-plug and absent tests, which run in
file order; the other scenarios use ``state: present`` where a boot adds nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from tests import guestlib
from tests.harness import ansible_inventory, assert_four_ways, four_ways, plain, run_module

pytestmark = pytest.mark.slow

MOD = "kvm_vm"
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG


def four(args: dict, first: bool = True) -> list[dict]:
    results = four_ways(MOD, args)
    assert_four_ways(results, first_changes=first)
    if first:
        assert results[0]["changes"] == results[1]["changes"], "check mode must predict the real changes"
    assert results[2]["changes"] == results[3]["changes"] == []
    return results


def my_domains(conn, prefix: str) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(prefix))


def listing(d: Path) -> list[tuple]:
    return sorted((p.name, p.stat().st_mode, p.stat().st_size) for p in d.iterdir())


def private_image(guest: dict, scratch: Path, name: str = "image.qcow2") -> Path:
    """A writable private copy of the guest's base (the module makes it read-only, not the shared one)."""
    path = scratch / name
    shutil.copyfile(guest["base"], path)
    os.chmod(path, 0o644)
    return path


def kernel_boot(guest: dict) -> dict:
    return dict(kernel=guest["kernel"], initrd=guest["initrd"], cmdline=guest["cmdline"])


def disk_targets(root) -> list[str]:
    return [t.get("dev") for t in root.findall("devices/disk/target")]


# ---------------------------------------------------------------------- one booted VM, shared by 1-4


@pytest.fixture(scope="module")
def booted(conn, guest):
    """Scenario 1, run four ways once: a running VM on an overlay of a private image, by direct kernel boot."""
    prefix = guestlib.new_prefix()
    scratch = guestlib.make_scratch(prefix)
    try:
        image = private_image(guest, scratch)
        name = f"{prefix}-vm"
        args = dict(
            name=name,
            memory=192,
            max_memory=256,
            vcpus=1,
            max_vcpus=2,
            disks=[dict(image=str(image), path=str(scratch / "vm-vda.qcow2"))],
            boot=kernel_boot(guest),
            cloud_init={},
            console_log=str(scratch / "vm-console.log"),
            state="running",
            boot_marker=guest["marker"],
            boot_timeout=240,
        )
        image_sum = guestlib.sha256(image)
        results = four_ways(MOD, args)
        yield dict(
            prefix=prefix, scratch=scratch, image=image, image_sum=image_sum, name=name, args=args, results=results
        )
    finally:
        try:
            guestlib.cleanup_domains(conn, prefix)
        finally:
            guestlib.remove_scratch(prefix)


def test_1_running_vm_by_direct_kernel_boot_with_overlay_and_seed(conn, guest, booted):
    results = booted["results"]
    assert_four_ways(results)
    scratch, name, image = booted["scratch"], booted["name"], booted["image"]
    vda, seed, log = str(scratch / "vm-vda.qcow2"), str(scratch / f"{name}-cidata.iso"), scratch / "vm-console.log"
    real = results[1]
    assert results[0]["changes"] == real["changes"]
    assert real["changes"][:3] == [
        f"protect base {image} (read-only: overlays stand on it)",  # before anything stands or runs on it
        f"create disk vda (overlay of {image}): {vda}",
        f"create cloud-init seed: {seed}",
    ]
    assert "start" in real["changes"]
    assert real["disks"] == [dict(target="vda", path=vda, mode="overlay", format="qcow2", image=str(image))]
    assert real["seed"] == seed and real["console_log"] == str(log)
    assert real["pending_restart"] is False
    assert results[0]["vm"] is None  # check mode made nothing
    assert real["vm"]["state"] == "running"
    dom = conn.lookupByName(name)
    assert dom.isActive()
    assert guestlib.read_markers(log)  # boot_marker was waited for in this very log
    # provenance, as kvm_domain_info reports it (and as kvm_clone's)
    info = run_module("kvm_domain_info", dict(name=name))
    assert not info.get("failed"), info.get("msg")
    prov = info["domains"][0]["provenance"]
    created = {c["path"]: c for c in prov["created_disks"]}
    assert set(created) == {vda, seed}
    assert created[vda]["mode"] == "overlay" and created[vda]["base"] == str(image)
    assert created[vda]["base_fingerprint"]["size"] == image.stat().st_size
    assert created[seed]["mode"] == "seed"
    # the image became a protected base; the shared base was never touched
    assert not image.stat().st_mode & 0o222
    assert any(c.startswith(f"protect base {image}") for c in real["changes"])
    assert guestlib.sha256(image) == booted["image_sum"]
    # the rerun did not restart it: one boot in the log
    assert len(guestlib.read_markers(log)) == 1


def test_2_live_memory_and_vcpus_without_restart(conn, booted):
    dom = conn.lookupByName(booted["name"])
    dom_id = dom.ID()
    args = dict(booted["args"], memory=160, vcpus=2)
    booted["args"] = args  # the later tests start from here (a guest cannot take a vCPU unplug)
    results = four(args)
    real = results[1]
    assert real["pending_restart"] is False
    assert results[0]["pending_restart"] is False
    assert dom.ID() == dom_id and dom.isActive()
    assert dom.vcpusFlags(LIVE) == 2 and dom.vcpusFlags(CONFIG) == 2
    inactive = dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert dx.current_memory_mib(inactive) == 160
    # the live amount the balloon starts from is QEMU's (the maximum until the guest's driver follows a request)
    assert any(c.startswith("live memory: ") and c.endswith(" -> 160 MiB") for c in real["changes"]), real
    assert "live vcpus: 1 -> 2" in real["changes"]

    # above the live maximum: only the config takes it, pending a restart that is never made
    args = dict(booted["args"], memory=300, max_memory=320, vcpus=2)
    results = four(args)
    for r in results:
        assert r["pending_restart"] is True, r
    assert dom.ID() == dom_id and dom.isActive()
    inactive = dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert dx.current_memory_mib(inactive) == 300
    live_max = dx.parse(dom.XMLDesc(0)).find("memory")
    assert (live_max.get("unit"), live_max.text) == ("KiB", str(256 * 1024))  # the running maximum is the old one
    booted["args"] = args
    assert len(guestlib.read_markers(booted["scratch"] / "vm-console.log")) == 1


def test_3_blank_disk_hot_plugged_then_detached(conn, booted):
    dom = conn.lookupByName(booted["name"])
    dom_id = dom.ID()
    scratch = booted["scratch"]
    base_args = booted["args"]
    vdb = scratch / "vm-vdb.qcow2"
    args = dict(base_args, disks=[*base_args["disks"], dict(size="16M", path=str(vdb))])
    results = four(args)
    assert f"create disk vdb (blank qcow2): {vdb}" in results[1]["changes"]
    assert "hot-plug disk vdb" in results[1]["changes"]
    assert "vdb" in disk_targets(dx.parse(dom.XMLDesc(0)))
    assert "vdb" in disk_targets(dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    assert vdb.exists() and dom.ID() == dom_id

    # dropped, remove_detached false: detached live and from the config, the file kept
    results = four(dict(base_args, remove_detached=False))
    assert "hot-unplug disk vdb" in results[1]["changes"]
    assert "vdb" not in disk_targets(dx.parse(dom.XMLDesc(0)))
    assert "vdb" not in disk_targets(dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    assert vdb.exists()
    assert not any("delete" in c for c in results[1]["changes"])

    # the kept file is still recorded as this VM's: listed again at its path it is attached again, not made
    with_vdb = dict(base_args, disks=[*base_args["disks"], dict(size="16M", path=str(vdb))])
    results = four(with_vdb)
    assert "hot-plug disk vdb" in results[1]["changes"], results[1]
    assert not any(c.startswith("create disk vdb") for c in results[1]["changes"]), results[1]
    four(dict(base_args, remove_detached=False))  # detached again, still kept
    assert vdb.exists()

    # as an as_is image it is the VM's to write but no longer its own file (never deleted by this module)
    vdc = scratch / "vm-vdc.qcow2"
    again = [dict(image=str(vdb), mode="as_is"), dict(size="16M", path=str(vdc))]
    results = four(dict(base_args, disks=[*base_args["disks"], *again]))
    assert {"hot-plug disk vdb", "hot-plug disk vdc"} <= set(results[1]["changes"])
    assert vdc.exists() and {"vdb", "vdc"} <= set(disk_targets(dx.parse(dom.XMLDesc(0))))

    # both dropped with remove_detached true: the file made is deleted, the as_is image never
    results = four(dict(base_args, remove_detached=True))
    assert f"delete detached file {vdc}" in results[1]["changes"]
    assert not any(str(vdb) in c for c in results[1]["changes"])
    assert results[0]["changes"] == results[1]["changes"]
    assert not vdc.exists() and vdb.exists()
    assert not {"vdb", "vdc"} & set(disk_targets(dx.parse(dom.XMLDesc(0))))
    assert dom.ID() == dom_id


def test_3a_a_bridge_nic_hot_plugged_then_unplugged(conn, booted):
    """A NIC on a host bridge (``networks[].bridge``), plugged into the running VM and unplugged. The bridge is
    made here and stays down, so no frame leaves the VM's tap."""
    bridge = f"vtbr{booted['prefix'][3:9]}"
    subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True, timeout=30)
    try:
        dom = conn.lookupByName(booted["name"])
        dom_id = dom.ID()
        mac = "52:54:00:7b:0c:01"
        results = four(dict(booted["args"], networks=[dict(bridge=bridge, mac=mac, model="virtio")]))
        assert f"hot-plug interface {mac}" in results[1]["changes"], results[1]
        for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
            (nic,) = dx.parse(dom.XMLDesc(flags)).findall("devices/interface")
            assert nic.get("type") == "bridge" and nic.find("source").get("bridge") == bridge
            assert nic.find("mac").get("address") == mac
        tap = dx.parse(dom.XMLDesc(0)).find("devices/interface/target").get("dev")
        assert os.listdir(f"/sys/class/net/{bridge}/brif") == [tap]  # the VM's tap is on the bridge
        results = four(booted["args"])
        assert f"hot-unplug interface {mac}" in results[1]["changes"], results[1]
        assert dx.parse(dom.XMLDesc(0)).findall("devices/interface") == []
        assert os.listdir(f"/sys/class/net/{bridge}/brif") == []
        assert dom.ID() == dom_id
    finally:
        subprocess.run(["ip", "link", "del", bridge], check=False, timeout=30)


def test_3b_changed_cloud_init_rewrites_the_seed(conn, booted):
    seed = booted["scratch"] / f"{booted['name']}-cidata.iso"
    before = seed.read_bytes()
    dom_id = conn.lookupByName(booted["name"]).ID()
    results = four(dict(booted["args"], cloud_init=dict(user_data="#cloud-config\nhostname: rewritten\n")))
    assert results[1]["changes"] == [f"rewrite cloud-init seed: {seed}"]
    assert seed.read_bytes() != before and b"rewritten" in seed.read_bytes()
    assert conn.lookupByName(booted["name"]).ID() == dom_id


def test_4_absent_deletes_only_the_files_it_made(conn, booted):
    scratch, name, image = booted["scratch"], booted["name"], booted["image"]
    results = four(dict(name=name, state="absent"))
    want = sorted([str(scratch / "vm-vda.qcow2"), str(scratch / f"{name}-cidata.iso")])
    assert sorted(results[0]["removed_files"]) == want
    assert sorted(results[1]["removed_files"]) == want
    assert my_domains(conn, booted["prefix"]) == []
    assert image.exists() and guestlib.sha256(image) == booted["image_sum"]
    left = sorted(p.name for p in scratch.iterdir())
    assert left == sorted(["image.qcow2", "vm-vdb.qcow2", "vm-console.log"])


# ---------------------------------------------------------------------- 5. refusals


def _refused(conn, prefix: str, scratch: Path, args: dict, *words: str) -> dict:
    before = (my_domains(conn, prefix), listing(scratch))
    for check in (True, False):
        r = run_module(MOD, args, check=check)
        assert r.get("failed"), r
        for w in words:
            assert w in r["msg"], r["msg"]
        assert (my_domains(conn, prefix), listing(scratch)) == before
    return r


def test_5_refusals_change_nothing(conn, guest, prefix, scratch):
    image = private_image(guest, scratch)
    name = f"{prefix}-r"
    common = dict(name=name, memory=128, boot=kernel_boot(guest), console_log=str(scratch / "r.log"))

    missing = scratch / "missing.qcow2"
    _refused(conn, prefix, scratch, dict(common, disks=[dict(image=str(missing))]), str(missing))

    vda = scratch / "r-vda.qcow2"
    _refused(
        conn,
        prefix,
        scratch,
        dict(common, disks=[dict(image=str(image), path=str(vda), size="1M")]),
        "smaller than the image",
    )

    # as_is on an image an overlay of another domain stands on
    overlay = guestlib.make_overlay(image, scratch / "other.qcow2")
    other = f"{prefix}-other"
    conn.defineXML(guestlib.domain_xml(other, overlay, scratch / "other.log", kind="kernel"))
    _refused(conn, prefix, scratch, dict(common, disks=[dict(image=str(image), mode="as_is")]), str(image))

    # two VMs of one task claiming one file
    shared = dict(image=str(image), path=str(vda))
    r = _refused(
        conn,
        prefix,
        scratch,
        dict(
            boot=kernel_boot(guest),
            memory=128,
            vms=[dict(name=f"{prefix}-a", disks=[shared]), dict(name=f"{prefix}-b", disks=[shared])],
        ),
        str(vda),
    )
    assert f"{prefix}-a" in r["msg"] and f"{prefix}-b" in r["msg"]

    # an unknown os_variant names close matches
    _refused(conn, prefix, scratch, dict(common, os_variant="debain11", disks=[]), "debain11", "debian11")
    assert my_domains(conn, prefix) == [other]
    assert os.stat(image).st_mode & 0o200  # nothing protected it either


# ---------------------------------------------------------------------- 6. a batch


def test_6_batch_of_three_from_one_image_then_absent(conn, guest, prefix, scratch):
    image = private_image(guest, scratch)
    image_sum = guestlib.sha256(image)
    pool_dir = scratch / "pool"
    pool_dir.mkdir(mode=0o755)
    pool_name = f"{prefix}-pool"
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{pool_name}</name><target><path>{pool_dir}</path></target></pool>"
    )
    try:
        pool.create()
        names = [f"{prefix}-b{i}" for i in range(3)]
        args = dict(
            os_variant="linux2022",
            memory=128,
            vcpus=1,
            disks=[dict(image=str(image))],
            boot=kernel_boot(guest),
            cloud_init={},
            pool=pool_name,
            vms=[dict(name=n, console_log=str(scratch / f"{n}.log")) for n in names],
        )
        results = four_ways(MOD, args)
        assert_four_ways(results)
        real = results[1]
        assert [v["name"] for v in real["vms"]] == names
        for v in real["vms"]:
            assert v["disks"][0]["path"] == str(pool_dir / f"{v['name']}-vda.qcow2")
            assert v["seed"] == str(pool_dir / f"{v['name']}-cidata.iso")
            assert v["os_variant"] == "linux2022"
        assert [v["changes"] for v in results[0]["vms"]] == [v["changes"] for v in real["vms"]]
        assert my_domains(conn, prefix) == names
        assert sorted(p.name for p in pool_dir.iterdir()) == sorted(
            [f"{n}-vda.qcow2" for n in names] + [f"{n}-cidata.iso" for n in names]
        )
        assert not image.stat().st_mode & 0o222

        results = four_ways(MOD, dict(vms=[dict(name=n) for n in names], state="absent"))
        assert_four_ways(results)
        assert my_domains(conn, prefix) == []
        assert list(pool_dir.iterdir()) == []
        assert image.exists() and guestlib.sha256(image) == image_sum
    finally:
        if pool.isActive():
            pool.destroy()
        pool.undefine()


# ---------------------------------------------------------------------- 7. community.libvirt's scenarios


def test_7_define_start_delete_like_community_libvirt(conn, guest, prefix, scratch):
    """community.libvirt has no virt_install or virt_cloud_instance target in the sources searched; the
    closest are translated here:

    - tests/integration/targets/virt/tasks/define_check_mode.yml: define, start, delete, each as
      check(pre) changed, real changed, check(post) not changed (plus the rerun, as the house asks);
    - tests/integration/targets/virt_undefine/tasks/main.yml: the VM's disk file exists once defined and is
      gone after the undefine that deletes its volumes (here: state absent deletes the files it made).
    """
    name = f"{prefix}-cl"
    disk = scratch / "cl-vda.qcow2"
    vm = dict(
        name=name,
        memory=128,
        vcpus=2,
        disks=[dict(size="32M", path=str(disk))],
        boot=kernel_boot(guest),
        console_log=str(scratch / "cl.log"),
    )
    # define
    r = four(dict(vm, state="present"))
    assert "define" in r[1]["changes"] and r[1]["vm"]["name"] == name and r[1]["vm"]["state"] == "shutoff"
    assert disk.exists()  # virt_undefine: "Assert file exists"
    # start
    r = four(dict(vm, state="running", boot_marker=guest["marker"], boot_timeout=240))
    assert r[1]["changes"] == ["start"] and conn.lookupByName(name).isActive()
    # (not in community.libvirt) the vCPUs a domain started with cannot be unplugged: pending, not a failure
    dom = conn.lookupByName(name)
    r = four(dict(vm, vcpus=1, max_vcpus=2, state="running"))
    assert all(x["pending_restart"] is True for x in r), r
    assert dom.vcpusFlags(LIVE) == 2 and dom.vcpusFlags(CONFIG) == 1
    # delete
    r = four(dict(name=name, state="absent"))
    assert r[1]["removed_files"] == [str(disk)]
    assert my_domains(conn, prefix) == []
    assert not disk.exists()  # virt_undefine: "Assert file does not exist"


def test_8_a_kvm_vm_vm_is_a_template_and_takes_external_snapshots(conn, guest, prefix, scratch):
    """After an external kvm_snapshot a rerun keeps the VM on its top layer, never the frozen file; kvm_clone
    clones the VM like any template (at the snapshot), and kvm_vm then refuses to delete the disk the clone
    stands on."""
    image = private_image(guest, scratch)
    name, vda = f"{prefix}-src", scratch / "src-vda.qcow2"
    args = dict(name=name, memory=128, disks=[dict(image=str(image), path=str(vda))], boot=kernel_boot(guest))
    args.update(console_log=str(scratch / "src-console.log"))
    four(args)

    # an external snapshot: the VM now writes to a layer above vda; a rerun changes nothing (never back onto vda)
    snap = run_module("kvm_snapshot", dict(domain=name, name="s1", kind="external"))
    assert not snap.get("failed"), snap.get("msg")
    dom = conn.lookupByName(name)
    top = dx.disks(dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))[0]["path"]
    assert top != str(vda)
    for check in (True, False):
        again = run_module(MOD, args, check=check)
        assert not again.get("failed") and again["changed"] is False, again
    assert dx.disks(dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))[0]["path"] == top

    # the VM as kvm_clone's template (its disk as snapshot s1 froze it: kvm_clone never clones a live layer)
    clone = f"{prefix}-cl"
    cargs = dict(template=name, template_snapshot="s1", name=clone, dest_dir=str(scratch), domain_type="qemu")
    made = run_module("kvm_clone", cargs)
    assert not made.get("failed"), made.get("msg")
    cdisk = made["clones"][0]["disks"][0]["path"]
    assert str(vda) in [c["path"] for c in st.backing_chain(cdisk)]
    # absent must not delete a file the clone stands on: refused, nothing changed
    for check in (True, False):
        r = run_module(MOD, dict(name=name, state="absent"), check=check)
        assert r.get("failed") and "nothing was changed" in r["msg"], r
    assert my_domains(conn, prefix) == sorted([name, clone]) and vda.exists()
    image_sum = guestlib.sha256(image)
    assert run_module("kvm_clone", dict(name=clone, state="absent"))["changed"] is True
    assert guestlib.sha256(image) == image_sum


@pytest.mark.parametrize("firmware", ["uefi", "uefi-secure"])
def test_9_uefi_boots_with_an_nvram_of_its_own_removed_with_the_vm(conn, guest, prefix, scratch, firmware):
    """UEFI by libvirt's firmware auto-selection (OVMF, installed by scripts/setup.sh): the VM boots (the kernel
    through the firmware), gets its own NVRAM file, and absent removes it with the VM."""
    image = private_image(guest, scratch)
    name = f"{prefix}-fw"
    args = dict(name=name, memory=256, firmware=firmware, boot=kernel_boot(guest), state="running")
    args.update(disks=[dict(image=str(image), path=str(scratch / "fw-vda.qcow2"))], boot_marker=guest["marker"])
    args.update(console_log=str(scratch / "fw-console.log"), boot_timeout=240)
    four(args)
    dom = conn.lookupByName(name)
    assert dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).find("os").get("firmware") == "efi"
    root = dx.parse(dom.XMLDesc(0))  # the running VM: the firmware libvirt chose, spelled out
    assert "OVMF" in root.findtext("os/loader")
    nvram = root.findtext("os/nvram")
    assert nvram and os.path.exists(nvram), "each UEFI VM has an NVRAM file of its own"
    if firmware == "uefi-secure":
        assert root.find("os/loader").get("secure") == "yes" and "q35" in root.find("os/type").get("machine")
    gone = run_module(MOD, dict(name=name, state="absent"))
    assert not gone.get("failed"), gone.get("msg")
    assert not os.path.exists(nvram) and my_domains(conn, prefix) == []


def test_10_a_new_vm_that_fails_to_start_is_rolled_back(conn, guest, prefix, scratch):
    """A start libvirt refuses (an unknown CPU model) leaves no domain and no file made; the image stays as it
    was, its mode included."""
    image = private_image(guest, scratch)
    name, vda = f"{prefix}-bad", scratch / "bad-vda.qcow2"
    args = dict(name=name, memory=128, cpu="NoSuchCpuModel", boot=kernel_boot(guest), state="running")
    args.update(disks=[dict(image=str(image), path=str(vda))], cloud_init={}, console_log=str(scratch / "bad.log"))
    before = guestlib.sha256(image)
    mode = image.stat().st_mode
    r = run_module(MOD, args)
    assert r.get("failed") and "NoSuchCpuModel" in r["msg"], r
    assert my_domains(conn, prefix) == [] and not vda.exists()
    assert not (scratch / f"{name}-cidata.iso").exists()
    assert guestlib.sha256(image) == before
    assert image.stat().st_mode == mode  # made read-only for the overlay, then given back its mode


def test_11_vnc_listens_on_loopback_only_and_autostart(conn, guest, prefix, scratch):
    """graphics: vnc gets a port on 127.0.0.1 only (the running VM's XML says where), autostart is set, and the
    inventory lists the VM with its provenance."""
    image = private_image(guest, scratch)
    name = f"{prefix}-vnc"
    args = dict(name=name, memory=128, graphics="vnc", autostart=True, boot=kernel_boot(guest), state="running")
    args.update(disks=[dict(image=str(image), path=str(scratch / "vnc-vda.qcow2"))])
    args.update(console_log=str(scratch / "vnc.log"))
    four(args)
    dom = conn.lookupByName(name)
    graphics = dx.parse(dom.XMLDesc(0)).find("devices/graphics")
    assert graphics.get("type") == "vnc" and graphics.get("listen") == "127.0.0.1"
    assert int(graphics.get("port")) >= 5900
    assert [el.get("address") for el in graphics.findall("listen")] == ["127.0.0.1"]
    assert dom.autostart() == 1
    # the inventory lists it as a host with the provenance kvm_vm recorded (mode vm), as it lists a clone
    listed = ansible_inventory(scratch, dict(uris=["qemu:///system"]), "--host", name)
    assert listed.returncode == 0, listed.stderr
    prov = plain(json.loads(listed.stdout))["virtops_provenance"]
    assert prov["mode"] == "vm" and prov["created_by"] == "virtops.kvm", prov
    assert [c["path"] for c in prov["created_disks"]] == [str(scratch / "vnc-vda.qcow2")], prov


def test_12_a_guest_that_ignores_the_power_button_is_powered_off_only_with_force(conn, guest, prefix, scratch):
    """shutdown_timeout, then force: a booted guest without ACPI (acpi=off) never shuts down by itself. Without force
    the task fails after the timeout with the VM running; with force it is powered off; absent then removes it."""
    name = f"{prefix}-noacpi"
    boot = dict(kernel_boot(guest), cmdline=f"{guest['cmdline']} acpi=off")
    args = dict(name=name, memory=128, boot=boot, console_log=str(scratch / "noacpi.log"), shutdown_timeout=3)
    up = run_module(MOD, dict(args, state="running", boot_marker=guest["marker"], boot_timeout=240))
    assert not up.get("failed") and up["changed"] is True, up
    refused = run_module(MOD, dict(args, state="shutdown"))
    assert refused.get("failed") and refused["error"] == "TimeoutExpired", refused
    assert conn.lookupByName(name).isActive()
    check = run_module(MOD, dict(args, state="shutdown", force=True), check=True)
    assert not check.get("failed") and check["changed"] is True and conn.lookupByName(name).isActive(), check
    off = run_module(MOD, dict(args, state="shutdown", force=True))
    assert not off.get("failed") and off["changed"] is True, off
    assert not conn.lookupByName(name).isActive()
    gone = run_module(MOD, dict(args, state="absent"))
    assert not gone.get("failed") and gone["changed"] is True and my_domains(conn, prefix) == [], gone
