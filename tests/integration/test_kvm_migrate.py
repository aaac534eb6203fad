"""kvm_migrate on the test ground: two simulated hypervisors hv1 and hv2, each with its own libvirtd.

A clone (an overlay on a base that is at the same path on both hosts, with kvm_clone's provenance)
is migrated live from hv1 to hv2 (check mode, real, again, again in check mode), a shut-off one is
moved offline, a destination without the base is refused with nothing changed, and a destination
whose QEMU dies in the middle of a slow (1 MiB/s) live migration leaves the domain running on the
source with nothing left on the destination. Two guest boots in all; traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _drift
from tests import ground as groundlib
from tests import guestlib
from tests.harness import run_module

pytestmark = pytest.mark.slow

IMAGES = "/var/lib/libvirt/images"
MIGRATE_URI = "tcp://127.0.0.3"  # hv2's address: the hosts' names do not resolve


@pytest.fixture(scope="module")
def ground():
    g = groundlib.Ground(2, root=Path("/var/lib/virtops-ground-migrate"), port=2222)
    with g:
        yield g


@pytest.fixture(scope="module")
def conns(ground):
    out = {h.name: libvirt.open(h.uri) for h in ground.hosts}
    yield out
    for c in out.values():
        c.close()


def outside(host, path: str) -> Path:
    """Where a host's /var/lib/libvirt/images/... is seen from this machine."""
    assert path.startswith(IMAGES + "/")
    return host.root / "lib" / "images" / path[len(IMAGES) + 1 :]


class Clone:
    """One test clone on hv1: an overlay of a base at the same path on the hosts given."""

    def __init__(
        self, ground, conns, prefix: str, base_on=("hv1", "hv2"), memory_mib: int = 128, data_mib: int = 0, seed=False
    ):
        self.ground, self.conns, self.name = ground, conns, f"{prefix}-c"
        self.dir = f"{IMAGES}/{prefix}"
        self.base = f"{self.dir}/base.qcow2"
        self.overlay = f"{self.dir}/{self.name}.qcow2"
        self.serial = f"{self.dir}/{self.name}.serial.log"
        src_base = guestlib.build_guest()["base"]
        for host in ground.hosts:
            d = outside(host, self.dir)
            d.mkdir(mode=0o755, exist_ok=True)
            d.chmod(0o755)
            if host.name in base_on:
                shutil.copyfile(src_base, outside(host, self.base))
                outside(host, self.base).chmod(0o644)
        hv1 = ground["hv1"]
        hv1.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base, "-F", "qcow2", self.overlay],
            check=True,
            capture_output=True,
            timeout=60,
        )
        outside(hv1, self.overlay).chmod(0o644)
        root = etree.fromstring(guestlib.domain_xml(self.name, self.overlay, self.serial, memory_mib=memory_mib))
        self.data = None
        if data_mib:  # a raw disk without backing file, made by hand (no provenance): moved whole, never removed
            self.data = f"{self.dir}/{self.name}-data.raw"
            hv1.run(["qemu-img", "create", "-q", "-f", "raw", self.data, f"{data_mib}M"], check=True, timeout=60)
            hv1.run(["qemu-io", "-f", "raw", "-c", "write -P 0x33 0 1M", self.data], check=True, capture_output=True)
            outside(hv1, self.data).chmod(0o644)
            disk = etree.fromstring(
                f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{self.data}'/>"
                "<target dev='vdb' bus='virtio'/></disk>"
            )
            root.find("devices/disk").addnext(disk)
        fp = _drift.fingerprint(str(outside(hv1, self.base)))
        created = [dict(path=self.overlay, base=self.base, mode="overlay", format="qcow2", base_fingerprint=fp)]
        self.seed = None
        if seed:  # a read-only CD-ROM recorded as the clone's cloud-init seed (its content does not matter here)
            self.seed = f"{self.dir}/{self.name}-cidata.iso"
            outside(hv1, self.seed).write_bytes(os.urandom(64 * 1024))
            outside(hv1, self.seed).chmod(0o644)
            cdrom = etree.fromstring(
                f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='{self.seed}'/>"
                "<target dev='sdz' bus='sata'/><readonly/></disk>"
            )
            root.find("devices").append(cdrom)
            created.append(dict(path=self.seed, mode="seed", format="raw"))
        dx.set_provenance(root, "tpl", "overlay", created)
        conns["hv1"].defineXML(etree.tostring(root, encoding="unicode"))

    def write(self, offset_mib: int, mib: int) -> None:
        """Write ``mib`` MiB of data into the overlay (domain shut off) at ``offset_mib``."""
        self.ground["hv1"].run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {offset_mib}M {mib}M", self.overlay],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self.conns["hv1"].lookupByName(self.name).create()
        # a TCG boot on a loaded 2-core machine: the same bound as test_kvm_domain's boots
        guestlib.wait_for_marker(outside(self.ground["hv1"], self.serial), timeout=240)

    def args(self, **extra) -> dict:
        return dict(
            name=self.name,
            uri=self.ground["hv1"].uri,
            dest_uri=self.ground["hv2"].uri,
            migrate_uri=MIGRATE_URI,
            **extra,
        )

    def defined(self, host: str) -> bool:
        return self.name in [d.name() for d in self.conns[host].listAllDomains()]


