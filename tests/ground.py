"""The multi-hypervisor test ground: N simulated hypervisors on this machine, each reached over SSH.

Host ``hvI`` (I = 1..N) is a ``nethost.NetHost`` without a network namespace of its own: private
mount and UTS namespaces in which its own directories are bind-mounted over /etc/libvirt,
/var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt, /var/lib/virtops-kvm and /run, with its
own ``virtlogd``, ``libvirtd`` (``cgroup_controllers = [ ]``, so two hosts may hold domains of the
same name) and an ``sshd`` listening only on ``127.0.0.(I+1)``. An SSH session, an Ansible module
or ``qemu+ssh://root@127.0.0.(I+1)/system`` lands in that host and sees only its libvirt; the
machine's own libvirtd is never touched. Traffic stays on loopback.

    with Ground(3) as g:                     # start() ... stop(), also on error
        g.write_inventory(path)              # group "hypervisors": hv1..hv3, root + the ground's key
        g.fault("hv2", "timeout")            # unreachable | timeout | daemon | poweroff
        g.heal("hv2")                        # back to a working host (domains stay as they are)

Faults: ``unreachable`` kills the host's sshd (connections refused); ``timeout`` stops (SIGSTOP)
every sshd process of the host, so connections hang until the client's timeout; ``daemon`` kills
its libvirtd; ``poweroff`` kills every process of the host (daemons, sshd, guests) but its init.
``heal`` undoes any of them: it continues stopped processes and starts what is missing.

CLI (from the repo root): ``python -m tests.ground start [-n N] [--inventory FILE] | stop | status | fault HOST MODE |
heal HOST``. Hosts started by the CLI live until ``stop``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests import nethost

ROOT = Path(os.environ.get("VIRTOPS_GROUND_ROOT", "/var/lib/virtops-ground"))
# sshd port of every host (another port and root let two grounds run side by side)
PORT = int(os.environ.get("VIRTOPS_GROUND_PORT", "22"))
SSHD = "/usr/sbin/sshd"
FAULTS = ("unreachable", "timeout", "daemon", "poweroff")
SSH_OPTIONS = (
    "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    # a hung host is noticed in seconds, also on a connection Ansible keeps open (ControlPersist)
    " -o ServerAliveInterval=2 -o ServerAliveCountMax=3"
)


class GroundError(RuntimeError):
    """The ground could not do what was asked; the message says why."""


def _ssh_keygen(path: Path) -> None:
    if not path.exists():
        argv = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "virtops-ground", "-f", str(path)]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1):
            return True
    except OSError:
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class Hypervisor(nethost.NetHost):
    """One simulated hypervisor of the ground: a NetHost in the machine's network, with an sshd."""

    def __init__(self, index: int, ground_root: Path, port: int = 22, detached: bool = False) -> None:
        super().__init__(f"hv{index}", state_root=ground_root, detached=detached, netns=False)
        self.index = index
        self.address = f"127.0.0.{index + 1}"
        self.port = port
        self.hostname = f"hv{index}"
        self.sshd_config = self.root / "sshd_config"
        self.ground_root = Path(ground_root)

    def prepare(self) -> None:
        if _listening(self.address, self.port):
            raise nethost.NetHostError(f"something already listens on {self.address}:{self.port}")
        _ssh_keygen(self.root / "host_key")
        (self.root / "run" / "sshd").mkdir(mode=0o755)  # sshd's privilege separation directory, in its /run
        (self.root / "lib" / "images").mkdir(mode=0o711)
        self.sshd_config.write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {self.root}/host_key\n"
            f"PidFile /run/sshd.pid\nAuthorizedKeysFile {self.ground_root}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nLogLevel ERROR\nMaxStartups 100\n"
            "MaxSessions 100\nSubsystem sftp internal-sftp\n"
        )  # fmt: skip

    def start(self, timeout: float = nethost.START_TIMEOUT) -> Hypervisor:
        super().start(timeout)
        self._wait_ssh(time.monotonic() + 30)
        return self

    def _wait_ssh(self, deadline: float) -> None:
        while not _listening(self.address, self.port):
            if time.monotonic() > deadline:
                raise GroundError(f"{self.name}: sshd does not listen on {self.address}:{self.port}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ faults
    def processes(self, comm: str | None = None) -> list[int]:
        """Pids of this host's processes (all but its init), or only those whose command is ``comm``."""
        pids = [p for p in nethost.members(self.root) if p != self.pid]
        return [p for p in pids if comm is None or _comm(p) == comm]

    def _signal(self, pids: list[int], sig: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _kill(self, comm: str | None) -> None:
        self._signal(self.processes(comm), signal.SIGKILL)
        deadline = time.monotonic() + 15
        while self.processes(comm):
            if time.monotonic() > deadline:
                raise GroundError(f"{self.name}: {comm or 'its processes'} survived SIGKILL")
            time.sleep(0.1)

    def fault(self, mode: str) -> None:
        if mode not in FAULTS:
            raise GroundError(f"fault {mode!r}: use one of {', '.join(FAULTS)}")
        if mode == "unreachable":
            self._kill("sshd")
        elif mode == "timeout":
            self._signal(self.processes("sshd"), signal.SIGSTOP)
        elif mode == "daemon":
            self._kill("libvirtd")
        else:
            self._kill(None)

    def heal(self) -> None:
        """Continue stopped processes; start virtlogd, libvirtd and sshd where missing; wait until they answer."""
        self._signal(self.processes(), signal.SIGCONT)
        for comm, argv in (
            ("virtlogd", ["virtlogd", "-d"]),
            ("libvirtd", ["libvirtd", "-d"]),
            ("sshd", [SSHD, "-f", str(self.sshd_config)]),
        ):
            if not self.processes(comm):
                self.run(argv, check=True, capture_output=True, timeout=60, env=nethost.DAEMON_ENV)
        self._wait_ready(time.monotonic() + nethost.START_TIMEOUT)
        self._wait_ssh(time.monotonic() + 30)

    def _wait_ready(self, deadline: float) -> None:
        if self._proc is not None:
            super()._wait_ready(deadline)
            return
        import libvirt

        while True:  # a host started by another process (the CLI): no Popen to poll
            try:
                libvirt.open(self.uri).close()
                return
            except libvirt.libvirtError as exc:
                if time.monotonic() > deadline:
                    raise GroundError(f"{self.name}: libvirtd does not answer on {self.uri}: {exc}") from exc
                time.sleep(0.2)


class Ground:
    """N simulated hypervisors hv1..hvN (see the module docstring)."""

    def __init__(self, count: int = 3, root: Path = ROOT, port: int = PORT, detached: bool = False) -> None:
        if not 1 <= count <= 50:
            raise GroundError(f"a ground has 1 to 50 hypervisors, not {count}")
        self.root = Path(root)
        self.key = self.root / "client_key"
        self.hosts = [Hypervisor(i, self.root, port, detached) for i in range(1, count + 1)]

    def __enter__(self) -> Ground:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, name: str) -> Hypervisor:
        for host in self.hosts:
            if host.name == name:
                return host
        raise GroundError(f"no hypervisor {name!r} on this ground ({', '.join(h.name for h in self.hosts)})")

    def start(self) -> Ground:
        if not os.path.exists(SSHD):
            raise GroundError(f"{SSHD} is missing: apt-get install openssh-server (scripts/setup.sh does)")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # libvirt-qemu must reach each host's images
        _ssh_keygen(self.key)
        shutil.copyfile(self.key.with_suffix(".pub"), self.root / "authorized_keys")
        (self.root / "ground.json").write_text(json.dumps({"count": len(self.hosts), "port": self.hosts[0].port}))
        try:
            for host in self.hosts:
                host.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for host in self.hosts:
            host.stop()
        (self.root / "ground.json").unlink(missing_ok=True)  # no ground here any more (the key stays)

    def fault(self, name: str, mode: str) -> None:
        self[name].fault(mode)

    def heal(self, name: str) -> None:
        self[name].heal()

    def inventory(self, python: str = sys.executable, group: str = "hypervisors") -> dict:
        """An Ansible inventory (as a dict for YAML/JSON) of the hosts, in group ``group``."""
        hosts = {h.name: {"ansible_host": h.address, "ansible_port": h.port} for h in self.hosts}
        common = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.key),
            "ansible_ssh_common_args": SSH_OPTIONS,
            "ansible_python_interpreter": python,
        }
        return {"all": {"children": {group: {"hosts": hosts, "vars": common}}}}

    def write_inventory(self, path: str | os.PathLike, python: str = sys.executable) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.inventory(python), indent=2) + "\n")  # JSON is YAML
        return path

    def status(self) -> list[dict]:
        out = []
        for h in self.hosts:
            procs = h.processes() if h.root.exists() else []
            comms = sorted({_comm(p) for p in procs} - {""})
            out.append({"name": h.name, "address": h.address, "running": h.alive(), "processes": comms})
        return out


