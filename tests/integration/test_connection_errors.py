"""Connection failures provoked for real, each failing the module with its own type and a message naming the URI.

Everything stays on loopback: a port nothing listens on (ssh refused), a listener that accepts and never
answers (the open timeout), a socket path that does not exist, a socket only root may use tried as
``nobody``, and a private sshd on 127.0.77.x (its own config and keys, in a mount namespace of its own
whose /run is empty, started for this file only) for a login that fails, a host key that is unknown or
changed, and a libvirt daemon that is not running behind ssh. ssh runs through a wrapper passed as
the URI's ``command=``, so it reads and writes a known_hosts of this test, never root's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness import ROOT, module_env, run_module

SSHD = "/usr/sbin/sshd"
ROOT_ONLY_SOCKET = "/run/libvirt/libvirt-admin-sock"  # srwx------ root: nobody may not connect


def free_port(address: str) -> int:
    """A port nothing listens on at ``address`` (bound, then let go)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def loopback() -> str:
    return f"127.0.77.{random.randint(2, 250)}"


def assert_failure(r: dict, error: str, *says: str) -> str:
    assert r.get("failed") is True, r
    assert r.get("error") == error, (r.get("error"), r.get("msg"))
    assert "Traceback" not in r["msg"] and "Traceback" not in r["_stderr"], r
    for part in says:
        assert part in r["msg"], (part, r["msg"])
    return r["msg"]


# --------------------------------------------------------------------------- without an sshd


@pytest.mark.parametrize(
    "module, args, option",
    [
        ("kvm_host_info", dict(uri="qemu+ssh:///system"), "uri"),
        ("kvm_snapshot_info", dict(uri="qemu+tcp:///system", domain="vm1"), "uri"),
        ("kvm_migrate", dict(uri="qemu:///system", dest_uri="qemu+ssh:///system", name="vt-none"), "dest_uri"),
    ],
)
def test_a_remote_uri_without_a_host_is_refused_naming_the_option(module, args, option):
    uri = args[option]
    r = run_module(module, args)
    msg = assert_failure(r, "InvalidInput", f"The URI '{uri}' given in {option} has no host", "URI needs a host")
    assert "not running" not in msg and "systemctl" not in msg


def test_ssh_refused_is_said_so_not_a_dead_daemon():
    address = loopback()
    port = free_port(address)
    uri = f"qemu+ssh://root@{address}:{port}/system"
    r = run_module("kvm_host_info", dict(uri=uri))
    msg = assert_failure(r, "ConnectionRefused", f"'{uri}'", f"ssh to {address} port {port} was refused")
    assert "Is sshd running" in msg and "not running" not in msg


def test_tcp_refused_names_the_listener_to_enable():
    address = loopback()
    port = free_port(address)
    uri = f"qemu+tcp://{address}:{port}/system"
    r = run_module("kvm_host_info", dict(uri=uri))
    assert_failure(r, "ConnectionRefused", f"{address} port {port} refused the connection", "libvirtd-tcp.socket")


def test_a_missing_local_socket_is_a_daemon_not_running(tmp_path):
    uri = f"qemu:///system?socket={tmp_path}/no-such-sock"
    r = run_module("kvm_host_info", dict(uri=uri))
    assert_failure(r, "DaemonNotRunning", f"The libvirt daemon for '{uri}' is not running", "systemctl")


def test_an_unknown_driver_is_said_so():
    r = run_module("kvm_host_info", dict(uri="bogus:///nothing"))
    assert_failure(r, "UnknownUri", "'bogus:///nothing': no libvirt driver handles it")


def test_a_remote_host_that_accepts_and_never_answers_fails_within_the_open_timeout():
    address = loopback()
    with socket.socket() as mute:
        mute.bind((address, 0))
        mute.listen(8)
        port = mute.getsockname()[1]
        uri = f"qemu+ssh://root@{address}:{port}/system"
        t0 = time.monotonic()
        r = run_module("kvm_host_info", dict(uri=uri), env={"VIRTOPS_KVM_OPEN_TIMEOUT": "2"}, timeout=60)
        took = time.monotonic() - t0
    assert_failure(
        r,
        "ConnectionFailed",
        f"Connecting to libvirt at '{uri}' did not finish within 2 s: {address} port {port} accepts",
        f"'ssh -p {port} root@{address} true'",
    )
    assert took < 20, took


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run the module as nobody")
def test_a_socket_the_user_may_not_use_is_a_permission_denied():
    uri = f"qemu:///system?socket={ROOT_ONLY_SOCKET}"
    if not os.path.exists(ROOT_ONLY_SOCKET):
        pytest.skip(f"{ROOT_ONLY_SOCKET} is missing")
    with tempfile.TemporaryDirectory(prefix="virtops-nobody-") as tmp:  # pytest's tmp_path is root's only
        os.chmod(tmp, 0o777)
        args = Path(tmp) / "args.json"
        payload = dict(uri=uri, _ansible_check_mode=False, _ansible_diff=False, _ansible_tmpdir=tmp)
        args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
        os.chmod(args, 0o644)
        argv = ["runuser", "-u", "nobody", "--", sys.executable]
        argv += ["-m", "ansible_collections.virtops.kvm.plugins.modules.kvm_host_info", str(args)]
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=module_env(), cwd=str(ROOT), timeout=120, check=False
        )
    out = proc.stdout
    r = dict(json.loads(out[out.index("{") :]), _stderr=proc.stderr)
    assert_failure(r, "PermissionDenied", f"'{uri}'", f"may not use the daemon's socket {ROOT_ONLY_SOCKET}")


