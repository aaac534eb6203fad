"""kvm_host_info against qemu:///system: this machine's CPUs and memory, and the domains libvirt lists.

The daemon is shared with other tests that define and remove domains meanwhile, so the
domain list is checked against libvirt's lists read just before and just after the run.
"""

from __future__ import annotations

import os

from tests.harness import run_module

MOD = "kvm_host_info"


def mem_total_mib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_capacity_and_domains_of_this_host(conn, prefix):
    name = f"{prefix}-hi"
    # no disk, no balloon: it boots into nothing, quickly, and holds all 256 MiB while it runs
    dom = conn.defineXML(
        f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory>
        <currentMemory unit='MiB'>128</currentMemory><vcpu current='1'>2</vcpu>
        <os><type arch='x86_64'>hvm</type></os><devices><memballoon model='none'/></devices></domain>"""
    )
    for check in (True, False):
        before = {d.name() for d in conn.listAllDomains(0)}
        r = run_module(MOD, {}, check=check)
        after = {d.name() for d in conn.listAllDomains(0)}
        assert not r.get("failed") and r["changed"] is False, r.get("msg")
        host, domains = r["host"], r["domains"]

        assert host["cpus"] == os.cpu_count()
        assert abs(host["memory_total_mib"] - mem_total_mib()) <= 1
        assert 0 < host["memory_free_mib"] <= host["memory_total_mib"]
        assert host["hostname"] == conn.getHostname() and host["uri"] == "qemu:///system"

        assert domains == sorted(domains) and name in domains
        assert before & after <= set(domains) <= before | after
        assert host["domains_total"] == len(domains)
        assert 0 <= host["domains_running"] <= host["domains_total"]
        # ours is inactive: it counts in the defined sums only, with all of its <memory>
        assert host["vcpus_allocated"] <= host["vcpus_defined"] - 1
        assert host["memory_allocated_mib"] <= host["memory_defined_mib"] - 256

    dom.create()
    r = run_module(MOD, {})
    host = r["host"]
    assert not r.get("failed") and name in r["domains"], r.get("msg")
    assert host["domains_running"] >= 1 and host["vcpus_allocated"] >= 1 and host["memory_allocated_mib"] >= 256
