#!/usr/bin/env python3
"""20 VMs from one image: one kvm_vm task against a loop of virt-install --import, paired, median of the ratios.

Each round times, in turn (the side that goes first alternates from round to round):

* virt-install: an operator's shell loop, one ``virt-install --import --noautoconsole`` process per
  VM (Debian's virtinst, the anchor; not a dependency of the collection), each making its qcow2
  overlay on the image itself (``--disk path=...,backing_store=IMAGE``) and starting the VM;
* kvm_vm: ``ansible-playbook`` (start-up included) of one ``virtops.kvm.kvm_vm`` task with ``vms:``
  of the N VMs, ``state: running`` (no ``boot_marker``, so it returns after the starts, as
  virt-install does with ``--noautoconsole``);
* an idle play (``ansible.builtin.ping``) and, unless ``--no-rerun``, the kvm_vm play again over the
  VMs it made, which must report ``changed=0`` (timed against the idle play).

Before each kvm_vm play the script waits, untimed, until no other run holds the host lock kvm_vm
takes (other sessions' kvm_clone/kvm_vm runs on a shared machine), says how long it waited, and
says how long another process held the lock during the timed play (a lock wait, not kvm_vm's cost).

The VMs are identical on both sides: the busybox test guest's image (tests/guestlib.py), copied
into this run's directory so the shared base is never made read-only by kvm_vm's base
protection; 128 MiB, 1 vCPU, direct kernel boot, one overlay disk, no network, no graphics, the
serial console logged to a file, the domain type kvm_vm picks on this host (virt-install gets it
as ``--virt-type``); both define AND start, neither waits for the boot (``--state present``: both
only define, virt-install with ``--noreboot``, kvm_vm with ``state: present``). The pair's
ratio is kvm_vm play / virt-install loop; the script prints every round and the medians. All
VMs are destroyed and undefined and their files deleted between the two sides, after each
round and at the end, also on failure (domains ``vbm-<hex>-*``, directory
``/var/lib/libvirt/images/virtops-bench-vm-<hex>/`` and the storage pool virt-install makes
for it).

virt-install is not installed with the collection: ``apt-get install -y --no-install-recommends
virtinst`` (Debian/Ubuntu) or ``dnf install virt-install``.

    .venv/bin/python -m bench.vm_batch [--vms 20] [--rounds 3] [--state running|present] [--no-rerun]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.playlib import IMAGES, fmt, idle_play, median, play

KVM_VM = """
- name: One kvm_vm task
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Make the VMs
      virtops.kvm.kvm_vm:
        uri: "{{ uri }}"
        os_variant: linux2022
        memory: 128
        vcpus: 1
        boot: "{{ boot }}"
        graphics: none
        networks: []
        state: "{{ state }}"
        vms: "{{ vms }}"
"""

KEEP = ("base.qcow2", "vmlinuz", "initrd.img")


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cleanup(conn, prefix: str, workdir: Path) -> None:
    """Destroy and undefine this run's VMs, drop the pool virt-install made, delete all but the image."""
    import libvirt

    for dom in conn.listAllDomains():
        if dom.name().startswith(f"{prefix}-"):
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    for pool in conn.listAllStoragePools():
        if pool.name() == workdir.name:
            if pool.isActive():
                pool.destroy()
            pool.undefine()
    for p in workdir.iterdir():
        if p.name not in KEEP:
            p.unlink()
    if (workdir / "base.qcow2").exists():
        os.chmod(workdir / "base.qcow2", 0o644)  # kvm_vm made it read-only (base protection); start each side alike


@contextlib.contextmanager
def workspace(uri: str) -> Iterator[tuple[str, Path, object]]:
    """(prefix ``vbm-<hex>``, its directory with a copy of the test guest, a connection); all removed after."""
    import libvirt

    from tests import guestlib

    token = secrets.token_hex(4)
    prefix = f"vbm-{token}"
    workdir = IMAGES / f"virtops-bench-vm-{token}"
    workdir.mkdir(mode=0o755)
    conn = libvirt.open(uri)
    try:
        guest = guestlib.build_guest()
        for key, name in (("base", "base.qcow2"), ("kernel", "vmlinuz"), ("initrd", "initrd.img")):
            shutil.copyfile(guest[key], workdir / name)
            os.chmod(workdir / name, 0o644)
        yield prefix, workdir, conn
    finally:
        try:
            cleanup(conn, prefix, workdir)
        finally:
            conn.close()
            shutil.rmtree(workdir, ignore_errors=True)


def cmdline() -> str:
    from tests import guestlib

    return guestlib.build_guest()["cmdline"]


