# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One read run: every path and listing through one session, within max_size, optionally copied to dest.

A file is read whole or not at all: one larger than ``max_size`` is never
truncated, it gets an ``error`` that says its size. Per-path problems do not
stop the other reads; the run fails at the end naming each one, with the
full result attached. Copies below ``dest`` are the only thing a read run
changes, and only when their content or mode differs. ``read_guests`` does
the same for several domains whose drives share one launch.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, fields

from ansible_collections.virtops.kvm.plugins.module_utils._errors import GuestfsError, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import require_absolute
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.session import GuestfsSession, runtime_message
from ansible_collections.virtops.kvm.plugins.module_utils._validate import validate_name

# The max_size option's default (its only copy: the argument spec uses this constant).
DEFAULT_MAX_SIZE = 1024 * 1024
# pread chunk: well below the libguestfs protocol's 4 MiB message limit
_CHUNK = 1024 * 1024
# /etc/passwd and /etc/group larger than this are not read for owner names
_MAX_ID_FILE = 4 << 20


def _human(n: float) -> str:
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


class GuestReader:
    """Files and listings of a mounted appliance, with owner names from the guest's own passwd/group."""

    def __init__(self, g):
        self.g = g
        self._ids: dict[str, dict] | None = None

    def _owners(self) -> dict[str, dict]:
        """uid/gid -> name from the guest's /etc/passwd and /etc/group (read once)."""
        if self._ids is None:
            self._ids = {"passwd": {}, "group": {}}
            for name in ("passwd", "group"):
                path = f"/etc/{name}"
                try:
                    if not self.g.is_file(path, followsymlinks=True) or self.g.statns(path)["st_size"] > _MAX_ID_FILE:
                        continue
                    text = self._read_bytes(path, _MAX_ID_FILE).decode("utf-8", "replace")
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

    def read(self, path: str, max_size: int) -> tuple[dict, bytes | None]:
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
            return {"exists": False, "error": runtime_message(exc)}, None
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
            entry["error"] = f"Reading {path} failed: {runtime_message(exc)}"
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
            return None, f"Listing {path} failed: {runtime_message(exc)}"


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


@dataclass
class Reads:
    """What a read run takes from each guest: the files and listings, their limits, where copies go.

    The fields are kvm_guestfs's options of the same names (and the check-mode flag); made, they are checked.
    """

    paths: Iterable[str] = ()
    list_dirs: Iterable[str] = ()
    max_size: int = DEFAULT_MAX_SIZE
    fail_missing: bool = False
    dest: str | None = None
    check_mode: bool = False

    def __post_init__(self) -> None:
        self.paths = [require_absolute(p, "path in paths") for p in self.paths]
        self.list_dirs = [require_absolute(p, "path in list_dirs") for p in self.list_dirs]
        if self.dest is not None:
            require_absolute(self.dest, "dest")


#: the fields of ``Reads`` that are kvm_guestfs options (``check_mode`` is the run's flag)
READ_OPTIONS = tuple(f.name for f in fields(Reads) if f.name != "check_mode")


def _read_mounted(reader: GuestReader, reads: Reads, dest: str | None, warn) -> tuple[dict, dict, list[str], list[str]]:
    """Every path and listing of the mounted guest, copied below ``dest``: (files, dirs, problems, dest written)."""
    files, dirs, problems, dest_changes = {}, {}, [], []
    for path in dict.fromkeys(reads.paths):
        entry, data = reader.read(path, reads.max_size)
        if entry.get("error"):
            problems.append(entry["error"])
        elif not entry["exists"]:
            if reads.fail_missing:
                entry["error"] = f"{path} does not exist in the guest (fail_missing: true)."
                problems.append(entry["error"])
        elif dest is not None:
            entry["dest"], changed = write_dest(dest, path, data, entry["mode"], reads.check_mode)
            if changed:
                dest_changes.append(entry["dest"])
        files[path] = entry
    for path in dict.fromkeys(reads.list_dirs):
        names, error = reader.list_dir(path)
        if error:
            problems.append(error)
        elif names is None:
            if reads.fail_missing:
                problems.append(f"Directory {path} does not exist in the guest (fail_missing: true).")
            else:
                warn(f"Directory {path} does not exist in the guest.")
        dirs[path] = names
    return files, dirs, problems, dest_changes


