#!/usr/bin/env python3
"""kvm_clone's identity reset: a batch of 20 new clones against a batch of 1, through ansible-playbook.

Each pair times, in turn, on a template over the bootable test guest (an ext4 disk the
appliance mounts):

* idle: ``ansible-playbook`` of a one-task play of a trivial module (``ansible.builtin.ping``);
* one: a one-task play of ``virtops.kvm.kvm_clone`` making 1 clone, identity reset on (default);
* many: the same play making N (default 20) clones in one task, so in one appliance launch.

The pair's ratio is (many - idle) / (one - idle): what N clones cost beyond one, without
Ansible's start-up. Target (issue 11): <= 1.3x for 20. Also printed per pair: the cost of
each further clone in the batch, (many - one) / (N - 1). The clones are removed between
runs. Also printed: the same two plays with ``identity: {operations: []}``, so the reset's
own share is visible, and the batch against one launch per clone (virt-sysprep's way),
estimated as N times the 1-clone task. Everything it creates (domains ``vb-<hex>-*``, one directory under
/var/lib/libvirt/images) is removed at the end, also on failure.

    .venv/bin/python -m bench.clone_identity [--clones 20] [--pairs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.playlib import fmt, idle_play, median, play, remove_clones, test_guest_template, workspace

HERE = Path(__file__).resolve().parent

CLONE = """
- name: One kvm_clone task
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Clone the batch
      virtops.kvm.kvm_clone:
        template: "{{ tpl }}"
        clones: "{{ names }}"
        dest_dir: "{{ dest }}"
        domain_type: qemu
        identity: "{{ identity }}"
"""


def timed(tpl: str, names: list[str], workdir: Path, identity: dict) -> float:
    run = play(CLONE, dict(tpl=tpl, names=names, dest=str(workdir), identity=identity))
    if run["changed"] != 1:
        raise RuntimeError(f"kvm_clone play changed={run['changed']}")
    return run["seconds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clones", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--uri", default=os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
    opts = ap.parse_args()
    with workspace(opts.uri) as (prefix, workdir, conn):
        tpl, _disk = test_guest_template(conn, prefix, workdir)
        one = [f"{prefix}-one"]
        many = [f"{prefix}-m{i:02d}" for i in range(opts.clones)]
        print(f"{os.cpu_count()} CPUs; uri {opts.uri}; {opts.pairs} pairs; batch of {opts.clones}", flush=True)
        rows = {True: [], False: []}
        for pair in range(opts.pairs):
            for reset in (True, False):
                identity = {} if reset else {"operations": []}
                remove_clones(conn, prefix, workdir, {tpl})
                idle = idle_play()
                t1 = timed(tpl, one, workdir, identity) - idle
                remove_clones(conn, prefix, workdir, {tpl})
                tn = timed(tpl, many, workdir, identity) - idle
                per_clone = (tn - t1) / (opts.clones - 1)
                rows[reset].append((t1, tn, tn / t1, per_clone))
                print(
                    f"pair {pair + 1} reset={'on' if reset else 'off'}: idle {idle:.2f}s, 1 clone {t1:.2f}s, "
                    f"{opts.clones} clones {tn:.2f}s beyond idle -> {tn / t1:.2f}x, "
                    f"{per_clone:.2f}s per further clone",
                    flush=True,
                )
        remove_clones(conn, prefix, workdir, {tpl})
    print()
    n = opts.clones
    print(
        f"| identity reset | 1 clone (s, median) | {n} clones (s, median) | ratio (median of pairs) | pairs "
        "| per further clone (s, median) |"
    )
    print("|---|---|---|---|---|---|")
    for reset in (True, False):
        r = rows[reset]
        print(
            f"| {'on (default)' if reset else 'off'} | {median([x[0] for x in r]):.2f} | "
            f"{median([x[1] for x in r]):.2f} | {median([x[2] for x in r]):.2f}x | {fmt([x[2] for x in r])} "
            f"| {median([x[3] for x in r]):.2f} |"
        )
    on = rows[True]
    per_launch = median([x[0] for x in on]) * opts.clones
    print(
        f"one launch per clone instead (virt-sysprep's way, estimated as {opts.clones} x the 1-clone task): "
        f"{per_launch:.1f} s; the one-launch batch takes {median([x[1] for x in on]) / per_launch:.2f}x of that"
    )
    print("target (issue 11): reset on, ratio <= 1.3x; the per-batch reset of issue 25 is measured the same way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
