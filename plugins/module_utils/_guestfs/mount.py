# Private to the virtops.kvm collection: not a public API, may change without notice.
"""guestmount: a read-only FUSE process on a mount point, found again through mountinfo and its pid file.

Unlike the appliance session, a guestmount outlives the module run: the
state of the mount point is read from /proc/self/mountinfo (a guestmount,
nothing, or something foreign that is never touched), the process from its
pid file (or /proc), and unmounting waits until that process has flushed
and exited. guestmount always gets ``--ro``; guestmount and guestunmount run
through the injected ``runner(argv, env) -> (rc, stdout, stderr)``, never a
shell.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    GuestfsError,
    InvalidInput,
    TimeoutExpired,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import TCG_HINT, mount_order, require_absolute
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Runner
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock, Deadline, wait_until

PID_DIR = "/run/virtops-kvm"


# --------------------------------------------------------------------------- mountinfo


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entry(mount_point: str, mountinfo: str = "/proc/self/mountinfo") -> dict | None:
    """The last (visible) mount on ``mount_point``: {fstype, source}, or None."""
    target = os.path.realpath(mount_point) if os.path.exists(mount_point) else os.path.normpath(mount_point)
    found = None
    try:
        with open(mountinfo, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise GuestfsError(f"Cannot read {mountinfo}: {exc.strerror}.") from exc
    for line in lines:
        left, _sep, right = line.partition(" - ")
        fields, rest = left.split(" "), right.split(" ")
        if len(fields) < 5 or len(rest) < 2:
            continue
        if _unescape_mountinfo(fields[4]) == target:
            found = {"fstype": rest[0], "source": _unescape_mountinfo(rest[1])}
    return found


def is_guestmount(entry: dict | None) -> bool:
    if not entry:
        return False
    return entry["fstype"] in ("fuse", "fuse.guestmount") and entry["source"] in ("/dev/fuse", "guestmount")


# --------------------------------------------------------------------------- the process


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


class GuestMount:
    """A read-only guestmount on one mount point, with its pid file so unmount can wait for it."""

    def __init__(
        self,
        runner: Runner,
        mount_point: str,
        pid_dir: str = PID_DIR,
        mountinfo: str = "/proc/self/mountinfo",
        clock: Clock = SYSTEM,
    ):
        self.runner = runner
        self.mount_point = os.path.normpath(require_absolute(mount_point, "mount_point"))
        self.pid_dir = pid_dir
        self.mountinfo = mountinfo
        self.clock = clock
        key = hashlib.sha256(self.mount_point.encode()).hexdigest()[:16]
        self.pid_file = os.path.join(pid_dir, f"guestmount-{key}.pid")

    # -- state

    def entry(self) -> dict | None:
        return mount_entry(self.mount_point, self.mountinfo)

    def pid(self) -> int | None:
        """The guestmount process serving this mount point: from its pid file, else from /proc."""
        try:
            with open(self.pid_file, encoding="ascii") as f:
                pid = int(f.read().strip())
            if _pid_alive(pid):
                return pid
        except (OSError, ValueError):
            pass
        for name in os.listdir("/proc"):
            if name.isdigit():
                argv = _cmdline(int(name))
                if argv and os.path.basename(argv[0]) == "guestmount" and argv[-1].rstrip("/") == self.mount_point:
                    return int(name)
        return None

    def mounted_images(self) -> list[str] | None:
        """The -a images of the running guestmount, or None when it cannot be told."""
        pid = self.pid()
        if pid is None:
            return None
        argv, images = _cmdline(pid), []
        for i, a in enumerate(argv):
            if a in ("-a", "--add") and i + 1 < len(argv):
                images.append(argv[i + 1])
            elif a.startswith("--add="):
                images.append(a.split("=", 1)[1])
        return images

    def status(self) -> str:
        """'mounted' (a guestmount), 'unmounted', or 'foreign' (something else is mounted there)."""
        entry = self.entry()
        if entry is None:
            return "unmounted"
        return "mounted" if is_guestmount(entry) else "foreign"

    # -- actions

    def argv(self, drives: list[dict], mounts: dict | None) -> list[str]:
        argv = ["guestmount", "--ro", "-o", "nonempty", "--pid-file", self.pid_file]
        for d in drives:
            if d.get("format"):
                argv.append(f"--format={d['format']}")
            argv += ["-a", d["path"]]
        if mounts:
            for mp, dev in mount_order(mounts):
                argv += ["-m", f"{dev}:{mp}"]
        else:
            argv.append("-i")
        argv.append(self.mount_point)
        return argv

    def foreign_error(self) -> Conflict:
        entry = self.entry() or {}
        return Conflict(
            f"{self.mount_point} is already a mount point of {entry.get('source')} ({entry.get('fstype')}), "
            "not a guestmount.",
            hint="Choose another mount_point (an empty directory of your own; not /mnt on hosts that use it).",
        )

    def mount(self, drives: list[dict], mounts: dict | None, env: dict, find_mounts: Callable[[], dict]) -> dict:
        """Run guestmount; when -i finds no OS, ask ``find_mounts`` and mount by device.

        Returns {"argv": [...], "mounts": mounts used or None}.
        """
        if not os.path.isdir(self.mount_point):
            if os.path.exists(self.mount_point):
                raise InvalidInput(f"mount_point {self.mount_point} exists and is not a directory.")
            os.makedirs(self.mount_point, mode=0o755)
        os.makedirs(self.pid_dir, mode=0o700, exist_ok=True)
        argv = self.argv(drives, mounts)
        rc, out, err = self.runner(argv, env)
        if rc != 0 and not mounts and "no operating system" in (err + out).lower():
            mounts = find_mounts()
            argv = self.argv(drives, mounts)
            rc, out, err = self.runner(argv, env)
        if rc != 0:
            message = (err or out).strip()
            raise GuestfsError(
                f"guestmount of {', '.join(d['path'] for d in drives)} on {self.mount_point} failed (rc={rc}): "
                f"{message}",
                hint=TCG_HINT if "force_tcg" not in env.get("LIBGUESTFS_BACKEND_SETTINGS", "") else None,
            )
        return {"argv": argv, "mounts": mounts}

    def unmount(self, env: dict, timeout: float) -> None:
        """guestunmount, then wait until the guestmount process has flushed and exited."""
        pid = self.pid()
        rc, out, err = self.runner(["guestunmount", self.mount_point], env)
        if rc != 0:
            raise GuestfsError(
                f"guestunmount {self.mount_point} failed (rc={rc}): {(err or out).strip()}",
                hint="A process may still use files below it (see 'fuser -vm MOUNT_POINT'); stop it and retry.",
            )
        if not wait_until(lambda: pid is None or not _pid_alive(pid), Deadline(timeout, self.clock), 0.2):
            raise TimeoutExpired(
                f"guestmount (pid {pid}) for {self.mount_point} did not exit within {timeout} s after guestunmount.",
                hint="It may still be shutting its appliance down; run the task again to wait longer.",
            )
        try:
            os.unlink(self.pid_file)
        except FileNotFoundError:
            pass
