#!/usr/bin/env python3
"""Bytes and seconds moved per migrated overlay clone vs the same clone as a full copy (issue 15).

On its own two-host test ground (tests/ground.py: hv1 and hv2, each its own libvirtd; root
/var/lib/virtops-ground-bench, sshd port 2223, so it never meets the tests' grounds), with the
test guest's base at the same path on both hosts, in turn, ``--pairs`` times:

* overlay: a clone whose disk is a qcow2 overlay of the base with ``--data-mib`` MiB written
  into it (``qemu-io``; the overlay is that much larger than the base and the data lies past the
  base's end, so the guest still boots), with kvm_clone's provenance (mode overlay), moved hv1 -> hv2 by
  ``kvm_migrate`` (the real module, ``tests/harness.run_module``); only the overlay moves;
* full: the same clone as a full copy (``qemu-img convert`` of that overlay into a standalone
  qcow2, no backing file; provenance mode copy), moved the same way; all of it moves.

Both are shut off (offline moves, volume streams) for ``--pairs`` pairs, then running (live,
QEMU's mirror plus memory; one boot per clone under TCG) for ``--live-pairs`` pairs. Every
run starts from byte-identical files (copies of one prepared overlay and one prepared full
copy, made once, not timed); the clones are removed from both hosts between runs. Printed per
pair: the module's ``transfer`` bytes and seconds, the wall time of the module run, the
destination file's size and allocation, and the ratios overlay/full; then the medians.

    .venv/bin/python -m bench.migrate [--pairs 3] [--live-pairs 3] [--data-mib 64] [--base-data-mib 512]

The test guest's base is tiny (~12 MiB); ``--base-data-mib`` adds that much data to it (past the
guest's partitions, so it still boots) so the base weighs what a real one does.

It refuses to run when something listens on 127.0.0.2:2223 or 127.0.0.3:2223, and stops its
ground (and removes its root) at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import time
from pathlib import Path
from statistics import median

import libvirt
from lxml import etree

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _drift
from tests import ground as groundlib
from tests import guestlib
from tests.harness import run_module

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

IMAGES = "/var/lib/libvirt/images"
GROUND_ROOT = Path("/var/lib/virtops-ground-bench")
GROUND_PORT = 2223
MIGRATE_URI = "tcp://127.0.0.3"  # hv2's address: the hosts' names do not resolve
MIB = 1 << 20


def outside(host, path: str) -> Path:
    """Where a host's /var/lib/libvirt/images/... is seen from this machine."""
    assert path.startswith(IMAGES + "/")
    return host.root / "lib" / "images" / path[len(IMAGES) + 1 :]


def qemu(host, argv: list[str]) -> str:
    proc = host.run(argv, check=True, capture_output=True, text=True, timeout=600)
    return proc.stdout


