# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The wait for a boot: a regular expression on the domain's serial console log, after this run started it.

A guest that prints a line when it is up (``VIRTOPS-GUEST-UP``, cloud-init's
"finished", a login prompt) says more than libvirt's ``running`` does. The
log is the file of the domain's first ``<serial type='file'>``, read on the
host the module runs on. ``mark()`` notes how long the log is before the
start; ``wait()`` looks for the pattern only in what came after, so a
marker of an earlier boot never counts. A log that shrank (a console
without ``append='on'`` is truncated at each start) is read from its start.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, TimeoutExpired
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock, Deadline, wait_until

# Seconds between two reads of the log.
POLL = 0.25


def check_options(p: dict) -> None:
    """boot_marker a valid regular expression, boot_timeout not negative (before anything is read)."""
    compile_marker(p.get("boot_marker"))
    timeout = p.get("boot_timeout")
    if timeout is not None and timeout < 0:
        raise InvalidInput(f"boot_timeout must be 0 or more seconds, not {timeout!r}.")


def compile_marker(pattern: str | None):
    """The boot_marker option as a compiled regular expression (None when not set)."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidInput(
            f"boot_marker {pattern!r} is not a valid regular expression: {exc}.",
            hint="Python's re syntax; escape special characters such as '(' or '+' with a backslash.",
        ) from exc


def serial_log(root) -> str | None:
    """The file the domain's first serial port writes: a ``<serial type='file'>``, or the ``<log file>`` of
    another type (a pty logged to a file, as kvm_vm makes); None when it logs nowhere readable."""
    for console in dx.consoles(root):
        if console["device"] != "serial":
            continue
        if console["type"] == "file" and console["path"]:
            return console["path"]
        if console["log"]:
            return console["log"]
    return None


def no_log(name: str) -> InvalidInput:
    return InvalidInput(
        f"boot_marker is set but domain {name} has no <serial type='file'> console to read it from.",
        hint="Add one to its XML (<serial type='file'><source path='/var/log/NAME.serial.log' append='on'/>"
        "</serial>), or leave boot_marker out.",
    )


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


@dataclass(eq=False)
class BootWatch:
    """Wait until ``pattern`` shows up in what ``path`` gained since ``mark()``."""

    name: str
    path: str
    pattern: re.Pattern
    timeout: float
    clock: Clock = SYSTEM
    #: where the log ended at ``mark()``
    offset: int = field(default=0, init=False)
    deadline: Deadline = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = Deadline(self.timeout, self.clock)

    def mark(self) -> None:
        """Remember the log's length: only what is written after this counts; the timeout starts now."""
        self.offset = _size(self.path)
        self.deadline = Deadline(self.timeout, self.clock)

    def seen(self) -> bool:
        """Whether the pattern is in the log after the mark (the mark drops to 0 if the log shrank)."""
        if _size(self.path) < self.offset:
            self.offset = 0
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return False
        return self.pattern.search(text) is not None

    def expired(self) -> bool:
        return self.deadline.passed()

    def timed_out(self) -> TimeoutExpired:
        return TimeoutExpired(
            f"Domain {self.name} was started but did not print {self.pattern.pattern!r} on its serial "
            f"console ({self.path}) within {self.timeout} s.",
            hint="Check the log for how far the guest got; raise boot_timeout for a slow guest "
            "(software emulation boots slowly), or correct boot_marker.",
            changed=True,
        )

    def wait(self) -> None:
        if not wait_until(self.seen, self.deadline, POLL):
            raise self.timed_out()


def wait_all(watches: dict, clock: Clock = SYSTEM) -> dict:
    """Wait for every watch at once (one loop, whatever their number): key -> TimeoutExpired of the late ones."""
    pending, late = dict(watches), {}

    def settled() -> bool:
        for key, watch in list(pending.items()):
            if watch.seen():
                del pending[key]
            elif watch.expired():
                late[key] = watch.timed_out()
                del pending[key]
        return not pending

    wait_until(settled, Deadline(None, clock), POLL)  # each watch has its own deadline
    return late
