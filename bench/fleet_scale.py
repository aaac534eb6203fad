#!/usr/bin/env python3
"""A fleet over 1, 3 and 10 simulated hypervisors (issue 28), and what one hypervisor of the ground costs.

On a test ground of its own (tests/ground.py, root /var/lib/virtops-ground-scale, sshd port 2223, so
never the tests' grounds), through real ``ansible-playbook`` over SSH (start-up included), the kvm_fleet
role in placement mode (spread) makes overlay clones of a blank qcow2 base (distributed by the role,
kvm_image), no identity reset, nothing sealed, clones left defined. Every play is divided by an idle
play (``ansible.builtin.ping``) over the same hosts run just before it; pairs run in turn and the
medians of the paired ratios are printed. Clones are removed between runs (not timed). Parts:

* ``scale``: 1 host x ``--clones`` against ``--hosts`` hosts x ``--clones`` each: first run and rerun
  (the rerun must report changed=0 in the play recap, or the bench fails), seconds and ratios;
* ``three``: 1 host x ``--small-clones`` against 3 hosts x ``--small-clones`` each (target <= 1.3x);
* ``onehost``: ``--hosts`` x ``--clones`` clones all on one host, first run and rerun;
* ``fault``: ``--hosts`` x ``--clones``, one hypervisor powered off (``Ground.fault(host, "poweroff")``,
  from a thread, once its first clone file appears) while the play runs: the role's report
  (``kvm_fleet_report``) must name it as missing/not converged; then it is healed, a rerun must create
  what is missing, and a second rerun must report changed=0.

``--ground-cost 1,3,10`` instead starts grounds of those sizes in turn and prints what one host costs:
start time, and the resident memory (RSS, PSS) and CPU time of its libvirtd, virtlogd, sshd and init,
idle and with ``--domains`` domains defined on each.

    .venv/bin/python -m bench.fleet_scale [--hosts 10] [--clones 100] [--small-clones 50] [--pairs 3]
        [--parts scale,three,onehost,fault] [--forks N] [--pipelining]
    .venv/bin/python -m bench.fleet_scale --ground-cost 1,3,10 [--domains 100]

Forks are at least the number of hosts (ANSIBLE_FORKS). It stops its ground at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.playlib import fmt, ground_play, median, write_play
from tests import ground as groundlib
from tests import guestlib

IMAGES = "/var/lib/libvirt/images"
GROUND_ROOT = Path("/var/lib/virtops-ground-scale")
GROUND_PORT = 2223
PARTS = ("scale", "three", "onehost", "fault")
ROLE = {"name": "The fleet", "ansible.builtin.include_role": {"name": "virtops.kvm.kvm_fleet"}}
IDLE = [{"name": "Trivial", "ansible.builtin.ping": {}}]
COMMS = ("libvirtd", "virtlogd", "sshd")
TICK = os.sysconf("SC_CLK_TCK")
BARE = (
    "<domain type='qemu'><name>{}</name><memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"
)


# --------------------------------------------------------------------------- what one host costs


def process_cost(pid: int) -> dict | None:
    """RSS and PSS (MiB, /proc/<pid>/smaps_rollup), CPU seconds (user + system) and threads of ``pid``."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    out = {}
    for line in rollup.splitlines():
        key, _, value = line.partition(":")
        if key in ("Rss", "Pss"):
            out[key.lower()] = int(value.split()[0]) / 1024
    out.update(cpu=(int(stat[11]) + int(stat[12])) / TICK, threads=int(stat[17]))
    return out


def host_costs(hosts: list) -> dict[str, list[dict]]:
    """Per kind of process (libvirtd, virtlogd, sshd, init): the cost of each host's process(es)."""
    out: dict[str, list[dict]] = {}
    for host in hosts:
        pids = {comm: host.processes(comm) for comm in COMMS}
        pids["init"] = [host.pid]
        for comm, found in pids.items():
            out.setdefault(comm, []).extend(c for c in map(process_cost, found) if c)
    return out


