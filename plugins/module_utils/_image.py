# Private to the virtops.kvm collection: not a public API, may change without notice.
"""kvm_image on the managed host: a base image's probe, its install without overwrite, and its digest cache.

The action plugin (plugins/action/kvm_image.py) hashes ``src`` on the controller and runs the module
(``ImageManager``, through ``_manager.run_module`` like every module) in steps: ``probe`` (is ``dest``
absent, identical or different?), ``install`` (check the file staged beside ``dest``, hard-link it
into place, never over an existing file) and ``cleanup``.

The digest of ``dest`` is kept in its xattr ``user.virtops.sha256`` (JSON ``{sha256, size, mtime_ns,
ctime_ns}``) so a rerun over a 10 GiB base does not hash it. Writing the xattr itself moves ctime (as
our chmod and link do), so ``ctime_ns`` is the latest ctime the record vouches for, a second after it
was written. It is trusted while size and mtime are equal and ctime is not later; any later change
(a write, a utime putting the old mtime back, a chmod) moves ctime past it. No xattrs: hash every run.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import json
import os
import pwd
import re
import stat
import time

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager

XATTR = "user.virtops.sha256"
# How long after a record is written the file's ctime may still move (our own chmod, link, unlink).
SEAL_NS = 1_000_000_000
CHUNK = 4 * 1024 * 1024
PARTIAL = ".virtops-partial-"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TOKEN = re.compile(r"[0-9a-f]{16}")
_OCTAL = re.compile(r"(?:0o)?[0-7]{1,4}")

ARGUMENT_SPEC = dict(
    src=dict(type="str", required=True),
    dest=dict(type="path", required=True),
    checksum=dict(type="str"),
    mode=dict(type="raw", default="0444"),
    owner=dict(type="str"),
    group=dict(type="str"),
    _step=dict(type="str", choices=["probe", "install", "cleanup"], default="probe"),
    _sha256=dict(type="str"),
    _staged=dict(type="str"),
)


def parse_checksum(value: str | None) -> str | None:
    """The sha256 hex digest ``value`` names (64 hex digits, optionally after ``sha256:``), or None."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip().lower()
    text = text[len("sha256:") :] if text.startswith("sha256:") else text
    if not _HEX64.fullmatch(text):
        raise InvalidInput(
            f"checksum {value!r} is not a sha256.",
            hint="Give the 64 hex digits of the image's sha256, optionally after 'sha256:' (sha256sum FILE).",
        )
    return text


def check_dest(dest: str) -> str:
    """``dest`` checked: an absolute path naming a file, without '..', NUL or line breaks."""
    text = str(dest or "")
    if not text or any(c in text for c in "\0\n\r"):
        raise InvalidInput(f"dest {text!r} is empty or holds a NUL or line break.", hint="Give the image's path.")
    if not os.path.isabs(text) or text.endswith("/"):
        raise InvalidInput(f"dest {text!r} is not an absolute path to a file.", hint="Give e.g. /var/lib/base.qcow2.")
    if ".." in text.split("/"):
        raise InvalidInput(f"dest {text!r} has a '..' component.", hint="Give the path without '..'.")
    path = os.path.normpath(text)
    name = os.path.basename(path)
    if name in ("", ".") or len(name) + len(PARTIAL) + 18 > 255:
        raise InvalidInput(f"dest {text!r} does not end in a usable file name (at most 220 characters).")
    return path


def staged_path(dest: str, token: str) -> str:
    """Where the transfer of ``dest`` is staged: a hidden name beside it, on the same file system."""
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}{PARTIAL}{token}")


def check_staged(dest: str, staged: str | None) -> str:
    """``staged`` if it is a name ``staged_path(dest, ...)`` makes; refuses anything else (it gets removed)."""
    token = (staged or "").rpartition(PARTIAL)[2]
    if not staged or not _TOKEN.fullmatch(token) or staged != staged_path(dest, token):
        raise InvalidInput(f"_staged {staged!r} is not a staging name of {dest}.", hint="It is set by the action.")
    return staged


