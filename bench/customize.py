#!/usr/bin/env python3
"""kvm_customize over N shut-off clones: ONE task (one appliance launch) against N tasks (one launch each).

What an operator runs, through ``ansible-playbook`` on localhost (start-up included): N overlay clones of
a copy of the real Debian 12 test guest's disk (tests/realguest.py: its own passwd, shadow and /root)
get a new /etc/motd and an SSH key for root,

* ``one``: one kvm_customize task with ``domains: [all N]``;
* ``each``: a loop of N kvm_customize tasks, ``domain: <one>`` each (what a per-host task would cost);
* ``rerun``: the ``one`` play again with the same edits (compare only: changed=0, nothing written);
* ``idle``: the same ansible-playbook with one trivial task (the baseline of every ratio).

Each pair runs ``one`` and ``each`` in turn with new content (so both write), after an idle play; the
medians of the paired ratios are printed. Everything lives under one directory of /var/lib/libvirt/images
and is removed at the end, also on failure. Not part of the tests; one appliance launch is ~20-40 s here.

    .venv/bin/python -m bench.customize [--clones 5] [--pairs 3]
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import sys

from bench.playlib import fmt, idle_play, median, play, workspace
from tests import guestlib, realguest

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchKeyOfTheOperator000000000000000000000 bench@virtops"


def book(names: list[str], token: str, each: bool) -> str:
    """The play: one task for all the clones, or a loop of one task per clone."""
    target = "domain: '{{ item }}'" if each else f"domains: {names}"
    loop = f"\n      loop: {names}" if each else ""
    return f"""
- name: kvm_customize bench
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Edit the clones offline
      virtops.kvm.kvm_customize:
        {target}
        mounts: {{"/dev/sda": "/"}}
        files:
          - path: /etc/motd
            content: "bench {token}\\n"
        authorized_keys:
          - user: root
            keys: ["{KEY}"]{loop}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clones", type=int, default=5)
    ap.add_argument("--pairs", type=int, default=3)
    opts = ap.parse_args()
    with workspace("qemu:///system") as (prefix, workdir, conn):
        guest = realguest.build()
        base = workdir / "base.qcow2"
        shutil.copyfile(guest["disk"], base)
        names = []
        for i in range(opts.clones):
            name = f"{prefix}-c{i}"
            disk = guestlib.make_overlay(base, workdir / f"{name}.qcow2")
            serial = workdir / f"{name}.log"
            conn.defineXML(realguest.domain_xml(name, disk, guest["kernel"], guest["initrd"], serial))
            names.append(name)
        before = guestlib.sha256(base)
        print(f"{opts.clones} clones of the test guest, {opts.pairs} pairs", flush=True)
        rows: dict[str, list[float]] = {"one": [], "each": [], "rerun": []}
        ratios: dict[str, list[float]] = {"each/one": [], "rerun/one": []}
        for pair in range(opts.pairs):
            idle = idle_play()
            one = play(book(names, secrets.token_hex(4), each=False))
            each = play(book(names, secrets.token_hex(4), each=True))
            rerun = play(book(names, "same", each=False))
            rerun = play(book(names, "same", each=False))  # the first wrote "same"; this one only compares
            if one["changed"] != 1 or each["changed"] != 1 or rerun["changed"] != 0:
                raise RuntimeError(f"unexpected changed counts: one {one['changed']}, each {each['changed']}, "
                                   f"rerun {rerun['changed']}")  # fmt: skip
            for key, res in (("one", one), ("each", each), ("rerun", rerun)):
                rows[key].append(res["seconds"] - idle)
            ratios["each/one"].append((each["seconds"] - idle) / (one["seconds"] - idle))
            ratios["rerun/one"].append((rerun["seconds"] - idle) / (one["seconds"] - idle))
            print(
                f"  pair {pair + 1}: idle {idle:.1f} s; beyond idle: one task {rows['one'][-1]:.1f} s, "
                f"{opts.clones} tasks {rows['each'][-1]:.1f} s, rerun {rows['rerun'][-1]:.1f} s",
                flush=True,
            )
        if guestlib.sha256(base) != before:
            raise RuntimeError("the clones' base was written")
    print("\n| what | seconds beyond an idle play (median) | paired ratio to one task (median) |")
    print("|---|---|---|")
    print(f"| one task, {opts.clones} clones (one launch) | {median(rows['one']):.1f} {fmt(rows['one'])} | 1.00x |")
    print(
        f"| {opts.clones} tasks, one clone each | {median(rows['each']):.1f} {fmt(rows['each'])} | "
        f"{median(ratios['each/one']):.2f}x {fmt(ratios['each/one'])} |"
    )
    print(
        f"| rerun of the one task (changed=0) | {median(rows['rerun']):.1f} {fmt(rows['rerun'])} | "
        f"{median(ratios['rerun/one']):.2f}x {fmt(ratios['rerun/one'])} |"
    )
    print(f"spread of one task: {statistics.pstdev(rows['one']):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
