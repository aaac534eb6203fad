# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The libvirt connection shared by every module.

One option (``uri``) documented once in the ``virtops.kvm.connection`` doc
fragment, one connection per module run (opened lazily, always closed), and
libvirt errors translated into the collection's exceptions with messages that
name the cause and the fix.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    ConnectionFailed,
    DaemonNotRunning,
    LibvirtFailed,
    PermissionDenied,
    UnknownUri,
)

DEFAULT_URI = "qemu:///system"

CONNECTION_ARGS = dict(
    uri=dict(type="str", fallback=(lambda: os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI, [])),
)

_START_HINT = (
    "Start it with 'systemctl enable --now libvirtd' (or virtqemud.socket on distros with "
    "modular daemons), or on a host without systemd run 'virtlogd -d && libvirtd -d'; "
    "virtops.kvm.kvm_host with daemon_state=started does this for you."
)


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def _silence_libvirt() -> None:
    # libvirt's default handler prints every error to stderr; they are raised anyway.
    _deps.libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def translate(exc, uri: str) -> ConnectionFailed | LibvirtFailed:
    """Turn a libvirtError raised while opening ``uri`` into a typed error."""
    lv = _deps.libvirt
    code = exc.get_error_code()
    text = exc.get_error_message() or str(exc)
    lowered = text.lower()
    if code == lv.VIR_ERR_NO_CONNECT and "no connection driver" in lowered:
        return UnknownUri(
            f"Cannot connect to libvirt at '{uri}': {text}.",
            hint="Check the uri option (for example qemu:///system, qemu:///session, "
            "qemu+ssh://host/system, test:///default) and that the hypervisor driver package "
            "(libvirt-daemon-driver-qemu) is installed.",
        )
    if "permission denied" in lowered or code in (lv.VIR_ERR_AUTH_FAILED, lv.VIR_ERR_AUTH_UNAVAILABLE):
        return PermissionDenied(
            f"Permission denied to connect to libvirt at '{uri}': {text}.",
            hint="Run the task with become: true, or add the remote user to the 'libvirt' group, "
            "or use qemu:///session for an unprivileged user.",
        )
    if code in (lv.VIR_ERR_SYSTEM_ERROR, lv.VIR_ERR_NO_CONNECT) and (
        "failed to connect socket" in lowered or "connection refused" in lowered or "no such file" in lowered
    ):
        return DaemonNotRunning(f"The libvirt daemon for '{uri}' is not running ({text}).", hint=_START_HINT)
    if "unexpected" in lowered and "uri" in lowered:
        return UnknownUri(f"Cannot connect to libvirt at '{uri}': {text}.", hint="Check the uri option.")
    return ConnectionFailed(f"Cannot connect to libvirt at '{uri}': {text}.")


def libvirt_failed(exc, what: str) -> LibvirtFailed:
    """Wrap a libvirtError from an operation (not the connection) with context."""
    return LibvirtFailed(f"{what} failed: {exc.get_error_message() or exc}")


class Connection:
    """A lazily opened libvirt connection; use as a context manager."""

    def __init__(self, uri: str | None = None, readonly: bool = False):
        self.uri = resolve_uri(uri)
        self.readonly = readonly
        self._conn = None

    @property
    def conn(self):
        if self._conn is None:
            _silence_libvirt()
            lv = _deps.libvirt
            try:
                self._conn = lv.openReadOnly(self.uri) if self.readonly else lv.open(self.uri)
            except lv.libvirtError as exc:
                raise translate(exc, self.uri) from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