def print_costs(label: str, costs: dict[str, list[dict]]) -> None:
    print(f"  {label} (median per process; PSS summed over the ground):")
    total_rss = total_pss = 0.0
    for comm, rows in costs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("rss", "pss", "cpu", "threads")}
        pss_sum = sum(r["pss"] for r in rows)
        total_rss += med["rss"]
        total_pss += med["pss"]
        print(
            f"    {comm:9s} x{len(rows):<3d} RSS {med['rss']:5.1f} MiB  PSS {med['pss']:5.1f} MiB  "
            f"CPU {med['cpu']:5.2f} s  threads {med['threads']:3.0f}   PSS sum {pss_sum:6.1f} MiB"
        )
    print(f"    one host: RSS {total_rss:.1f} MiB, PSS {total_pss:.1f} MiB")


def ground_cost(sizes: list[int], root: Path, port: int, domains: int) -> None:
    for n in sizes:
        ground = groundlib.Ground(n, root=root, port=port)
        t0 = time.perf_counter()
        with ground:
            seconds = time.perf_counter() - t0
            print(f"Ground({n}): started in {seconds:.2f} s, {seconds / n:.2f} s a host", flush=True)
            time.sleep(2)
            print_costs("idle", host_costs(ground.hosts))
            if domains:
                for host in ground.hosts:
                    conn = host.connect()
                    try:
                        for i in range(domains):
                            conn.defineXML(BARE.format(f"vb-cost-{i:04d}"))
                    finally:
                        conn.close()
                time.sleep(1)
                print_costs(f"{domains} domains defined on each", host_costs(ground.hosts))


# --------------------------------------------------------------------------- the plays


class Scale:
    """The plays over one ground: idle, the fleet made, made again, removed; each over the first N hosts."""

    def __init__(self, ground: groundlib.Ground, tmp: Path, opts: argparse.Namespace) -> None:
        self.ground = ground
        self.tmp = tmp
        self.inventory = ground.write_inventory(tmp / "inventory.yml")
        self.forks = max(opts.forks, len(ground.hosts))
        self.env = {"ANSIBLE_PIPELINING": "True"} if opts.pipelining else {}
        self.prefix = f"vb-{secrets.token_hex(4)}"
        self.blank = tmp / "blank.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.blank), "64M"], check=True)
        self.idle_book = write_play(tmp / "idle.yml", IDLE)
        self.loaded: tuple[str, dict] | None = None  # the hosts' costs after the first run over all of them

    def names(self, count: int) -> list[str]:
        return [f"{self.prefix}-c{i:04d}" for i in range(count)]

    def book(self, count: int, state: str = "present", report: Path | None = None) -> Path:
        fleet = guestlib.fleet_vars(
            self.prefix, [{"name": n} for n in self.names(count)], IMAGES, kvm_fleet_state=state,
            kvm_fleet_base_images=[{"src": str(self.blank), "dest": f"{IMAGES}/{self.prefix}-base.qcow2"}],
            kvm_fleet_seal_template=False,  # a blank base: nothing to seal (the role seals by default)
        )  # fmt: skip
        tasks = [ROLE]
        if report is not None:  # the role's published report, saved by the controller
            tasks.append(
                {"name": "Save the report", "ansible.builtin.copy": {"content": "{{ kvm_fleet_report | to_json }}",
                 "dest": str(report), "mode": "0644"}, "delegate_to": "localhost", "run_once": True,
                 "when": "kvm_fleet_report is defined", "check_mode": False, "changed_when": False}
            )  # fmt: skip
        return write_play(self.tmp / f"fleet-{state}-{count}.yml", tasks, fleet)

    def limit(self, hosts: int) -> str:
        return ",".join(h.name for h in self.ground.hosts[:hosts])

    def run(self, book: Path, hosts: int, allow_failure: bool = False) -> dict:
        return ground_play(self.inventory, book, self.limit(hosts), self.forks, allow_failure, **self.env)

    def idle(self, hosts: int) -> float:
        return self.run(self.idle_book, hosts)["seconds"]

    def remove(self, hosts: int, count: int) -> None:
        self.run(self.book(count, "absent"), hosts)

    def where(self, hosts: int) -> dict[str, list[str]]:
        """The fleet's domains on each of the first ``hosts`` hypervisors, read from its own libvirtd."""
        out = {}
        for host in self.ground.hosts[:hosts]:
            conn = host.connect()
            try:
                out[host.name] = sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(self.prefix))
            finally:
                conn.close()
        return out

    def check_all(self, hosts: int, count: int, what: str) -> None:
        placed = self.where(hosts)
        found = sorted(n for names in placed.values() for n in names)
        if found != self.names(count):
            per_host = {h: len(v) for h, v in placed.items()}
            raise RuntimeError(f"{what}: {len(found)} of {count} clones defined ({per_host})")

    def measure(self, hosts: int, per_host: int) -> dict:
        """idle, first, idle, rerun (changed=0) over the first ``hosts`` hosts; then the clones removed."""
        count = hosts * per_host
        book = self.book(count)
        row = {"idle first": self.idle(hosts), "first": self.run(book, hosts)["seconds"]}
        self.check_all(hosts, count, f"{hosts} x {per_host}, first run")
        if self.loaded is None and hosts == len(self.ground.hosts):
            self.loaded = (f"after a first run of {hosts} x {per_host}", host_costs(self.ground.hosts))
        row["idle rerun"] = self.idle(hosts)
        again = self.run(book, hosts)
        if again["changed"] != 0:
            raise RuntimeError(
                f"{hosts} x {per_host}: the rerun reported changed={again['changed']} ({again['hosts']}):\n"
                f"{again['stdout'][-4000:]}"
            )
        row["rerun"] = again["seconds"]
        self.remove(hosts, count)
        return row


