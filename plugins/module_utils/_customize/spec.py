# Private to the virtops.kvm collection: not a public API, may change without notice.
"""kvm_customize's edits as the user gives them, checked before anything is looked up or launched.

Every edit becomes one dict of a ``kind``: ``file`` (present, absent or appended), ``authorized_keys``
or ``password``. Paths are absolute and normalised guest paths, modes octal, owners ``user[:group]``,
password values crypt(3) hashes (never a clear-text password). A path edited twice, or a user's keys
or password given twice, is refused: the result would depend on the order.
"""

from __future__ import annotations

import re

from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

FILE_STATES = ("present", "absent", "appended")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# crypt(3) hashes ($id$...), optionally locked with a leading '!'; never a clear-text password
_HASH = re.compile(r"^!?\$[0-9a-z]+\$[^\s:]+$")
_KEY = re.compile(r"^\S.*\S$")
# what one libguestfs write call takes (its protocol caps a message at a few MiB)
MAX_CONTENT = 2 * 1024 * 1024


def user(value, where: str) -> str:
    if not isinstance(value, str) or not _USER.match(value):
        raise InvalidInput(f"{where} {value!r} must be a user name of the guest.")
    return value


def check_files(files: list) -> list[dict]:
    out, seen = [], set()
    for i, f in enumerate(files or []):
        where = f"files[{i}]"
        path = vd.guest_path(f.get("path"), f"{where}.path")
        if path in seen:
            raise InvalidInput(f"files edits {path} twice.", hint="Give each path once.")
        seen.add(path)
        state = f.get("state") or "present"
        content = f.get("content")
        if state == "absent":
            for key in ("content", "mode", "owner"):
                if f.get(key) is not None:
                    raise InvalidInput(f"{where} has state absent and {key}: a removed file has none.")
        elif content is None or (state == "appended" and content == ""):
            raise InvalidInput(
                f"{where} ({path}) has state {state} but no content.",
                hint="Give content (an empty string writes an empty file with state present).",
            )
        if content is not None and len(content.encode("utf-8")) > MAX_CONTENT:
            raise InvalidInput(
                f"{where}.content ({path}) is larger than {MAX_CONTENT} bytes.",
                hint="Put large files in the image itself (virtops.kvm.kvm_image), not in a task's argument.",
            )
        out.append(
            dict(
                kind="file",
                path=path,
                state=state,
                content=None if content is None else content.encode("utf-8"),
                mode=vd.octal_mode(f.get("mode"), f"{where}.mode"),
                owner=vd.guest_owner(f.get("owner"), f"{where}.owner"),
            )
        )
    return out


def check_keys(entries: list) -> list[dict]:
    out, seen = [], set()
    for i, e in enumerate(entries or []):
        where = f"authorized_keys[{i}]"
        name = user(e.get("user"), f"{where}.user")
        if name in seen:
            raise InvalidInput(
                f"authorized_keys names user {name} twice.", hint="Give all of a user's keys in one item."
            )
        seen.add(name)
        keys = []
        for j, key in enumerate(e.get("keys") or []):
            text = key.strip() if isinstance(key, str) else key
            if not isinstance(text, str) or "\n" in text or not _KEY.match(text):
                raise InvalidInput(f"{where}.keys[{j}] must be one public key line (type, key, optional comment).")
            keys.append(text)
        if not keys and not e.get("exclusive"):
            raise InvalidInput(f"{where}.keys is empty.", hint="List the keys, or set exclusive to remove them all.")
        out.append(
            dict(kind="authorized_keys", user=name, keys=list(dict.fromkeys(keys)), exclusive=bool(e.get("exclusive")))
        )
    return out


def check_passwords(entries: list) -> list[dict]:
    out, seen = [], set()
    for i, e in enumerate(entries or []):
        where = f"passwords[{i}]"
        name = user(e.get("user"), f"{where}.user")
        if name in seen:
            raise InvalidInput(f"passwords names user {name} twice.")
        seen.add(name)
        value = e.get("hash")
        if not isinstance(value, str) or not _HASH.match(value):
            raise InvalidInput(
                f"{where}.hash (user {name}) is not a crypt(3) hash such as $6$salt$... (the value is not shown).",
                hint="Hash it first: \"{{ 'secret' | password_hash('sha512') }}\" or mkpasswd -m sha-512.",
            )
        out.append(dict(kind="password", user=name, hash=value))
    return out


def check_edits(params: dict) -> list[dict]:
    """Every edit of the run, in the order they are applied: files, then keys, then passwords."""
    edits = [
        *check_files(params.get("files")),
        *check_keys(params.get("authorized_keys")),
        *check_passwords(params.get("passwords")),
    ]
    if not edits:
        raise InvalidInput("Nothing to edit.", hint="Give files, authorized_keys or passwords.")
    return edits