def virt_install_loop(uri: str, workdir: Path, names: list[str], virt_type: str, start: bool) -> None:
    """What ``for i in ...; do virt-install ...; done`` does: one process per VM, each making its overlay."""
    base = workdir / "base.qcow2"
    size_gib = _virtual_size(base) / 2**30
    for name in names:
        argv = [
            "virt-install",
            f"--connect={uri}",
            f"--name={name}",
            "--import",
            "--noautoconsole",
            f"--virt-type={virt_type}",
            "--osinfo=linux2022",
            "--memory=128",
            "--vcpus=1",
            f"--boot=kernel={workdir / 'vmlinuz'},initrd={workdir / 'initrd.img'},kernel_args={cmdline()}",
            f"--disk=path={workdir / (name + '-vda.qcow2')},format=qcow2,backing_store={base},"
            f"backing_format=qcow2,size={size_gib:g},bus=virtio",
            "--network=none",
            "--graphics=none",
            f"--serial=file,path={workdir / (name + '.log')}",
        ]
        if not start:
            argv.append("--noreboot")  # with --import: define only, the VM stays shut off
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"virt-install {name} failed (rc={proc.returncode}): {proc.stderr.strip()}")


_SIZES: dict[Path, int] = {}


def _virtual_size(image: Path) -> int:
    """The image's virtual size (the overlay is made as large, as kvm_vm's overlay is)."""
    import json

    if image not in _SIZES:
        out = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(image)], capture_output=True, text=True, check=True
        ).stdout
        _SIZES[image] = json.loads(out)["virtual-size"]
    return _SIZES[image]


def kvm_vm_vars(uri: str, workdir: Path, names: list[str], state: str) -> dict:
    base = str(workdir / "base.qcow2")
    return dict(
        uri=uri,
        state=state,
        boot=dict(kernel=str(workdir / "vmlinuz"), initrd=str(workdir / "initrd.img"), cmdline=cmdline()),
        vms=[
            dict(
                name=name,
                disks=[dict(image=base, path=str(workdir / f"{name}-vda.qcow2"))],
                console_log=str(workdir / f"{name}.log"),
            )
            for name in names
        ],
    )


def running(conn, names: list[str]) -> tuple[int, set[str]]:
    """How many of ``names`` are running, and the domain types (kvm/qemu) they were defined with (all defined)."""
    from lxml import etree

    count, types = 0, set()
    for name in names:
        dom = conn.lookupByName(name)
        count += bool(dom.isActive())
        types.add(etree.fromstring(dom.XMLDesc(0)).get("type"))
    return count, types


def domain_type(uri: str) -> str:
    """The domain type kvm_vm picks here, so that both sides run the guests alike (KVM or TCG)."""
    import libvirt

    from ansible_collections.virtops.kvm.plugins.module_utils._host.probe import usable_domain_type

    conn = libvirt.open(uri)
    try:
        return usable_domain_type(conn)[0]
    finally:
        conn.close()


def wait_host_lock() -> float:
    """Wait (untimed) until no other run holds the host lock kvm_vm takes; return the seconds waited.

    Other sessions' kvm_clone/kvm_vm runs on this shared machine hold it, for a kvm_vm run with
    ``boot_marker`` until its guests have booted; waiting here keeps most of that out of the play's time.
    """
    from ansible_collections.virtops.kvm.plugins.module_utils._clone.lock import HostLock

    t0 = time.perf_counter()
    with HostLock(timeout=1800):
        pass
    return time.perf_counter() - t0


