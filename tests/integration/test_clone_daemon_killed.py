"""The libvirt daemon killed with SIGKILL in the middle of a kvm_clone batch; restarted; the rerun converges.

Never the machine's own daemon: a NetHost (tests/nethost.py) has its own libvirtd in
private namespaces. kvm_clone makes and starts a batch there one clone at a time; when the
first clone is defined, the test kills that libvirtd. The task must fail with a typed message
(no traceback), nothing may be left as a domain without its disk, and after the daemon
is started again the rerun must converge to exactly the batch (every clone defined on
its own disk, no other file, no intent left), then report no change.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from tests import guestlib, nethost
from tests.harness import ROOT, module_env, run_module

N = 6


def libvirtd_pid(nh) -> int:
    pid = int((nh.root / "run" / "libvirtd.pid").read_text().strip())
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "libvirtd" and pid in nethost.members(nh.root)
    return pid


def defined(nh) -> dict[str, object]:
    c = nh.connect()
    try:
        return {d.name(): dx.parse(d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) for d in c.listAllDomains()}
    finally:
        c.close()


@pytest.mark.slow
def test_daemon_killed_mid_batch_then_restarted_converges(guest):
    nh = nethost.NetHost(guestlib.new_prefix())
    try:
        nh.start()
        base = nh.copy_image(guest["base"], "tpl.qcow2")
        os.chmod(base, 0o644)
        dest = nh.images / "clones"
        dest.mkdir(mode=0o755)
        tpl = f"{nh.name}-tpl"
        c = nh.connect()
        c.defineXML(guestlib.domain_xml(tpl, base, nh.images / "tpl.log", kind="disk", memory_mib=192))
        c.close()
        names = [f"{nh.name}-c{i}" for i in range(N)]
        # started one at a time (~0.5 s each under TCG): a window wide enough to cut the batch in
        args = dict(template=tpl, clones=names, dest_dir=str(dest), parallel=1, domain_type="qemu", uri=nh.uri)
        args["state"] = "running"
        args["identity"] = {"operations": []}
        daemon = libvirtd_pid(nh)

        payload = dict(args, _ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir=tempfile.gettempdir())
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"ANSIBLE_MODULE_ARGS": payload}, f)
        module = subprocess.Popen(
            [sys.executable, "-m", "ansible_collections.virtops.kvm.plugins.modules.kvm_clone", f.name],
            env=module_env(),
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # the chosen point: the first clone's domain exists (watched through the daemon's config directory)
        config = nh.root / "etc" / "qemu" / f"{names[0]}.xml"  # its /etc/libvirt
        deadline = time.monotonic() + 120
        while not config.exists():
            assert module.poll() is None, "the module ended before the chosen point"
            assert time.monotonic() < deadline, "the first clone was never defined"
            time.sleep(0.002)
        os.kill(daemon, signal.SIGKILL)
        out, err = module.communicate(timeout=180)
        os.unlink(f.name)
        result = json.loads(out[out.index("{") :])
        assert result.get("failed") and "Traceback" not in out + err, (out, err)
        assert result["error"] in ("ConnectionFailed", "KvmError", "DaemonNotRunning"), result

        # the daemon comes back (as an operator or its service manager would start it)
        nh.run(["nsenter", f"--mount=/proc/{nh.pid}/ns/mnt", "--", "libvirtd", "-d"], check=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                nh.connect().close()
                break
            except libvirt.libvirtError:
                assert time.monotonic() < deadline, "the NetHost's libvirtd did not come back"
                time.sleep(0.2)
        # never a domain without its disk, even before the rerun
        for name, root in defined(nh).items():
            for d in dx.writable_file_disks(root):
                assert os.path.exists(d["path"]), f"{name} was left without its disk {d['path']}"

        r = run_module("kvm_clone", args)
        assert not r.get("failed"), r.get("msg")
        now = defined(nh)
        assert sorted(n for n in now if n != tpl) == sorted(names)
        assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.qcow2" for n in names)
        for n in names:
            assert [d["path"] for d in dx.writable_file_disks(now[n])] == [str(dest / f"{n}.qcow2")]
        again = run_module("kvm_clone", args)
        assert not again.get("failed") and again["changed"] is False
    finally:
        nh.stop()
