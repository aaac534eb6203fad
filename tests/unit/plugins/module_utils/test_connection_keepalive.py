"""_connection's bounds on a daemon that hangs: the settings, the bounded open, the event loop, the lost-call errors.

No daemon here: the open that hangs is a fake opener that blocks, the errors are libvirtErrors as
libvirt's client raises them (tests/integration/test_hung_daemon.py makes them happen for real).
"""

from __future__ import annotations

import threading
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _connection as c
from ansible_collections.virtops.kvm.plugins.module_utils._domain import transitions
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    ConnectionFailed,
    DaemonNotRunning,
    InvalidInput,
    LibvirtFailed,
)

libvirt = pytest.importorskip("libvirt")

URI = "test:///default"
REMOTE = "qemu+unix:///system?socket=/nowhere/libvirt-sock"


def lv_error(message: str, domain: int | None = None, code: int | None = None):
    """A libvirtError as libvirt's client raises it (code, domain, message)."""
    exc = libvirt.libvirtError(message)
    exc.err = (
        libvirt.VIR_ERR_INTERNAL_ERROR if code is None else code,
        libvirt.VIR_FROM_RPC if domain is None else domain,
        message,
        2,
        None,
        None,
        None,
        0,
        0,
    )
    return exc


class DeadConn:
    """A virConnect whose connection libvirt has closed (keepalive, EOF)."""

    def isAlive(self):
        return 0

    def close(self):
        return 0


@pytest.fixture
def dead():
    """An open Connection to REMOTE whose daemon is gone (keepalive 5, 5 in force)."""
    conn = c.Connection(REMOTE)
    conn._conn = DeadConn()
    conn.keepalive = (5, 5)
    c._OPEN.add(conn)
    yield conn
    conn.close()


# --------------------------------------------------------------------------- settings


def test_defaults_give_up_a_silent_daemon_after_about_30_s(monkeypatch):
    monkeypatch.delenv(c.KEEPALIVE_ENV, raising=False)
    monkeypatch.delenv(c.OPEN_TIMEOUT_ENV, raising=False)
    interval, count = c.keepalive_settings()
    assert interval * (count + 1) == 30
    assert c.open_timeout() == 60


@pytest.mark.parametrize(
    "raw, expected", [("2,3", (2, 3)), (" 1,1 ", (1, 1)), ("0", (0, 0)), ("off", (0, 0)), ("", c.KEEPALIVE)]
)
def test_keepalive_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv(c.KEEPALIVE_ENV, raw)
    assert c.keepalive_settings() == expected


@pytest.mark.parametrize("raw", ["5", "5,0", "0,5", "a,b", "1,2,3", "-1,2"])
def test_a_bad_keepalive_setting_names_the_variable_and_the_form(monkeypatch, raw):
    monkeypatch.setenv(c.KEEPALIVE_ENV, raw)
    with pytest.raises(InvalidInput, match=r"VIRTOPS_KVM_KEEPALIVE .* 'INTERVAL,COUNT'"):
        c.keepalive_settings()


@pytest.mark.parametrize("raw, expected", [("7.5", 7.5), ("0", 0.0)])
def test_open_timeout_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv(c.OPEN_TIMEOUT_ENV, raw)
    assert c.open_timeout() == expected


@pytest.mark.parametrize("raw", ["soon", "-1", "nan"])
def test_a_bad_open_timeout_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv(c.OPEN_TIMEOUT_ENV, raw)
    with pytest.raises(InvalidInput, match="VIRTOPS_KVM_OPEN_TIMEOUT"):
        c.open_timeout()


def test_a_bad_setting_fails_the_open_not_the_import(monkeypatch):
    monkeypatch.setenv(c.KEEPALIVE_ENV, "fast")
    with pytest.raises(InvalidInput):
        assert c.Connection(URI).conn is None  # opening raises


# --------------------------------------------------------------------------- the event loop and the open


def test_one_event_loop_thread_however_many_connections():
    with c.Connection(URI) as one, c.Connection(URI, readonly=True) as two:
        assert one.conn.getType() == two.conn.getType() == "TEST"
        loops = [t for t in threading.enumerate() if t.name == "virtops-libvirt-events"]
        assert len(loops) == 1 and loops[0].daemon and loops[0].is_alive()
        assert one.alive() and one in c._OPEN
        # the test driver has no daemon to probe: no keepalive in force, and none needed
        assert one.keepalive == (0, 0)
    assert not one.alive() and one not in c._OPEN


def test_the_reboot_wait_still_pumps_events_while_the_loop_thread_runs():
    with c.Connection(URI) as conn:
        assert conn.conn is not None  # the loop thread runs
        timer = libvirt.virEventAddTimeout(50, lambda *_a: None, None)
        try:
            slowest = 0.0
            for _turn in range(10):
                t0 = time.monotonic()
                transitions.pump_events()
                slowest = max(slowest, time.monotonic() - t0)
        finally:
            libvirt.virEventRemoveTimeout(timer)
    assert slowest < 2, slowest  # a turn at the loop, never stuck behind the thread