class LockWatch:
    """Samples, while a play runs, whether a process outside this bench holds the host lock kvm_vm waits for."""

    def __init__(self, period: float = 0.25):
        from ansible_collections.virtops.kvm.plugins.module_utils._clone.lock import default_lock_path

        self.path, self.period, self.seconds = default_lock_path(), period, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LockWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, what: str) -> None:
        if self.seconds:
            print(f"  (another run held the host lock for ~{self.seconds:.1f}s during the {what})", flush=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            if any(_ours(pid) is False for pid in _holders(self.path)):
                self.seconds += self.period


def _holders(path: str) -> list[int]:
    try:
        ino = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    return [int(f[4]) for f in (line.split() for line in lines) if len(f) > 5 and f[5].endswith(f":{ino}")]


def _ours(pid: int) -> bool | None:
    """Whether ``pid`` descends from this bench process (its plays' module runs); None if it is gone."""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None  # exited between the two reads: not counted either way
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-rerun", action="store_true", help="skip the kvm_vm rerun (changed=0) against the idle play")
    ap.add_argument(
        "--state",
        choices=("running", "present"),
        default="running",
        help="running: both define and start (no wait for the boot); present: both only define "
        "(virt-install --noreboot)",
    )
    ap.add_argument("--uri", default=os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
    ap.add_argument(
        "--virt-type",
        choices=("kvm", "qemu"),
        help="virt-install's --virt-type; default: the domain type kvm_vm picks on this host (kvm_host's verdict)",
    )
    opts = ap.parse_args()
    if opts.virt_type is None:
        opts.virt_type = domain_type(opts.uri)
    if shutil.which("virt-install") is None:
        print(
            "virt-install is not installed; it is this bench's anchor only, not a dependency of the collection.\n"
            "Install it with: apt-get install -y --no-install-recommends virtinst   (Debian/Ubuntu)\n"
            "             or: dnf install virt-install                              (Fedora/RHEL)",
            file=sys.stderr,
        )
        return 2
    version = subprocess.run(["virt-install", "--version"], capture_output=True, text=True, check=False).stdout
    n = opts.vms
    vi_s, vm_s, ratios, idles, reruns = [], [], [], [], []
    with workspace(opts.uri) as (prefix, workdir, conn):
        names = [f"{prefix}-{i:02d}" for i in range(n)]
        print(
            f"{os.cpu_count()} CPUs; uri {opts.uri}; virt-install {version.strip()} (--virt-type {opts.virt_type}); "
            f"{n} VMs, state {opts.state}, {opts.rounds} rounds; load {load()}",
            flush=True,
        )
        for rnd in range(opts.rounds):
            times, types = {}, {}
            sides = ("virt-install", "kvm_vm") if rnd % 2 == 0 else ("kvm_vm", "virt-install")
            for side in sides:
                cleanup(conn, prefix, workdir)
                if side == "virt-install":
                    t0 = time.perf_counter()
                    virt_install_loop(opts.uri, workdir, names, opts.virt_type, opts.state == "running")
                    times[side] = time.perf_counter() - t0
                else:
                    idles.append(idle_play())
                    waited = wait_host_lock()
                    if waited > 0.5:
                        print(f"  (waited {waited:.1f}s for another run's host lock before the play)", flush=True)
                    with LockWatch() as watch:
                        run = play(KVM_VM, kvm_vm_vars(opts.uri, workdir, names, opts.state))
                    watch.report("play")
                    times[side] = run["seconds"]
                    if run["changed"] != 1:
                        raise RuntimeError(f"kvm_vm play: changed={run['changed']}, expected 1")
                up, types[side] = running(conn, names)
                if up != (n if opts.state == "running" else 0):
                    raise RuntimeError(f"{side}: {up} of {n} VMs running with state {opts.state}")
                if side == "kvm_vm" and not opts.no_rerun:
                    waited = wait_host_lock()
                    if waited > 0.5:
                        print(f"  (waited {waited:.1f}s for another run's host lock before the rerun)", flush=True)
                    with LockWatch() as watch:
                        again = play(KVM_VM, kvm_vm_vars(opts.uri, workdir, names, opts.state))
                    watch.report("rerun")
                    if again["changed"] != 0:
                        raise RuntimeError(f"kvm_vm rerun: changed={again['changed']}, expected 0")
                    reruns.append(again["seconds"])
            cleanup(conn, prefix, workdir)
            vi_s.append(times["virt-install"])
            vm_s.append(times["kvm_vm"])
            ratios.append(vm_s[-1] / vi_s[-1])
            rerun = "" if opts.no_rerun else f"; kvm_vm rerun {reruns[-1]:.2f}s (changed=0, beyond idle "
            rerun += "" if opts.no_rerun else f"{reruns[-1] - idles[-1]:.2f}s)"
            kinds = ", ".join(f"{side} {'/'.join(sorted(types[side]))}" for side in sides)
            print(
                f"round {rnd + 1} ({sides[0]} first; domain types: {kinds}): virt-install loop {vi_s[-1]:.2f}s "
                f"({vi_s[-1] / n:.2f}s/VM), kvm_vm play {vm_s[-1]:.2f}s ({vm_s[-1] / n:.2f}s/VM), "
                f"ratio {ratios[-1]:.2f}x; idle play {idles[-1]:.2f}s{rerun}; load {load()}",
                flush=True,
            )
    mi, mv, md = median(idles), median(vm_s), median(vi_s)
    print()
    print(f"| what ({n} VMs, {opts.rounds} rounds) | seconds (median) | per VM | rounds |")
    print("|---|---|---|---|")
    print(f"| virt-install loop | {md:.2f} | {md / n:.3f} | {fmt(vi_s)} |")
    print(f"| kvm_vm play (Ansible start-up included) | {mv:.2f} | {mv / n:.3f} | {fmt(vm_s)} |")
    beyond = [v - i for v, i in zip(vm_s, idles)]
    print(f"| kvm_vm play beyond the idle play | {median(beyond):.2f} | {median(beyond) / n:.3f} | {fmt(beyond)} |")
    print(f"| idle play (ping) | {mi:.2f} | | {fmt(idles)} |")
    if reruns:
        extra = [r - i for r, i in zip(reruns, idles)]
        print(f"| kvm_vm rerun (changed=0) | {median(reruns):.2f} | | {fmt(reruns)} |")
        print(f"| kvm_vm rerun beyond the idle play | {median(extra):.2f} | {median(extra) / n:.3f} | {fmt(extra)} |")
    print()
    print(f"kvm_vm play / virt-install loop: median of the paired ratios {median(ratios):.2f}x {fmt(ratios)}")
    if reruns:
        rr = [r / i for r, i in zip(reruns, idles)]
        print(f"kvm_vm rerun / idle play: median of the paired ratios {median(rr):.2f}x {fmt(rr)}")
    print(f"load at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
