# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What a mounted guest says about itself: its regular files and its users (its own /etc/passwd and /etc/group).

Shared by kvm_clone's identity reset and kvm_customize's offline edits, which both write files owned by
the guest's users and must resolve names the way the guest will.
"""

from __future__ import annotations


def is_file(g, path: str) -> bool:
    """A regular file (not followed through a symlink)."""
    return bool(g.is_file(path, followsymlinks=False))


class OwnerError(Exception):
    """An owner that the guest's /etc/passwd or /etc/group does not know."""


class Owners:
    """``user[:group]`` (names or numbers) resolved in the guest's own /etc/passwd and /etc/group."""

    def __init__(self, g):
        self.g = g
        self._rows: dict[str, list[list[str]]] = {}
        self._tables: dict[str, dict[str, tuple[int, int]]] = {}

    def _fields(self, path: str) -> list[list[str]]:
        """The ':'-separated fields of each line of ``path`` (none when it is no regular file), read once."""
        if path not in self._rows:
            lines = self.g.cat(path).splitlines() if is_file(self.g, path) else []
            self._rows[path] = [line.split(":") for line in lines]
        return self._rows[path]

    def _table(self, path: str) -> dict[str, tuple[int, int]]:
        if path not in self._tables:
            table = {}
            for parts in self._fields(path):
                if len(parts) >= 4 and parts[2].isdigit() and parts[3].isdigit():
                    table[parts[0]] = (int(parts[2]), int(parts[3]))
                elif len(parts) >= 3 and parts[2].isdigit():
                    table[parts[0]] = (int(parts[2]), int(parts[2]))
            self._tables[path] = table
        return self._tables[path]

    def home(self, user: str) -> str | None:
        """The home directory /etc/passwd gives ``user`` (a name), or None when it names none."""
        for parts in self._fields("/etc/passwd"):
            if len(parts) >= 6 and parts[0] == user and parts[5].startswith("/"):
                return parts[5]
        return None

    def resolve(self, owner: str, path: str) -> tuple[int, int]:
        user, _sep, group = owner.partition(":")
        if user.isdigit():
            uid, gid = int(user), int(user)
        elif user in self._table("/etc/passwd"):
            uid, gid = self._table("/etc/passwd")[user]
        else:
            raise OwnerError(f"owner {owner!r} of {path}: the guest has no user {user!r} in /etc/passwd")
        if group:
            if group.isdigit():
                gid = int(group)
            elif group in self._table("/etc/group"):
                gid = self._table("/etc/group")[group][0]
            else:
                raise OwnerError(f"owner {owner!r} of {path}: the guest has no group {group!r} in /etc/group")
        return uid, gid
