#!/usr/bin/env python3
"""First boot to SSH of clones of the sealed real Debian 12 guest, against the template's own boot.

In a NetHost (tests/nethost.py: a libvirtd of its own in private network, mount and UTS namespaces;
every play and SSH connection runs inside its network namespace, so no packet leaves it), with the
cached guest of scripts/build-debian-guest.py (tests/realguest.py):

* baseline: the template, started by a ``kvm_domain state=running`` play, until its sshd answers
  (DHCP lease, then ``systemctl is-active ssh.service`` over SSH); then shut down and sealed by the
  page's seal play (docs/distribution-image-to-class.md);
* per round: ``kvm_clone`` makes N clones (default 3; the first two with a cloud-init seed, the last
  without, as the page's class), untimed; then one ``kvm_domain state=running`` play starts them
  all, and each clone is timed from the play's start until its sshd answers. The clones are removed
  between rounds.

Printed: each clone's seconds, each round's median, the median over all clones, and its ratio to the
template's boot. Both include the kvm_domain play's Ansible start-up (~2 s). The clones boot together
on this machine's cores, the template alone.

    .venv/bin/python -m bench.first_boot_ssh [--clones 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests import guestlib, harness, nethost, realguest

BIN = Path(sys.executable).parent
SUBNET = "192.168.153"  # exists only inside the NetHost's network namespace
BOOT_TIMEOUT = 600

START = """
- name: Start the domains
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Start them in one task
      virtops.kvm.kvm_domain:
        uri: "{{ libvirt_uri }}"
        domains: "{{ domains }}"
        state: running
"""

CLONE = """
- name: Clone the sealed template (not started)
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The clones
      virtops.kvm.kvm_clone:
        uri: "{{ libvirt_uri }}"
        template: "{{ template }}"
        network: "{{ class_network }}"
        clones: "{{ class_clones }}"
        state: present
"""

REMOVE = """
- name: Remove the clones
  hosts: localhost
  gather_facts: false
  tasks:
    - name: The clones, their disks, seeds and DHCP reservations
      virtops.kvm.kvm_clone:
        uri: "{{ libvirt_uri }}"
        clones: "{{ class_clones | map(attribute='name') }}"
        state: absent
"""


def play(nh: nethost.NetHost, tmp: Path, text: str, values: dict) -> None:
    """``ansible-playbook`` of this venv inside the NetHost's network namespace; raises on failure."""
    book, varsfile = tmp / "play.yml", tmp / "vars.json"
    book.write_text(text)
    varsfile.write_text(json.dumps(values))
    env = harness.playbook_env(ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"))
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(book), "-e", f"@{varsfile}"]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}"]
    proc = nh.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"play failed (rc={proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}")


def boot_to_ssh(nh: nethost.NetHost, tmp: Path, key: str, names: list[str], uri: str) -> dict[str, float]:
    """Start ``names`` in one kvm_domain play; seconds from the play's start until each one's sshd answers."""
    conn = nh.connect()
    seconds: dict[str, float] = {}
    errors: dict[str, str] = {}
    t0 = time.monotonic()

    def watch(name: str) -> None:
        deadline = t0 + BOOT_TIMEOUT
        try:
            while True:  # the play defines nothing: the domain exists, but is not yet running
                dom = conn.lookupByName(name)
                if dom.isActive() or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
            address = realguest.lease_address(dom, deadline)
            realguest.wait_for_ssh(nh, key, address, deadline)
            seconds[name] = time.monotonic() - t0
        except (TimeoutError, OSError) as e:
            errors[name] = str(e)

    try:
        threads = [threading.Thread(target=watch, args=(n,)) for n in names]
        for t in threads:
            t.start()
        play(nh, tmp, START, {"libvirt_uri": uri, "domains": [{"name": n} for n in names]})
        for t in threads:
            t.join()
    finally:
        conn.close()
    if errors:
        raise RuntimeError(f"no SSH: {errors}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clones", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    opts = ap.parse_args()
    import libvirt

    guest = realguest.build()
    key = guest["key"]
    nh = nethost.NetHost(guestlib.new_prefix())
    with tempfile.TemporaryDirectory(prefix="virtops-bench-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            nh.start()
            tpl, network = f"{nh.name}-tpl", f"{nh.name}-lab"
            names = [f"{nh.name}-c{i + 1}" for i in range(opts.clones)]
            key_pub = Path(key + ".pub").read_text().strip()
            clones = [
                {"name": n, "cloud_init": {"user_data": {"ssh_authorized_keys": [key_pub]}}} for n in names[:-1]
            ] + [{"name": names[-1]}]  # the last without a seed
            values = {
                "libvirt_uri": nh.uri, "template": tpl, "class_network": network, "class_subnet": SUBNET,
                "class_clones": clones,
            }  # fmt: skip
            blocks = realguest.class_blocks()
            play(nh, tmp, blocks["network"], values)
            disk = nh.copy_image(guest["disk"], "tpl.qcow2")
            kernel, initrd = nh.copy_image(guest["kernel"], "vmlinuz"), nh.copy_image(guest["initrd"], "initrd.img")
            serial = nh.images / f"{tpl}.serial.log"
            conn = nh.connect()
            try:
                dom = conn.defineXML(realguest.domain_xml(tpl, disk, kernel, initrd, serial, network=network))
                print(
                    f"{os.cpu_count()} CPUs; NetHost {nh.name}; {opts.clones} clones x {opts.rounds} rounds", flush=True
                )
                base = boot_to_ssh(nh, tmp, key, [tpl], nh.uri)[tpl]
                print(f"template: start to SSH {base:.1f} s", flush=True)
                dom.shutdown()
                guestlib.wait_for_state(dom, (libvirt.VIR_DOMAIN_SHUTOFF,), timeout=180)
            finally:
                conn.close()
            play(nh, tmp, blocks["seal"], values)
            every: list[float] = []
            for rnd in range(opts.rounds):
                play(nh, tmp, CLONE, values)
                got = boot_to_ssh(nh, tmp, key, names, nh.uri)
                every += got.values()
                each = ", ".join(f"{n.rsplit('-', 1)[-1]} {s:.1f} s" for n, s in sorted(got.items()))
                print(f"round {rnd + 1}: {each}; median {statistics.median(got.values()):.1f} s", flush=True)
                play(nh, tmp, REMOVE, values)
        finally:
            nh.stop()
    med = statistics.median(every)
    print()
    print("| boot to SSH | seconds | ratio to the template |")
    print("|---|---|---|")
    print(f"| template, alone (baseline) | {base:.1f} | 1.00x |")
    what = f"clone of the sealed template, {opts.clones} at once (median of {len(every)})"
    print(f"| {what} | {med:.1f} | {med / base:.2f}x |")
    print(f"clones: {', '.join(f'{s:.1f}' for s in every)} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
