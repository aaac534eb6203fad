#!/usr/bin/env python3
"""The base-drift fingerprint against a full read of the base, on a 10 GiB qcow2 base, in one run.

kvm_clone records a fingerprint of every base it puts overlays on, and kvm_domain
checks it before each start, so it must cost milliseconds whatever the base's size
(issue 10). Each pair times, in turn, ``_drift.fingerprint`` and a sha256 of the whole
file (what a naive check would do); it prints every pair, the medians and their
ratio. The base is a 10 GiB qcow2 with 1 GiB of real data written by qemu-io, under
/var/tmp (removed at the end, also on failure).

    .venv/bin/python -m bench.base_fingerprint [--pairs 5] [--size-gib 10] [--data-gib 1]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ansible_collections.virtops.kvm.plugins.module_utils._drift import fingerprint

ROOT = Path(__file__).resolve().parent.parent


def full_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--size-gib", type=int, default=10)
    ap.add_argument("--data-gib", type=int, default=1)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="virtops-bench-", dir="/var/tmp") as tmp:
        base = Path(tmp) / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), f"{opts.size_gib}G"], check=True)
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {opts.data_gib}G", str(base)],
            check=True,
            capture_output=True,
        )
        print(f"base: {opts.size_gib} GiB virtual, {base.stat().st_size / 2**30:.2f} GiB file; {opts.pairs} pairs")
        prints, fulls = [], []
        for pair in range(opts.pairs):
            t0 = time.perf_counter()
            fingerprint(str(base))
            prints.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            full_hash(base)
            fulls.append(time.perf_counter() - t0)
            print(f"pair {pair + 1}: fingerprint {prints[-1] * 1000:.1f} ms, full sha256 {fulls[-1]:.2f} s", flush=True)
    fp, full = statistics.median(prints), statistics.median(fulls)
    ratios = sorted(p / f for p, f in zip(prints, fulls))
    print(
        f"median: fingerprint {fp * 1000:.1f} ms, full read {full:.2f} s; "
        f"fingerprint / full = {statistics.median(ratios):.4f} (median of the pairs' ratios)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
