# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Reading host files under a ``root``, so unit tests point the host code at a fake tree."""

from __future__ import annotations

import os


def host_path(root: str, path: str) -> str:
    """``path`` (absolute on the host) inside ``root``."""
    return os.path.join(root, path.lstrip("/"))


def read_text(root: str, path: str) -> str | None:
    """The text of ``path`` under ``root``, or None when it cannot be read."""
    try:
        with open(host_path(root, path), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None
