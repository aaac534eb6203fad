"""The fuzz runs' walls: a per-example sandbox directory, a write guard, a fake clock, stubs for the outside world.

Fuzzing runs as root on a real machine, so nothing a generated input names may reach it:

- every file a module writes must lie inside the sandbox (``WriteGuard``): a write elsewhere is refused
  (PermissionError, or FileNotFoundError for a path that does not exist, which is what the product would
  meet anyway) and recorded, and the example fails as ``WroteOutsideSandbox``;
- no program runs (``AnsibleModule.run_command`` answers rc=1 "stubbed in fuzz"), no libguestfs appliance
  launches (every handle call raises RuntimeError, as a failing libguestfs does), no signal is sent;
- no time passes (``FakeClock`` replaces every ``time.sleep``/``time.monotonic`` default of the product's
  functions; after ``JUMP_AFTER`` sleeps in one example it jumps past any deadline, so a wait ends with the
  product's own timeout message);
- libvirt is only ever ``test:///default`` (``LIBVIRT_DEFAULT_URI`` too), compared before and after.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import shutil
import stat
import time

# What the strategies write for "the example's sandbox directory"; replaced just before a run.
SB = "@SB@"

# The harness' own directories, next to the sandbox (not compared: lock, journal, pid files, tmp).
HARNESS_DIRS = ("h-lock", "h-intents", "h-run", "h-tmp", "h-root", "h-remote-tmp")


class FakeClock:
    """time.monotonic/time.sleep without waiting; a long wait is cut short by jumping past every deadline."""

    JUMP_AFTER = 200

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.now = 1000.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += max(float(seconds), 0.001)
        if self.sleeps >= self.JUMP_AFTER:
            self.now += 1e300


def refuse_kill(pid: int, sig: int) -> None:
    raise PermissionError(errno.EPERM, f"fuzz: no signal is sent (pid {pid}, signal {sig})")


class StubGuestFS:
    """A libguestfs handle whose every call fails the way a libguestfs that cannot work does."""

    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise RuntimeError(f"{name}: stubbed in fuzz (no libguestfs appliance)")

        return call

    def close(self) -> None:
        return None


def stub_guestfs_handle(*args, **kwargs) -> StubGuestFS:
    return StubGuestFS()


# --- the sandbox's content: real files the generated paths can point at

QCOW2_HEADER = (
    b"QFI\xfb"
    + (3).to_bytes(4, "big")  # version
    + bytes(8)  # backing file offset
    + bytes(4)  # backing file size
    + (16).to_bytes(4, "big")  # cluster bits
    + (1 << 20).to_bytes(8, "big")  # size: 1 MiB
    + bytes(4)  # crypt method
    + bytes(4)  # l1 size
    + (0x30000).to_bytes(8, "big")  # l1 table offset
    + (0x10000).to_bytes(8, "big")  # refcount table offset
    + (1).to_bytes(4, "big")  # refcount table clusters
    + bytes(4)  # nb snapshots
    + bytes(8)  # snapshots offset
).ljust(512, b"\0")

FIXTURE_FILES = {
    "images/base.qcow2": QCOW2_HEADER,
    "images/disk.raw": bytes(64 * 1024),
    "images/not-an-image.qcow2": b"hello\n",
    "file.txt": b"text\n",
    "upload.bin": b"\x00\x01" * 512,
    "bad.xml": b"<node><not-closed>",
    "dir/inner.txt": b"inner\n",
    "empty-dir/.keep": b"",
}
FIXTURE_LINKS = {"link-to-file": "file.txt", "dangling": "no-such-file"}

# A fake host tree for kvm_host (its root seam): a Debian host with no init system and no daemon running.
FAKE_ROOT = {
    "etc/os-release": "ID=debian\nVERSION_ID=12\nPRETTY_NAME=Fuzz\n",
    "proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme de pse hypervisor\n",
    "proc/modules": "kvm 1 0 - Live 0x0\n",
    "proc/meminfo": "MemTotal:        4000000 kB\n",
}


def build(base: str) -> str:
    """A fresh sandbox under ``base`` (emptied first): the fixture files and the harness' directories."""
    sb = os.path.join(base, "sb")
    if os.path.lexists(sb):
        _make_deletable(sb)
        shutil.rmtree(sb)
    os.makedirs(sb)
    for rel, data in FIXTURE_FILES.items():
        path = os.path.join(sb, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    for rel, target in FIXTURE_LINKS.items():
        os.symlink(target, os.path.join(sb, rel))
    for d in HARNESS_DIRS:
        os.makedirs(os.path.join(sb, d))
    for rel, text in FAKE_ROOT.items():
        path = os.path.join(sb, "h-root", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return sb


def _make_deletable(top: str) -> None:
    """Undo what a run may have done that keeps rmtree from deleting (read-only directories)."""
    for root, dirs, _files in os.walk(top):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)


def tree(sb: str, everything: bool = False) -> dict:
    """What a run could have changed in the sandbox (its harness directories left out unless ``everything``)."""
    out = {}
    for root, dirs, files in os.walk(sb):
        rel_root = os.path.relpath(root, sb)
        if rel_root == "." and not everything:
            dirs[:] = [d for d in dirs if d not in HARNESS_DIRS]
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            st = os.lstat(path)
            entry = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_size, st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode) and st.st_size <= 1 << 20:
                with open(path, "rb") as f:
                    entry += (hashlib.sha256(f.read()).hexdigest(),)
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(path),)
            out[os.path.normpath(os.path.join(rel_root, name))] = entry
    return out