class Bench:
    def __init__(self, ground, conns, prefix: str, data_mib: int, base_data_mib: int = 0) -> None:
        self.ground, self.conns, self.prefix = ground, conns, prefix
        self.hv1, self.hv2 = ground["hv1"], ground["hv2"]
        self.dir = f"{IMAGES}/{prefix}"
        self.golden = f"{IMAGES}/{prefix}-golden"  # hv1 only: the prepared files every run copies
        self.base = f"{self.dir}/base.qcow2"
        src_base = guestlib.build_guest()["base"]
        for host in ground.hosts:
            d = outside(host, self.dir)
            d.mkdir(mode=0o755)
            d.chmod(0o755)
        shutil.copyfile(src_base, outside(self.hv1, self.base))
        if base_data_mib:  # a base of a realistic size: data past the guest's partitions (it still boots)
            end = json.loads(qemu(self.hv1, ["qemu-img", "info", "--output=json", self.base]))["virtual-size"]
            qemu(self.hv1, ["qemu-img", "resize", "-q", self.base, f"+{base_data_mib}M"])
            qemu(self.hv1, ["qemu-io", "-f", "qcow2", "-c", f"write -P 0xa5 {end} {base_data_mib}M", self.base])
        for host in ground.hosts:  # byte-identical on every host
            if host is not self.hv1:
                shutil.copyfile(outside(self.hv1, self.base), outside(host, self.base))
            outside(host, self.base).chmod(0o644)
        outside(self.hv1, self.golden).mkdir(mode=0o755)
        self.fp = _drift.fingerprint(str(outside(self.hv1, self.base)))
        self.overlay_src = f"{self.golden}/overlay.qcow2"
        self.full_src = f"{self.golden}/full.qcow2"
        # the overlay is data_mib larger than the base and the data goes past the base's end, where the guest's
        # partitions and file system do not reach: it still boots (live runs), and nothing of the base is hidden
        virtual = json.loads(qemu(self.hv1, ["qemu-img", "info", "--output=json", self.base]))["virtual-size"]
        size = str(virtual + data_mib * MIB)
        create = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.base, "-F", "qcow2", self.overlay_src, size]
        qemu(self.hv1, create)
        qemu(self.hv1, ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a {virtual} {data_mib}M", self.overlay_src])
        qemu(self.hv1, ["qemu-img", "convert", "-O", "qcow2", self.overlay_src, self.full_src])
        info = json.loads(qemu(self.hv1, ["qemu-img", "info", "--output=json", self.full_src]))
        assert "backing-filename" not in info, info  # standalone
        self.sizes = {
            k: outside(self.hv1, p).stat().st_size for k, p in (("overlay", self.overlay_src), ("full", self.full_src))
        }

    def make(self, kind: str, name: str) -> dict:
        """Define clone ``name`` on hv1 with a fresh copy of the prepared ``kind`` file; its migrate args."""
        path = f"{self.dir}/{name}.qcow2"
        src = self.overlay_src if kind == "overlay" else self.full_src
        shutil.copyfile(outside(self.hv1, src), outside(self.hv1, path))
        outside(self.hv1, path).chmod(0o644)
        serial = f"{self.dir}/{name}.serial.log"
        root = etree.fromstring(guestlib.domain_xml(name, path, serial, memory_mib=128))
        if kind == "overlay":
            created = [dict(path=path, base=self.base, mode="overlay", format="qcow2", base_fingerprint=self.fp)]
        else:
            created = [dict(path=path, mode="copy", format="qcow2")]
        dx.set_provenance(root, "tpl", kind if kind == "overlay" else "copy", created)
        self.conns["hv1"].defineXML(etree.tostring(root, encoding="unicode"))
        return dict(name=name, path=path, serial=serial)

    def start(self, clone: dict) -> None:
        self.conns["hv1"].lookupByName(clone["name"]).create()
        guestlib.wait_for_marker(outside(self.hv1, clone["serial"]), timeout=300)

    def migrate(self, clone: dict, mode: str) -> dict:
        args = dict(name=clone["name"], uri=self.hv1.uri, dest_uri=self.hv2.uri, migrate_uri=MIGRATE_URI)
        t0 = time.perf_counter()
        res = run_module("kvm_migrate", args)
        wall = time.perf_counter() - t0
        if res.get("failed") or not res.get("changed") or res.get("mode") != mode:
            raise RuntimeError(f"kvm_migrate of {clone['name']} ({mode}) did not do it: {res}")
        dest = outside(self.hv2, clone["path"])
        st = dest.stat()
        return dict(
            bytes=res["transfer"]["bytes"],
            seconds=res["transfer"]["seconds"],
            wall=wall,
            dest_size=st.st_size,
            dest_alloc=st.st_blocks * 512,
            action=res["disks"][0]["action"],
            # live: memory as libvirt's job counted it, disks as they arrived on the destination
            disk_bytes=res["transfer"].get("disk_bytes", 0),
            memory_bytes=res["transfer"].get("memory_bytes", 0),
        )

    def remove(self, clone: dict) -> None:
        for conn in self.conns.values():
            guestlib.cleanup_domains(conn, clone["name"])
        for host in self.ground.hosts:
            for suffix in (".qcow2", ".serial.log"):
                outside(host, f"{self.dir}/{clone['name']}{suffix}").unlink(missing_ok=True)

    def clean(self) -> None:
        for conn in self.conns.values():
            guestlib.cleanup_domains(conn, self.prefix)
        for host in self.ground.hosts:
            for d in (self.dir, self.golden):
                shutil.rmtree(outside(host, d), ignore_errors=True)


def one(bench: Bench, kind: str, name: str, live: bool) -> dict:
    clone = bench.make(kind, name)
    try:
        if live:
            bench.start(clone)
        return bench.migrate(clone, "live" if live else "offline")
    finally:
        bench.remove(clone)


def mib(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


def report(label: str, pairs: list[tuple[dict, dict]], live: bool) -> None:
    print(f"{label}:")
    for i, (o, f) in enumerate(pairs, 1):
        print(f"  pair {i}:")
        for kind, r in (("overlay", o), ("full", f)):
            split = f", of it disk {mib(r['disk_bytes'])} + memory {mib(r['memory_bytes'])}" if live else ""
            print(
                f"    {kind} ({r['action']}): {mib(r['bytes'])} moved{split} in {r['seconds']:.2f} s "
                f"(module run {r['wall']:.2f} s); file on hv2 {mib(r['dest_size'])}, allocated {mib(r['dest_alloc'])}"
            )
        print(
            f"    overlay/full: bytes {o['bytes'] / f['bytes']:.2f}x, "
            f"file on hv2 {o['dest_size'] / f['dest_size']:.2f}x, "
            f"seconds {o['seconds'] / f['seconds']:.2f}x, module run {o['wall'] / f['wall']:.2f}x"
        )
    for key, what, unit in (
        ("bytes", "transfer bytes", "MiB"),
        ("dest_size", "file size on hv2", "MiB"),
        ("dest_alloc", "allocation on hv2", "MiB"),
        ("seconds", "transfer seconds", "s"),
        ("wall", "module run seconds", "s"),
    ):
        scale = MIB if unit == "MiB" else 1
        ratio = median(o[key] / f[key] for o, f in pairs)
        print(
            f"  {what}: median overlay {median(o[key] for o, _ in pairs) / scale:.2f} {unit}, "
            f"full {median(f[key] for _, f in pairs) / scale:.2f} {unit}, median paired ratio overlay/full {ratio:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--pairs", type=int, default=3, help="offline pairs (default 3)")
    parser.add_argument("--live-pairs", type=int, default=3, help="live pairs, one boot per clone (default 3)")
    parser.add_argument("--data-mib", type=int, default=64, help="MiB written into the overlay (default 64)")
    parser.add_argument("--base-data-mib", type=int, default=512, help="MiB of data added to the base (default 512)")
    opts = parser.parse_args()
    prefix = f"vb-{secrets.token_hex(4)}"
    ground = groundlib.Ground(2, root=GROUND_ROOT, port=GROUND_PORT).start()  # refused if one runs there
    try:
        conns = {h.name: libvirt.open(h.uri) for h in ground.hosts}
        bench = None
        try:
            bench = Bench(ground, conns, prefix, opts.data_mib, opts.base_data_mib)
            base_size = outside(bench.hv1, bench.base).stat().st_size
            print(
                f"base {mib(base_size)} (on both hosts); clone files: overlay {mib(bench.sizes['overlay'])} "
                f"({opts.data_mib} MiB written), full copy {mib(bench.sizes['full'])}"
            )
            for label, count, live in (
                ("offline (shut off)", opts.pairs, False),
                ("live (running)", opts.live_pairs, True),
            ):
                if count <= 0:
                    continue
                pairs = []
                for i in range(count):
                    tag = "l" if live else "o"
                    o = one(bench, "overlay", f"{prefix}-{tag}{i}-ov", live)
                    f = one(bench, "full", f"{prefix}-{tag}{i}-full", live)
                    pairs.append((o, f))
                report(label, pairs, live)
        finally:
            if bench is not None:
                bench.clean()
            else:
                for host in ground.hosts:
                    shutil.rmtree(outside(host, f"{IMAGES}/{prefix}"), ignore_errors=True)
                    shutil.rmtree(outside(host, f"{IMAGES}/{prefix}-golden"), ignore_errors=True)
            for conn in conns.values():
                conn.close()
    finally:
        ground.stop()
        shutil.rmtree(GROUND_ROOT, ignore_errors=True)  # its key and state: started here, so ours


if __name__ == "__main__":
    main()
