#!/usr/bin/env python3
"""A fleet over three hypervisors vs the same fleet on one, and template distribution vs scp (issue 14).

On the test ground (tests/ground.py: hv1..hv3, each its own libvirtd and an sshd on
127.0.0.2..4), everything through real ``ansible-playbook`` over SSH, in turn, ``--pairs`` times:

* fleet: the kvm_fleet role in placement mode (spread) creating ``--clones`` overlay clones
  (identity reset off, left defined), over hv1..hv3, and the same play with hv1 only. Each
  is divided by an idle play (``ansible.builtin.ping``) over the same hosts, run just before
  it; printed: each ratio, and the paired ratio "3 hosts / 1 host". The clones are removed
  between runs (not timed).
* distribution: ``virtops.kvm.kvm_image`` of a ``--size-mib`` file to hv1 (ansible-playbook,
  so with Ansible's start-up) against ``scp`` of the same file to the same place with the
  same key and options; also kvm_image beyond the idle play. The copy is removed between runs.

    .venv/bin/python -m bench.fleet_hosts [--clones 30] [--pairs 3] [--size-mib 512]

It starts its own ground (refused if one is running) and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from statistics import median

from bench.playlib import ground_play, write_play
from tests import ground as groundlib
from tests import guestlib

IMAGES = "/var/lib/libvirt/images"


def ansible(inventory: Path, book: Path, limit: str | None = None) -> float:
    return ground_play(inventory, book, limit)["seconds"]


def fleet_vars(prefix: str, count: int, state: str) -> dict:
    clones = [{"name": f"{prefix}-c{i:03d}"} for i in range(count)]
    return guestlib.fleet_vars(prefix, clones, IMAGES, kvm_fleet_state=state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--clones", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=512)
    opts = parser.parse_args()
    role = {"name": "The fleet", "ansible.builtin.include_role": {"name": "virtops.kvm.kvm_fleet"}}
    with groundlib.Ground(3) as ground, tempfile.TemporaryDirectory(prefix="vb-hosts-") as tmp:
        tmp = Path(tmp)
        inventory = ground.write_inventory(tmp / "inventory.yml")
        prefix = f"vb-{secrets.token_hex(4)}"
        idle = write_play(tmp / "idle.yml", [{"name": "Trivial", "ansible.builtin.ping": {}}])
        create = write_play(tmp / "create.yml", [role], fleet_vars(prefix, opts.clones, "present"))
        remove = write_play(tmp / "remove.yml", [role], fleet_vars(prefix, opts.clones, "absent"))
        ansible(inventory, create)  # warm-up: the base goes to each hypervisor once, not timed
        ansible(inventory, remove)

        print(f"fleet of {opts.clones} clones (overlays, identity reset off), ansible-playbook over SSH:")
        pairs = []
        for pair in range(opts.pairs):
            row = {}
            for label, limit in (("3 hosts", None), ("1 host", "hv1")):
                row[f"idle {label}"] = ansible(inventory, idle, limit)
                row[label] = ansible(inventory, create, limit)
                ansible(inventory, remove, limit)
            pairs.append(row)
            print(
                f"  pair {pair + 1}: 3 hosts {row['3 hosts']:.1f} s (idle {row['idle 3 hosts']:.1f} s), "
                f"1 host {row['1 host']:.1f} s (idle {row['idle 1 host']:.1f} s)"
            )
        for label in ("3 hosts", "1 host"):
            print(
                f"  {label}: median ratio to the idle play {median(r[label] / r[f'idle {label}'] for r in pairs):.2f}x"
            )
        print(f"  3 hosts / 1 host: median paired ratio {median(r['3 hosts'] / r['1 host'] for r in pairs):.2f}x")
        beyond = [(r["3 hosts"] - r["idle 3 hosts"]) / (r["1 host"] - r["idle 1 host"]) for r in pairs]
        print(f"  3 hosts / 1 host beyond the idle plays: median {median(beyond):.2f}x")

        data = tmp / "image.raw"
        with data.open("wb") as f:
            for _ in range(opts.size_mib):
                f.write(os.urandom(1 << 20))
        dest = f"{IMAGES}/{prefix}-dist.raw"
        copy = write_play(
            tmp / "copy.yml", [{"name": "Copy", "virtops.kvm.kvm_image": {"src": str(data), "dest": dest}}]
        )
        host = ground["hv1"]
        scp = [
            "scp",
            "-q",
            "-i",
            str(ground.key),
            *groundlib.SSH_OPTIONS.split(),
            str(data),
            f"root@{host.address}:{dest}",
        ]
        print(f"distribution of a {opts.size_mib} MiB file to one hypervisor:")
        rows = []
        for pair in range(opts.pairs):
            t0 = time.perf_counter()
            subprocess.run(scp, check=True, timeout=600)
            t_scp = time.perf_counter() - t0
            host.run(["rm", "-f", dest], check=True)
            t_idle = ansible(inventory, idle, "hv1")
            t_image = ansible(inventory, copy, "hv1")
            host.run(["rm", "-f", dest], check=True)
            rows.append((t_scp, t_idle, t_image))
            print(f"  pair {pair + 1}: scp {t_scp:.1f} s, kvm_image play {t_image:.1f} s, idle play {t_idle:.1f} s")
        print(f"  kvm_image play / scp: median {median(i / s for s, _, i in rows):.2f}x")
        print(f"  kvm_image beyond the idle play / scp: median {median((i - d) / s for s, d, i in rows):.2f}x")
        mib_s = median(opts.size_mib / (i - d) for _s, d, i in rows)
        print(f"  kvm_image throughput beyond the idle play: {mib_s:.0f} MiB/s")


if __name__ == "__main__":
    main()