def parse_mode(value) -> int:
    """An octal mode string ('0444') or its integer value, as the permission bits."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    if isinstance(value, str) and _OCTAL.fullmatch(value.strip()):
        return int(value.strip().replace("0o", ""), 8)
    raise InvalidInput(f"mode {value!r} is not an octal mode.", hint="Quote it: mode: '0444'.")


def resolve_ids(owner: str | None, group: str | None) -> tuple:
    """(uid, gid) of the owner and group names or numbers; None where not given."""

    def one(name, lookup, what):
        if name is None or str(name) == "":
            return None
        if str(name).isdigit():
            return int(name)
        try:
            return lookup(str(name))
        except KeyError:
            raise InvalidInput(
                f"{what} {name!r} does not exist on this host.", hint=f"Create it or fix {what}."
            ) from None

    return one(owner, lambda n: pwd.getpwnam(n).pw_uid, "owner"), one(group, lambda n: grp.getgrnam(n).gr_gid, "group")


def _key(st: os.stat_result) -> tuple:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def hash_file(path: str) -> tuple:
    """(sha256, stat) of a regular file, refused when it changed while it was read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise StorageError(f"Cannot read {path}: {exc.strerror}.") from exc
    with os.fdopen(fd, "rb") as f:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise Conflict(f"{path} is not a regular file.")
        h = hashlib.sha256()
        try:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
        except OSError as exc:
            raise StorageError(f"Cannot read {path}: {exc.strerror}.") from exc
        after = os.fstat(fd)
    if _key(before) != _key(after):
        raise StorageError(f"{path} changed while it was read.", hint="Run again once nothing writes to it.")
    return h.hexdigest(), after


def read_record(path: str, st: os.stat_result) -> str | None:
    """The sha256 the file's record vouches for, or None: no record, no xattr support, or stale."""
    try:
        record = json.loads(os.getxattr(path, XATTR))
    except (AttributeError, OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("ctime_ns"), int):
        return None
    sha = record.get("sha256")
    fresh = record.get("size") == st.st_size and record.get("mtime_ns") == st.st_mtime_ns
    if fresh and st.st_ctime_ns <= record["ctime_ns"] and isinstance(sha, str) and _HEX64.fullmatch(sha):
        return sha
    return None


def write_record(path: str, sha256: str, hashed: os.stat_result) -> bool:
    """Record ``sha256`` for the content ``hashed`` described; True when it now vouches for the file.

    Not recorded when size or mtime moved since (the content may have) or xattrs are unsupported.
    """
    try:
        now = os.stat(path)
        if (now.st_size, now.st_mtime_ns) != (hashed.st_size, hashed.st_mtime_ns):
            return False
        seal = max(time.time_ns(), now.st_ctime_ns) + SEAL_NS
        record = dict(sha256=sha256, size=now.st_size, mtime_ns=now.st_mtime_ns, ctime_ns=seal)
        os.setxattr(path, XATTR, json.dumps(record, sort_keys=True).encode())
        return read_record(path, os.stat(path)) == sha256
    except (AttributeError, OSError):  # no xattrs here (ENOTSUP), a read-only mode for a non-root user, ...
        return False


def digest(path: str) -> tuple:
    """(sha256, stat, from the record?) of the file at ``path``."""
    st = os.stat(path)
    sha = read_record(path, st)
    if sha is not None:
        return sha, st, True
    sha, st = hash_file(path)
    return sha, st, False


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _fmt(mode: int) -> str:
    return f"{mode:04o}"