def _prefixed(warnings: list, name: str):
    return lambda message: warnings.append(f"{name}: {message}")


def _appliance(session: GuestfsSession) -> dict:
    return dict(
        launches=session.launches,
        backend=session.backend,
        force_tcg=session.force_tcg,
        force_tcg_reason=session.tcg_reason,
    )


def _finish(result: dict, dest: str | None, dest_changes: list[str], problems: list[str], what: str) -> dict:
    """The diff of the dest copies; the run's failure when any path could not be read."""
    if dest is not None:
        result["diff"] = dict(before={"dest_files": []}, after={"dest_files": dest_changes})
    if problems:
        raise GuestfsError(
            f"{len(problems)} of the requested {what} could not be read: " + " | ".join(problems),
            **{k: v for k, v in result.items() if k != "warnings_list"},
        )
    return result


def read_guest(session: GuestfsSession, mounts: dict | None = None, **options) -> dict:
    """Launch once, mount, read every path and listing (``options``: the fields of ``Reads``); the module's result.

    Per-path problems (too large, a directory, unreadable, and missing paths
    with fail_missing) do not stop the other reads: every path gets its entry,
    then the run fails naming each problem, with the full result attached.
    """
    reads = Reads(**options)
    with session:
        inspection = session.mount(mounts)
        files, dirs, problems, dest_changes = _read_mounted(
            GuestReader(session.g), reads, reads.dest, session.warnings.append
        )
    result = dict(
        changed=bool(dest_changes),
        files=files,
        dirs=dirs,
        inspection=inspection,
        warnings_list=list(session.warnings),
        appliance=_appliance(session),
    )
    return _finish(result, reads.dest, dest_changes, problems, "paths")


def _read_launch(session, parts, mounts, reads, domains: dict, problems: list, dest_changes: list) -> None:
    """One launch of ``read_guests``: each of ``parts`` mounted in turn, read into ``domains``, unmounted."""
    with session:
        session.launch()
        for part in parts:
            warn = _prefixed(session.warnings, part.name)
            try:
                inspection = session.mount(mounts, part, parts)
            except GuestfsError as exc:
                problems.append(f"{part.name}: {exc.message}")
                domains[part.name] = dict(files={}, dirs={}, inspection=None, error=exc.message)
                session.unmount_all()
                continue
            own_dest = os.path.join(reads.dest, part.name) if reads.dest is not None else None
            files, dirs, own, written = _read_mounted(GuestReader(session.g), reads, own_dest, warn)
            session.unmount_all()
            problems.extend(f"{part.name}: {p}" for p in own)
            dest_changes.extend(written)
            domains[part.name] = dict(files=files, dirs=dirs, inspection=inspection)


def read_guests(launches: list, mounts: dict | None = None, **options) -> dict:
    """Several domains, each mounted in turn, read and unmounted, over one or more appliance launches.

    ``launches``: ``(open_session, parts)`` per launch: ``open_session()`` is a
    context manager giving the session of that launch's drives, ``parts`` the
    domains whose drives they are (an appliance takes at most
    ``devices.MAX_DRIVES``). The result's ``domains`` maps each domain to its
    ``files``, ``dirs`` and ``inspection``; ``mounts`` name each guest's devices
    as its own, and ``dest`` gets one directory per domain. A domain that
    cannot be mounted or read does not stop the others; the run fails at the
    end naming each problem, with the full result attached.
    """
    reads = Reads(**options)
    dest = reads.dest
    if dest is not None:
        for _open, parts in launches:
            for part in parts:
                validate_name(part.name, "the name of domain (a directory below dest)")
    domains, problems, dest_changes, warnings = {}, [], [], []
    appliance, launched = {}, 0
    for open_session, parts in launches:
        with open_session() as session:
            _read_launch(session, parts, mounts, reads, domains, problems, dest_changes)
            warnings.extend(session.warnings)
            launched += session.launches
            appliance = _appliance(session)
    result = dict(
        changed=bool(dest_changes),
        files={},
        dirs={},
        inspection=None,
        domains=domains,
        warnings_list=warnings,
        appliance=dict(appliance, launches=launched),
    )
    return _finish(result, dest, dest_changes, problems, "paths of the domains")
