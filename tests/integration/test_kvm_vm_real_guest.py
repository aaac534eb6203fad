"""kvm_vm on a real distribution guest: the Debian 12 test image (tests/realguest.py) used as a cloud image.

One VM, one boot (TCG: ~1.5-2 min), everything inside a NetHost (tests/nethost.py: a libvirtd of its own in
private network, mount and UTS namespaces); the module runs against its ``uri`` and every SSH connection is
made from inside its network namespace, so no packet leaves it.

The VM is described only by kvm_vm's typed options: ``os_variant: debian11`` (this host's osinfo-db has no
debian12), 512 MiB, one disk made as a qcow2 overlay on the (copied) image and grown to 3 GiB, one NIC on a
NAT network ``kvm_network`` made, a cloud-init NoCloud seed (its meta-data names the host, its user data writes
a file), direct kernel boot with the image's kernel, initrd and command line (ext4 on the whole disk),
the serial console logged to a file, ``state: running`` waiting for cloud-init's final message on it.

Steps (each a test below, in order; a step whose predecessor failed is skipped, naming it):

1. ``made``: check, real, again, again in check: the check run predicts what the real one does, the real
   one boots the guest to cloud-init's final message, the next two change nothing.
2. ``guest``: the VM's DHCP lease appears, SSH answers, the hostname is the seed's, the user data's file is
   there, cloud-init is done and ``/dev/vda`` is the grown 3 GiB.
3. ``absent``: ``state: absent`` (check, then real, then again unchanged) removes the domain, its overlay and
   its seed; the image is left, byte-identical (sha256) to what it was before the VM was made.

Timings are printed at the end (``-s`` shows them).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests import guestlib, nethost, realguest
from tests.harness import run_module

pytestmark = pytest.mark.slow

SUBNET = "192.168.154"  # exists only inside the NetHost's network namespace
BOOT_TIMEOUT = 300  # s: TCG on shared cores, the boot to cloud-init's final message takes ~1-2 min
GIB = 1024**3
HOSTNAME = "kvmvm-real"  # the seed's local-hostname: not the VM's name (the default), not the image's
NOTE = "/etc/kvm-vm-note"
# cloud-init's final_message on ttyS0 (the kernel's console): "Cloud-init v. 22.4.2 finished at ..."
MARKER = r"Cloud-init v\. \S+ finished at"


def said(result: dict) -> str:
    shown = {k: v for k, v in result.items() if k not in ("diff", "_stderr")}
    return json.dumps(shown, indent=1, default=str)[-8000:] + f"\n--- stderr\n{result.get('_stderr', '')[-3000:]}"


class Lab(realguest.Steps):
    """The NetHost, the VM's names and paths, the steps done and their timings."""

    def __init__(self, nh: nethost.NetHost, guest: dict) -> None:
        super().__init__()
        self.nh, self.guest = nh, guest
        self.name = f"{nh.name}-vm"
        self.network = f"{nh.name}-net"
        self.image = nh.copy_image(guest["disk"], "debian12.qcow2")
        self.kernel = nh.copy_image(guest["kernel"], "vmlinuz")
        self.initrd = nh.copy_image(guest["initrd"], "initrd.img")
        self.disk = nh.images / f"{self.name}-vda.qcow2"
        self.seed = nh.images / f"{self.name}-cidata.iso"  # beside the first disk made
        self.console = nh.images / f"{self.name}-console.log"
        self.image_sha = guestlib.sha256(self.image)
        self.note = f"made by kvm_vm for {self.name}"

    def args(self, **extra) -> dict:
        """kvm_vm's options for the VM; the paths are the NetHost's images, the same inside and out."""
        args = dict(
            uri=self.nh.uri,
            name=self.name,
            os_variant="debian11",
            memory=512,
            disks=[dict(image=str(self.image), size="3G", path=str(self.disk))],
            networks=[dict(network=self.network)],
            cloud_init=dict(
                meta_data={"local-hostname": HOSTNAME},
                user_data={"write_files": [{"path": NOTE, "content": self.note + "\n", "permissions": "0644"}]},
            ),
            boot=dict(kernel=str(self.kernel), initrd=str(self.initrd), cmdline=self.guest["cmdline"]),
            console_log=str(self.console),
            state="running",
            boot_marker=MARKER,
            boot_timeout=BOOT_TIMEOUT,
        )
        args.update(extra)
        return args

    def run(self, args: dict, check: bool, label: str) -> dict:
        t0 = time.monotonic()
        result = run_module("kvm_vm", args, check=check, timeout=BOOT_TIMEOUT + 300)
        self.times[label] = time.monotonic() - t0
        return result

    def ssh(self, address: str, command: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return realguest.ssh(self.nh, self.guest["key"], address, command, timeout=timeout)

    def console_tail(self) -> str:
        try:
            return self.console.read_text(errors="replace")[-3000:]
        except OSError:
            return f"(no {self.console})"


@pytest.fixture(scope="module")
def lab():
    t0 = time.monotonic()
    guest = realguest.build()
    built = time.monotonic() - t0
    nh = nethost.NetHost(guestlib.new_prefix())
    state = None
    try:
        nh.start()
        state = Lab(nh, guest)
        state.times["build" if guest["built"] else "build (cached)"] = built
        network = dict(
            uri=nh.uri,
            name=state.network,
            forward_mode="nat",
            ips=[
                dict(address=f"{SUBNET}.1", prefix=24, dhcp_ranges=[dict(start=f"{SUBNET}.100", end=f"{SUBNET}.250")])
            ],
            state="active",
        )
        r = run_module("kvm_network", network)
        assert not r.get("failed") and r["changed"], said(r)
        yield state
    finally:
        nh.stop()
        total = time.monotonic() - t0
        times = ", ".join(f"{k} {v:.1f} s" for k, v in state.times.items()) if state else ""
        print(f"\nkvm_vm real guest: {times}; whole module {total:.1f} s")


def test_1_four_ways_boot_the_guest(lab):
    """Check predicts, the real run makes and boots it to cloud-init's final message, two reruns change nothing."""
    args = lab.args()
    check1 = lab.run(args, True, "check")
    assert not check1.get("failed") and check1["changed"] is True, said(check1)
    assert not lab.disk.exists() and not lab.seed.exists(), "check mode made a file"

    real1 = lab.run(args, False, "real (make, boot to the marker)")
    assert not real1.get("failed"), said(real1) + f"\n--- console\n{lab.console_tail()}"
    assert real1["changed"] is True, said(real1)
    assert check1["changes"] == real1["changes"], (check1["changes"], real1["changes"])
    assert real1["changes"] == [
        f"protect base {lab.image} (read-only: overlays stand on it)",  # before anything runs on it
        f"create disk vda (overlay of {lab.image}): {lab.disk}",
        f"create cloud-init seed: {lab.seed}",
        "define",
        "start",
    ], real1["changes"]
    assert real1["vm"]["state"] == "running", said(real1)
    assert real1["seed"] == str(lab.seed) and real1["console_log"] == str(lab.console), said(real1)
    assert [(d["target"], d["path"], d["mode"]) for d in real1["disks"]] == [("vda", str(lab.disk), "overlay")]
    # the marker was waited for by the module: it is in the log now
    assert "finished at" in lab.console.read_text(errors="replace"), lab.console_tail()

    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--force-share", "--output=json", str(lab.disk)],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert info["format"] == "qcow2" and info["virtual-size"] == 3 * GIB, info
    assert info.get("full-backing-filename") == str(lab.image), info
    assert lab.image.stat().st_mode & 0o222 == 0, oct(lab.image.stat().st_mode)  # a protected base: a-w

    again = lab.run(args, False, "again")
    assert not again.get("failed") and again["changed"] is False, said(again)
    assert again["changes"] == [] and again["pending_restart"] is False, said(again)
    check2 = lab.run(args, True, "check again")
    assert not check2.get("failed") and check2["changed"] is False, said(check2)
    lab.done.append("made")


def test_2_the_guest_answers_as_its_options_say(lab):
    """Its lease appears, SSH answers with the seed's hostname and file, and its disk is the grown 3 GiB."""
    lab.need("made")
    conn = lab.nh.connect()
    try:
        dom = conn.lookupByName(lab.name)
        t0 = time.monotonic()
        deadline = t0 + BOOT_TIMEOUT
        try:
            address = realguest.lease_address(dom, deadline)
            realguest.wait_for_ssh(lab.nh, lab.guest["key"], address, deadline)
        except TimeoutError as e:
            pytest.fail(f"{lab.name}, within {BOOT_TIMEOUT} s: {e}\n{lab.console_tail()}")
        lab.times["lease and SSH after the marker"] = time.monotonic() - t0
    finally:
        conn.close()
    assert address.startswith(f"{SUBNET}."), address
    lab.facts["address"] = address

    probe = "; ".join(
        [
            "echo hostname=$(hostname)",
            "echo status=$(cloud-init status --wait | sed -n 's/^status: //p')",
            f"echo note=$(cat {NOTE} 2>/dev/null || echo absent)",
            "echo vda=$(lsblk -bdno SIZE /dev/vda)",
            "echo rootfs=$(df -B1 --output=size / | tail -1 | tr -d ' ')",
        ]
    )
    proc = lab.ssh(address, probe, timeout=BOOT_TIMEOUT)
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    facts = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    lab.facts.update(facts)
    assert facts["hostname"] == HOSTNAME, facts
    assert facts["status"] == "done", facts
    assert facts["note"] == lab.note, facts
    assert int(facts["vda"]) == 3 * GIB, facts  # the overlay's size; the fs may or may not have been grown
    lab.done.append("guest")


def _macs_in_guest(lab) -> set[str]:
    proc = lab.ssh(lab.facts["address"], "cat /sys/class/net/*/address")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return {line.strip().lower() for line in proc.stdout.splitlines() if line.strip()}


def _four(lab, args: dict, what: str) -> dict:
    """check, real, again, check again; returns the real run (asserting the house's four-way rules)."""
    check1, real = lab.run(args, True, f"{what} check"), lab.run(args, False, what)
    again, check2 = lab.run(args, False, f"{what} again"), lab.run(args, True, f"{what} check again")
    for r in (check1, real, again, check2):
        assert not r.get("failed"), said(r)
        assert r["pending_restart"] is False, said(r)
    assert check1["changed"] and real["changed"] and check1["changes"] == real["changes"], (check1, real)
    assert not again["changed"] and not check2["changed"], (again, check2)
    return real


def test_2b_a_nic_is_hot_plugged_into_the_running_guest_and_out_again(lab):
    """A second NIC (and autostart) on the running VM: hot-plugged, seen by the guest, unplugged; no restart."""
    lab.need("guest")
    mac = "52:54:00:7e:57:02"
    base = lab.args(autostart=True)
    conn = lab.nh.connect()
    try:
        dom = conn.lookupByName(lab.name)
        dom_id = dom.ID()
        real = _four(lab, dict(base, networks=[*base["networks"], dict(network=lab.network, mac=mac)]), "NIC in")
        assert f"hot-plug interface {mac}" in real["changes"] and "autostart: False -> True" in real["changes"], real
        assert dom.autostart() == 1 and dom.ID() == dom_id
        assert mac in _macs_in_guest(lab), "the guest does not see the hot-plugged NIC"
        real = _four(lab, base, "NIC out")
        assert f"hot-unplug interface {mac}" in real["changes"], real
        assert mac not in _macs_in_guest(lab) and dom.ID() == dom_id
    finally:
        conn.close()


def test_3_absent_removes_the_vm_and_its_files_and_leaves_the_image(lab):
    lab.need("made")
    args = dict(uri=lab.nh.uri, name=lab.name, state="absent")
    check = lab.run(args, True, "absent check")
    assert not check.get("failed") and check["changed"] is True, said(check)
    assert lab.disk.exists() and lab.seed.exists(), "check mode removed a file"
    real = lab.run(args, False, "absent")
    assert not real.get("failed") and real["changed"] is True, said(real)
    lab.facts["absent changes"] = real["changes"]
    lab.facts["absent warnings"] = real.get("warnings", [])
    assert sorted(real["removed_files"]) == sorted([str(lab.disk), str(lab.seed)]), said(real)
    assert check["removed_files"] == real["removed_files"], (check["removed_files"], real["removed_files"])
    again = lab.run(args, False, "absent again")
    assert not again.get("failed") and again["changed"] is False, said(again)

    conn = lab.nh.connect()
    try:
        assert lab.name not in [d.name() for d in conn.listAllDomains()]
    finally:
        conn.close()
    assert not lab.disk.exists() and not lab.seed.exists()
    left = sorted(p.name for p in lab.nh.images.iterdir() if not p.name.endswith(".log"))
    assert left == ["debian12.qcow2", "initrd.img", "vmlinuz"], left
    assert guestlib.sha256(lab.image) == lab.image_sha, "the image changed under the VM"
    lab.facts["image mode after absent"] = oct(lab.image.stat().st_mode & 0o777)
    print(f"\nkvm_vm real guest facts: {lab.facts}")
