# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Read-only looks inside guest disks: one libguestfs appliance session, or a guestmount.

Safety is the point of this file. libguestfs's own documentation says a disk
that a running guest may write must only ever be opened read-only, and the
existing Ansible libguestfs modules open everything read-write. Here:

* every drive is added with ``readonly=1`` (libguestfs puts a throw-away
  overlay on top; the image is never written), guestmount always gets ``--ro``;
* the appliance has no network and no guest program is ever run (no
  ``command``/``sh``): only the appliance's own tools touch the filesystems;
* disks of a running domain are refused unless the caller opts in (see
  ``running_users`` / ``domain_drives``).

One appliance launch costs ~20 s under software emulation, so one
``GuestfsSession`` serves every path of a module run, mounts by device when
the caller knows them, and runs OS inspection only when it does not.

The libguestfs handle comes from an injected factory and external programs
(guestmount, guestunmount) run through an injected ``runner(argv, env) ->
(rc, stdout, stderr)``, so all of this is unit-testable without an appliance.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _host, _storage
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DaemonNotRunning,
    DomainNotFound,
    GuestfsError,
    InvalidInput,
    StorageError,
    TimeoutExpired,
)

Runner = Callable[..., tuple]

# Image formats qemu (and so libguestfs) can open; anything else is a typo.
KNOWN_FORMATS = ("raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc", "parallels", "dmg", "bochs", "cloop")
# Filesystem types list_filesystems reports that can never be a guest's root.
_NOT_MOUNTABLE = ("swap", "unknown", "", "crypto_LUKS", "LVM2_member", "linux_raid_member")
DEFAULT_MAX_SIZE = 1024 * 1024
# pread chunk: well below the libguestfs protocol's 4 MiB message limit
_CHUNK = 1024 * 1024
PID_DIR = "/run/virtops-kvm"

_TCG_HINT = (
    "If this host cannot run KVM guests (nested virtualisation, no vmx/svm CPU flags), set force_tcg: yes "
    "(or LIBGUESTFS_BACKEND_SETTINGS=force_tcg); run 'libguestfs-test-tool' on the host for the full log."
)