def substitute(value, sb: str):
    """``value`` with every ``@SB@`` replaced by the sandbox's path (in strings, lists and dicts)."""
    if isinstance(value, str):
        return value.replace(SB, sb)
    if isinstance(value, list):
        return [substitute(v, sb) for v in value]
    if isinstance(value, dict):
        return {substitute(k, sb): substitute(v, sb) for k, v in value.items()}
    return value


# --- the write guard

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class WriteGuard:
    """Refuse and record every filesystem write outside the sandbox (installed only around a module run)."""

    def __init__(self):
        self.root: str | None = None
        self.violations: list[str] = []
        self._saved: list = []

    def inside(self, path, dir_fd=None) -> bool:
        if isinstance(path, int):  # an open file descriptor: its file was checked when opened
            return True
        path = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = os.path.realpath(path)
        return real == self.root or real.startswith(self.root + os.sep)

    def check(self, op: str, path, dir_fd=None, creates: bool = False) -> None:
        if self.inside(path, dir_fd):
            return
        shown = os.fsdecode(path) if not isinstance(path, int) else path
        exists = os.path.lexists(path) if not isinstance(path, int) else True
        parent = os.path.dirname(os.path.abspath(os.fsdecode(path)))
        if not creates and not exists:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)
        if creates and not exists and not os.path.isdir(parent):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)
        self.violations.append(f"{op} {shown!r}")
        raise PermissionError(errno.EACCES, f"fuzz: write outside the sandbox refused ({op})", shown)

    def _wrap(self, owner, name: str, checker) -> None:
        original = getattr(owner, name)

        def guarded(*args, **kwargs):
            checker(*args, **kwargs)
            return original(*args, **kwargs)

        self._saved.append((owner, name, original))
        setattr(owner, name, guarded)

    def install(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.violations = []
        g = self

        def one(op, creates=False):
            def checker(path, *args, dir_fd=None, **kwargs):
                g.check(op, path, dir_fd, creates)

            return checker

        def two(op):
            def checker(src, dst, *args, src_dir_fd=None, dst_dir_fd=None, **kwargs):
                g.check(op, src, src_dir_fd)
                g.check(op, dst, dst_dir_fd, creates=True)

            return checker

        for name in ("unlink", "remove", "rmdir", "chmod", "chown", "lchown", "truncate", "utime"):
            self._wrap(os, name, one(f"os.{name}"))
        for name in ("removexattr", "setxattr"):
            self._wrap(os, name, one(f"os.{name}"))
        for name in ("mkdir", "mkfifo", "mknod"):
            self._wrap(os, name, one(f"os.{name}", creates=True))
        for name in ("rename", "replace", "link"):
            self._wrap(os, name, two(f"os.{name}"))

        def symlink_checker(src, dst, *args, dir_fd=None, **kwargs):
            g.check("os.symlink", dst, dir_fd, creates=True)

        self._wrap(os, "symlink", symlink_checker)

        def os_open_checker(path, flags, *args, dir_fd=None, **kwargs):
            if flags & _WRITE_FLAGS:
                g.check("os.open", path, dir_fd, creates=bool(flags & os.O_CREAT))

        self._wrap(os, "open", os_open_checker)

        def open_checker(file, mode="r", *args, **kwargs):
            if isinstance(file, int):
                return
            if any(c in mode for c in "wax+"):
                g.check(f"open({mode!r})", file, creates=True)

        self._wrap(builtins, "open", open_checker)
        self._wrap(io, "open", open_checker)
        self._wrap(shutil, "rmtree", one("shutil.rmtree"))

    def uninstall(self) -> None:
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)


def patch_clock_defaults(monkeypatch, modules, clock: FakeClock, pid_dir: str) -> int:
    """Point every ``time.sleep``/``time.monotonic``/``os.kill`` default and the guestmount pid dir at the fakes.

    Returns how many defaults were replaced (a test asserts it found some: the seams moved otherwise).
    """
    swap = {time.sleep: clock.sleep, time.monotonic: clock.clock, os.kill: refuse_kill}
    count = 0
    seen = set()

    def fix(fn) -> None:
        nonlocal count
        fn = getattr(fn, "__func__", fn)
        if not callable(fn) or id(fn) in seen or not hasattr(fn, "__defaults__"):
            return
        seen.add(id(fn))
        if fn.__defaults__:
            new = tuple(_swap(v, swap, pid_dir) for v in fn.__defaults__)
            if new != fn.__defaults__:
                count += sum(1 for a, b in zip(new, fn.__defaults__) if a is not b)
                monkeypatch.setattr(fn, "__defaults__", new)
        if fn.__kwdefaults__:
            new_kw = {k: _swap(v, swap, pid_dir) for k, v in fn.__kwdefaults__.items()}
            if new_kw != fn.__kwdefaults__:
                count += sum(1 for k in new_kw if new_kw[k] is not fn.__kwdefaults__[k])
                monkeypatch.setattr(fn, "__kwdefaults__", new_kw)

    for mod in modules:
        for value in list(vars(mod).values()):
            if getattr(value, "__module__", None) != mod.__name__:
                continue
            if isinstance(value, type):
                for attr in vars(value).values():
                    fix(attr)
            else:
                fix(value)
    return count


def _swap(value, swap: dict, pid_dir: str):
    try:
        if value in swap:
            return swap[value]
    except TypeError:  # unhashable default
        return value
    if value == "/run/virtops-kvm":
        return pid_dir
    return value