def show_row(label: str, row: dict) -> str:
    return (
        f"{label}: first {row['first']:.1f} s (idle {row['idle first']:.1f} s, "
        f"{row['first'] / row['idle first']:.2f}x), rerun {row['rerun']:.1f} s (idle {row['idle rerun']:.1f} s, "
        f"{row['rerun'] / row['idle rerun']:.2f}x)"
    )


def compare(scale: Scale, small: tuple[int, int], big: tuple[int, int], pairs: int, title: str, target: str) -> list:
    """Pairs of (small, big) in turn; prints each pair and the medians; returns Markdown rows."""
    labels = {small: f"{small[0]} x {small[1]}", big: f"{big[0]} x {big[1]}"}
    print(f"{title}: {labels[small]} against {labels[big]} (hosts x clones each), {pairs} pairs", flush=True)
    rows = []
    for pair in range(pairs):
        row = {size: scale.measure(*size) for size in (small, big)}
        rows.append(row)
        print(f"  pair {pair + 1}: " + "; ".join(show_row(labels[s], row[s]) for s in (small, big)), flush=True)
    table = []
    for run in ("first", "rerun"):
        secs = {s: [r[s][run] for r in rows] for s in (small, big)}
        ratio = {s: [r[s][run] / r[s][f"idle {run}"] for r in rows] for s in (small, big)}
        beyond = {s: [r[s][run] - r[s][f"idle {run}"] for r in rows] for s in (small, big)}
        paired = [b / a for a, b in zip(ratio[small], ratio[big])]
        print(
            f"  {run}: {labels[small]} {median(secs[small]):.1f} s ({median(ratio[small]):.2f}x idle, "
            f"{median(beyond[small]):.1f} s beyond), {labels[big]} {median(secs[big]):.1f} s "
            f"({median(ratio[big]):.2f}x idle, {median(beyond[big]):.1f} s beyond); "
            f"paired ({labels[big]})/({labels[small]}) of the ratios to idle: "
            f"median {median(paired):.2f}x {fmt(paired)}",
            flush=True,
        )
        table.append(
            f"| {title}, {run} | {median(secs[small]):.1f} s / {median(secs[big]):.1f} s | "
            f"{median(ratio[small]):.2f}x / {median(ratio[big]):.2f}x | {median(paired):.2f}x {fmt(paired)} "
            f"| {target} |"
        )
    return table