def _runtime_message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def require_absolute(path: str, what: str) -> str:
    """Guest and host paths are always absolute: a relative one has no meaning inside an image."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise InvalidInput(
            f"The {what} {path!r} is not an absolute path.",
            hint=f"Give the full path starting with '/' (for example /etc/hosts), not {path!r}.",
        )
    if "\0" in path:
        raise InvalidInput(f"The {what} {path!r} contains a NUL byte.")
    return path


# --------------------------------------------------------------------------- drives


def _check_format(path: str, fmt: str | None, where: str) -> str:
    if fmt is None:
        return _storage.detect_format(path)
    if fmt not in KNOWN_FORMATS:
        raise InvalidInput(
            f"Unknown disk image format {fmt!r} for {path} ({where}).",
            hint=f"Use one of {', '.join(KNOWN_FORMATS)}, or leave the format out to detect it "
            "(qcow2 is recognised by its header, anything else is read as raw).",
        )
    return fmt


def _check_image(path: str, fmt: str) -> None:
    """Fail before the 20 s launch when the image or a file of its backing chain is missing."""
    if not os.path.exists(path):
        raise StorageError(
            f"Disk image {path} does not exist.",
            hint="Check the path (on the managed host), or the domain's disk source with 'virsh domblklist'.",
        )
    if os.path.isdir(path):
        raise InvalidInput(f"Disk image {path} is a directory.", hint="Give the image file itself.")
    if fmt == "qcow2":
        _storage.backing_chain(path)  # raises StorageError naming the missing backing file


def resolve_drives(disks: Iterable) -> list[dict]:
    """The ``disks`` option as drives: absolute, existing, format given or detected."""
    drives = []
    for item in disks:
        spec = {"path": item} if isinstance(item, str) else dict(item)
        path = require_absolute(spec.get("path"), "disk path")
        if os.path.exists(path):
            fmt = _check_format(path, spec.get("format"), "disks option")
        else:
            fmt = spec.get("format")
        _check_image(path, fmt)
        drives.append({"path": path, "format": fmt})
    if not drives:
        raise InvalidInput("The disks option is empty.", hint="List at least one disk image path.")
    return drives


def domain_drives(root) -> tuple[list[dict], list[str]]:
    """A domain's disks (from its XML) as drives, plus warnings for the ones skipped.

    Only real disks are added (no CD-ROM or floppy), in the domain's order so
    the appliance names them /dev/sda, /dev/sdb... as the guest's vda, vdb.
    libguestfs follows each qcow2's backing chain itself, so only the top image
    is added, with its format.
    """
    drives, skipped = [], []
    name = dx.name_of(root)
    for d in dx.disks(root):
        label = d["target"] or d["path"] or "?"
        if d["device"] != "disk":
            skipped.append(f"disk {label} of {name} is a {d['device']}; not added.")
            continue
        if d["type"] not in ("file", "block") or not d["path"]:
            skipped.append(f"disk {label} of {name} has source type {d['type']!r}; only file and block disks are read.")
            continue
        path = d["path"]
        fmt = _check_format(path, d["format"], f"disk {label} of domain {name}") if os.path.exists(path) else None
        _check_image(path, fmt)
        drives.append({"path": path, "format": fmt, "target": d["target"]})
    if not drives:
        raise InvalidInput(
            f"Domain {name} has no file or block disk to read.",
            hint="Check its XML with 'virsh dumpxml'; network disks and CD-ROMs are not read.",
        )
    return drives, skipped


def running_users(conn, paths: Iterable[str]) -> list[dict]:
    """Running domains that may write one of ``paths`` (as their own writable disk)."""
    users = _storage.disk_users(conn, list(paths))
    return [
        dict(u, path=p)
        for p, us in users.items()
        for u in us
        if u["active"] and u["relation"] == "disk" and u["writable"]
    ]


def running_refusal(what: str, domains: Iterable[str]) -> GuestfsError:
    names = ", ".join(sorted(set(domains)))
    return GuestfsError(
        f"Refusing to read {what}: it is in use by the running domain(s) {names}, whose content may change "
        "while it is read.",
        hint="Shut the domain down first (virtops.kvm.kvm_domain state=shutdown), or set allow_running: true to "
        "read it anyway (still read-only; the content may be inconsistent).",
    )


RUNNING_WARNING = (
    "Reading the disks of running domain(s) {names} (allow_running: true): opened read-only, but files the "
    "guest is writing may be inconsistent or stale."
)


# --------------------------------------------------------------------------- TCG


def kvm_usable(conn=None) -> tuple[bool, str]:
    """The host verdict (kvm_host's code): may libguestfs's qemu use KVM here?"""
    dtype, reason = _host.usable_domain_type(conn)
    return dtype == "kvm", reason


def decide_force_tcg(mode: str, verdict: Callable[[], tuple[bool, str]] = kvm_usable) -> tuple[bool, str]:
    """``force_tcg`` option -> (force software emulation?, why)."""
    if mode in ("yes", True, "true"):
        return True, "force_tcg: yes"
    if mode in ("no", False, "false"):
        return False, "force_tcg: no"
    usable, reason = verdict()
    if usable:
        return False, f"KVM is usable ({reason})"
    return True, f"KVM is not usable here ({reason}); libguestfs runs under software emulation (TCG)"


def backend_env(force_tcg: bool, environ: dict | None = None) -> dict:
    """Environment for guestmount: LIBGUESTFS_BACKEND_SETTINGS with force_tcg merged in."""
    environ = os.environ if environ is None else environ
    settings = [s for s in environ.get("LIBGUESTFS_BACKEND_SETTINGS", "").split(":") if s]
    if force_tcg and "force_tcg" not in settings:
        settings.append("force_tcg")
    return {"LIBGUESTFS_BACKEND_SETTINGS": ":".join(settings)} if settings else {}


# --------------------------------------------------------------------------- the session


def _default_handle():
    return _deps.guestfs.GuestFS(python_return_dict=True)


def _mount_order(mounts: dict) -> list[tuple[str, str]]:
    """Mount / before /boot before /boot/efi: sort by mountpoint length, as guestmount -i does."""
    return sorted(((mp, dev) for dev, mp in mounts.items()), key=lambda x: (len(x[0]), x[0]))


class GuestfsSession:
    """One read-only appliance for every read of a module run.

    ``launches`` counts appliance launches (tests assert it is 1).
    """

    def __init__(
        self,
        drives: list[dict],
        force_tcg: bool = False,
        handle_factory: Callable | None = None,
        tcg_reason: str | None = None,
    ):
        self.drives = drives
        self.force_tcg = force_tcg
        self.tcg_reason = tcg_reason
        self.handle_factory = handle_factory or _default_handle
        self.g = None
        self.launches = 0
        self.warnings: list[str] = []
        self.backend = None
        self._ids: dict[str, dict] | None = None

    # -- lifecycle

    def launch(self) -> None:
        if self.g is not None:
            return
        g = self.handle_factory()
        self.g = g
        try:
            g.set_network(False)
            settings = list(g.get_backend_settings())
            if self.force_tcg and "force_tcg" not in settings:
                g.set_backend_settings([*settings, "force_tcg"])
            self.backend = g.get_backend()
            for d in self.drives:
                opts = {"readonly": True}
                if d.get("format"):
                    opts["format"] = d["format"]
                g.add_drive_opts(d["path"], **opts)
        except RuntimeError as exc:
            raise GuestfsError(f"libguestfs refused a drive: {_runtime_message(exc)}") from exc
        self.launches += 1
        try:
            g.launch()
        except RuntimeError as exc:
            hint = (
                _TCG_HINT
                if not self.force_tcg
                else (
                    "force_tcg is already on; run 'libguestfs-test-tool' on the host to see why qemu or the "
                    "appliance failed (a missing kernel in /boot is a common cause: install linux-image-*)."
                )
            )
            msg = f"The libguestfs appliance failed to launch: {_runtime_message(exc)}"
            raise GuestfsError(msg, hint=hint) from exc

    def close(self) -> None:
        if self.g is None:
            return
        g, self.g = self.g, None
        try:
            g.shutdown()
        except RuntimeError as exc:
            self.warnings.append(f"libguestfs shutdown reported: {_runtime_message(exc)}")
        finally:
            g.close()

    def __enter__(self) -> GuestfsSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- finding filesystems

    def filesystems(self) -> dict[str, str]:
        return dict(self.g.list_filesystems())

    def mount(self, mounts: dict | None = None) -> dict | None:
        """Mount the guest's filesystems read-only; return the inspection findings (None for ``mounts``)."""
        self.launch()
        if mounts:
            self._mount_all(mounts, "mounts option")
            return None
        return self._inspect_and_mount()

    def _mount_all(self, mounts: dict, where: str) -> None:
        for mp, dev in _mount_order(mounts):
            try:
                self.g.mount_ro(dev, mp)
            except RuntimeError as exc:
                raise GuestfsError(
                    f"Cannot mount {dev} on {mp} ({where}): {_runtime_message(exc)}",
                    hint="Devices are named as the appliance sees them (/dev/sda1, /dev/sdb2, /dev/vg/lv), not as "
                    f"in the guest; filesystems found: {self._fs_summary()}. Leave mounts out to use inspection.",
                ) from exc

    def _fs_summary(self) -> str:
        try:
            fss = self.filesystems()
        except RuntimeError:
            return "unknown"
        return ", ".join(f"{d} ({t})" for d, t in sorted(fss.items())) or "none"

    def _inspect_and_mount(self) -> dict:
        g = self.g
        try:
            roots = list(g.inspect_os())
        except RuntimeError as exc:
            raise GuestfsError(f"libguestfs inspection failed: {_runtime_message(exc)}") from exc
        if roots:
            root = roots[0]
            if len(roots) > 1:
                self.warnings.append(
                    f"Inspection found {len(roots)} operating systems ({', '.join(roots)}); using {root}. "
                    "Give mounts to choose another."
                )
            mountpoints = dict(g.inspect_get_mountpoints(root))
            for mp, dev in _mount_order({dev: mp for mp, dev in mountpoints.items()}):
                try:
                    g.mount_ro(dev, mp)
                except RuntimeError as exc:
                    # what guestmount -i does too: a broken /boot must not hide /etc
                    self.warnings.append(f"Could not mount {dev} on {mp}: {_runtime_message(exc)}")
            major, minor = g.inspect_get_major_version(root), g.inspect_get_minor_version(root)
            return dict(
                method="inspection",
                root=root,
                os_type=g.inspect_get_type(root),
                distro=g.inspect_get_distro(root),
                product_name=g.inspect_get_product_name(root),
                version=f"{major}.{minor}",
                hostname=g.inspect_get_hostname(root),
                mountpoints=mountpoints,
            )
        dev, _fstype = self.single_filesystem()
        self._mount_all({dev: "/"}, "single filesystem")
        return dict(
            method="single-filesystem",
            root=dev,
            os_type=None,
            distro=None,
            product_name=None,
            version=None,
            hostname=None,
            mountpoints={"/": dev},
        )

    def single_filesystem(self) -> tuple[str, str]:
        """The fallback when inspection finds no OS: the one mountable filesystem, or a clear error."""
        self.launch()
        candidates = {d: t for d, t in self.filesystems().items() if t not in _NOT_MOUNTABLE}
        if len(candidates) == 1:
            return next(iter(candidates.items()))
        raise GuestfsError(
            "No operating system found on the disk(s): libguestfs inspection recognised none, and there is "
            f"{'no' if not candidates else 'more than one'} filesystem to mount at / "
            f"(filesystems: {self._fs_summary()}).",
            hint="Give the mounts option (device: mountpoint, for example {'/dev/sda1': '/'}); devices are named "
            "as the appliance sees them (/dev/sda1, not /dev/vda1).",
            filesystems=candidates,
        )

    # -- reads

    def _owners(self) -> dict[str, dict]:
        """uid/gid -> name from the guest's /etc/passwd and /etc/group (read once)."""
        if self._ids is None:
            self._ids = {"passwd": {}, "group": {}}
            for name in ("passwd", "group"):
                path = f"/etc/{name}"
                try:
                    if not self.g.is_file(path, followsymlinks=True) or self.g.statns(path)["st_size"] > 4 << 20:
                        continue
                    text = self._read_bytes(path, 4 << 20).decode("utf-8", "replace")
                except RuntimeError:
                    continue
                for line in text.splitlines():
                    parts = line.split(":")
                    if len(parts) >= 3 and parts[2].isdigit():
                        self._ids[name].setdefault(int(parts[2]), parts[0])
        return self._ids

    def _read_bytes(self, path: str, max_size: int) -> bytes:
        """The file's bytes by pread in chunks, stopping past ``max_size``.

        pread is one protocol round trip (~5 ms under TCG); read_file/cat go
        through a temporary file and cost ~380 ms each, which made 20 files
        take a third longer than one.
        """
        chunks, total = [], 0
        while True:
            data = bytes(self.g.pread(path, _CHUNK, total))
            chunks.append(data)
            total += len(data)
            if len(data) < _CHUNK or total > max_size:
                return b"".join(chunks)

    def read(self, path: str, max_size: int = DEFAULT_MAX_SIZE) -> tuple[dict, bytes | None]:
        """One file: its metadata and content, or ``exists: false``, or an ``error`` that says why not.

        Returns (entry, raw bytes or None) so a caller can also copy the bytes out.
        """
        g = self.g
        if not g.exists(path):
            return {"exists": False}, None
        try:
            st = g.statns(path)  # follows symlinks, inside the guest's root
        except RuntimeError as exc:
            # a dangling symlink or a path through a non-directory
            return {"exists": False, "error": _runtime_message(exc)}, None
        ids = self._owners()
        mode = st["st_mode"]
        entry = {
            "exists": True,
            "size": st["st_size"],
            "mode": f"{stat.S_IMODE(mode):04o}",
            "uid": st["st_uid"],
            "gid": st["st_gid"],
            "owner": ids["passwd"].get(st["st_uid"], str(st["st_uid"])),
            "group": ids["group"].get(st["st_gid"], str(st["st_gid"])),
            "mtime": st["st_mtime_sec"],
        }
        if stat.S_ISDIR(mode):
            entry["error"] = f"{path} is a directory; list it with list_dirs instead of paths."
            return entry, None
        if not stat.S_ISREG(mode):
            entry["error"] = f"{path} is not a regular file (mode {mode:o}); only regular files are read."
            return entry, None
        if st["st_size"] > max_size:
            entry["error"] = _too_large(path, st["st_size"], max_size)
            return entry, None
        try:
            data = self._read_bytes(path, max_size)
        except RuntimeError as exc:
            entry["error"] = f"Reading {path} failed: {_runtime_message(exc)}"
            return entry, None
        if len(data) > max_size:  # grew between stat and read (allow_running)
            entry["error"] = _too_large(path, len(data), max_size)
            return entry, None
        entry["size"] = len(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            entry["content"] = data.decode("utf-8")
        except UnicodeDecodeError:
            entry["content_b64"] = base64.b64encode(data).decode("ascii")
        return entry, data

    def list_dir(self, path: str) -> tuple[list[str] | None, str | None]:
        """(sorted names, error): names None when the directory does not exist."""
        g = self.g
        if not g.exists(path):
            return None, None
        if not g.is_dir(path, followsymlinks=True):
            return None, f"{path} is not a directory; read it with paths instead of list_dirs."
        try:
            return sorted(g.ls(path)), None
        except RuntimeError as exc:
            return None, f"Listing {path} failed: {_runtime_message(exc)}"


def _human(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _too_large(path: str, size: int, max_size: int) -> str:
    return (
        f"{path} is {size} bytes ({_human(size)}), larger than max_size {max_size} bytes; not read "
        f"(never truncated). Raise max_size to at least {size} to read it."
    )


# --------------------------------------------------------------------------- dest (host side)


def dest_path(dest: str, guest_path: str) -> str:
    """Where a guest file lands under ``dest``: the guest path below it (dest/etc/hosts)."""
    rel = os.path.normpath(guest_path).lstrip("/")
    if not rel or rel == "." or rel.startswith(".."):
        raise InvalidInput(f"Cannot copy {guest_path!r} below dest: it is not a file path.")
    return os.path.join(dest, rel)


def _file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"Cannot read {path} to compare it: {exc.strerror}.") from exc


def write_dest(dest: str, guest_path: str, data: bytes, mode: str, check_mode: bool) -> tuple[str, bool]:
    """Copy one read file below ``dest`` on the managed host, only when its content differs.

    The file gets the guest's permission bits without setuid/setgid/sticky and
    group/other write: a copy is for looking at, not for running privileged.
    """
    target = dest_path(dest, guest_path)
    wanted_mode = int(mode, 8) & 0o755
    current = _file_sha256(target)
    same_mode = current is not None and stat.S_IMODE(os.stat(target).st_mode) == wanted_mode
    if current == hashlib.sha256(data).hexdigest() and same_mode:
        return target, False
    if check_mode:
        return target, True
    directory = os.path.dirname(target)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".virtops-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, wanted_mode)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise StorageError(f"Cannot write {target}: {exc.strerror}.", hint="Check dest and its permissions.") from exc
    return target, True


# --------------------------------------------------------------------------- one read run


def read_guest(
    session: GuestfsSession,
    paths: Iterable[str] = (),
    list_dirs: Iterable[str] = (),
    mounts: dict | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    fail_missing: bool = False,
    dest: str | None = None,
    check_mode: bool = False,
) -> dict:
    """Launch once, mount, read every path and listing; return the module's result.

    Per-path problems (too large, a directory, unreadable, and missing paths
    with fail_missing) do not stop the other reads: every path gets its entry,
    then the run fails naming each problem, with the full result attached.
    """
    paths = [require_absolute(p, "path in paths") for p in paths]
    list_dirs = [require_absolute(p, "path in list_dirs") for p in list_dirs]
    if dest is not None:
        require_absolute(dest, "dest")
    with session:
        inspection = session.mount(mounts)
        files, dirs, problems, dest_changes = {}, {}, [], []
        for path in dict.fromkeys(paths):
            entry, data = session.read(path, max_size)
            if entry.get("error"):
                problems.append(entry["error"])
            elif not entry["exists"]:
                if fail_missing:
                    entry["error"] = f"{path} does not exist in the guest (fail_missing: true)."
                    problems.append(entry["error"])
            elif dest is not None:
                entry["dest"], changed = write_dest(dest, path, data, entry["mode"], check_mode)
                if changed:
                    dest_changes.append(entry["dest"])
            files[path] = entry
        for path in dict.fromkeys(list_dirs):
            names, error = session.list_dir(path)
            if error:
                problems.append(error)
            elif names is None:
                if fail_missing:
                    problems.append(f"Directory {path} does not exist in the guest (fail_missing: true).")
                else:
                    session.warnings.append(f"Directory {path} does not exist in the guest.")
            dirs[path] = names
    result = dict(
        changed=bool(dest_changes),
        files=files,
        dirs=dirs,
        inspection=inspection,
        warnings_list=list(session.warnings),
        appliance=dict(
            launches=session.launches,
            backend=session.backend,
            force_tcg=session.force_tcg,
            force_tcg_reason=session.tcg_reason,
        ),
    )
    if dest is not None:
        result["diff"] = dict(before={"dest_files": []}, after={"dest_files": dest_changes})
    if problems:
        raise GuestfsError(
            f"{len(problems)} of the requested paths could not be read: " + " | ".join(problems),
            **{k: v for k, v in result.items() if k != "warnings_list"},
        )
    return result


# --------------------------------------------------------------------------- guestmount


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
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.runner = runner
        self.mount_point = os.path.normpath(require_absolute(mount_point, "mount_point"))
        self.pid_dir = pid_dir
        self.mountinfo = mountinfo
        self.sleep = sleep
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
            for mp, dev in _mount_order(mounts):
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
                hint=_TCG_HINT if "force_tcg" not in env.get("LIBGUESTFS_BACKEND_SETTINGS", "") else None,
            )
        return {"argv": argv, "mounts": mounts}

    def unmount(self, env: dict, timeout: float = 120) -> None:
        """guestunmount, then wait until the guestmount process has flushed and exited."""
        pid = self.pid()
        rc, out, err = self.runner(["guestunmount", self.mount_point], env)
        if rc != 0:
            raise GuestfsError(
                f"guestunmount {self.mount_point} failed (rc={rc}): {(err or out).strip()}",
                hint="A process may still use files below it (see 'fuser -vm MOUNT_POINT'); stop it and retry.",
            )
        deadline = self.clock() + timeout
        while pid is not None and _pid_alive(pid):
            if self.clock() > deadline:
                raise TimeoutExpired(
                    f"guestmount (pid {pid}) for {self.mount_point} did not exit within {timeout} s after "
                    "guestunmount.",
                    hint="It may still be shutting its appliance down; run the task again to wait longer.",
                )
            self.sleep(0.2)
        try:
            os.unlink(self.pid_file)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------- the module's backend


class GuestfsManager:
    """Options -> source drives -> safety checks -> read run or (un)mount -> result.

    ``connect(uri)`` is a context manager yielding a libvirt connection (the
    collection's ``_connection.connect``), ``runner(argv, env)`` runs guestmount
    and guestunmount, ``handle_factory`` makes libguestfs handles.
    """

    def __init__(
        self,
        params: dict,
        check_mode: bool,
        connect: Callable,
        runner: Runner,
        handle_factory: Callable | None = None,
        which: Callable[[str], str | None] | None = None,
    ):
        self.p = params
        self.check_mode = check_mode
        self.connect = connect
        self.runner = runner
        self.handle_factory = handle_factory
        self.which = which
        self.warnings: list[str] = []
        self.tcg_reason: str | None = None

    # -- source and safety

    def _domain_source(self, conn) -> list[dict]:
        lv = _deps.libvirt
        name = self.p["domain"]
        try:
            dom = conn.lookupByName(name)
            xml = dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)
        except lv.libvirtError as exc:
            if exc.get_error_code() == lv.VIR_ERR_NO_DOMAIN:
                raise DomainNotFound(
                    f"Domain {name} is not defined at {self.p.get('uri')}.",
                    hint="Check the name with 'virsh list --all' (and the uri option).",
                ) from exc
            raise libvirt_failed(exc, f"Reading the XML of domain {name}") from exc
        drives, skipped = domain_drives(dx.parse(xml, what=f"XML of domain {name}"))
        self.warnings.extend(skipped)
        return drives

    def _check_running(self, conn, drives: list[dict]) -> None:
        users = running_users(conn, [d["path"] for d in drives])
        if not users:
            return
        names = sorted({u["domain"] for u in users})
        what = f"domain {self.p['domain']}'s disks" if self.p.get("domain") else "these disks"
        if not self.p.get("allow_running"):
            raise running_refusal(what, names)
        self.warnings.append(RUNNING_WARNING.format(names=", ".join(names)))

    def source(self) -> list[dict]:
        """The drives to add, after the running-domain check; decides force_tcg on the way."""
        if self.p.get("domain"):
            with self.connect(self.p.get("uri")) as conn:
                drives = self._domain_source(conn)
                self._check_running(conn, drives)
                self._decide_tcg(conn)
            return drives
        drives = resolve_drives(self.p["disks"])
        try:
            with self.connect(self.p.get("uri")) as conn:
                self._check_running(conn, drives)
                self._decide_tcg(conn)
        except DaemonNotRunning:
            # no daemon, so no domain of this URI runs; the images are still read read-only
            self.warnings.append(
                f"libvirt at {self.p.get('uri')} is not running, so no domain can be checked for using these disks."
            )
            self._decide_tcg(None)
        return drives

    def _decide_tcg(self, conn) -> None:
        self.force_tcg, self.tcg_reason = decide_force_tcg(self.p.get("force_tcg", "auto"), lambda: kvm_usable(conn))

    def _mounts(self) -> dict | None:
        mounts = self.p.get("mounts")
        if not mounts:
            return None
        out = {}
        for dev, mp in mounts.items():
            require_absolute(str(dev), "device in mounts")
            out[str(dev)] = require_absolute(str(mp), f"mountpoint for {dev} in mounts")
        return out

    def session(self, drives: list[dict]) -> GuestfsSession:
        return GuestfsSession(
            drives, force_tcg=self.force_tcg, handle_factory=self.handle_factory, tcg_reason=self.tcg_reason
        )

    # -- states

    def run(self) -> dict:
        state = self.p.get("state") or "read"
        if state != "read":
            for opt in ("paths", "list_dirs", "dest"):
                if self.p.get(opt):
                    raise InvalidInput(
                        f"{opt} is only used with state=read (state is {state}).",
                        hint="Read files in a separate task with state=read, or through the mount_point.",
                    )
        if state == "unmounted":
            return self.unmounted()
        mounts = self._mounts()
        drives = self.source()
        if state == "mounted":
            return self.mounted(drives, mounts)
        result = read_guest(
            self.session(drives),
            paths=self.p.get("paths") or (),
            list_dirs=self.p.get("list_dirs") or (),
            mounts=mounts,
            max_size=self.p.get("max_size") or DEFAULT_MAX_SIZE,
            fail_missing=bool(self.p.get("fail_missing")),
            dest=self.p.get("dest"),
            check_mode=self.check_mode,
        )
        self.warnings.extend(result.pop("warnings_list"))
        result.update(mounted=False, mount_point=None)
        return result

    def _guestmount(self) -> GuestMount:
        if not self.p.get("mount_point"):
            raise InvalidInput("state=mounted and state=unmounted need mount_point.")
        return GuestMount(self.runner, self.p["mount_point"])

    def _need_tool(self, tool: str) -> None:
        if self.which is not None and not self.which(tool):
            raise GuestfsError(
                f"{tool} is not installed on the managed host.",
                hint="Install libguestfs-tools (Debian/Ubuntu) or guestfs-tools / libguestfs-tools-c (Fedora/RHEL).",
            )

    def mounted(self, drives: list[dict], mounts: dict | None) -> dict:
        gm = self._guestmount()
        result = dict(changed=False, mounted=True, mount_point=gm.mount_point, files={}, dirs={}, inspection=None)
        status = gm.status()
        if status == "foreign":
            raise gm.foreign_error()
        if status == "mounted":
            images = gm.mounted_images()
            wanted = sorted(os.path.realpath(d["path"]) for d in drives)
            if images is None:
                self.warnings.append(f"{gm.mount_point} holds a guestmount whose disks cannot be told; left as it is.")
            elif sorted(os.path.realpath(i) for i in images) != wanted:
                raise Conflict(
                    f"{gm.mount_point} already holds a guestmount of {', '.join(images)}, not of "
                    f"{', '.join(d['path'] for d in drives)}.",
                    hint="Unmount it first (state=unmounted) or choose another mount_point.",
                )
            return result
        result["changed"] = True
        result["diff"] = dict(before={"mounted": False}, after={"mounted": True})
        if self.check_mode:
            self.warnings.append(f"Check mode: guestmount on {gm.mount_point} not run.")
            return result
        self._need_tool("guestmount")
        probe: dict = {}

        def find_mounts() -> dict:
            with self.session(drives) as s:
                dev, fstype = s.single_filesystem()
            probe.update(method="single-filesystem", root=dev, mountpoints={"/": dev}, fstype=fstype)
            return {dev: "/"}

        done = gm.mount(drives, mounts, backend_env(self.force_tcg), find_mounts)
        result["guestmount_argv"] = done["argv"]
        if probe:
            result["inspection"] = dict(os_type=None, distro=None, version=None, hostname=None, **probe)
        return result

    def unmounted(self) -> dict:
        gm = self._guestmount()
        result = dict(changed=False, mounted=False, mount_point=gm.mount_point, files={}, dirs={}, inspection=None)
        status = gm.status()
        if status == "unmounted":
            return result
        if status == "foreign":
            raise gm.foreign_error()
        result["changed"] = True
        result["diff"] = dict(before={"mounted": True}, after={"mounted": False})
        if self.check_mode:
            self.warnings.append(f"Check mode: {gm.mount_point} not unmounted.")
            return result
        self._need_tool("guestunmount")
        gm.unmount(backend_env(False), timeout=self.p.get("unmount_timeout") or 120)
        return result