class ImageTarget:
    """One step of kvm_image on the managed host: params and check mode in, a result dict out."""

    def __init__(self, params: dict, check_mode: bool = False):
        self.p = params
        self.check_mode = check_mode
        self.step = params.get("_step") or "probe"
        self.dest = check_dest(params["dest"])
        self.src = params.get("src") or "src"
        self.sha256 = parse_checksum(params.get("_sha256")) or parse_checksum(params.get("checksum"))
        if self.sha256 is None and self.step != "cleanup":
            raise InvalidInput("The sha256 of src is unknown.", hint="Run virtops.kvm.kvm_image as a task.")
        self.mode = parse_mode(params.get("mode", "0444"))
        self.uid, self.gid = resolve_ids(params.get("owner"), params.get("group"))
        self.warnings: list = []
        self.changes: list = []

    def run(self) -> dict:
        return {"probe": self.probe, "install": self.install, "cleanup": self.cleanup}[self.step]()

    def probe(self) -> dict:
        self._check_dir()
        self._warn_leftovers()
        if self.mode & 0o222:
            self.warnings.append(f"mode {_fmt(self.mode)} lets {self.dest} be written; a base under overlays must not.")
        if self._dest_stat() is None:
            self.changes.append(f"copy {self.src} to {self.dest}")
            return self._result(None, copied=False, needs_copy=True, cached=None)
        return self._existing(copied=False)

    def install(self) -> dict:
        staged = check_staged(self.dest, self.p.get("_staged"))
        try:
            self._check_dir()
            sha, st = hash_file(staged)
            if sha != self.sha256:
                raise StorageError(
                    f"The copy of {self.src} staged at {staged} has sha256 {sha}, not {self.sha256}: it was damaged "
                    "on the way or src changed during the transfer. It was removed; nothing was put at "
                    f"{self.dest}.",
                    hint="Run the task again.",
                )
            uid = os.geteuid() if self.uid is None else self.uid
            gid = os.getegid() if self.gid is None else self.gid
            self._set_attrs(staged, st, uid, gid, note=False)
            _disk_files.fsync(staged)
            write_record(staged, sha, st)
            try:
                os.link(staged, self.dest)
            except FileExistsError:  # another run (or someone) put a file there meanwhile
                return self._existing(copied=False)
            except OSError as exc:
                raise StorageError(
                    f"Cannot link {staged} to {self.dest}: {exc.strerror}.",
                    hint="kvm_image puts images in place with a hard link (never overwriting); use a directory on a "
                    "file system that has them (ext4, xfs, btrfs, ...).",
                ) from exc
            _unlink(staged)
            _disk_files.fsync(os.path.dirname(self.dest))
            self.changes.append(f"copy {self.src} to {self.dest}")
            final = os.stat(self.dest)
            if read_record(self.dest, final) != sha:  # the link took more than SEAL_NS: record it anew
                write_record(self.dest, sha, final)
            return self._result(sha, copied=True, size=final.st_size)
        finally:
            _unlink(staged)

    def cleanup(self) -> dict:
        staged = check_staged(self.dest, self.p.get("_staged"))
        return dict(changed=False, dest=self.dest, removed=_unlink(staged))

    def _existing(self, copied: bool) -> dict:
        """dest exists: the same image (attributes set right) or a refusal that names both checksums."""
        if self._dest_stat() is None:
            raise Conflict(f"{self.dest} appeared and vanished while this task ran.", hint="Run the task again.")
        sha, st, cached = digest(self.dest)
        if sha != self.sha256:
            raise Conflict(
                f"{self.dest} exists with other content: its sha256 is {sha}, {self.src} has {self.sha256}. "
                "kvm_image never overwrites an image (overlays may be built on it).",
                hint="If no overlay uses it, remove or rename it yourself, then run the task again.",
                path=self.dest,
                dest_sha256=sha,
                src_sha256=self.sha256,
            )
        fixed = self._set_attrs(self.dest, st, self.uid, self.gid, note=True)
        if not self.check_mode and (fixed or not cached):
            write_record(self.dest, sha, st)
        return self._result(sha, copied=copied, size=st.st_size, cached=cached, before=st)

    def _set_attrs(self, path: str, st: os.stat_result, uid, gid, note: bool) -> bool:
        """chown then chmod (a chown may clear setuid bits) where they differ; True when something did."""
        changed = False
        if (uid is not None and st.st_uid != uid) or (gid is not None and st.st_gid != gid):
            if note:
                new = f"{st.st_uid if uid is None else uid}:{st.st_gid if gid is None else gid}"
                self.changes.append(f"owner {st.st_uid}:{st.st_gid} -> {new}")
            changed = True
            if not self.check_mode:
                self._os(os.chown, path, -1 if uid is None else uid, -1 if gid is None else gid)
        if stat.S_IMODE(st.st_mode) != self.mode:
            if note:
                self.changes.append(f"mode {_fmt(stat.S_IMODE(st.st_mode))} -> {_fmt(self.mode)}")
            changed = True
            if not self.check_mode:
                self._os(os.chmod, path, self.mode)
        return changed

    def _os(self, fn, path: str, *args) -> None:
        try:
            fn(path, *args)
        except OSError as exc:
            raise StorageError(
                f"Cannot set the {'owner' if fn is os.chown else 'mode'} of {path}: {exc.strerror}.",
                hint="Run the task with the rights to do it (become: true).",
            ) from exc

    def _check_dir(self) -> None:
        parent = os.path.dirname(self.dest)
        if not os.path.isdir(parent):
            raise InvalidInput(
                f"The directory {parent} of dest does not exist.",
                hint="Create it first (ansible.builtin.file with state=directory), or fix dest.",
            )

    def _dest_stat(self) -> os.stat_result | None:
        try:
            st = os.lstat(self.dest)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise Conflict(
                f"{self.dest} exists and is {kind}; it is left alone.",
                hint="Give the path of the image file itself as dest.",
            )
        return st

    def _warn_leftovers(self) -> None:
        prefix = f".{os.path.basename(self.dest)}{PARTIAL}"
        parent = os.path.dirname(self.dest)
        for name in sorted(n for n in os.listdir(parent) if n.startswith(prefix)):
            self.warnings.append(
                f"{os.path.join(parent, name)} is a partial copy left by an interrupted run (or one still running); "
                "remove it when no kvm_image task is copying there."
            )

    def _result(self, sha, copied: bool, size=None, cached=None, needs_copy=False, before=None) -> dict:
        want = {"path": self.dest, "state": "file", "sha256": self.sha256, "mode": _fmt(self.mode)}
        was = {"path": self.dest, "state": "absent"}
        if before is not None:
            was = {"path": self.dest, "state": "file", "sha256": sha, "mode": _fmt(stat.S_IMODE(before.st_mode))}
        for what, wanted, now in (("owner", self.uid, "st_uid"), ("group", self.gid, "st_gid")):
            if wanted is not None:
                want[what] = wanted
                if before is not None:
                    was[what] = getattr(before, now)
        return dict(
            changed=bool(self.changes),
            dest=self.dest,
            sha256=sha if sha is not None else self.sha256,
            size=size,
            copied=copied,
            needs_copy=needs_copy,
            checksum_cached=cached,
            changes=list(self.changes),
            diff=dict(before=was, after=want),
        )