def _sha(host, path: str) -> str:
    return guestlib.sha256(outside(host, path))


def usable_there(c, host, boot: bool) -> None:
    """The moved clone is usable on ``host`` (whose base copy has its own mtime): kvm_domain starts it (and, with
    ``boot``, it boots to its marker), kvm_domain_info sees no base drift, and kvm_clone makes a new overlay on
    that base there. Each module runs in the host, as Ansible would over SSH."""
    conn = c.conns[host.name]
    moved = run_module("kvm_migrate", c.args(), check=True)  # the record names the destination's copy now
    assert moved["changed"] is False, moved
    started = run_module("kvm_domain", dict(name=c.name, state="running"), host=host)
    assert not started.get("failed") and started["changed"] is True, started
    assert conn.lookupByName(c.name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
    if boot:
        guestlib.wait_for_marker(outside(host, c.serial), timeout=240)
    info = run_module("kvm_domain_info", dict(name=c.name), host=host)
    assert not info.get("failed") and info["domains"][0]["base_drift"] == [], info
    tpl = f"{c.name}-tpl"
    conn.defineXML(guestlib.domain_xml(tpl, c.base, f"{c.dir}/{tpl}.serial.log", memory_mib=128))
    new = run_module(
        "kvm_clone",
        dict(template=tpl, name=f"{c.name}-new", domain_type="qemu", identity={"operations": []}),
        host=host,
    )
    assert not new.get("failed") and new["changed"] is True, new
    disk = new["clones"][0]["disks"][0]
    assert disk["backing_file"] == c.base and outside(host, disk["path"]).exists(), new


def test_live_migration_of_a_running_overlay_clone(ground, conns):
    c = Clone(ground, conns, guestlib.new_prefix(), data_mib=8, seed=True)
    hv1, hv2 = ground["hv1"], ground["hv2"]
    base_sha = _sha(hv1, c.base)
    seed_sha = _sha(hv1, c.seed)
    c.start()
    try:
        plan = run_module("kvm_migrate", c.args(), check=True)
        assert plan["changed"] is True and not plan.get("failed"), plan
        assert plan["mode"] == "live"
        disk, data, seed = plan["disks"]
        assert disk["action"] == "top" and disk["base"] == c.base and disk["result"] == "planned"
        assert 0 < disk["bytes"] < outside(hv1, c.base).stat().st_size
        assert data["path"] == c.data and data["action"] == "whole" and data["base"] is None
        assert seed["path"] == c.seed and seed["action"] == "seed"
        assert plan["removed_files"] == [c.overlay, c.seed]
        assert c.defined("hv1") and not c.defined("hv2") and not outside(hv2, c.overlay).exists()

        res = run_module("kvm_migrate", c.args())
        assert res["changed"] is True and not res.get("failed"), res
        assert res["mode"] == "live" and [d["result"] for d in res["disks"]] == ["copied", "copied", "copied"]
        assert res["disks"][2]["sha256"] == seed_sha == _sha(hv2, c.seed)  # the seed moved with the clone
        assert not outside(hv1, c.seed).exists()
        assert res["transfer"]["bytes"] > 0 and res["transfer"]["seconds"] > 0
        assert res["removed_files"] == [c.overlay, c.seed]
        assert res["diff"] == {"before": {"host": hv1.uri}, "after": {"host": hv2.uri}}

        dom = conns["hv2"].lookupByName(c.name)
        state, reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING
        assert reason == libvirt.VIR_DOMAIN_RUNNING_MIGRATED
        assert dom.isPersistent()
        assert dx.provenance(dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))["created_disks"][0]["path"] == (
            c.overlay
        )
        assert guestlib.read_markers(outside(hv2, c.serial)) == []  # it did not boot again there
        moved = outside(hv2, c.overlay).stat().st_size
        assert moved < outside(hv2, c.base).stat().st_size / 4, moved
        arrived = outside(hv2, c.overlay).stat().st_blocks * 512  # what the disk copy wrote there
        assert res["transfer"]["disk_bytes"] >= arrived * 0.9, (res["transfer"], arrived)
        assert res["transfer"]["bytes"] >= res["transfer"]["memory_bytes"] + res["transfer"]["disk_bytes"]
        assert not c.defined("hv1")
        assert not outside(hv1, c.overlay).exists()
        assert _sha(hv1, c.base) == base_sha == _sha(hv2, c.base)
        assert outside(hv1, c.data).exists()  # not made by the collection: kept on the source
        with outside(hv2, c.data).open("rb") as f:
            assert f.read(1 << 20) == b"\x33" * (1 << 20)  # the whole disk moved with its data

        again = run_module("kvm_migrate", c.args())
        assert again["changed"] is False and again["mode"] == "none" and not again.get("failed"), again
        again_check = run_module("kvm_migrate", c.args(), check=True)
        assert again_check["changed"] is False and not again_check.get("failed"), again_check

        # the base's copy on hv2 was made apart from hv1's (its own mtime); the domain records hv2's now
        identity = res["disks"][0]["base_identity"]
        assert identity == dict(
            size=outside(hv2, c.base).stat().st_size,
            mtime=outside(hv2, c.base).stat().st_mtime_ns,
            digest=_drift.fingerprint(str(outside(hv2, c.base)))["digest"],
        )
        assert identity["mtime"] != outside(hv1, c.base).stat().st_mtime_ns
        conns["hv2"].lookupByName(c.name).destroy()
        usable_there(c, hv2, boot=False)
    finally:
        for conn in conns.values():
            guestlib.cleanup_domains(conn, c.name)


