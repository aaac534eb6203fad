#!/usr/bin/env python3
"""How the cost of an external snapshot's create and delete grows with the disk's size, in one run.

For disks holding 64, 1024 and 4096 MiB of real data (qcow2, written with qemu-io), it times
with the SnapshotManager that kvm_snapshot uses (in-process, over one connection):

* offline: a shut-off domain on the disk; ``kind=external`` create, then 32 MiB written into
  the new layer (not timed), then ``state=absent`` (qemu-img commit of the layer into the
  disk, the layer deleted);
* live: the test guest (direct kernel boot) running with the disk as vda; create (guest
  paused for the switch), then delete (block commit of the active layer and pivot);
* contrast: a full copy of the disk (``qemu-img convert``, what the course's ``cp`` costs),
  the one operation here that has to grow with the disk.

Each create/delete is repeated (``--repeat``): the table shows the fastest round (the one
least disturbed by other work on a shared machine) and the ratio to the smallest disk,
the per-size lines also the median (target: create and delete stay near 1x while the copy
grows with the size). Everything it creates (domains ``vb-<hex>-*``, one directory under
/var/lib/libvirt/images) is removed at the end, also on failure. Not part of the tests.

    .venv/bin/python -m bench.snapshot_size [--sizes 64,1024,4096] [--repeat 5] [--no-live]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import libvirt

from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._snapshot.manager import SnapshotManager
from bench.fleet_clone import runner
from tests import guestlib

ROOT = Path(__file__).resolve().parent.parent

IMAGES = Path("/var/lib/libvirt/images")
LAYER_MIB = 32


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def make_disk(path: Path, data_mib: int) -> None:
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{max(2 * data_mib, 1024)}M")
    for start in range(0, data_mib, 256):  # qemu-io takes at most 2 GiB per request
        length = min(256, data_mib - start)
        sh("qemu-io", "-f", "qcow2", "-c", f"write -P 0xab {start}M {length}M", str(path))
    path.chmod(0o644)


def snapshot(connection: Connection, domain: str, name: str, state: str) -> float:
    params = dict(domain=domain, name=name, state=state, kind="external", quiesce="pause")
    t0 = time.perf_counter()
    result = SnapshotManager(params, connection, runner=runner).run()
    elapsed = time.perf_counter() - t0
    if not result["changed"]:
        raise RuntimeError(f"{state} of {name} on {domain} changed nothing: {result}")
    return elapsed


def cycle(connection: Connection, domain: str, repeat: int, write_layer: bool) -> tuple[list, list]:
    """Seconds of each create and each delete over ``repeat`` rounds."""
    creates, deletes = [], []
    for i in range(repeat):
        creates.append(snapshot(connection, domain, f"b{i}", "present"))
        if write_layer:
            dom = connection.conn.lookupByName(domain)
            layer = libvirt_disk(dom)
            sh("qemu-io", "-f", "qcow2", "-c", f"write -P 0xcd 0 {LAYER_MIB}M", layer)
        deletes.append(snapshot(connection, domain, f"b{i}", "absent"))
    return creates, deletes


def libvirt_disk(dom) -> str:
    from lxml import etree

    root = etree.fromstring(dom.XMLDesc(0).encode())
    return root.find("devices/disk/source").get("file")


def full_copy(disk: Path, dest: Path) -> float:
    t0 = time.perf_counter()
    sh("qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2", str(disk), str(dest))
    elapsed = time.perf_counter() - t0
    dest.unlink()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,1024,4096", help="MiB of real data per disk (comma separated)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--uri", default="qemu:///system")
    ap.add_argument("--no-live", action="store_true", help="skip the running-guest measurements")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    prefix = f"vb-{secrets.token_hex(4)}"
    workdir = IMAGES / f"virtops-bench-{prefix}"
    workdir.mkdir(mode=0o755)
    conn = libvirt.open(args.uri)
    connection = Connection(args.uri)
    rows = []
    try:
        for size in sizes:
            disk = workdir / f"data-{size}.qcow2"
            make_disk(disk, size)
            row = dict(size=size, copy=[full_copy(disk, workdir / "copy.qcow2")])
            name = f"{prefix}-off{size}"
            conn.defineXML(guestlib.domain_xml(name, disk, workdir / f"{name}.log", kind="kernel", memory_mib=128))
            row["off_create"], row["off_delete"] = cycle(connection, name, args.repeat, write_layer=True)
            if not args.no_live:
                dom = conn.lookupByName(name)
                dom.create()
                guestlib.wait_for_marker(workdir / f"{name}.log", timeout=180)
                row["live_create"], row["live_delete"] = cycle(connection, name, args.repeat, write_layer=False)
                dom.destroy()
            rows.append(row)
            times = ", ".join(f"{k} {min(v):.3f}/{statistics.median(v):.3f} s" for k, v in row.items() if k != "size")
            print(f"{size} MiB (fastest/median): {times}", flush=True)
    finally:
        connection.close()
        guestlib.cleanup_domains(conn, prefix)
        conn.close()
        shutil.rmtree(workdir, ignore_errors=True)
    keys = [k for k in ("off_create", "off_delete", "live_create", "live_delete", "copy") if k in rows[0]]
    first = rows[0]
    print()
    print("| data in the disk | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{min(row[k]):.3f} s ({min(row[k]) / min(first[k]):.2f}x)" for k in keys]
        print(f"| {row['size']} MiB | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
