# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The libvirt connection shared by every module.

One option (``uri``) documented once in the ``virtops.kvm.connection`` doc
fragment, one connection per module run (opened lazily, always closed), and
libvirt errors translated into the collection's exceptions with messages that
name the cause and the fix.

A daemon that hangs must not block a play forever (with kvm_clone's host lock
held): every call is bounded.

- Opening waits at most ``OPEN_TIMEOUT`` seconds (env ``VIRTOPS_KVM_OPEN_TIMEOUT``;
  ``0`` waits forever). A daemon that accepts the socket but never replies fails
  the task with ConnectionFailed; the attempt is abandoned (and closed if it ever
  completes).
- Every connection runs libvirt's client keepalive: a probe every ``interval``
  seconds, the connection closed after ``count`` unanswered ones, so a call that
  does not come back fails after about ``interval * (count + 1)`` s (default 5, 5:
  ~30 s; env ``VIRTOPS_KVM_KEEPALIVE="INTERVAL,COUNT"``, ``0`` turns the probes off).
  A healthy daemon answers probes from its event loop even while its workers are
  busy, so a slow call is not cut short.
- Keepalive needs libvirt's default event loop, registered before the connection
  opens and run continuously (else the daemon's own probes go unanswered and it
  drops an idle connection after ~30 s). ``start_event_loop()`` registers it once
  per process and runs it in one daemon thread; ``_domain.transitions`` registers
  the same default implementation (idempotent) and pumps it for reboot events in
  turns of its own: libvirt's loop lets one thread iterate at a time and the other
  waits for the next iteration (at most a tick), so both coexist.
- ``libvirt_failed()`` and ``translate()`` turn the errors of a connection that was
  closed under a call (keepalive timeout, the daemon died: end of file, reset,
  broken pipe; and every later call on it: "client socket is closed") into
  ConnectionFailed naming the URI, the call that did not come back and what to do.
- A connection that does not open fails with what failed, said plainly (``_connection_errors``):
  a remote URI without a host is refused before libvirt is called (InvalidInput naming the
  option: ``uri``, or kvm_migrate's ``dest_uri``); ssh refused, its login or the host key
  rejected, no answer from the host, the daemon not running (here or behind ssh), no access to
  its socket, an unknown driver each have their own type and message, with the URI and the fix.
"""

from __future__ import annotations

import os
import threading
import weakref

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._connection_errors import LOST as _LOST
from ansible_collections.virtops.kvm.plugins.module_utils._connection_errors import (
    OPEN_TIMEOUT_ENV,
    REMOTE_HINT,
    open_timed_out,
    opening_failed,
    refuse_hostless,
)
from ansible_collections.virtops.kvm.plugins.module_utils._connection_errors import daemon_hint as _hint
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    ConnectionFailed,
    InvalidInput,
    KvmError,
    LibvirtFailed,
)

DEFAULT_URI = "qemu:///system"

CONNECTION_ARGS = dict(
    uri=dict(type="str", fallback=(lambda: os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI, [])),
)

#: (seconds between two probes, unanswered probes before libvirt closes the connection)
KEEPALIVE = (5, 5)
KEEPALIVE_ENV = "VIRTOPS_KVM_KEEPALIVE"
#: seconds a daemon may take to answer the opening of a connection (it may be starting: socket activation)
OPEN_TIMEOUT = 60.0
#: the ``what`` of a libvirt error no caller named (see _manager._typed)
GENERIC_CALL = "A libvirt call"

# Of those, the ones only the client itself says (never forwarded from a daemon's own connections).
_CLIENT_SIDE = ("keepalive timeout", "client socket is closed")

_LOOP_LOCK = threading.Lock()
_LOOP: list = []  # the event loop's thread, once started
_OPEN: weakref.WeakSet = weakref.WeakSet()  # the open Connections of this process


def resolve_uri(uri: str | None) -> str:
    return uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def keepalive_settings() -> tuple:
    """(interval, count) from ``VIRTOPS_KVM_KEEPALIVE`` or ``KEEPALIVE``; (0, 0): no client probes."""
    raw = os.environ.get(KEEPALIVE_ENV, "").strip()
    if not raw:
        return KEEPALIVE
    if raw in ("0", "off"):
        return (0, 0)
    parts = raw.split(",")
    try:
        interval, count = (int(x) for x in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        interval = count = None
    if interval is None or interval < 1 or count < 1:
        raise InvalidInput(
            f"The environment variable {KEEPALIVE_ENV} is {raw!r}: it must be 'INTERVAL,COUNT' (seconds "
            "between two keepalive probes, unanswered probes before the connection is given up; both at "
            f"least 1, e.g. '{KEEPALIVE[0]},{KEEPALIVE[1]}'), or '0' to turn the probes off."
        )
    return (interval, count)


def open_timeout() -> float:
    """Seconds to wait for a connection to open, from ``VIRTOPS_KVM_OPEN_TIMEOUT`` or ``OPEN_TIMEOUT``; 0: forever."""
    raw = os.environ.get(OPEN_TIMEOUT_ENV, "").strip()
    if not raw:
        return OPEN_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise InvalidInput(
            f"The environment variable {OPEN_TIMEOUT_ENV} is {raw!r}: it must be a number of seconds "
            f"(e.g. {OPEN_TIMEOUT:.0f}), or 0 to wait as long as the daemon takes."
        )
    return value


def _silence_libvirt() -> None:
    # libvirt's default handler prints every error to stderr; they are raised anyway.
    _deps.libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _run_event_loop() -> None:
    lv = _deps.libvirt
    while True:
        try:
            lv.virEventRunDefaultImpl()
        except lv.libvirtError:
            threading.Event().wait(0.25)  # not expected; never spin, never let the thread die


def start_event_loop() -> None:
    """Register libvirt's default event loop (once; idempotent in libvirt too) and run it in one daemon thread."""
    with _LOOP_LOCK:
        if _LOOP:
            return
        _deps.libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop, name="virtops-libvirt-events", daemon=True)
        thread.start()
        _LOOP.append(thread)