def test_offline_move_of_a_shut_off_clone(ground, conns):
    c = Clone(ground, conns, guestlib.new_prefix(), data_mib=4)
    hv1, hv2 = ground["hv1"], ground["hv2"]
    c.write(100, 2)
    overlay_sha = _sha(hv1, c.overlay)
    try:
        res = run_module("kvm_migrate", c.args())
        assert res["changed"] is True and not res.get("failed"), res
        assert res["mode"] == "offline"
        disk, data = res["disks"]
        assert disk["action"] == "top" and disk["result"] == "copied" and disk["sha256"] == overlay_sha
        assert _sha(hv2, c.overlay) == overlay_sha
        assert data["action"] == "whole" and data["result"] == "copied"
        assert _sha(hv2, c.data) == _sha(hv1, c.data) == data["sha256"]  # kept on the source: no provenance
        assert res["removed_files"] == [c.overlay] and not outside(hv1, c.overlay).exists()
        assert not c.defined("hv1") and c.defined("hv2")
        dom = conns["hv2"].lookupByName(c.name)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        assert dx.provenance(dx.parse(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))) is not None
        info = hv2.run(
            ["qemu-img", "info", "--output=json", "-U", c.overlay], check=True, capture_output=True, text=True
        )
        assert json.loads(info.stdout)["backing-filename"] == c.base  # still an overlay of the base, same path
        again = run_module("kvm_migrate", c.args())
        assert again["changed"] is False and again["mode"] == "none", again
        assert disk["base_identity"]["mtime"] == outside(hv2, c.base).stat().st_mtime_ns
        usable_there(c, hv2, boot=True)  # boots from the moved overlay on hv2's base
    finally:
        for conn in conns.values():
            guestlib.cleanup_domains(conn, c.name)