def one_host(scale: Scale, count: int, pairs: int) -> list:
    print(f"onehost: {count} clones on one host, {pairs} pairs", flush=True)
    rows = []
    for pair in range(pairs):
        rows.append(scale.measure(1, count))
        print(f"  pair {pair + 1}: " + show_row(f"1 x {count}", rows[-1]), flush=True)
    table = []
    for run in ("first", "rerun"):
        secs = [r[run] for r in rows]
        ratio = [r[run] / r[f"idle {run}"] for r in rows]
        beyond = [r[run] - r[f"idle {run}"] for r in rows]
        print(
            f"  {run}: {median(secs):.1f} s {fmt(secs)}, {median(ratio):.2f}x idle {fmt(ratio)}, "
            f"{median(beyond):.1f} s beyond",
            flush=True,
        )
        table.append(f"| 1 x {count}, {run} | {median(secs):.1f} s | {median(ratio):.2f}x {fmt(ratio)} | | |")
    return table


class PowerOff(threading.Thread):
    """Powers ``host`` off once its first clone file of the fleet appears (the play is creating clones)."""

    def __init__(self, ground: groundlib.Ground, host, prefix: str, deadline: float = 900) -> None:
        super().__init__(daemon=True)
        self.ground, self.host, self.prefix, self.deadline = ground, host, f"{prefix}-c", deadline
        self.done = threading.Event()
        self.after: float | None = None  # seconds from the thread's start to the cut

    def run(self) -> None:
        images = self.host.root / "lib" / "images"
        t0 = time.monotonic()
        while not self.done.is_set() and time.monotonic() - t0 < self.deadline:
            if any(name.startswith(self.prefix) for name in os.listdir(images)):
                self.ground.fault(self.host.name, "poweroff")
                self.after = time.monotonic() - t0
                return
            time.sleep(0.02)


