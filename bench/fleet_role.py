#!/usr/bin/env python3
"""P2: the kvm_fleet role over a fleet of N defined clones, first run and rerun, beyond an idle play.

Through real ``ansible-playbook`` runs (localhost, local connection), in one run of this script:

* idle: a one-task play (``ansible.builtin.ping``), Ansible's own start-up: the baseline;
* first: the role creating N clones (state ``present``: defined, nothing booted) from a
  template on a small qcow2 base;
* rerun: the role again over the same N clones (must report changed=0);
* loop: the per-clone loop the role had before (one ``kvm_domain`` run per clone, state
  ``present``), as a one-task play with ``loop``: what the rerun cost grew with.

Rounds alternate idle, first, idle, rerun (clones removed between rounds, untimed), and
the script prints each round's "beyond idle" figures and their medians. Targets: rerun at
most 5 s beyond idle, first at most 10 s. Everything it creates (domains ``vb-<hex>-*``,
one directory under /var/lib/libvirt/images) is removed at the end, also on failure.

    .venv/bin/python -m bench.fleet_role [--clones 100] [--rounds 3] [--no-loop]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from bench.fleet_clone import domain_xml
from bench.playlib import fmt, idle_play, median, play, remove_clones, workspace

ROLE = """
- name: The fleet
  hosts: localhost
  gather_facts: false
  roles:
    - role: virtops.kvm.kvm_fleet
"""

LOOP = """
- name: The per-clone loop the role had before
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Put each clone in its state, one kvm_domain run per clone
      virtops.kvm.kvm_domain:
        name: "{{ item }}"
        state: present
      loop: "{{ names }}"
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clones", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-loop", action="store_true", help="skip the per-clone loop baseline")
    ap.add_argument("--uri", default=os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
    opts = ap.parse_args()
    first, rerun, loop = [], [], None
    with workspace(opts.uri) as (prefix, workdir, conn):
        tpl = f"{prefix}-tpl"
        names = [f"{prefix}-c{i:03d}" for i in range(opts.clones)]
        fleet = dict(
            kvm_fleet_name=prefix,
            kvm_fleet_template=tpl,
            kvm_fleet_dest_dir=str(workdir),
            kvm_fleet_domain_type="qemu",
            kvm_fleet_identity={"operations": []},  # a blank base; bench/clone_identity.py times the reset
            kvm_fleet_seal_template=False,  # nothing to seal on a blank base (the role seals by default)
            kvm_fleet_clone_state="present",
            kvm_fleet_clones=[{"name": n} for n in names],
            kvm_fleet_uri=opts.uri,
        )
        base = workdir / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
        conn.defineXML(domain_xml(tpl, base))
        print(f"{opts.clones} clones, {opts.rounds} rounds, {os.cpu_count()} CPUs, uri {opts.uri}", flush=True)
        for rnd in range(opts.rounds):
            remove_clones(conn, prefix, workdir, {tpl})
            idle_a = idle_play()
            made = play(ROLE, fleet)
            defined = sum(1 for d in conn.listAllDomains() if d.name() in set(names))
            if defined != opts.clones:
                raise RuntimeError(f"first run: {defined} of {opts.clones} clones defined")
            idle_b = idle_play()
            again = play(ROLE, fleet)
            if again["changed"] != 0:
                raise RuntimeError(f"rerun reported changed={again['changed']}:\n{again['stdout'][-3000:]}")
            first.append(made["seconds"] - idle_a)
            rerun.append(again["seconds"] - idle_b)
            print(
                f"round {rnd + 1}: idle {idle_a:.2f}s / {idle_b:.2f}s; first {made['seconds']:.2f}s "
                f"({first[-1]:+.2f}s beyond idle, changed={made['changed']}); rerun {again['seconds']:.2f}s "
                f"({rerun[-1]:+.2f}s beyond idle, changed={again['changed']})",
                flush=True,
            )
        if not opts.no_loop:
            idle_c = idle_play()
            looped = play(LOOP, dict(names=names))
            loop = looped["seconds"] - idle_c
            print(f"per-clone loop of kvm_domain over {opts.clones} clones: {looped['seconds']:.2f}s "
                  f"({loop:+.2f}s beyond idle)", flush=True)  # fmt: skip
    print()
    print(f"| kvm_fleet role, {opts.clones} clones | seconds beyond an idle play (median of {opts.rounds}) | target |")
    print("|---|---|---|")
    print(f"| first creation | {median(first):.2f} {fmt(first)} | <= 10 |")
    print(f"| rerun (changed=0) | {median(rerun):.2f} {fmt(rerun)} | <= 5 |")
    if loop is not None:
        print(f"| per-clone kvm_domain loop (the old states step alone) | {loop:.2f} | baseline |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