def _from_disk(root: Path = ROOT, detached: bool = True) -> Ground:
    try:
        state = json.loads((root / "ground.json").read_text())
    except (OSError, ValueError) as exc:
        raise GroundError(f"no ground at {root}: start one (python -m tests.ground start)") from exc
    return Ground(state["count"], root, state["port"], detached)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="action", required=True)
    start = sub.add_parser("start")
    start.add_argument("-n", "--count", type=int, default=3)
    start.add_argument("--port", type=int, default=PORT)
    start.add_argument("--inventory", help="write an Ansible inventory (YAML) here")
    start.add_argument("--python", default=sys.executable, help="ansible_python_interpreter of the hosts")
    sub.add_parser("stop")
    sub.add_parser("status")
    fault = sub.add_parser("fault")
    fault.add_argument("host")
    fault.add_argument("mode", choices=FAULTS)
    heal = sub.add_parser("heal")
    heal.add_argument("host")
    opts = parser.parse_args(argv)
    try:
        if opts.action == "start":
            ground = Ground(opts.count, ROOT, opts.port, detached=True).start()
            if opts.inventory:
                ground.write_inventory(opts.inventory, opts.python)
            print(json.dumps(ground.status(), indent=2))
        elif opts.action == "stop":
            if (ROOT / "ground.json").exists():
                _from_disk().stop()
            print(json.dumps({"stopped": True}))
        elif opts.action == "status":
            print(json.dumps(_from_disk().status(), indent=2))
        elif opts.action == "fault":
            _from_disk().fault(opts.host, opts.mode)
        else:
            _from_disk().heal(opts.host)
    except (GroundError, nethost.NetHostError) as exc:
        print(f"ground: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