def fault(scale: Scale, hosts: int, per_host: int) -> list:
    count = hosts * per_host
    victim = scale.ground.hosts[hosts // 2]
    report = scale.tmp / "report.json"
    book = scale.book(count, report=report)
    print(f"fault: {hosts} x {per_host}, {victim.name} powered off once it has its first clone file", flush=True)
    cut = PowerOff(scale.ground, victim, scale.prefix)
    cut.start()
    try:
        res = scale.run(book, hosts, allow_failure=True)
    finally:
        cut.done.set()
        cut.join()
    if cut.after is None:
        raise RuntimeError(f"the play ended (rc={res['rc']}) before {victim.name} had a clone file: nothing was cut")
    said = json.loads(report.read_text()) if report.exists() else {}
    named = {**said.get("missing", {}), **said.get("unconverged", {})}.get(victim.name, [])
    lines = [  # what the role's debug printed about it
        ln.strip().strip('",- ')
        for ln in res["stdout"].splitlines()
        if victim.name in ln and any(w in ln for w in ("MISSING", "NOT CONVERGED", "HELD"))
    ]
    print(
        f"  play: {res['seconds']:.1f} s, rc={res['rc']}, cut after {cut.after:.1f} s, recap of {victim.name}: "
        f"{res['hosts'].get(victim.name)}; the report names {len(named)} clone(s) of {victim.name} missing or "
        f"not converged",
        flush=True,
    )
    for line in lines[:4]:
        print(f"    {line[:160]}")
    if res["rc"] == 0 or not named:
        raise RuntimeError(
            f"the report does not name {victim.name}: {json.dumps(said)[:2000]}\n{res['stdout'][-4000:]}"
        )
    scale.ground.heal(victim.name)
    before = len(scale.where(hosts)[victim.name])
    healed = scale.run(book, hosts)
    scale.check_all(hosts, count, "after the heal")
    made = len(scale.where(hosts)[victim.name]) - before
    print(
        f"  healed, rerun: {healed['seconds']:.1f} s, changed on {victim.name}: "
        f"{healed['hosts'][victim.name]['changed']}, {made} clone(s) made there ({before} had survived); "
        f"all {count} defined",
        flush=True,
    )
    if made == 0 and before < per_host:
        raise RuntimeError(f"the rerun after the heal made nothing on {victim.name}")
    again = scale.run(book, hosts)
    print(f"  rerun again: {again['seconds']:.1f} s, changed={again['changed']}", flush=True)
    if again["changed"] != 0:
        raise RuntimeError(f"the second rerun after the heal reported changed={again['changed']}: {again['hosts']}")
    scale.remove(hosts, count)
    return [
        f"| fault at {hosts} x {per_host}: play with {victim.name} powered off | {res['seconds']:.1f} s | | "
        f"{len(named)} named | |",
        f"| healed, rerun | {healed['seconds']:.1f} s | | {made} made | |",
        f"| rerun again (changed=0) | {again['seconds']:.1f} s | | | |",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--clones", type=int, default=100, help="clones per host")
    ap.add_argument("--small-clones", type=int, default=50, help="clones per host of the 'three' part")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    ap.add_argument("--forks", type=int, default=10, help="ANSIBLE_FORKS (raised to the number of hosts)")
    ap.add_argument("--pipelining", action="store_true", help="ANSIBLE_PIPELINING=True for every play")
    ap.add_argument("--ground-cost", help="only measure grounds of these sizes (e.g. 1,3,10) and exit")
    ap.add_argument("--domains", type=int, default=100, help="--ground-cost: domains defined on each host")
    ap.add_argument("--root", type=Path, default=GROUND_ROOT)
    ap.add_argument("--port", type=int, default=GROUND_PORT)
    opts = ap.parse_args()
    if opts.ground_cost:
        ground_cost([int(n) for n in opts.ground_cost.split(",")], opts.root, opts.port, opts.domains)
        return 0
    parts = opts.parts.split(",")
    if set(parts) - set(PARTS):
        ap.error(f"--parts: use some of {', '.join(PARTS)}")
    size = max(opts.hosts, 3 if "three" in parts else 1)
    ground = groundlib.Ground(size, root=opts.root, port=opts.port)
    table = []
    with ground, tempfile.TemporaryDirectory(prefix="vb-scale-") as tmp:
        scale = Scale(ground, Path(tmp), opts)
        print(
            f"ground of {size} hosts ({opts.root}, port {opts.port}), forks {scale.forks}, pipelining "
            f"{'on' if opts.pipelining else 'off'}, {os.cpu_count()} CPUs, prefix {scale.prefix}",
            flush=True,
        )
        warm = scale.book(size)  # warm-up: the base goes to every host once, not timed
        scale.run(warm, size)
        scale.remove(size, size)
        if "scale" in parts:
            table += compare(scale, (1, opts.clones), (opts.hosts, opts.clones), opts.pairs, "scale", "")
        if "three" in parts:
            table += compare(scale, (1, opts.small_clones), (3, opts.small_clones), opts.pairs, "three", "<= 1.3x")
        if "onehost" in parts:
            table += one_host(scale, opts.hosts * opts.clones, opts.pairs)
        if "fault" in parts:
            table += fault(scale, opts.hosts, opts.clones)
        if scale.loaded:
            print_costs(f"what one host of the ground cost {scale.loaded[0]}", scale.loaded[1])
    print()
    print("| what (hosts x clones each) | seconds (small / big) | ratio to idle | paired big/small | target |")
    print("|---|---|---|---|---|")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