def test_refused_when_the_destination_lacks_the_base(ground, conns):
    c = Clone(ground, conns, guestlib.new_prefix(), base_on=("hv1",))
    hv2 = ground["hv2"]
    try:
        for check in (True, False):
            res = run_module("kvm_migrate", c.args(), check=check)
            assert res.get("failed"), res
            assert "StorageError" == res["error"]
            assert c.base in res["msg"] and hv2.uri in res["msg"] and "missing" in res["msg"], res["msg"]
        assert c.defined("hv1") and not c.defined("hv2")
        assert not outside(hv2, c.overlay).exists() and outside(ground["hv1"], c.overlay).exists()
        outside(hv2, c.dir).rmdir()  # not even the directory: both said, nothing made
        res = run_module("kvm_migrate", c.args())
        assert res.get("failed") and "does not exist on" in res["msg"] and c.base in res["msg"], res
        assert not outside(hv2, c.dir).exists() and not c.defined("hv2")
        # both defined: an error naming both hosts
        conns["hv2"].defineXML(conns["hv1"].lookupByName(c.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        res = run_module("kvm_migrate", c.args())
        assert res.get("failed") and ground["hv1"].uri in res["msg"] and hv2.uri in res["msg"], res
    finally:
        for conn in conns.values():
            guestlib.cleanup_domains(conn, c.name)


def _during_job(c, conns, kill) -> dict:
    """Run a 1 MiB/s live migration of ``c``, call ``kill()`` 1.5 s into its job, return the module's result."""
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(res=run_module("kvm_migrate", c.args(bandwidth=1))))
    worker.start()
    try:
        src = conns["hv1"].lookupByName(c.name)
        deadline = time.monotonic() + 60
        while not (src.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE and c.ground["hv2"].processes("qemu-system-x86")):
            assert time.monotonic() < deadline and worker.is_alive(), box
            time.sleep(0.2)
        time.sleep(1.5)
        kill()
    finally:
        worker.join(180)
    return box["res"]


def test_destination_dies_mid_migration(ground, conns):
    c = Clone(ground, conns, guestlib.new_prefix())
    hv1, hv2 = ground["hv1"], ground["hv2"]
    c.write(100, 6)
    c.start()
    try:
        # the destination's QEMU dies: libvirt there notices, the run removes the overlay it made there
        res = _during_job(c, conns, lambda: [os.kill(pid, signal.SIGKILL) for pid in hv2.processes("qemu-system-x86")])
        assert res.get("failed"), res
        assert c.name in res["msg"] and f"stays on {hv1.uri}" in res["msg"], res["msg"]
        dom = conns["hv1"].lookupByName(c.name)
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert not c.defined("hv2")
        assert not outside(hv2, c.overlay).exists()  # what the run made there is gone
        assert outside(hv1, c.overlay).exists()

        # the same guest, too slow for the timeout: the job is aborted, the guest runs on as before
        res = run_module("kvm_migrate", c.args(bandwidth=1, timeout=2))
        assert res.get("failed") and res["error"] == "TimeoutExpired", res
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE
        assert not c.defined("hv2") and not outside(hv2, c.overlay).exists()

        # the destination's libvirtd dies: the guest runs on at the source; once hv2 is back, nothing is defined
        # there, and the overlay the run made there (it could not remove it) is named in a warning
        res = _during_job(c, conns, lambda: ground.fault("hv2", "daemon"))
        ground.heal("hv2")
        conns["hv2"] = libvirt.open(hv2.uri)
        assert res.get("failed") and res["error"] == "ConnectionFailed", res
        assert c.name in res["msg"] and "could not be removed" in res["msg"], res["msg"]
        assert any(c.overlay in str(w) for w in res.get("warnings", [])), res
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert len(guestlib.read_markers(outside(hv1, c.serial))) == 1  # it never booted again
        deadline = time.monotonic() + 30
        while c.defined("hv2"):  # libvirtd kills the half-migrated guest it finds when it starts
            assert time.monotonic() < deadline, "the half-migrated domain is still on hv2"
            time.sleep(0.5)
    finally:
        for conn in conns.values():
            guestlib.cleanup_domains(conn, c.name)


def test_a_kvm_vm_vm_moves_and_is_managed_on_its_new_host(ground, conns):
    """A VM made by kvm_vm (an overlay on an image and a cloud-init seed, no hand-written XML) moves offline like a
    clone, its seed with it, and kvm_vm manages it on its new host: a rerun there changes nothing but the image's
    protection, it starts there, and absent removes what kvm_vm made for it and never the image."""
    prefix = guestlib.new_prefix()
    hv1, hv2 = ground["hv1"], ground["hv2"]
    folder, name = f"{IMAGES}/{prefix}", f"{prefix}-vm"
    image, vda = f"{folder}/image.qcow2", f"{folder}/{name}-vda.qcow2"
    for host in ground.hosts:  # each host's own copy of the image (its own mtime)
        outside(host, folder).mkdir(mode=0o755)
        shutil.copyfile(guestlib.build_guest()["base"], outside(host, image))
        outside(host, image).chmod(0o644)
    args = dict(
        name=name,
        memory=128,
        vcpus=1,
        disks=[dict(image=image, path=vda)],
        cloud_init={},  # a seed, which moves with the VM
        console_log=f"{folder}/{name}-console.log",
        state="present",
    )
    seed = f"{folder}/{name}-cidata.iso"
    try:
        made = run_module("kvm_vm", args, host=hv1)
        assert made["changed"] is True and not made.get("failed"), made
        image_sha = _sha(hv2, image)
        move = dict(name=name, uri=hv1.uri, dest_uri=hv2.uri, migrate_uri=MIGRATE_URI)
        res = run_module("kvm_migrate", move)
        assert res["changed"] is True and not res.get("failed") and res["mode"] == "offline", res
        disk, cdrom = res["disks"]
        assert disk["action"] == "top" and disk["result"] == "copied" and disk["base"] == image, disk
        assert disk["base_identity"]["mtime"] == outside(hv2, image).stat().st_mtime_ns
        assert cdrom["path"] == seed and cdrom["action"] == "seed" and cdrom["result"] == "copied", cdrom
        assert res["removed_files"] == [vda, seed]
        assert not outside(hv1, vda).exists() and outside(hv2, vda).exists()
        assert not outside(hv1, seed).exists() and outside(hv2, seed).exists()

        # kvm_migrate works through libvirt and leaves file modes alone: hv2's copy of the image was writable,
        # and kvm_vm protects it as the base it now is there; then nothing is left to do
        again = run_module("kvm_vm", args, host=hv2)
        assert again["changes"] == [f"protect base {image} (read-only: overlays stand on it)"], again
        assert outside(hv2, image).stat().st_mode & 0o222 == 0
        again = run_module("kvm_vm", args, host=hv2)
        assert again["changed"] is False and not again.get("failed"), again
        running = run_module("kvm_vm", dict(args, state="running"), host=hv2)
        assert running["changed"] is True and not running.get("failed"), running
        assert conns["hv2"].lookupByName(name).state()[0] == libvirt.VIR_DOMAIN_RUNNING
        info = run_module("kvm_domain_info", dict(name=name), host=hv2)
        assert info["domains"][0]["base_drift"] == [] and info["domains"][0]["provenance"]["mode"] == "vm", info

        # started without waiting for its boot, the guest may not take an ACPI power button yet: off first
        off = run_module("kvm_vm", dict(args, state="destroyed"), host=hv2)
        assert not off.get("failed") and off["changed"] is True, off
        gone = run_module("kvm_vm", dict(args, state="absent"), host=hv2)
        assert not gone.get("failed") and gone["changed"] is True, gone
        assert not outside(hv2, vda).exists() and not outside(hv2, seed).exists() and _sha(hv2, image) == image_sha
        assert name not in [d.name() for c in conns.values() for d in c.listAllDomains()]
    finally:
        for conn in conns.values():
            guestlib.cleanup_domains(conn, name)
