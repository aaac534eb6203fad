#!/usr/bin/env python3
"""What one libvirt-less libguestfs appliance launch costs with 1 drive and with N drives.

kvm_clone's identity reset adds every new clone's disk to ONE appliance. Issue 11 asks that
20 clones cost within 1.3x of 1. This measures the floor under that: the launch alone (no
call into the guest, no Ansible), 1 qcow2 overlay against N (default 20), in turn, ``--pairs``
times, and prints the median of the paired ratios. Under TCG (no usable /dev/kvm, as on the
project's CI machine) the appliance's kernel probes each added disk in emulation, so the
launch itself grows with the drives.

    .venv/bin/python -m bench.appliance_drives [--drives 20] [--pairs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from statistics import median


def launch(paths: list[str]) -> float:
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    g.set_backend("direct")
    for path in paths:
        g.add_drive_opts(path, format="qcow2", readonly=False)
    t0 = time.monotonic()
    g.launch()
    seconds = time.monotonic() - t0
    g.shutdown()
    g.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--drives", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3)
    opts = parser.parse_args()
    kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
    print(f"/dev/kvm usable: {kvm}; LIBGUESTFS_BACKEND_SETTINGS={os.environ.get('LIBGUESTFS_BACKEND_SETTINGS', '')}")
    with tempfile.TemporaryDirectory(prefix="vb-drives-", dir="/var/tmp") as tmp:
        base = os.path.join(tmp, "base.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True)
        paths = []
        for i in range(opts.drives):
            path = os.path.join(tmp, f"d{i}.qcow2")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", path], check=True)
            paths.append(path)
        ratios = []
        for pair in range(opts.pairs):
            one = launch(paths[:1])
            many = launch(paths)
            ratios.append(many / one)
            print(f"pair {pair + 1}: 1 drive {one:.1f} s, {opts.drives} drives {many:.1f} s, ratio {many / one:.2f}")
    print(f"median ratio {opts.drives} drives / 1 drive: {median(ratios):.2f}x (launch only)")


if __name__ == "__main__":
    main()
