"""Base drift on the real daemon: qemu-io writes into a base under a clone, and every module notices.

The course's rule is "never modify a base once overlays exist"; root ignores the
read-only mode kvm_clone puts on a base, so qemu-io (as an operator might) writes
into it here, and the test checks that the clone is not started, that no new
overlay is added, that kvm_domain_info says what changed, and that
accept_base_change records the base anew and lets the clone run.
"""

from __future__ import annotations

import os
import subprocess

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from tests.harness import run_module


def test_a_base_written_under_its_clone_is_refused_everywhere_until_accepted(conn, tpl, prefix, scratch):
    a, b = f"{prefix}-a", f"{prefix}-b"
    common = dict(template=tpl["name"], domain_type="qemu", identity={"operations": []})
    r = run_module("kvm_clone", dict(common, name=a))
    assert not r.get("failed"), r.get("msg")
    before = dx.provenance(dx.parse(conn.lookupByName(a).XMLDesc(0)))["created_disks"][0]["base_fingerprint"]
    assert before["size"] == os.path.getsize(tpl["disk"])

    # an operator writes into the base (root ignores its read-only mode)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(tpl["disk"])], check=True, capture_output=True
    )
    info = run_module("kvm_domain_info", dict(name=[a]))
    drift = info["domains"][0]["base_drift"]
    assert drift and drift[0]["base"] == str(tpl["disk"]) and "modification time" in drift[0]["changes"], drift

    started = run_module("kvm_domain", dict(name=a, state="running"))
    assert started.get("failed") and "Refusing to start domain" in started["msg"], started
    assert "the base changed after overlays were made on it" in started["msg"] and a in started["msg"]
    assert not conn.lookupByName(a).isActive()

    more = run_module("kvm_clone", dict(common, clones=[a, b]))
    assert more.get("failed") and "Refusing to add overlays" in more["msg"], more
    assert not (scratch / f"{b}.qcow2").exists() and b not in [d.name() for d in conn.listAllDomains()]

    # the operator decides the clone is still good: recorded anew, it starts, nothing reports drift any more
    ok = run_module("kvm_domain", dict(name=a, state="running", accept_base_change=True))
    assert not ok.get("failed"), ok.get("msg")
    assert conn.lookupByName(a).isActive()
    assert run_module("kvm_domain_info", dict(name=[a]))["domains"][0]["base_drift"] == []
    assert run_module("kvm_domain", dict(name=a, state="destroyed"))["changed"] is True
