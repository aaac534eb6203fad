#!/usr/bin/env python3
"""Shutting a fleet down: N running guests in ONE kvm_domain task against one guest's shutdown.

With the tiny test guest (kernel boot, 256 MiB, powers off on the ACPI button), in one run:

* setup (untimed): N + 1 guests defined and started by one kvm_domain batch that waits
  for each one's boot marker;
* one: ``kvm_domain name=... state=shutdown`` on one guest (the real module as Ansible runs
  it, tests/harness.run_module: its start-up included);
* batch: ``kvm_domain domains=[N guests] state=shutdown`` in one task;
* loop (baseline, ``--loop``): the N guests started again and shut down by one module run
  each, in turn: what a per-clone loop costs.

Rounds repeat setup, one and batch; the script prints each ratio batch / one and the
median. Target: batch <= 2x one. Everything it creates (domains ``vb-<hex>-*``, one scratch
directory) is removed at the end, also on failure.

    .venv/bin/python -m bench.fleet_shutdown [--guests 20] [--rounds 2] [--loop]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import libvirt

from bench.playlib import fmt, median
from tests import guestlib
from tests.harness import run_module

ROOT = Path(__file__).resolve().parent.parent


def ok(result: dict, what: str) -> dict:
    if result.get("failed"):
        raise RuntimeError(f"{what}: {result.get('msg')}\n{result.get('_stderr', '')[-2000:]}")
    return result


def timed(args: dict, what: str) -> float:
    t0 = time.perf_counter()
    ok(run_module("kvm_domain", args, diff=False), what)
    return time.perf_counter() - t0


def start_all(names: list[str], timeout: int) -> tuple[float, list[str]]:
    """Start the guests in one task, waiting for their boot: (seconds, the names that booted).

    A guest that does not boot under this much software emulation (it happens: a TCG guest
    stuck in its init) is powered off and left out of the round, and the script says so.
    """
    items = [dict(name=n) for n in names]
    args = dict(domains=items, state="running", boot_marker=guestlib.MARKER, boot_timeout=timeout)
    t0 = time.perf_counter()
    r = run_module("kvm_domain", args, diff=False)
    seconds = time.perf_counter() - t0
    late = r.get("failed_domains") or []
    if r.get("failed") and not late:
        ok(r, "starting the guests")
    if late:
        print(f"  {len(late)} guest(s) did not boot within {timeout} s, left out: {', '.join(late)}", flush=True)
        ok(run_module("kvm_domain", dict(domains=[dict(name=n) for n in late], state="destroyed")), "destroy")
    return seconds, [n for n in names if n not in late]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--guests", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loop", action="store_true", help="also time the per-guest loop (N module runs)")
    ap.add_argument("--boot-timeout", type=int, default=420)
    opts = ap.parse_args()
    guestlib.build_guest()
    conn = libvirt.open(os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system"))
    ratios, ones, batches = [], [], []
    loop = None
    with guestlib.scratch_dir(prefix=f"vb-{os.urandom(4).hex()}", conn=conn) as (prefix, scratch):
        single = f"{prefix}-one"
        fleet = [f"{prefix}-g{i:02d}" for i in range(opts.guests)]
        items = [dict(xml=guestlib.domain_xml(n, None, scratch / f"{n}.log", kind="kernel")) for n in [single, *fleet]]
        ok(run_module("kvm_domain", dict(domains=items), diff=False), "defining the guests")
        print(f"{opts.guests} guests + 1, {opts.rounds} rounds, {os.cpu_count()} CPUs", flush=True)
        for rnd in range(opts.rounds):
            boot, up = start_all([single, *fleet], opts.boot_timeout)
            if single not in up:
                print(f"round {rnd + 1}: the single guest did not boot; round skipped", flush=True)
                continue
            up = [n for n in up if n != single]
            one = timed(dict(name=single, state="shutdown", shutdown_timeout=600), "one shutdown")
            batch = timed(
                dict(domains=[dict(name=n) for n in up], state="shutdown", shutdown_timeout=600), "batch shutdown"
            )
            off = sum(1 for n in up if conn.lookupByName(n).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF)
            if off != len(up):
                raise RuntimeError(f"{off} of {len(up)} guests off after the batch")
            ones.append(one)
            batches.append(batch)
            ratios.append(batch / one)
            print(
                f"round {rnd + 1}: {len(up) + 1} guests booted in {boot:.1f}s (one task); one shutdown "
                f"{one:.2f}s; {len(up)} in one task {batch:.2f}s = {ratios[-1]:.2f}x one",
                flush=True,
            )
        if opts.loop:
            _boot, up = start_all(fleet, opts.boot_timeout)
            t0 = time.perf_counter()
            for n in up:
                timed(dict(name=n, state="shutdown", shutdown_timeout=600), f"shutdown of {n}")
            loop = time.perf_counter() - t0
            print(f"per-guest loop: {len(up)} module runs in turn {loop:.2f}s = {loop / median(ones):.2f}x one")
    conn.close()
    print()
    print(f"| shutdown | seconds (median of {opts.rounds}) | / one | target |")
    print("|---|---|---|---|")
    print(f"| one guest, one task | {median(ones):.2f} {fmt(ones)} | 1.00x | |")
    print(f"| {opts.guests} guests, one task | {median(batches):.2f} {fmt(batches)} | {median(ratios):.2f}x | <= 2x |")
    if loop is not None:
        print(f"| {len(up)} guests, one task each (loop) | {loop:.2f} | {loop / median(ones):.2f}x | baseline |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
