#!/usr/bin/env python3
"""How fast kvm_clone makes a fleet, against the floor and the course's method, in one run.

For N = 10, 50, 100 clones of one template on a 1 GiB qcow2 base (sparse, with
32 MiB of real data), it times:

* floor: a plain Python loop of ``qemu-img create -f qcow2 -b BASE -F qcow2`` plus
  ``defineXML`` (libvirt picks UUID and MAC), one connection;
* course: the course's method, a full ``cp`` of the base plus ``defineXML`` per clone;
* kvm_clone (module): the real module, run as Ansible runs it (tests/harness.run_module:
  a fresh Python process with ANSIBLE_MODULE_ARGS), so its start-up is included;
* kvm_clone (in-process): the same CloneManager the module uses, called directly,
  which shows the module's own work without the interpreter start-up.

Prints seconds and the ratio to the floor (target: kvm_clone within 1.5x). Everything it
creates (domains named ``vb-<hex>-*``, files in one directory under
/var/lib/libvirt/images) is removed at the end, also on failure. Not part of the tests.

    .venv/bin/python -m bench.fleet_clone [--sizes 10,50,100] [--uri qemu:///system]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import libvirt

from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from tests.harness import run_module

ROOT = Path(__file__).resolve().parent.parent

IMAGES = Path("/var/lib/libvirt/images")


def domain_xml(name: str, disk: Path) -> str:
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type><boot dev='hd'/></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
<target dev='vda' bus='virtio'/></disk>
<interface type='user'><model type='virtio'/></interface>
<serial type='file'><source path='{disk.parent / (name + ".log")}'/><target port='0'/></serial>
</devices></domain>"""


def runner(argv):
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    return p.returncode, p.stdout, p.stderr


def cleanup(conn, prefix: str, workdir: Path, keep: set[str]) -> None:
    """Undefine every domain of this run but the template; delete every file but the base."""
    for dom in conn.listAllDomains():
        if dom.name().startswith(prefix) and dom.name() not in keep:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    for p in workdir.iterdir():
        if p.name not in ("base.qcow2",):
            p.unlink()


# The base has no filesystem and the floor resets nothing (bench/clone_identity.py times the reset).
NO_RESET = {"operations": []}


def floor(conn, base: Path, workdir: Path, names: list[str]) -> None:
    for n in names:
        disk = workdir / f"{n}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk)],
            check=True,
            capture_output=True,
        )
        conn.defineXML(domain_xml(n, disk))


def course(conn, base: Path, workdir: Path, names: list[str]) -> None:
    for n in names:
        disk = workdir / f"{n}.qcow2"
        subprocess.run(["cp", "--reflink=never", str(base), str(disk)], check=True)  # a real copy
        conn.defineXML(domain_xml(n, disk))


def via_module(tpl: str, workdir: Path, names: list[str], uri: str) -> None:
    r = run_module(
        "kvm_clone",
        dict(template=tpl, clones=names, dest_dir=str(workdir), domain_type="qemu", uri=uri, identity=NO_RESET),
        diff=False,
    )
    if r.get("failed") or not r.get("changed"):
        raise RuntimeError(f"kvm_clone failed: {r.get('msg')}\n{r.get('_stderr', '')[-2000:]}")


def via_manager(uri: str, tpl: str, workdir: Path, names: list[str]) -> None:
    params = dict(template=tpl, clones=names, dest_dir=str(workdir), domain_type="qemu", identity=NO_RESET)
    with Connection(uri) as connection:
        CloneManager(params, connection, runner=runner).run()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--uri", default=os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
    ap.add_argument("--data-mib", type=int, default=32, help="real data written into the 1 GiB base")
    opts = ap.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    prefix = f"vb-{secrets.token_hex(4)}"
    workdir = IMAGES / f"virtops-bench-{prefix}"
    workdir.mkdir(mode=0o755)
    conn = libvirt.open(opts.uri)
    tpl = f"{prefix}-tpl"
    rows = []
    try:
        base = workdir / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {opts.data_mib}M", str(base)],
            check=True,
            capture_output=True,
        )
        conn.defineXML(domain_xml(tpl, base))
        print(
            f"base: {base} virtual 1 GiB, {base.stat().st_blocks * 512 / 2**20:.0f} MiB allocated; "
            f"{os.cpu_count()} CPUs; uri {opts.uri}",
            flush=True,
        )
        for n in sizes:
            names = [f"{prefix}-n{n}-{i:03d}" for i in range(n)]
            row = {"N": n}
            for label, fn in (
                ("floor", lambda names=names: floor(conn, base, workdir, names)),
                ("course", lambda names=names: course(conn, base, workdir, names)),
                ("module", lambda names=names: via_module(tpl, workdir, names, opts.uri)),
                ("inproc", lambda names=names: via_manager(opts.uri, tpl, workdir, names)),
            ):
                os.chmod(base, 0o644)  # kvm_clone protects the base; the baselines do not care
                t0 = time.perf_counter()
                fn()
                row[label] = time.perf_counter() - t0
                defined = sum(1 for d in conn.listAllDomains() if d.name().startswith(f"{prefix}-n{n}-"))
                if defined != n:
                    raise RuntimeError(f"{label}: {defined} of {n} domains defined")
                cleanup(conn, prefix, workdir, {tpl})
            rows.append(row)
            print(
                f"N={n:4d}  floor {row['floor']:7.2f}s  course {row['course']:7.2f}s  "
                f"kvm_clone module {row['module']:7.2f}s ({row['module'] / row['floor']:.2f}x floor)  "
                f"in-process {row['inproc']:7.2f}s ({row['inproc'] / row['floor']:.2f}x floor)  "
                f"course/floor {row['course'] / row['floor']:.2f}x",
                flush=True,
            )
    finally:
        try:
            cleanup(conn, prefix, workdir, set())
        finally:
            conn.close()
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(
        "| N | floor (s) | course cp+define (s) | kvm_clone module (s) | module / floor "
        "| in-process (s) | in-process / floor |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['N']} | {r['floor']:.2f} | {r['course']:.2f} | {r['module']:.2f} | {r['module'] / r['floor']:.2f}x "
            f"| {r['inproc']:.2f} | {r['inproc'] / r['floor']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
