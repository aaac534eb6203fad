"""kvm_clone killed with SIGKILL in the middle of a batch, on the real daemon: the next run converges.

The test starts the module as Ansible would (tests/harness.py's argument file), watches
the files and domains it makes, and kills it with SIGKILL at a point it chooses: when
the third clone's disk appears (creating), and when the first clone's domain is gone
(``absent``). The rerun must finish the job from the intent journal, and the end state
must be exact: every clone defined with its disk, no other file in the directory, no
intent left, the base unchanged; then a rerun reports no change.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._clone.journal import JOURNAL_DIR
from tests import guestlib
from tests.harness import ROOT, module_env, run_module

N = 8


def start_module(name: str, args: dict) -> subprocess.Popen:
    payload = dict(args, _ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir=tempfile.gettempdir())
    fd, argfile = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"ANSIBLE_MODULE_ARGS": payload}, f)
    return subprocess.Popen(
        [sys.executable, "-m", f"ansible_collections.virtops.kvm.plugins.modules.{name}", argfile],
        env=module_env(),
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> float:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; the seconds it ran. Fails if it ended first."""
    start = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the module ended (rc={proc.returncode}) before the chosen point; nothing to interrupt")
        if time.monotonic() - start > timeout:
            proc.kill()
            pytest.fail("the chosen point never came")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return time.monotonic() - start


def intents(names: list[str]) -> list[str]:
    return sorted(n for n in (os.listdir(JOURNAL_DIR) if os.path.isdir(JOURNAL_DIR) else []) if n[:-5] in names)


@pytest.mark.slow
def test_a_batch_killed_mid_create_and_mid_absent_converges_on_rerun(conn, guest, prefix, scratch):
    made = guestlib.define_template(conn, guest["base"], scratch, prefix)
    tpl, base = made["name"], made["disk"]
    dest = scratch / "clones"
    dest.mkdir(mode=0o755)
    names = [f"{prefix}-c{i}" for i in range(N)]
    # full copies one at a time: the batch takes long enough to be cut where the test says
    args = dict(template=tpl, clones=names, mode="copy", dest_dir=str(dest), parallel=1, domain_type="qemu")
    args["identity"] = {"operations": []}
    base_sum = guestlib.sha256(base)

    third = dest / f"{names[2]}.qcow2"
    ran = kill_when(start_module("kvm_clone", args), third.exists)
    left = sorted(p.name for p in dest.iterdir())
    defined = sorted(d.name() for d in conn.listAllDomains() if d.name() in names)
    assert intents(names), f"killed after {ran:.2f} s: no intent left to prove the leftovers ({left}, {defined})"
    assert len(defined) < N

    r = run_module("kvm_clone", args)
    assert not r.get("failed"), r.get("msg")
    assert r["recovered"], r  # the leftovers were recognised by their intents and removed
    assert sorted(d.name() for d in conn.listAllDomains() if d.name() in names) == sorted(names)
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.qcow2" for n in names)  # no orphan
    assert intents(names) == []
    assert guestlib.sha256(base) == base_sum
    again = run_module("kvm_clone", args)
    assert not again.get("failed") and again["changed"] is False and "recovered" not in again

    # absent, killed once the first clone's domain is gone (its disk not deleted yet, or some are)
    gone = dict(clones=names, state="absent")
    kill_when(start_module("kvm_clone", gone), lambda: names[0] not in {d.name() for d in conn.listAllDomains()})
    r = run_module("kvm_clone", gone)
    assert not r.get("failed"), r.get("msg")
    assert not [d.name() for d in conn.listAllDomains() if d.name() in names]
    assert list(dest.iterdir()) == [] and intents(names) == []
    assert base.exists() and guestlib.sha256(base) == base_sum
    assert run_module("kvm_clone", gone)["changed"] is False