def test_an_open_that_does_not_come_back_fails_within_the_timeout_and_is_closed_when_it_does(monkeypatch):
    release = threading.Event()
    closed = []

    class Late:
        def close(self):
            closed.append(True)
            return 0

    def hanging_open(uri):
        release.wait(10)
        return Late()

    monkeypatch.setenv(c.OPEN_TIMEOUT_ENV, "0.3")
    monkeypatch.setattr(libvirt, "open", hanging_open)
    conn = c.Connection(REMOTE)
    t0 = time.monotonic()
    with pytest.raises(ConnectionFailed) as info:
        assert conn.conn is None  # opening raises
    assert 0.3 <= time.monotonic() - t0 < 2
    msg = info.value.message
    assert f"The libvirt daemon at '{REMOTE}' did not answer within 0.3 s when the connection was opened" in msg
    assert f"'virsh -c {REMOTE} list'" in msg and "VIRTOPS_KVM_OPEN_TIMEOUT" in msg
    assert conn._conn is None
    release.set()  # the daemon answers after all: nobody waits for that connection any more
    deadline = time.monotonic() + 5
    while not closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert closed == [True]


def test_an_open_error_in_the_worker_is_translated_as_before(monkeypatch):
    def refused(uri):
        raise lv_error(
            "Failed to connect socket to '/nowhere/libvirt-sock': Connection refused",
            code=libvirt.VIR_ERR_SYSTEM_ERROR,
        )

    monkeypatch.setattr(libvirt, "open", refused)
    with pytest.raises(DaemonNotRunning, match="is not running"):
        assert c.Connection(REMOTE).conn is None  # opening raises


def test_a_daemon_that_dies_during_the_open_is_said_so():
    err = c.translate(lv_error("Cannot recv data: Connection reset by peer", code=libvirt.VIR_ERR_SYSTEM_ERROR), REMOTE)
    assert err.__class__ is ConnectionFailed
    assert "closed the connection while it was being opened: it died or was restarted" in err.message


def test_closing_a_connection_whose_daemon_is_gone_is_quiet():
    class Gone:
        def close(self):
            raise lv_error("client socket is closed")

    conn = c.Connection(REMOTE)
    conn._conn = Gone()
    conn.close()
    assert conn._conn is None


# --------------------------------------------------------------------------- calls the connection died under


def test_a_keepalive_timeout_names_the_uri_the_call_the_bound_and_what_to_do(dead):
    err = c.libvirt_failed(lv_error("internal error: connection closed due to keepalive timeout"), "Listing domains")
    assert err.__class__ is ConnectionFailed
    assert err.msg.startswith(
        f"The libvirt daemon at '{REMOTE}' stopped answering in the middle of the task: "
        "the call 'Listing domains' did not come back within 30 s"
    )
    assert f"'virsh -c {REMOTE} list'" in err.hint and "rerun the task" in err.hint


@pytest.mark.parametrize(
    "text",
    [
        "End of file while reading data: Input/output error",
        "Cannot recv data: Connection reset by peer",
        "Cannot write data: Broken pipe",
    ],
)
def test_a_daemon_that_died_under_a_call_is_said_so(dead, text):
    err = c.libvirt_failed(lv_error(text, code=libvirt.VIR_ERR_SYSTEM_ERROR), "Undefining domain web1")
    assert err.__class__ is ConnectionFailed
    assert "died or was restarted while the call 'Undefining domain web1' was waiting" in err.msg
    assert text in err.msg


def test_a_later_call_on_the_lost_connection_says_it_was_lost_earlier(dead):
    err = c.libvirt_failed(lv_error("internal error: client socket is closed"), c.GENERIC_CALL)
    assert err.__class__ is ConnectionFailed
    assert f"The connection to the libvirt daemon at '{REMOTE}' was lost earlier in the task" in err.msg
    assert "so a libvirt call could not be made" in err.msg


def test_the_clients_own_words_count_without_a_registered_connection():
    err = c.libvirt_failed(lv_error("internal error: connection closed due to keepalive timeout"), "Reading a domain")
    assert err.__class__ is ConnectionFailed
    assert "The libvirt daemon of this task stopped answering" in err.msg


def test_an_rpc_error_forwarded_while_our_connection_lives_stays_libvirt_failed():
    # e.g. libvirtd's own connection to virtlogd broke: our connection is fine, the operation failed
    with c.Connection(URI) as conn:
        assert conn.conn is not None and conn.alive()
        err = c.libvirt_failed(lv_error("Cannot recv data: Connection reset by peer"), "Starting domain web1")
    assert err.__class__ is LibvirtFailed
    assert err.msg == "Starting domain web1 failed: Cannot recv data: Connection reset by peer"


def test_other_errors_stay_libvirt_failed_even_on_a_dead_connection(dead):
    err = c.libvirt_failed(
        lv_error("Domain not found: no domain with matching name 'x'", libvirt.VIR_FROM_QEMU), "Looking up x"
    )
    assert err.__class__ is LibvirtFailed
