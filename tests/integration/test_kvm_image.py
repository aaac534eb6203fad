"""kvm_image through real ``ansible-playbook`` runs on localhost (``ansible_connection=local``).

The action plugin hashes src on the controller, probes the host, sends the file with the
connection's put_file to a staging name beside dest and installs it with a hard link. Small
random files in a tmp dir; no libvirt. Each play registers its kvm_image results and prints
them with one debug task (``ANSIBLE_CALLBACK_RESULT_FORMAT=json``, one line), which the test
reads back. The controller's sha256 cache goes to a tmp ``XDG_CACHE_HOME``. One test goes over
SSH (scp, sftp, piped put_file) to an sshd of its own on 127.0.0.1, the way a hypervisor is reached.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.harness import playbook_env

BIN = Path(sys.executable).parent
RESULT = re.compile(r"^ok: \[[^\]]+\] => (\{.*\})$", re.M)
XATTR = "user.virtops.sha256"


def run_play(
    tmp: Path, tasks: list[dict], names: list[str], diff: bool = False, ssh: list[str] | None = None
) -> tuple[dict, str]:
    """Run ``tasks`` then one debug of the registered ``names``; returns ({name: result}, output).

    On localhost with the local connection, or with ``ssh`` (inventory arguments) over SSH.
    """
    play = [
        dict(
            name="kvm_image",
            hosts="all",
            gather_facts=False,
            tasks=[*tasks, {"ansible.builtin.debug": {"msg": {n: f"{{{{ {n} }}}}" for n in names}}}],
        )
    ]
    book = tmp / "play.yml"
    book.write_text(yaml.safe_dump(play, sort_keys=False))
    env = playbook_env(
        ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"),
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_CALLBACK_FORMAT_PRETTY="false",
        XDG_CACHE_HOME=str(tmp / "cache"),
    )
    argv = [str(BIN / "ansible-playbook"), *(ssh or ["-i", "localhost,", "-c", "local"])]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}", str(book)]
    argv += ["--diff"] if diff else []
    proc = subprocess.run(argv, env=env, cwd=str(tmp), capture_output=True, text=True, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    found = RESULT.findall(proc.stdout)
    assert proc.returncode == 0 and found, out[-4000:]
    return json.loads(found[-1])["msg"], out


def image(tmp: Path, name: str, size: int = 3 * 1024 * 1024) -> tuple[Path, str]:
    path = tmp / name
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def task(register: str, check: bool = False, **args) -> dict:
    return {
        "name": register,
        "virtops.kvm.kvm_image": args,
        "register": register,
        "ignore_errors": True,
        "check_mode": check,
    }


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_copy_once_then_unchanged_four_ways(tmp_path):
    src, sha = image(tmp_path, "base.img")
    hosts = tmp_path / "host"
    hosts.mkdir()
    dest = hosts / "base.qcow2"
    args = dict(src=str(src), dest=str(dest))
    tasks = [
        task("check1", check=True, **args),
        {"name": "list", "ansible.builtin.find": {"paths": str(hosts), "hidden": True}, "register": "after_check"},
        task("real1", **args),
        task("real2", **args),
        task("check2", check=True, **args),
    ]
    res, out = run_play(tmp_path, tasks, ["check1", "after_check", "real1", "real2", "check2"], diff=True)
    check1, real1, real2, check2 = (res[k] for k in ("check1", "real1", "real2", "check2"))
    for r in (check1, real1, real2, check2):
        assert not r.get("failed"), r.get("msg")
    # check mode on a fresh dest: a copy is predicted and nothing is created
    assert check1["changed"] is True and check1["copied"] is False and "transfer" not in check1
    assert res["after_check"]["matched"] == 0
    assert check1["diff"]["before"] == {"path": str(dest), "state": "absent"}
    assert check1["diff"]["after"]["sha256"] == sha
    # the real run copies: identical bytes, read-only, nothing staged left behind
    assert real1["changed"] is True and real1["copied"] is True
    assert real1["sha256"] == sha and real1["size"] == src.stat().st_size and real1["dest"] == str(dest)
    assert real1["transfer"]["bytes"] == src.stat().st_size and real1["transfer"]["seconds"] >= 0
    assert "mib_per_second" in real1["transfer"]
    assert dest.read_bytes() == src.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o444
    assert listing(hosts) == ["base.qcow2"]
    # the rerun reads the digest from the xattr record, not from the file
    assert real2["changed"] is False and real2["copied"] is False and real2["checksum_cached"] is True
    assert "transfer" not in real2 and real2["sha256"] == sha
    assert check2["changed"] is False and check2["checksum_cached"] is True
    assert json.loads(os.getxattr(dest, XATTR))["sha256"] == sha
    # the controller keeps src's sha256, keyed by its real path
    cache = json.loads((tmp_path / "cache" / "virtops-kvm" / "image-sha256.json").read_text())
    assert cache[os.path.realpath(src)]["sha256"] == sha
    assert "--- before" in out  # --diff rendered the task's diff


def test_refusals_leave_everything_as_it_was(tmp_path):
    src, sha = image(tmp_path, "base.img")
    files = tmp_path / "files"
    files.mkdir()
    (files / "rel.img").write_bytes(src.read_bytes())  # found like ansible.builtin.copy's src
    hosts = tmp_path / "host"
    hosts.mkdir()
    other = hosts / "other.qcow2"
    other.write_bytes(os.urandom(4096))
    other.chmod(0o640)
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    before = other.stat()
    same = hosts / "same.qcow2"
    same.write_bytes(src.read_bytes())
    same.chmod(0o644)
    wrong = "sha256:" + "0" * 64
    tasks = [
        task("differs", src=str(src), dest=str(other)),
        task("bad_checksum", src=str(src), dest=str(hosts / "new.qcow2"), checksum=wrong),
        task("good_checksum", check=True, src=str(src), dest=str(hosts / "new.qcow2"), checksum=sha.upper()),
        task("no_dir", src=str(src), dest=str(hosts / "missing" / "x.qcow2")),
        task("mode_fix", src="rel.img", dest=str(same)),
        task("internal", src=str(src), dest=str(hosts / "new.qcow2"), _step="cleanup"),
    ]
    res = run_play(tmp_path, tasks, [t["name"] for t in tasks])[0]
    # a different image at dest: refused, both checksums named, the file untouched (no record either)
    assert res["differs"]["failed"] is True
    msg = res["differs"]["msg"]
    assert str(other) in msg and sha in msg and other_sha in msg and "never overwrites" in msg
    after = other.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    )
    assert stat.S_IMODE(after.st_mode) == 0o640
    with pytest.raises(OSError):
        os.getxattr(other, XATTR)
    # a wrong checksum fails on the controller, before anything reaches the host
    assert res["bad_checksum"]["failed"] is True and "not the expected" in res["bad_checksum"]["msg"]
    assert res["good_checksum"]["changed"] is True and not res["good_checksum"].get("failed")
    assert res["no_dir"]["failed"] is True and "does not exist" in res["no_dir"]["msg"]
    # the same image with another mode: only the mode changes
    assert res["mode_fix"]["changed"] is True and res["mode_fix"]["copied"] is False
    assert res["mode_fix"]["changes"] == ["mode 0644 -> 0444"] and stat.S_IMODE(same.stat().st_mode) == 0o444
    # the action's internal options are not for tasks
    assert res["internal"]["failed"] is True and "_step" in res["internal"]["msg"]
    assert listing(hosts) == ["other.qcow2", "same.qcow2"]


def test_a_transfer_that_fails_leaves_no_partial_copy(tmp_path):
    """dest's file system fills up during put_file: the task fails and the staged file is removed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    src = image(tmp_path, "base.img")[0]
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        res = run_play(tmp_path, [task("full", src=str(src), dest=str(small / "base.qcow2"))], ["full"])[0]
        assert res["full"]["failed"] is True and "failed" in res["full"]["msg"], res["full"]
        assert listing(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.fixture
def sshd(tmp_path) -> Iterator[list[str]]:
    """An sshd of this test on 127.0.0.1 (root, key only); yields the ansible-playbook inventory arguments."""
    if os.geteuid() != 0 or not os.access("/usr/sbin/sshd", os.X_OK):
        pytest.skip("needs root and /usr/sbin/sshd")
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True, timeout=60)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d / 'sshd.pid'}\n"
        "Subsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"), "-E", str(d / "log")])
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (d / "log").read_text()
            time.sleep(0.1)
        yield [
            "-i",
            "127.0.0.1,",
            "-u",
            "root",
            "-e",
            f"ansible_port={port}",
            "-e",
            f"ansible_ssh_private_key_file={d / 'client'}",
            "-e",
            "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
            "-e",
            "ansible_ssh_args='-o ControlMaster=auto -o ControlPersist=1s'",  # no master outlives this sshd
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_over_ssh_each_transfer_method_copies_once(tmp_path, sshd):
    src, sha = image(tmp_path, "base.img")
    hosts = tmp_path / "host"
    hosts.mkdir()
    tasks = []
    # "compressed": ansible-core's default ssh_args (-C): the copy takes a master of its own without it
    compressed = {"ansible_ssh_transfer_method": "sftp"}
    compressed["ansible_ssh_args"] = "-C -o ControlMaster=auto -o ControlPersist=1s"
    for method in ("sftp", "scp", "piped", "compressed"):
        args = dict(src=str(src), dest=str(hosts / f"{method}.qcow2"))
        how = compressed if method == "compressed" else {"ansible_ssh_transfer_method": method}
        tasks.append(dict(task(method, **args), vars=how))
        tasks.append(task(f"{method}_again", **args))
    res = run_play(tmp_path, tasks, [t["name"] for t in tasks], ssh=sshd)[0]
    for method in ("sftp", "scp", "piped", "compressed"):
        first, again = res[method], res[f"{method}_again"]
        assert not first.get("failed") and not again.get("failed"), (first.get("msg"), again.get("msg"))
        assert first["copied"] is True and first["transfer"]["bytes"] == src.stat().st_size
        assert again["changed"] is False and again["checksum_cached"] is True and again["sha256"] == sha
        assert (hosts / f"{method}.qcow2").read_bytes() == src.read_bytes()
    assert listing(hosts) == ["compressed.qcow2", "piped.qcow2", "scp.qcow2", "sftp.qcow2"]
