# Private to the virtops.kvm collection: not a public API, may change without notice.
"""One mounted guest: what each edit would change (compared before anything is written), then doing it.

``plan`` reads the guest (mounted read-only) and returns the ``Change`` list: each says what it does,
carries its diff and an ``apply`` that does it on the guest mounted read-write. An edit that already
holds plans nothing, so a rerun writes nothing. Symbolic links are never written through (the guest
may point them anywhere): a path that is one is refused, and so is a directory where a file is wanted.
Owners are the guest's own users and groups (its /etc/passwd and /etc/group).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.guest import OwnerError, Owners

NEW_FILE_MODE = 0o644
SSH_DIR_MODE = 0o700
KEYS_MODE = 0o600
_DIFF_MAX = 64 * 1024


class EditError(Exception):
    """An edit this guest cannot take (its message names the domain's path and why)."""


class Change:
    """One thing to do on the guest: its words, the path it touches, its diff and how to do it."""

    def __init__(self, text: str, path: str, apply: Callable, diff: dict | None = None):
        self.text = text
        self.path = path
        self.apply = apply
        self.diff = diff


def _text(data: bytes | None, hidden: bool = False) -> str:
    if data is None:
        return ""
    if hidden:
        return "(not shown)\n"
    if len(data) > _DIFF_MAX:
        return f"({len(data)} bytes)\n"
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return f"({len(data)} bytes of binary data)\n"


class Guest:
    """The guest ``name`` mounted on handle ``g``; ``plan(edits)`` lists its changes."""

    def __init__(self, g, name: str):
        self.g = g
        self.name = name
        self.owners = Owners(g)

    # -- reading

    def _kind(self, path: str) -> str:
        g = self.g
        if g.is_symlink(path):
            return "symlink"
        if g.is_dir(path, followsymlinks=False):
            return "dir"
        if g.is_file(path, followsymlinks=False):
            return "file"
        return "absent" if not g.exists(path) else "other"

    def _file(self, path: str, allow_absent: bool = True) -> dict | None:
        """{data, mode, uid, gid} of the regular file at ``path``, None when absent; anything else refused."""
        kind = self._kind(path)
        if kind == "absent" and allow_absent:
            return None
        if kind != "file":
            what = {"symlink": "a symbolic link", "dir": "a directory", "absent": "missing"}.get(kind, "not a file")
            raise EditError(f"{path} in domain {self.name} is {what}; only regular files are edited.")
        st = self.g.statns(path)
        return dict(data=bytes(self.g.read_file(path)), mode=st["st_mode"] & 0o7777, uid=st["st_uid"], gid=st["st_gid"])

    def _ids(self, owner: str | None, path: str) -> tuple | None:
        if owner is None:
            return None
        try:
            return self.owners.resolve(owner, path)
        except OwnerError as exc:
            raise EditError(str(exc)) from None

    # -- planning

    def plan(self, edits: list[dict]) -> list[Change]:
        """Every edit's changes, in order; a file two edits would both write is refused (the order would win)."""
        out: list[Change] = []
        touched: dict[str, str] = {}
        for edit in edits:
            what = edit["kind"] if edit["kind"] != "file" else "files"
            changes = getattr(self, f"_plan_{edit['kind']}")(edit)
            for path in {c.path for c in changes}:
                if touched.setdefault(path, what) != what:
                    raise EditError(
                        f"{path} in domain {self.name} would be written by both {touched[path]} and {what}."
                    )
            out.extend(changes)
        return out

    def _plan_file(self, edit: dict) -> list[Change]:
        path = edit["path"]
        now = self._file(path)
        if edit["state"] == "absent":
            if now is None:
                return []
            return [Change(f"remove {path}", path, lambda g: g.rm(path), self._diff(path, now["data"], None))]
        if edit["state"] == "appended":
            old = b"" if now is None else now["data"]
            if now is not None and edit["content"] in old:
                data = old
            else:
                data = old + (b"\n" if old and not old.endswith(b"\n") else b"") + edit["content"]
        else:
            data = edit["content"]
        return self._converge(path, now, data, edit["mode"], self._ids(edit["owner"], path))

    def _plan_authorized_keys(self, edit: dict) -> list[Change]:
        user = edit["user"]
        ids = self._ids(user, f"~{user}/.ssh/authorized_keys")
        home = self.owners.home(user)
        if home is None or not self.g.is_dir(home, followsymlinks=True):
            raise EditError(
                f"user {user} of domain {self.name} has no home directory ({home or 'none in /etc/passwd'})."
            )
        ssh_dir = posixpath.join(home, ".ssh")
        path = posixpath.join(ssh_dir, "authorized_keys")
        out = []
        kind = self._kind(ssh_dir)
        if kind == "absent":

            def make_dir(g):
                g.mkdir_p(ssh_dir)
                g.chmod(SSH_DIR_MODE, ssh_dir)
                g.chown(ids[0], ids[1], ssh_dir)

            out.append(Change(f"create {ssh_dir} (0700, {user})", ssh_dir, make_dir))
            now = None
        elif kind != "dir":
            raise EditError(f"{ssh_dir} in domain {self.name} is not a directory; it is left alone.")
        else:
            now = self._file(path)
        lines = [] if now is None else [x.strip() for x in now["data"].decode("utf-8", "replace").splitlines()]
        wanted = list(edit["keys"]) if edit["exclusive"] else lines + [k for k in edit["keys"] if k not in lines]
        if now is not None and not edit["exclusive"] and wanted == lines:
            data = now["data"]  # every key is there: the file is left byte for byte
        else:
            data = "".join(f"{line}\n" for line in wanted).encode("utf-8")
        return out + self._converge(path, now, data, KEYS_MODE, ids, parent_planned=kind == "absent")

    def _plan_password(self, edit: dict) -> list[Change]:
        user, path = edit["user"], "/etc/shadow"
        now = self._file(path, allow_absent=False)
        lines = now["data"].decode("utf-8", "surrogateescape").split("\n")
        for i, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == user and len(fields) >= 2:
                if fields[1] == edit["hash"]:
                    return []
                fields[1] = edit["hash"]
                lines[i] = ":".join(fields)
                break
        else:
            raise EditError(f"user {user} is not in /etc/shadow of domain {self.name}.")
        data = "\n".join(lines).encode("utf-8", "surrogateescape")
        mode, ids = now["mode"], (now["uid"], now["gid"])

        def write(g):
            g.write(path, data)
            g.chmod(mode, path)
            g.chown(ids[0], ids[1], path)

        diff = dict(before_header=f"{self.name}:{path} ({user})", after_header=f"{self.name}:{path} ({user})")
        diff.update(before="password hash: (not shown)\n", after="password hash: (new, not shown)\n")
        return [Change(f"set the password hash of {user}", path, write, diff)]

    def _converge(
        self, path: str, now: dict | None, data: bytes, mode: int | None, ids: tuple | None, parent_planned=False
    ) -> list[Change]:
        """The changes that make ``path`` hold ``data`` with ``mode`` and owner ``ids`` (None: as it is)."""
        out = []
        if now is None and not parent_planned:
            parent = posixpath.dirname(path)
            # a parent that is a link to a directory is followed (/bin -> usr/bin): it stays in the guest
            if not self.g.is_dir(parent, followsymlinks=True):
                if self._kind(parent) != "absent":
                    raise EditError(f"{parent} in domain {self.name} is not a directory; {path} cannot be made there.")
                out.append(Change(f"create {parent}", parent, lambda g: g.mkdir_p(parent)))
        if now is None or now["data"] != data:
            verb = "write" if now is None else "rewrite"
            diff = self._diff(path, None if now is None else now["data"], data)
            out.append(Change(f"{verb} {path} ({len(data)} bytes)", path, lambda g: g.write(path, data), diff))
        want_mode = (NEW_FILE_MODE if now is None else now["mode"]) if mode is None else mode
        if now is None or now["mode"] != want_mode:
            out.append(Change(f"mode of {path} {want_mode:04o}", path, lambda g: g.chmod(want_mode, path)))
        if ids is not None and (now is None or (now["uid"], now["gid"]) != tuple(ids)):
            out.append(Change(f"owner of {path} {ids[0]}:{ids[1]}", path, lambda g: g.chown(ids[0], ids[1], path)))
        return out

    def _diff(self, path: str, before: bytes | None, after: bytes | None) -> dict:
        header = f"{self.name}:{path}"
        return dict(before_header=header, after_header=header, before=_text(before), after=_text(after))
