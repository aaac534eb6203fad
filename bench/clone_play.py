#!/usr/bin/env python3
"""P1: kvm_clone through ansible-playbook against the raw floor, in paired runs, median of the ratios.

For each N (default 50 and 200) clones of one template on a 1 GiB qcow2 base (sparse, 32
MiB of real data), each pair times, in turn:

* floor: fleet_clone.py's, a plain Python loop of ``qemu-img create -f qcow2 -b BASE -F qcow2``
  plus ``defineXML`` per clone over one connection (libvirt picks UUID and MAC);
* idle: ``ansible-playbook`` of a one-task play of a trivial module (``ansible.builtin.ping``);
* module: ``ansible-playbook`` of a one-task play of ``virtops.kvm.kvm_clone`` making the N clones.

The pair's ratio is (module - idle) / floor: the module's work against the floor, without
Ansible's own start-up. This machine is shared and noisy (single runs ranged from 0.9x to
2.1x), so the script prints every pair and the median. Targets: <= 1.2x for 50 clones,
<= 1.0x for 200. Everything it creates (domains ``vb-<hex>-*``, one directory under
/var/lib/libvirt/images) is removed at the end, also on failure.

    .venv/bin/python -m bench.clone_play [--sizes 50,200] [--pairs 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench.fleet_clone import domain_xml, floor
from bench.playlib import fmt, idle_play, median, play, remove_clones, workspace

CLONE = """
- name: One kvm_clone task
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Clone the fleet
      virtops.kvm.kvm_clone:
        template: "{{ tpl }}"
        clones: "{{ names }}"
        dest_dir: "{{ dest }}"
        domain_type: qemu
        identity: {operations: []}  # the base has no filesystem; bench/clone_identity.py times the reset
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="50,200")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--uri", default=os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
    opts = ap.parse_args()
    table = []
    with workspace(opts.uri) as (prefix, workdir, conn):
        tpl = f"{prefix}-tpl"
        base = workdir / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1G"], check=True)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 32M", str(base)], check=True, capture_output=True
        )
        conn.defineXML(domain_xml(tpl, base))
        print(f"{os.cpu_count()} CPUs; uri {opts.uri}; {opts.pairs} pairs per size", flush=True)
        for n in (int(s) for s in opts.sizes.split(",")):
            names = [f"{prefix}-n{n}-{i:03d}" for i in range(n)]
            ratios, floors, modules = [], [], []
            for pair in range(opts.pairs):
                remove_clones(conn, prefix, workdir, {tpl})
                os.chmod(base, 0o644)  # kvm_clone protects the base; the floor does not care
                t0 = time.perf_counter()
                floor(conn, base, workdir, names)
                floor_s = time.perf_counter() - t0
                remove_clones(conn, prefix, workdir, {tpl})
                idle = idle_play()
                run = play(CLONE, dict(tpl=tpl, names=names, dest=str(workdir)))
                defined = sum(1 for d in conn.listAllDomains() if d.name().startswith(f"{prefix}-n{n}-"))
                if defined != n or run["changed"] != 1:
                    raise RuntimeError(f"kvm_clone play: {defined} of {n} clones defined, changed={run['changed']}")
                work = run["seconds"] - idle
                floors.append(floor_s)
                modules.append(work)
                ratios.append(work / floor_s)
                print(
                    f"N={n} pair {pair + 1}: floor {floor_s:.2f}s, idle play {idle:.2f}s, kvm_clone play "
                    f"{run['seconds']:.2f}s -> {work:.2f}s beyond idle, {ratios[-1]:.2f}x floor",
                    flush=True,
                )
            table.append((n, median(floors), median(modules), median(ratios), ratios))
    print()
    print(
        "| N | floor (s, median) | kvm_clone play beyond idle (s, median) | ratio (median of pairs) | pairs | target |"
    )
    print("|---|---|---|---|---|---|")
    for n, f, m, r, rs in table:
        target = "<= 1.2x" if n <= 50 else "<= 1.0x"
        print(f"| {n} | {f:.2f} | {m:.2f} | {r:.2f}x | {fmt(rs)} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
