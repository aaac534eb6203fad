#!/usr/bin/env python3
"""Clones of a sealed template (no appliance) against the raw floor, through ansible-playbook; and 300 unsealed.

Each pair times, in turn, on a template over the bootable test guest, sealed once with
``virtops.kvm.kvm_template`` before the pairs:

* idle: ``ansible-playbook`` of a one-task play of a trivial module (``ansible.builtin.ping``);
* floor: the same N clones made the plainest way in this process: per clone a
  ``qemu-img create -b`` overlay, its cloud-init seed ISO (``xorriso``, the same three
  documents), and ``defineXML`` over one open connection;
* sealed: a one-task play of ``virtops.kvm.kvm_clone`` making N clones (default 50) with a
  cloud-init seed each, identity left to its default (none for a sealed template).

The pair's ratio is (sealed - idle) / floor: what the module costs beyond Ansible's start-up,
against the raw work. Target (issue 25): <= 1.5x for 50. The clones are removed between runs.

``--unsealed N`` (e.g. 300) also times one kvm_clone task making N clones of the same
template unsealed (the per-batch offline reset, in appliances of at most 250 drives): it
must complete; the time is printed. Everything it creates (domains ``vb-<hex>-*``, one
directory under /var/lib/libvirt/images) is removed at the end, also on failure.

    .venv/bin/python -m bench.sealed_clones [--clones 50] [--pairs 3] [--unsealed 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.playlib import fmt, idle_play, median, play, remove_clones, test_guest_template, workspace
from tests import guestlib

HERE = Path(__file__).resolve().parent

SEAL = """
- name: Seal the template
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Seal it once
      virtops.kvm.kvm_template:
        name: "{{ tpl }}"
"""

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
        dhcp_reservations: false
        cloud_init: "{{ seed }}"
        identity: "{{ identity | default(omit) }}"
"""

SEED = {"user_data": {"preserve_hostname": False}}
ISO = ["xorriso", "-as", "mkisofs"]


def floor(conn, base: Path, workdir: Path, names: list[str], log_dir: Path) -> float:
    """Seconds for the plainest overlay + seed + define of every clone."""
    start = time.monotonic()
    for n in names:
        disk = workdir / f"{n}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(disk)],
            check=True,
            capture_output=True,
        )
        with tempfile.TemporaryDirectory() as docs:
            Path(docs, "meta-data").write_text(json.dumps({"instance-id": n, "local-hostname": n}))
            Path(docs, "user-data").write_text("#cloud-config\n" + json.dumps(SEED["user_data"]))
            iso = workdir / f"{n}-cidata.iso"
            subprocess.run(
                [
                    "xorriso",
                    "-as",
                    "mkisofs",
                    "-output",
                    str(iso),
                    "-volid",
                    "cidata",
                    "-joliet",
                    "-rock",
                    "-quiet",
                    docs,
                ],
                check=True,
                capture_output=True,
            )
        conn.defineXML(guestlib.domain_xml(n, disk, log_dir / f"{n}.log", kind="disk", memory_mib=128))
    return time.monotonic() - start


def clone(tpl: str, names: list[str], workdir: Path, identity: dict | None = None) -> float:
    extra = dict(tpl=tpl, names=names, dest=str(workdir), seed=SEED)
    if identity is not None:
        extra["identity"] = identity
    run = play(CLONE, extra)
    if run["changed"] != 1:
        raise RuntimeError(f"kvm_clone play changed={run['changed']}")
    return run["seconds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clones", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--unsealed", type=int, default=0, help="also time one task making this many unsealed clones")
    ap.add_argument("--uri", default=os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
    opts = ap.parse_args()
    with workspace(opts.uri) as (prefix, workdir, conn):
        tpl, disk = test_guest_template(conn, prefix, workdir)
        names = [f"{prefix}-s{i:03d}" for i in range(opts.clones)]
        print(f"{os.cpu_count()} CPUs; uri {opts.uri}; {opts.pairs} pairs; batch of {opts.clones}", flush=True)
        if opts.unsealed:
            many = [f"{prefix}-u{i:03d}" for i in range(opts.unsealed)]
            t = clone(tpl, many, workdir)
            print(f"{opts.unsealed} unsealed clones (offline reset) in one task: {t:.1f} s, completed", flush=True)
            remove_clones(conn, prefix, workdir, {tpl})
        play(SEAL, dict(tpl=tpl))
        rows = []
        for pair in range(opts.pairs):
            remove_clones(conn, prefix, workdir, {tpl})
            idle = idle_play()
            raw = floor(conn, disk, workdir, names, workdir)
            remove_clones(conn, prefix, workdir, {tpl})
            sealed = clone(tpl, names, workdir) - idle
            rows.append((idle, raw, sealed, sealed / raw))
            print(
                f"pair {pair + 1}: idle {idle:.2f}s, floor {raw:.2f}s, sealed {sealed:.2f}s beyond idle "
                f"-> {sealed / raw:.2f}x",
                flush=True,
            )
        remove_clones(conn, prefix, workdir, {tpl})
    print()
    print(
        "| clones | idle play (s) | floor (s) | kvm_clone, sealed, beyond idle (s) | ratio (median of pairs) | pairs |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {opts.clones} | {median([r[0] for r in rows]):.2f} | {median([r[1] for r in rows]):.2f} | "
        f"{median([r[2] for r in rows]):.2f} | {median([r[3] for r in rows]):.2f}x | {fmt([r[3] for r in rows])} |"
    )
    print("target (issue 25): ratio <= 1.5x for 50 clones of a sealed template with cloud-init seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