# --------------------------------------------------------------------------- against a private sshd


class Sshd:
    """An sshd on 127.0.77.x:PORT with its own host key, accepting one client key (``good``) for root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.address = loopback()
        self.port = free_port(self.address)
        for name in ("host_key", "good", "bad"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        shutil.copyfile(root / "good.pub", root / "authorized_keys")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {root}/host_key\nPidFile {root}/sshd.pid\n"
            f"AuthorizedKeysFile {root}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
            "StrictModes no\nLogLevel ERROR\n"
        )
        host_key = (root / "host_key.pub").read_text().split()[:2]
        other = (root / "bad.pub").read_text().split()[:2]
        spec = f"[{self.address}]:{self.port}"
        (root / "known_hosts_right").write_text(f"{spec} {' '.join(host_key)}\n")
        (root / "known_hosts_wrong").write_text(f"{spec} {' '.join(other)}\n")
        (root / "known_hosts_empty").write_text("")
        # libvirt runs ssh with an empty environment: the known_hosts goes in a wrapper, one per file
        for kind in ("right", "wrong", "empty"):
            wrapper = root / f"ssh_{kind}"
            wrapper.write_text(
                "#!/bin/sh\nexec ssh -o UserKnownHostsFile="
                f'{root}/known_hosts_{kind} -o GlobalKnownHostsFile=/dev/null "$@"\n'
            )
            wrapper.chmod(0o755)
        self.proc = None
        self.log = None

    def start(self) -> Sshd:
        # sshd wants its privilege separation directory /run/sshd: an empty /run of its own provides it
        self.log = open(self.root / "sshd.log", "w")  # closed in stop()
        script = f"mount -t tmpfs none /run && mkdir -m 755 /run/sshd && exec {SSHD} -D -e -f {self.root}/sshd_config"
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection((self.address, self.port), timeout=1):
                return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.log is not None:
            self.log.close()

    def uri(self, key: str, known_hosts: str) -> str:
        return (
            f"qemu+ssh://root@{self.address}:{self.port}/system"
            f"?keyfile={self.root}/{key}&command={self.root}/ssh_{known_hosts}"
        )


@pytest.fixture(scope="module")
def sshd():
    if os.geteuid() != 0 or not os.path.exists(SSHD) or not shutil.which("unshare"):
        pytest.skip("needs root, openssh-server and unshare for a private sshd")
    root = Path(tempfile.mkdtemp(prefix="virtops-sshd-"))
    os.chmod(root, 0o755)
    server = Sshd(root).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_a_key_the_host_does_not_accept_is_a_failed_login(sshd):
    uri = sshd.uri("bad", "right")
    r = run_module("kvm_host_info", dict(uri=uri))
    assert_failure(
        r,
        "AuthenticationFailed",
        f"'{uri}'",
        f"ssh reached {sshd.address} port {sshd.port} but could not log in as root (Permission denied (publickey))",
        "keyfile=",
    )


def test_an_unknown_host_key_is_said_so(sshd):
    r = run_module("kvm_host_info", dict(uri=sshd.uri("good", "empty")))
    assert_failure(
        r,
        "HostKeyRejected",
        f"ssh does not know the host key of {sshd.address} port {sshd.port}",
        f"ssh-keyscan -p {sshd.port} {sshd.address}",
    )
    assert (sshd.root / "known_hosts_empty").read_text() == ""


def test_a_changed_host_key_names_the_file_and_how_to_remove_it(sshd):
    r = run_module("kvm_host_info", dict(uri=sshd.uri("good", "wrong")))
    assert_failure(
        r,
        "HostKeyRejected",
        f"is not the one recorded in {sshd.root}/known_hosts_wrong (line 1)",
        f'ssh-keygen -f "{sshd.root}/known_hosts_wrong" -R "[{sshd.address}]:{sshd.port}"',
    )


def test_a_daemon_not_running_behind_ssh_is_said_so(sshd):
    # the login works; the sshd's /run is empty, so nothing answers on the daemon's socket there
    uri = sshd.uri("good", "right")
    r = run_module("kvm_host_info", dict(uri=uri))
    assert_failure(
        r,
        "DaemonNotRunning",
        f"The libvirt daemon for '{uri}' is not running on {sshd.address}: ssh to {sshd.address} worked",
    )
