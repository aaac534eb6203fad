"""A simulated hypervisor with its own network, for tests that reach guests over their private network.

Tests send traffic only to loopback or to test hosts in network namespaces the test made. A
``NetHost`` is such a host: ``libvirtd`` + ``virtlogd`` in private network, mount and UTS
namespaces, so its libvirt networks (bridges, iptables rules, dnsmasq) and its guests' taps
exist only in its network namespace. The machine's own libvirtd, networks and /run are untouched.

    with NetHost("lab") as nh:                       # start() ... stop(), also on error
        conn = libvirt.open(nh.uri)                  # from the host, no namespace needed
        base = nh.copy_image(guest["base"])          # its guests' images live under nh.images
        nh.run(["curl", "http://192.168.150.10/"])   # a program in its network namespace

``unshare --net --mount --uts --propagation private`` runs this file's ``_init`` (no shell),
which bind-mounts directories of ``root`` over /etc/libvirt (the host's *.conf files and
nwfilters only, ``cgroup_controllers = [ ]``), /var/lib/libvirt, /var/log/libvirt,
/var/cache/libvirt (seeded with the host's QEMU capabilities) and /run, mounts its own sysfs,
brings ``lo`` up, sets its hostname, starts ``virtlogd -d`` and ``libvirtd -d`` and sleeps.

Attributes: ``name``, ``root`` (/var/lib/virtops-nethost/<name>), ``images`` (root/images,
0755, the same path for the host and inside: not under the bind-mounted /var/lib/libvirt),
``uri`` (``qemu+unix:///system?socket=<root>/run/libvirt/libvirt-sock``, from the host or
inside), ``pid`` (the init), ``netns_path``, ``hostname``, ``libvirtd_log``, ``start_seconds``.
``run(argv, **kw)`` / ``argv(argv)``: a program in its network namespace only (``nsenter --net``;
host files and host /sys). ``stop()`` destroys its domains, ends every process of its
namespaces, removes ``root``; idempotent. If its starter dies, its init tears it down;
``cleanup_stale()`` removes what is left of dead runs.

CLI (from the repo root): ``python -m tests.nethost start|stop|status NAME`` (lives until ``stop``), ``cleanup-stale``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE_ROOT = Path(os.environ.get("VIRTOPS_NETHOST_ROOT", "/var/lib/virtops-nethost"))
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,23}\Z")
# (directory under root, where the init bind-mounts it inside the mount namespace)
BINDS = (
    ("etc", "/etc/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("run", "/run"),
    ("virtops", "/var/lib/virtops-kvm"),  # kvm_clone's intent journal, when modules run inside (tests/ground.py)
)
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
HOST_ETC = Path("/etc/libvirt")
HOST_CAPS = Path("/var/cache/libvirt/qemu/capabilities")
START_TIMEOUT = 120.0  # the first connection probes QEMU's capabilities (~8 s; a busy machine: more)
PR_SET_PDEATHSIG = 1


class NetHostError(RuntimeError):
    """The simulated hypervisor did not start (or a name is invalid); the message says why."""


# --------------------------------------------------------------------------- processes and namespaces


def _ns(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:  # gone, or a zombie
        return None


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): tells a pid from a reused one."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _alive(pid: int | None, start: str | None) -> bool:
    return bool(pid) and start is not None and _start_time(pid) == start


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _fs_path(path: Path) -> tuple[str, str]:
    """(major:minor, path inside its file system): how /proc/*/mountinfo names a bind mount of ``path``."""
    st = os.stat(path)
    mount = path
    while not os.path.ismount(mount):
        mount = mount.parent
    rel = os.path.relpath(path, mount)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", "/" if rel == "." else "/" + rel


def host_namespaces() -> list[str]:
    """The caller's own network and mount namespaces (PID 1's may not be readable: in a VM sandbox it is not)."""
    found = [_ns("self", k) for k in ("net", "mnt")] + [_ns(1, k) for k in ("net", "mnt")]
    return [ns for ns in found if ns]


def members(root: Path, host: list[str] | None = None) -> list[int]:
    """Pids of every process of the NetHost at ``root``: those whose mount namespace has ``root``/run
    bind-mounted on /run (init, daemons, qemu), and everything in their network namespace (dnsmasq,
    programs started by run()). Never anything in a namespace of ``host`` (default: the caller's own)."""
    run_dir = root / "run"
    if not run_dir.is_dir():
        return []
    dev, src = _fs_path(run_dir)
    host = set(host_namespaces() if host is None else host)
    if not all(any(ns.startswith(kind) for ns in host) for kind in ("net:", "mnt:")):
        raise NetHostError("cannot tell the host's own namespaces apart; refusing to look for NetHost processes")
    found, nets = set(), set()
    for pid in _pids():
        mnt = _ns(pid, "mnt")
        if mnt is None or mnt in host:
            continue
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
                f = line.split()
                if f[4] == "/run" and f[3] in (src, src + "//deleted") and f[2] == dev:
                    found.add(pid)
                    net = _ns(pid, "net")
                    if net is not None and net not in host:
                        nets.add(net)
                    break
    found.update(pid for pid in _pids() if _ns(pid, "net") in nets)
    found.discard(os.getpid())
    return sorted(found)


def _kill_members(root: Path, host: list[str] | None = None, timeout: float = 10.0) -> None:
    """SIGTERM every member, SIGKILL what is left after ``timeout`` s; wait until none is left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        pids = members(root, host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = members(root, host)
        if not pids:
            return
    raise NetHostError(f"processes of {root} survived SIGKILL: {pids}")


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return f"(no {path})"


# --------------------------------------------------------------------------- the host's config, copied


def _set_keys(text: str, values: dict[str, str]) -> str:
    """libvirt config text with ``values`` (key -> literal) set: uncommented old settings removed."""
    for key, value in values.items():
        text = re.sub(rf"(?ms)^[ \t]*{key}[ \t]*=[ \t]*(\[.*?\]|[^\n]*)\n?", "", text)
        text = text.rstrip("\n") + f"\n# virtops NetHost\n{key} = {value}\n"
    return text


def write_config(etc: Path) -> None:
    """A copy of the host's /etc/libvirt config files (no domains, networks or secrets), adapted."""
    for entry in HOST_ETC.iterdir():
        if entry.is_file() and entry.suffix == ".conf":
            shutil.copy2(entry, etc / entry.name)
    if (HOST_ETC / "nwfilter").is_dir():
        shutil.copytree(HOST_ETC / "nwfilter", etc / "nwfilter")
    (etc / "qemu" / "networks" / "autostart").mkdir(parents=True)
    edits = {
        "qemu.conf": {"cgroup_controllers": "[ ]"},
        "libvirtd.conf": {"log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"'},
        "virtlogd.conf": {"log_outputs": '"3:file:/var/log/libvirt/virtlogd.log"'},
    }
    for name, values in edits.items():
        path = etc / name
        path.write_text(_set_keys(path.read_text() if path.exists() else "", values))


# --------------------------------------------------------------------------- the NetHost


class NetHost:
    """One simulated hypervisor in its own network, mount and UTS namespaces (see the module docstring)."""

    def __init__(self, name: str, state_root: Path = STATE_ROOT, detached: bool = False, netns: bool = True) -> None:
        if not NAME_RE.match(name):
            raise NetHostError(f"NetHost name {name!r}: use 1-24 of a-z, 0-9, '-', starting with a letter")
        self.name = name
        self.root = Path(state_root) / name
        self.images = self.root / "images"
        self.uri = f"qemu+unix:///system?socket={self.root}/run/libvirt/libvirt-sock"
        self.hostname = f"nethost-{name}"
        self.libvirtd_log = self.root / "log" / "libvirtd.log"
        self.detached = detached  # True: outlives the process that started it (the CLI)
        self.netns = netns  # False: the machine's own network (tests/ground.py: sshd on a loopback address)
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        state = self._state()
        self.netns = state.get("netns", netns)  # a running host keeps what it was started with
        self.pid: int | None = state.get("pid") if _alive(state.get("pid"), state.get("pid_start")) else None

    @property
    def netns_path(self) -> str | None:
        return f"/proc/{self.pid}/ns/net" if self.pid else None

    def __enter__(self) -> NetHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _state(self) -> dict:
        try:
            return json.loads((self.root / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def alive(self) -> bool:
        state = self._state()
        return _alive(state.get("pid"), state.get("pid_start"))

    def start(self, timeout: float = START_TIMEOUT) -> NetHost:
        """Start it; return once its libvirtd answers on ``uri`` (NetHostError with the logs' tails if not)."""
        t0 = time.monotonic()
        if not os.path.ismount("/"):  # unshare --propagation private cannot change it (EINVAL)
            raise NetHostError(
                "a NetHost needs / to be a mount point, to keep its mounts private: this looks like a chroot; "
                "run the tests on the machine itself, in a container or in a VM"
            )
        self.root.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root.parent, 0o755)  # libvirt-qemu must traverse to the images
        if self.root.exists():
            if self.alive():
                raise NetHostError(
                    f"NetHost {self.name} is running: stop it (python -m tests.nethost stop {self.name})"
                )
            self.stop()
        self.root.mkdir(mode=0o755)
        owner = os.getpid()
        state = {"name": self.name, "owner": owner, "owner_start": _start_time(owner), "detached": self.detached}
        state["netns"] = self.netns
        (self.root / "state.json").write_text(json.dumps(state))
        try:
            for sub in ("images", *(b[0] for b in BINDS)):
                (self.root / sub).mkdir(mode=0o755)
            write_config(self.root / "etc")
            if HOST_CAPS.is_dir():  # saves the QEMU probe (~4-8 s); a stale one is redone
                shutil.copytree(HOST_CAPS, self.root / "cache" / "qemu" / "capabilities")
            self.prepare()
            argv = ["unshare", *(["--net"] if self.netns else []), "--mount", "--uts", "--propagation", "private"]
            argv += ["--", sys.executable, str(Path(__file__).resolve()), "_init", str(self.root), self.hostname]
            argv += ["0" if self.detached else str(owner), ",".join(host_namespaces()), "net" if self.netns else ""]
            with (self.root / "init.log").open("ab") as log:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=DAEMON_ENV,
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
            self.pid = self._proc.pid  # unshare execs the init: same pid, in the new namespaces
            state.update(pid=self.pid, pid_start=_start_time(self.pid), uri=self.uri)
            (self.root / "state.json").write_text(json.dumps(state))
            self._wait_ready(t0 + timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        import libvirt

        sock = self.root / "run" / "libvirt" / "libvirt-sock"
        last = "no socket yet"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise NetHostError(
                    f"NetHost {self.name}: its init exited (rc={self._proc.returncode}).\n"
                    f"init.log:\n{_tail(self.root / 'init.log')}\nlibvirtd.log:\n{_tail(self.libvirtd_log)}"
                )
            if sock.exists():
                try:
                    libvirt.open(self.uri).close()
                    return
                except libvirt.libvirtError as exc:
                    last = str(exc)
            time.sleep(0.2)
        raise NetHostError(
            f"NetHost {self.name}: libvirtd did not answer on {self.uri} ({last}).\n"
            f"init.log:\n{_tail(self.root / 'init.log')}\nlibvirtd.log:\n{_tail(self.libvirtd_log)}"
        )

    def prepare(self) -> None:
        """Called before the init starts, ``root`` made: a subclass writes its files (e.g. ``root``/sshd_config)."""

    def connect(self):
        """A new libvirt connection to its libvirtd (close it yourself)."""
        import libvirt

        return libvirt.open(self.uri)

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed to run in its network namespace only (host files, host /sys); without a network
        namespace of its own, in its mount and UTS namespaces (its /run, its libvirt)."""
        if not self.pid:
            raise NetHostError(f"NetHost {self.name} is not running")
        if not self.netns:
            return ["nsenter", f"--target={self.pid}", "--mount", "--uts", "--", *argv]
        return ["nsenter", f"--net={self.netns_path}", "--", *argv]

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """``subprocess.run`` of ``argv`` in its network namespace (keyword arguments passed on)."""
        check = kw.pop("check", False)  # the caller chooses
        return subprocess.run(self.argv(argv), check=check, **kw)

    def copy_image(self, src: str | os.PathLike, name: str | None = None) -> Path:
        """Copy a file (e.g. the test guest's base) into ``images`` (mode 0644); return its path there."""
        dest = self.images / (name or Path(src).name)
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o644)
        return dest

    def stop(self) -> None:
        """Destroy its domains, end every process of its namespaces, remove ``root``. Idempotent."""
        if self.alive() and (self.root / "run" / "libvirt" / "libvirt-sock").exists():
            self._destroy_domains()
        _kill_members(self.root)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)
            self._proc = None
        self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            raise NetHostError(f"could not remove {self.root}")

    def _destroy_domains(self) -> None:
        import libvirt

        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError:
            return  # the daemon is gone: its qemu processes are ended with the rest
        try:
            for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
        finally:
            conn.close()

    def status(self) -> dict:
        state = self._state()
        pids = members(self.root)
        return {"name": self.name, "root": str(self.root), "uri": self.uri, "running": self.alive(),
                "pid": self.pid, "netns_path": self.netns_path, "processes": len(pids),
                "detached": state.get("detached"), "images": str(self.images)}  # fmt: skip


def cleanup_stale(state_root: Path = STATE_ROOT) -> list[str]:
    """Stop every NetHost under ``state_root`` left by a run that is gone: its starter died (or, for a
    detached one, its init). Hosts of live runs are left alone. Return the names removed."""
    removed = []
    if not Path(state_root).is_dir():
        return removed
    for entry in sorted(Path(state_root).iterdir()):
        if not entry.is_dir() or not NAME_RE.match(entry.name):
            continue
        host = NetHost(entry.name, state_root)
        state = host._state()
        if not state and time.time() - entry.stat().st_mtime < 60:
            continue  # being created right now
        if host.alive() and (state.get("detached") or _alive(state.get("owner"), state.get("owner_start"))):
            continue
        host.stop()
        removed.append(entry.name)
    return removed


# --------------------------------------------------------------------------- the init (inside the namespaces)


def _init(root: Path, hostname: str, owner: int, host: list[str], kinds: tuple = ("net", "mnt")) -> int:
    """The NetHost's first process, in its new namespaces; ``host``: the starter's (never to be touched)."""

    def teardown(_signum: int, _frame: object) -> None:  # the starter died: nobody else will clean up
        with contextlib.suppress(NetHostError):
            _kill_members(root, host)
        shutil.rmtree(root, ignore_errors=True)
        os._exit(0)

    signal.signal(signal.SIGHUP, teardown)
    if owner:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGHUP)
        if os.getppid() != owner:
            teardown(signal.SIGHUP, None)
    for kind in kinds:
        mine = _ns("self", kind)
        if not mine or mine in host or not any(ns.startswith(kind + ":") for ns in host):
            print(f"nethost init: not in a new {kind} namespace ({mine}, host {host}); refusing to go on", flush=True)
            return 1
    socket.sethostname(hostname)
    for _sub, target in BINDS:
        os.makedirs(target, exist_ok=True)
    steps = [["mount", "--bind", str(root / sub), target] for sub, target in BINDS]
    if "net" in kinds:  # a sysfs of this network namespace: /sys/class/net shows its bridges and taps
        steps += [["mount", "-t", "sysfs", "sysfs", "/sys"], ["ip", "link", "set", "lo", "up"]]
    steps += [["virtlogd", "-d"], ["libvirtd", "-d"]]
    if (root / "sshd_config").exists():  # tests/ground.py: reachable over SSH on its own address
        steps += [["/usr/sbin/sshd", "-f", str(root / "sshd_config")]]
    for argv in steps:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"nethost init: {' '.join(argv)} failed (rc={proc.returncode}): {proc.stderr.strip()}", flush=True)
            return 1
    print(f"nethost init: {hostname} up, pid {os.getpid()}", flush=True)
    while True:
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["_init"]:
        kinds = ("net", "mnt") if args[5:6] != [""] else ("mnt",)
        return _init(Path(args[1]), args[2], int(args[3]), args[4].split(","), kinds)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("action", choices=("start", "stop", "status", "cleanup-stale"))
    parser.add_argument("name", nargs="?")
    opts = parser.parse_args(args)
    try:
        if opts.action == "cleanup-stale":
            print(json.dumps({"removed": cleanup_stale()}))
            return 0
        if not opts.name:
            parser.error(f"{opts.action} needs a NAME")
        host = NetHost(opts.name, detached=True)
        if opts.action == "start":
            host.start()
            print(json.dumps({**host.status(), "start_seconds": round(host.start_seconds, 2)}, indent=2))
        elif opts.action == "stop":
            host.stop()
            print(json.dumps({"name": host.name, "stopped": True}))
        else:
            status = host.status()
            print(json.dumps(status, indent=2))
            return 0 if status["running"] else 3
    except NetHostError as exc:
        print(f"nethost: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