def _lost(exc) -> tuple:
    """(is the error a connection lost under a call, its text)."""
    lv = _deps.libvirt
    text = exc.get_error_message() or str(exc)
    if exc.get_error_domain() not in (lv.VIR_FROM_RPC, lv.VIR_FROM_REMOTE):
        return False, text
    return any(p in text.lower() for p in _LOST), text


def connection_lost(exc, what: str | None = None) -> ConnectionFailed | None:
    """The ConnectionFailed for a libvirtError raised because the connection under a call is gone, else None.

    The connection is ours when one of this process's open Connections is dead
    (``isAlive()`` is a local check; a daemon's errors on its own connections to
    other daemons, forwarded to us, leave ours alive); with none registered, only
    the client's own messages count.
    """
    lost, text = _lost(exc)
    if not lost:
        return None
    dead = [c for c in list(_OPEN) if not c.alive()]
    lowered = text.lower()
    if not dead and not any(p in lowered for p in _CLIENT_SIDE):
        return None
    uri = dead[0].uri if len(dead) == 1 else None
    where = f"at '{uri}'" if uri else "of this task"
    call = f"the call '{what}'" if what and what != GENERIC_CALL else "a libvirt call"
    if "keepalive timeout" in lowered:
        interval, count = dead[0].keepalive if len(dead) == 1 else (0, 0)
        within = f" within {interval * (count + 1)} s" if interval else ""
        msg = (
            f"The libvirt daemon {where} stopped answering in the middle of the task: {call} did not come "
            f"back{within}, so libvirt gave the connection up ({text})."
        )
    elif "client socket is closed" in lowered:
        msg = (
            f"The connection to the libvirt daemon {where} was lost earlier in the task (the daemon stopped "
            f"answering or died), so {call} could not be made ({text})."
        )
    else:
        msg = (
            f"The libvirt daemon {where} closed the connection in the middle of the task: it died or was "
            f"restarted while {call} was waiting for its answer ({text})."
        )
    return ConnectionFailed(msg, hint=_hint(uri or "URI"))


def translate(exc, uri: str) -> KvmError:
    """Turn a libvirtError raised while opening ``uri`` into a typed error (see ``_connection_errors``)."""
    known = opening_failed(exc, uri)
    if known is not None:
        return known
    text = exc.get_error_message() or str(exc)
    if _lost(exc)[0]:
        return ConnectionFailed(
            f"The libvirt daemon at '{uri}' closed the connection while it was being opened: it died or was "
            f"restarted ({text}).",
            hint=_hint(uri),
        )
    remote = "://" in uri and not uri.split("://", 1)[1].startswith("/")
    return ConnectionFailed(f"Cannot connect to libvirt at '{uri}': {text}.", hint=REMOTE_HINT if remote else None)