def settled(image: dict) -> dict:
    """Would kvm_image change nothing for ``image`` ({dest, sha256, mode, owner, group})? Read only, never hashes.

    Settled: dest is a regular file whose fresh digest record names ``sha256``, with the wanted mode
    (read-only), owner and group, and no partial copy beside it (kvm_image would warn). Anything else,
    a bad option too, is ``settled: false`` with the reason, and the caller runs kvm_image. A file
    without a fresh record is not hashed: asking costs a stat and an xattr read.
    """
    out = dict(dest=str(image.get("dest") or ""), settled=False, sha256=None, reason="")
    try:
        target = ImageTarget(dict(image, src="src", _step="probe", _sha256=image.get("sha256")), check_mode=True)
        out["dest"] = target.dest
        target._check_dir()
        target._warn_leftovers()
        st = target._dest_stat()
    except (InvalidInput, Conflict, OSError) as exc:
        return dict(out, reason=getattr(exc, "message", None) or str(exc))
    if st is None:
        return dict(out, reason="missing")
    out["sha256"] = read_record(target.dest, st)
    unsettled = [
        ("no fresh digest record", out["sha256"] is None),
        ("other content", out["sha256"] is not None and out["sha256"] != target.sha256),
        ("mode", stat.S_IMODE(st.st_mode) != target.mode or bool(target.mode & 0o222)),
        ("owner", target.uid is not None and st.st_uid != target.uid),
        ("group", target.gid is not None and st.st_gid != target.gid),
        ("partial copy beside it", bool(target.warnings)),
    ]
    reasons = [why for why, bad in unsettled if bad]
    return dict(out, settled=not reasons, size=st.st_size, reason=", ".join(reasons))


class ImageManager(Manager):
    """kvm_image's host side, run by ``_manager.run_module`` like every module; it needs no libvirt connection."""

    ARGUMENT_SPEC = ARGUMENT_SPEC
    LIBRARIES = ()
    CONNECTED = False

    def run(self) -> dict:
        try:
            target = ImageTarget(self.p, self.check_mode)
            self.warnings = target.warnings  # one list: what a step warned before it failed is said too
            return target.run()
        except OSError as exc:  # not one of a step's own refusals: a StorageError naming the errno, as always
            where = f" ({exc.filename})" if exc.filename else ""
            raise StorageError(f"{exc.strerror or exc}{where}.", errno=errno.errorcode.get(exc.errno)) from exc
