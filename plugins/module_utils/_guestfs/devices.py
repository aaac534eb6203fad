# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Several domains in one appliance: which appliance devices are whose, and their names as each guest's own.

libguestfs names the drives of an appliance ``/dev/sda``, ``/dev/sdb``, ...
``/dev/sdz``, ``/dev/sdaa`` in the order they were added. When the drives of
several domains share one launch, the drives of the domain added third
start wherever the first two ended: a ``Part`` is that window (its first
drive's index and how many it has). ``own`` turns a device as the user
writes it for one guest (``/dev/sda1``, its first disk) into the name the
appliance gives it, and ``owned`` tells which part a device is in. Names
that are not drives (LVM ``/dev/VG/LV``, ``/dev/md0``) are left as they are.
"""

from __future__ import annotations

import re

_SD = re.compile(r"^/dev/sd([a-z]+)(\d*)$")


def drive_index(letters: str) -> int:
    """``a`` -> 0, ``z`` -> 25, ``aa`` -> 26 (the kernel's sd naming)."""
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def drive_letters(index: int) -> str:
    out = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        out = chr(ord("a") + rem) + out
    return out


def split(device: str) -> tuple[int, str] | None:
    """(drive index, partition suffix) of an sd device name, or None for anything else."""
    m = _SD.match(device)
    return (drive_index(m.group(1)), m.group(2)) if m else None


class Part:
    """One domain's window of the appliance's drives: ``count`` drives from index ``first``."""

    def __init__(self, name: str, first: int, count: int):
        self.name = name
        self.first = first
        self.count = count

    def owns(self, device: str) -> bool:
        where = split(device)
        return where is not None and self.first <= where[0] < self.first + self.count

    def own(self, device: str) -> str:
        """A device named as this guest's (its first disk is sda) as the appliance names it."""
        where = split(device)
        if where is None:
            return device
        return f"/dev/sd{drive_letters(self.first + where[0])}{where[1]}"

    def local(self, device: str, parts: list[Part]) -> str:
        """A device of any part moved to the same drive and partition of this part (clones share a layout).

        libguestfs resolves ``UUID=`` and ``LABEL=`` in a guest's fstab to the
        first device that has it; for clones of one template that is the
        first clone's. A device already in this part, or one with no
        counterpart here, is returned unchanged.
        """
        where = split(device)
        if where is None or self.owns(device):
            return device
        for other in parts:
            if other.owns(device):
                rel = where[0] - other.first
                if rel < self.count:
                    return f"/dev/sd{drive_letters(self.first + rel)}{where[1]}"
        return device


#: drives of one appliance: libguestfs's direct backend takes 255, and the appliance's own disk is one
MAX_DRIVES = 250


def by_launch(items: list, drives_of, limit: int | None = None) -> list[list]:
    """``items`` in order, cut so that no appliance launch gets more than ``limit`` drives (``drives_of(item)``
    of them each; an item is never split, and one with more than ``limit`` drives gets a launch of its own)."""
    limit = limit or MAX_DRIVES
    out: list[list] = []
    drives = 0
    for item in items:
        n = max(1, drives_of(item))
        if out and drives + n <= limit:
            out[-1].append(item)
            drives += n
        else:
            out.append([item])
            drives = n
    return out


def parts_of(groups: list[tuple[str, list]]) -> list[Part]:
    """The Part of each (name, drives) group, in the order the drives are added."""
    out, first = [], 0
    for name, drives in groups:
        out.append(Part(name, first, len(drives)))
        first += len(drives)
    return out
