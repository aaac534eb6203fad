# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The collection's exception types.

module_utils raise these; only a module's main() turns them into fail_json,
so every failure carries a message that names the cause and, where one
exists, the fix.
"""

from __future__ import annotations


class KvmError(Exception):
    """Base of every error the collection raises on purpose."""

    def __init__(self, msg: str, hint: str | None = None, **details):
        self.msg = msg
        self.hint = hint
        self.details = details
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"{self.msg} {self.hint}" if self.hint else self.msg


class InvalidInput(KvmError):
    """The user's options cannot be used as given; nothing was changed."""


class ConnectionFailed(KvmError):
    """libvirt could not be reached at the requested URI."""


class DaemonNotRunning(ConnectionFailed):
    """The libvirt daemon's socket does not answer."""


class PermissionDenied(ConnectionFailed):
    """The caller may not use this libvirt URI."""


class UnknownUri(ConnectionFailed):
    """No libvirt driver handles this URI."""


class LibvirtFailed(KvmError):
    """A libvirt call failed for a reason other than the connection."""


class DomainNotFound(KvmError):
    """The named domain is not defined."""


class Conflict(KvmError):
    """The request collides with something that exists (name, UUID, MAC, file)."""


class StorageError(KvmError):
    """A disk image operation failed or was refused for safety."""


class HostError(KvmError):
    """The hypervisor host cannot be brought to the requested state."""


class UnsupportedPlatform(HostError):
    """The host's distribution family is not one this collection knows."""


class PackageManagerError(HostError):
    """The package manager reported a failure."""


class TimeoutExpired(KvmError):
    """Something did not happen within the allowed time."""


class GuestfsError(KvmError):
    """libguestfs failed to launch, inspect, mount or read."""


class ConnectionRefused(ConnectionFailed):
    """The remote host refused the connection: no sshd (or no libvirt listener) on that port."""


class AuthenticationFailed(PermissionDenied):
    """ssh reached the host but could not log in with what it was given (no prompt in a task)."""


class HostKeyRejected(ConnectionFailed):
    """ssh does not know the host's key, or it differs from the recorded one."""


class HostUnreachable(ConnectionFailed):
    """Nothing answered at the remote host: timed out, no route, or a name that does not resolve."""