def libvirt_failed(exc, what: str) -> KvmError:
    """Wrap a libvirtError from an operation (not the connection) with context.

    LibvirtFailed, or ConnectionFailed when the call failed because the daemon
    stopped answering or died under it (see ``connection_lost``).
    """
    return connection_lost(exc, what) or LibvirtFailed(f"{what} failed: {exc.get_error_message() or exc}")


def call(what: str, fn, *args):
    """``fn(*args)``; a libvirtError becomes the typed error of ``libvirt_failed`` saying what was being done.

    The collection's one wrapper of a libvirt call (Manager/DomainJournal ``call``, the pool handles, kvm_host_info).
    """
    try:
        return fn(*args)
    except _deps.libvirt.libvirtError as exc:
        raise libvirt_failed(exc, what) from exc


def call_or_none(what: str, missing: int, fn, *args):
    """``call(what, fn, *args)``, but None when libvirt answers ``missing`` (a lookup of what is not there)."""
    try:
        return fn(*args)
    except _deps.libvirt.libvirtError as exc:
        if exc.get_error_code() == missing:
            return None
        raise libvirt_failed(exc, what) from exc


class Connection:
    """A lazily opened libvirt connection; use as a context manager."""

    def __init__(self, uri: str | None = None, readonly: bool = False, option: str = "uri"):
        self.uri = resolve_uri(uri)
        self.option = option  # the module option the URI came from, for the messages
        self.readonly = readonly
        self.keepalive = (0, 0)  # (interval, count) in force once open
        self._conn = None

    @property
    def conn(self):
        if self._conn is None:
            refuse_hostless(self.uri, self.option)
            _silence_libvirt()
            keepalive, timeout = keepalive_settings(), open_timeout()
            start_event_loop()  # before the connection opens, or it has no keepalive
            conn = self._open(timeout)
            self.keepalive = self._start_keepalive(conn, *keepalive)
            self._conn = conn
            _OPEN.add(self)
        return self._conn

    def alive(self) -> bool:
        """Whether the connection is open and libvirt still holds it open (a local check, no call)."""
        if self._conn is None:
            return False
        try:
            return self._conn.isAlive() == 1
        except _deps.libvirt.libvirtError:
            return False

    def _open(self, timeout: float):
        """The open virConnect; a daemon that does not answer within ``timeout`` s fails (0: wait)."""
        lv = _deps.libvirt
        opener = lv.openReadOnly if self.readonly else lv.open
        if not timeout:
            try:
                return opener(self.uri)
            except lv.libvirtError as exc:
                raise translate(exc, self.uri) from exc
        box: dict = {}
        lock = threading.Lock()
        done = threading.Event()

        def attempt() -> None:
            try:
                conn = opener(self.uri)
            except Exception as exc:  # handed to the waiting thread, which raises it as it is
                box["error"] = exc
            else:
                with lock:
                    late = box.get("abandoned", False)
                    box["conn"] = conn
                if late:  # nobody waits for it any more
                    _close_quietly(conn)
            finally:
                done.set()

        threading.Thread(target=attempt, name="virtops-libvirt-open", daemon=True).start()
        done.wait(timeout)
        with lock:
            if "conn" not in box and "error" not in box:
                box["abandoned"] = True
                raise open_timed_out(self.uri, timeout)
        error = box.get("error")
        if isinstance(error, lv.libvirtError):
            raise translate(error, self.uri) from error
        if error is not None:
            raise error
        return box["conn"]

    @staticmethod
    def _start_keepalive(conn, interval: int, count: int) -> tuple:
        if interval <= 0:
            return (0, 0)
        try:
            if conn.setKeepAlive(interval, count) == 0:
                return (interval, count)
        except _deps.libvirt.libvirtError:
            pass  # drivers without a daemon (test:///) have nothing to probe and nothing that can hang
        return (0, 0)

    def close(self) -> None:
        if self._conn is not None:
            _OPEN.discard(self)
            conn, self._conn = self._conn, None
            _close_quietly(conn)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _close_quietly(conn) -> None:
    """Close a virConnect; one whose daemon is gone fails to say goodbye, which changes nothing."""
    try:
        conn.close()
    except _deps.libvirt.libvirtError:
        pass
