# Private to the virtops.kvm collection: not a public API, may change without notice.
"""HostLock: the host-wide flock that keeps concurrent kvm_clone runs from picking the same MAC.

Two plays, or several forks of one play, each take it for the whole
scan-plan-create of their batch; the lock dies with the process.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile

from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError, TimeoutExpired
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock, Deadline, wait_until

LOCK_NAME = "virtops-kvm-clone.lock"
LOCK_DIRS = ("/run/lock", "/var/lock")


class HostLock:
    """An exclusive flock on ``path``, waited for up to ``timeout`` seconds."""

    def __init__(self, path: str | None = None, timeout: float = 900, clock: Clock = SYSTEM):
        self.path = path or default_lock_path()
        self.timeout = timeout
        self.clock = clock
        self._fd: int | None = None

    def __enter__(self) -> HostLock:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"Cannot open the clone lock file {self.path}: {exc.strerror}.") from exc
        if wait_until(self._try_lock, Deadline(self.timeout, self.clock), 0.05):
            return self
        os.close(self._fd)
        self._fd = None
        raise TimeoutExpired(
            f"Another kvm_clone run held {self.path} for more than {self.timeout:.0f} s.",
            hint="Wait for it to finish, or check for a hung process holding the lock.",
        )

    def _try_lock(self) -> bool:
        """Whether the lock is ours now (False: another process holds it)."""
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        return False

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def default_lock_path() -> str:
    """/run/lock/virtops-kvm-clone.lock, or /var/lock, or the temp dir when neither is writable."""
    for d in LOCK_DIRS:
        if os.path.isdir(d) and os.access(d, os.W_OK):
            return os.path.join(d, LOCK_NAME)
    return os.path.join(tempfile.gettempdir(), LOCK_NAME)
