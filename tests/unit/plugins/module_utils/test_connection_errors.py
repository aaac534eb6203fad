"""Why a connection did not open, said plainly: the URI, what failed, what to do (_connection_errors).

The libvirtErrors here carry the code, domain and message libvirt 9.0 (with OpenSSH 9.2) really
raised on this project's machine when each failure was provoked (a private sshd on 127.0.77.2 with
keys that do not match, a known_hosts with a wrong key, a listener whose queue is full, a socket only
root may use, tried as nobody). Two were not provoked: the polkit refusal (its text is libvirt's
own, src/rpc/virnetclient.c / remote driver) and "Could not resolve hostname" (OpenSSH's ssh.c
text; resolving a name would leave loopback). tests/integration/test_connection_errors.py provokes
the loopback ones for real through the modules.
"""

from __future__ import annotations

import threading
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _connection as c
from ansible_collections.virtops.kvm.plugins.module_utils import _connection_errors as ce
from ansible_collections.virtops.kvm.plugins.module_utils import _manager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionRefused,
    DaemonNotRunning,
    HostKeyRejected,
    HostUnreachable,
    InvalidInput,
    PermissionDenied,
    UnknownUri,
)
from ansible_collections.virtops.kvm.plugins.module_utils._host.info import HostInfoManager
from ansible_collections.virtops.kvm.plugins.module_utils._inventory import read, uris
from ansible_collections.virtops.kvm.plugins.module_utils._migrate.manager import MigrateManager

libvirt = pytest.importorskip("libvirt")

SYS, RPC = 38, 7  # VIR_ERR_SYSTEM_ERROR, VIR_FROM_RPC: nearly every transport failure
SSH = "qemu+ssh://root@127.0.77.2:2299/system?keyfile=/tmp/k"

CHANGED_BANNER = (
    "Cannot recv data: @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
    "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
    "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\r\n"
    "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\r\n"
    "Someone could be eavesdropping on you right now (man-in-the-middle attack)!\r\n"
    "It is also possible that a host key has just been changed.\r\n"
    "The fingerprint for the ED25519 key sent by the remote host is\n"
    "SHA256:84bF73T9O8up6QbpcuQxQc82B0dTJui937HPnV8afxw.\r\n"
    "Please contact your system administrator.\r\n"
    "Add correct host key in /tmp/kh to get rid of this message.\r\n"
    "Offending ED25519 key in /tmp/kh:1\r\n"
    "  remove with:\r\n"
    '  ssh-keygen -f "/tmp/kh" -R "[127.0.77.2]:2299"\r\n'
    "Host key for [127.0.77.2]:2299 has changed and you have requested strict checking.\r\n"
    "Host key verification failed.: Connection reset by peer"
)


def lv_error(message: str, code: int = SYS, domain: int = RPC):
    """A libvirtError as libvirt's client raises it (code, domain, message)."""
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, 0, 0)
    return exc


# (uri, code, domain, libvirt's message, the type, what the message must say)
CASES = [
    pytest.param(
        "qemu+ssh://127.0.0.1:1/system",
        SYS,
        RPC,
        "Cannot recv data: ssh: connect to host 127.0.0.1 port 1: Connection refused: Connection reset by peer",
        ConnectionRefused,
        ["'qemu+ssh://127.0.0.1:1/system'", "ssh to 127.0.0.1 port 1 was refused", "Is sshd running on 127.0.0.1"],
        id="ssh-refused",
    ),
    pytest.param(
        "qemu+ssh://localhost/system",
        SYS,
        RPC,
        "Cannot recv data: ssh: connect to host localhost port 22: Connection refused: Connection reset by peer",
        ConnectionRefused,
        ["ssh to localhost port 22 was refused", "qemu+ssh://localhost:2222/system"],
        id="ssh-refused-default-port",
    ),
    pytest.param(
        "qemu+libssh2://127.0.0.1:1/system",
        SYS,
        RPC,
        "unable to connect to server at '127.0.0.1:1': Connection refused",
        ConnectionRefused,
        ["ssh to 127.0.0.1 port 1 was refused"],
        id="libssh2-refused",
    ),
    pytest.param(
        "qemu+tcp://127.0.0.1:1/system",
        SYS,
        RPC,
        "unable to connect to server at '127.0.0.1:1': Connection refused",
        ConnectionRefused,
        ["127.0.0.1 port 1 refused the connection", "listens for tcp", "libvirtd-tcp.socket", "qemu+ssh://"],
        id="tcp-refused",
    ),
    pytest.param(
        SSH,
        SYS,
        RPC,
        "Cannot recv data: root@127.0.77.2: Permission denied (publickey).: Connection reset by peer",
        AuthenticationFailed,
        ["could not log in as root (Permission denied (publickey))", "keyfile=", "'ssh -p 2299 root@127.0.77.2 true'"],
        id="ssh-login",
    ),
    pytest.param(
        "qemu+ssh://nobody@127.0.77.2:2299/system?no_verify=1",
        SYS,
        RPC,
        "Cannot recv data: Warning: Permanently added '[127.0.77.2]:2299' (ED25519) to the list of known hosts.\r\n"
        "nobody@127.0.77.2: Permission denied (publickey).: Connection reset by peer",
        AuthenticationFailed,
        ["could not log in as nobody (Permission denied (publickey))", "authorized_keys"],
        id="ssh-login-first-contact",
    ),
    pytest.param(
        "qemu+libssh://root@127.0.77.2:2299/system?sshauth=privkey",
        98,
        66,
        "libssh transport error: failed to authenticate: Access denied for 'publickey'. "
        "Authentication that can continue: publickey",
        AuthenticationFailed,
        ["could not log in as root", "Access denied for 'publickey'"],
        id="libssh-login",
    ),
    pytest.param(
        "qemu+libssh://root@127.0.77.2:2299/system",
        45,
        66,
        "authentication failed: All provided authentication methods with credentials were rejected by the server",
        AuthenticationFailed,
        ["could not log in as root"],
        id="libssh-login-all-rejected",
    ),
    pytest.param(
        "qemu+libssh2://root@127.0.77.2:2299/system?sshauth=privkey",
        45,
        50,
        "authentication failed: authentication with private key '/tmp/k' has failed: "
        "Username/PublicKey combination invalid",
        AuthenticationFailed,
        ["could not log in as root", "Username/PublicKey combination invalid"],
        id="libssh2-login",
    ),
    pytest.param(
        SSH,
        SYS,
        RPC,
        CHANGED_BANNER,
        HostKeyRejected,
        [
            "the ssh host key of 127.0.77.2 port 2299 is not the one recorded in /tmp/kh (line 1)",
            'ssh-keygen -f "/tmp/kh" -R "[127.0.77.2]:2299"',
            "intercepting",
        ],
        id="ssh-host-key-changed",
    ),
    pytest.param(
        SSH,
        SYS,
        RPC,
        "Cannot recv data: Host key verification failed.: Connection reset by peer",
        HostKeyRejected,
        ["ssh does not know the host key of 127.0.77.2 port 2299", "ssh-keyscan -p 2299 127.0.77.2", "no_verify=1"],
        id="ssh-host-key-unknown",
    ),
    pytest.param(
        "qemu+libssh://root@127.0.77.2:2299/system?known_hosts=/tmp/kh",
        98,
        66,
        "libssh transport error: No user interaction callback provided: Can't verify the session host key",
        HostKeyRejected,
        ["does not know the host key of 127.0.77.2 port 2299", "known_hosts="],
        id="libssh-host-key-unknown",
    ),
    pytest.param(
        "qemu+libssh2://root@127.0.77.2:2299/system?known_hosts=/tmp/kh",
        45,
        50,
        "authentication failed: !!! SSH HOST KEY VERIFICATION FAILED !!!: Identity of host '127.0.77.2:2299' "
        "differs from stored identity. Please verify the new host key 'AAAAC3NzaC1lZDI1NTE5AAAAINzw4QK2N' to "
        "avoid possible man in the middle attack. The key is stored in '/tmp/kh'.",
        HostKeyRejected,
        ["is not the one recorded in /tmp/kh", "ssh-keygen -f /tmp/kh -R '[127.0.77.2]:2299'"],
        id="libssh2-host-key-changed",
    ),
    pytest.param(
        "qemu+ssh://root@127.0.77.3:49635/system",
        SYS,
        RPC,
        "Cannot recv data: ssh: connect to host 127.0.77.3 port 49635: Connection timed out: Connection reset by peer",
        HostUnreachable,
        ["connecting to 127.0.77.3 port 49635 failed, the connection timed out", "firewall"],
        id="ssh-connect-timeout",
    ),
    pytest.param(
        "qemu+tcp://127.0.77.3:49635/system",
        SYS,
        RPC,
        "unable to connect to server at '127.0.77.3:49635': Connection timed out",
        HostUnreachable,
        ["connecting to 127.0.77.3 port 49635 failed, the connection timed out"],
        id="tcp-connect-timeout",
    ),
    pytest.param(
        "qemu+ssh://root@10.0.0.9/system",
        SYS,
        RPC,
        "Cannot recv data: ssh: connect to host 10.0.0.9 port 22: No route to host: Connection reset by peer",
        HostUnreachable,
        ["connecting to 10.0.0.9 port 22 failed, there is no route to that host"],
        id="ssh-no-route",
    ),
    pytest.param(
        "qemu+ssh://root@kvm9.invalid/system",
        SYS,
        RPC,
        "Cannot recv data: ssh: Could not resolve hostname kvm9.invalid: Name or service not known: "
        "Connection reset by peer",
        HostUnreachable,
        ["'kvm9.invalid' is not a host name this machine can resolve", "/etc/hosts"],
        id="ssh-unknown-name",
    ),
    pytest.param(
        "qemu+ssh://root@127.0.77.3:44997/system",
        SYS,
        RPC,
        "Cannot recv data: Connection timed out during banner exchange\r\n"
        "Connection to 127.0.77.3 port 44997 timed out: Connection reset by peer",
        ConnectionFailed,
        ["ssh reached 127.0.77.3 port 44997 but no ssh server answered there in time"],
        id="ssh-banner-timeout",
    ),
    pytest.param(
        SSH,
        SYS,
        RPC,
        "End of file while reading data: virt-ssh-helper: cannot connect to '/var/run/libvirt/libvirt-sock': "
        "Failed to connect socket to '/var/run/libvirt/libvirt-sock': No such file or directory: Input/output error",
        DaemonNotRunning,
        [f"The libvirt daemon for '{SSH}' is not running on 127.0.77.2: ssh to 127.0.77.2 worked", "Start it on"],
        id="remote-daemon-not-running",
    ),
    pytest.param(
        SSH + "&socket=/run/libvirt/libvirt-sock",
        SYS,
        RPC,
        "End of file while reading data: sh: 1: nc: not found: Input/output error",
        ConnectionFailed,
        ["the netcat (nc) command libvirt runs there is missing (sh: 1: nc: not found)", "virt-ssh-helper"],
        id="remote-no-netcat",
    ),
    pytest.param(
        "qemu+tls://127.0.0.1:1/system",
        SYS,
        RPC,
        "Cannot read CA certificate '/etc/pki/CA/cacert.pem': No such file or directory",
        ConnectionFailed,
        ["the tls transport needs certificates", "qemu+ssh://user@127.0.0.1/system"],
        id="tls-no-certificates",
    ),
    pytest.param(
        SSH,
        SYS,
        RPC,
        "Cannot recv data: something else went wrong: Connection reset by peer",
        ConnectionFailed,
        ["ssh to 127.0.77.2 port 2299 failed: something else went wrong", "keyfile="],
        id="ssh-other",
    ),
    pytest.param(
        "qemu:///system?socket=/nonexistent/sock",
        SYS,
        RPC,
        "Failed to connect socket to '/nonexistent/sock': No such file or directory",
        DaemonNotRunning,
        ["The libvirt daemon for 'qemu:///system?socket=/nonexistent/sock' is not running", "systemctl"],
        id="local-socket-missing",
    ),
    pytest.param(
        "qemu:///system?socket=/run/libvirt/libvirt-admin-sock",
        SYS,
        RPC,
        "Failed to connect socket to '/run/libvirt/libvirt-admin-sock': Permission denied",
        PermissionDenied,
        ["may not use the daemon's socket /run/libvirt/libvirt-admin-sock", "become: true", "'libvirt' group"],
        id="local-socket-permission",
    ),
    pytest.param(
        "qemu:///system",
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_FROM_RPC,
        "authentication unavailable: no polkit agent available to authenticate action 'org.libvirt.unix.manage'",
        PermissionDenied,
        ["Permission denied to connect to libvirt at 'qemu:///system'", "become: true"],
        id="local-polkit",
    ),
    pytest.param(
        "bogus:///nothing",
        5,
        0,
        "no connection driver available for bogus:///nothing",
        UnknownUri,
        ["'bogus:///nothing': no libvirt driver handles it", "libvirt-daemon-driver-qemu"],
        id="unknown-driver",
    ),
    pytest.param(
        "qemu:///sessionx",
        1,
        0,
        "internal error: unexpected qemu URI path '/sessionx', try qemu:///system",
        UnknownUri,
        ["the driver does not know that path", "/system"],
        id="unknown-path",
    ),
]


@pytest.mark.parametrize("uri, code, domain, text, kind, says", CASES)
def test_each_failure_has_its_own_type_and_message(uri, code, domain, text, kind, says):
    err = c.translate(lv_error(text, code, domain), uri)
    assert err.__class__ is kind, (type(err).__name__, err.message)
    assert isinstance(err, ConnectionFailed)  # every old `except ConnectionFailed` still catches it
    assert f"'{uri}'" in err.message
    for part in says:
        assert part in err.message, (part, err.message)
    assert err.hint  # and what to do
    assert "\r" not in err.message and "@@@@" not in err.message
    if kind is not DaemonNotRunning:
        assert "not running" not in err.message  # the old misreading: ssh refused read as a dead daemon


def test_ssh_login_failure_is_still_a_permission_denied():
    err = c.translate(
        lv_error("Cannot recv data: root@h: Permission denied (publickey).: Connection reset by peer"), SSH
    )
    assert isinstance(err, PermissionDenied) and isinstance(err, AuthenticationFailed)


def test_a_local_daemon_that_dies_during_the_open_is_still_said_so():
    uri = "qemu+unix:///system?socket=/nowhere/libvirt-sock"
    err = c.translate(lv_error("Cannot recv data: Connection reset by peer"), uri)
    assert err.__class__ is ConnectionFailed and "closed the connection while it was being opened" in err.message


# --------------------------------------------------------------------------- a remote URI without a host


@pytest.mark.parametrize("transport", ce.REMOTE_TRANSPORTS)
def test_a_remote_transport_without_a_host_is_refused_naming_the_option(transport):
    uri = f"qemu+{transport}:///system"
    with pytest.raises(InvalidInput) as info:
        ce.refuse_hostless(uri, "dest_uri")
    msg = info.value.message
    assert f"The URI '{uri}' given in dest_uri has no host" in msg
    assert f"qemu+{transport}://" in info.value.hint and "qemu:///system" in info.value.hint


@pytest.mark.parametrize(
    "uri",
    [
        "qemu:///system",
        "qemu:///session",
        "qemu+unix:///system?socket=/run/x",
        "qemu+ext:///system?command=/bin/x",
        "test:///default",
        "qemu+ssh://kvm1/system",
        "qemu+ssh://root@[::1]:2222/system",
        "qemu://kvm1/system",
    ],
)
def test_uris_that_need_no_host_or_have_one_pass(uri):
    ce.refuse_hostless(uri)


def test_a_user_without_a_host_is_no_host():
    with pytest.raises(InvalidInput, match="has no host"):
        ce.refuse_hostless("qemu+ssh://root@/system")


def test_a_hostless_uri_never_reaches_libvirt(monkeypatch):
    def opened(*_a):
        raise AssertionError("libvirt was called")

    monkeypatch.setattr(libvirt, "open", opened)
    monkeypatch.setattr(libvirt, "openReadOnly", opened)
    conn = c.Connection("qemu+ssh:///system", readonly=True)
    with pytest.raises(InvalidInput, match=r"'qemu\+ssh:///system' given in uri has no host"):
        assert conn.conn is None


def test_the_fallback_from_libvirt_default_uri_is_named(monkeypatch):
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "qemu+tls:///system")
    with pytest.raises(InvalidInput, match=r"given in uri \(from LIBVIRT_DEFAULT_URI\) has no host"):
        assert c.Connection(None).conn is None


class FakeModule:
    """What run_module uses of an AnsibleModule; fail_json records and stops."""

    check_mode = False
    _diff = False

    def __init__(self, params):
        self.params = params
        self.failed = None

    def warn(self, _msg):
        pass

    def get_bin_path(self, _name, *_a, **_kw):
        return None

    def fail_json(self, **kw):
        self.failed = kw
        raise SystemExit(1)

    def exit_json(self, **kw):
        raise AssertionError(f"the module succeeded: {kw}")


def _run(manager_cls, params):
    module = FakeModule(dict({k: None for k in manager_cls.argument_spec()}, **params))
    with pytest.raises(SystemExit):
        _manager.run_module(module, manager_cls)
    return module.failed


def test_kvm_host_info_with_a_hostless_uri_fails_with_the_option_named(monkeypatch):
    monkeypatch.setattr(libvirt, "openReadOnly", lambda *_a: pytest.fail("libvirt was called"))
    monkeypatch.setattr(libvirt, "open", lambda *_a: pytest.fail("libvirt was called"))
    failed = _run(HostInfoManager, dict(uri="qemu+ssh:///system"))
    assert failed["error"] == "InvalidInput"
    assert "'qemu+ssh:///system' given in uri has no host" in failed["msg"]
    assert "not running" not in failed["msg"] and "systemctl" not in failed["msg"]


def test_kvm_host_info_says_ssh_was_refused_not_that_the_daemon_is_down(monkeypatch):
    text = "Cannot recv data: ssh: connect to host kvm1 port 22: Connection refused: Connection reset by peer"

    def refused(_uri):
        raise lv_error(text)

    monkeypatch.setattr(libvirt, "openReadOnly", refused)
    monkeypatch.setattr(libvirt, "open", refused)
    failed = _run(HostInfoManager, dict(uri="qemu+ssh://root@kvm1/system"))
    assert failed["error"] == "ConnectionRefused"
    assert "ssh to kvm1 port 22 was refused" in failed["msg"] and "'qemu+ssh://root@kvm1/system'" in failed["msg"]


def test_kvm_migrate_refuses_a_hostless_dest_uri_before_either_connection_opens():
    source = c.Connection("test:///default")
    manager = MigrateManager(dict(name="vm1", uri="test:///default", dest_uri="qemu+ssh:///system"), source)
    with pytest.raises(InvalidInput) as info:
        manager.run()
    assert "The URI 'qemu+ssh:///system' given in dest_uri has no host" in info.value.message
    assert source._conn is None


# --------------------------------------------------------------------------- the inventory


def test_the_inventory_refuses_a_hostless_uri_as_an_option_error():
    with pytest.raises(InvalidInput, match=r"'qemu\+libssh2:///system' given in uris has no host"):
        uris.parse("qemu+libssh2:///system")


def test_the_inventory_gets_the_modules_messages(monkeypatch):
    text = "Cannot recv data: Host key verification failed.: Connection reset by peer"

    def rejected(_uri):
        raise lv_error(text)

    monkeypatch.setattr(libvirt, "openReadOnly", rejected)
    with pytest.raises(HostKeyRejected, match=r"does not know the host key of 127\.0\.77\.2 port 2299"):
        read.read_uri(uris.parse(SSH), ["lease"])  # no agent: read-only, through the modules' Connection


def test_the_inventory_opens_like_the_modules_bounded_and_kept_alive(monkeypatch):
    """read_uri goes through Connection: the open timeout and keepalive of every module, not a raw open."""
    release = threading.Event()
    opened = []

    def hanging_open(uri):
        opened.append(uri)
        release.wait(10)
        raise lv_error("Cannot recv data: Connection reset by peer")

    monkeypatch.setenv(c.OPEN_TIMEOUT_ENV, "0.3")
    monkeypatch.setattr(libvirt, "openReadOnly", hanging_open)
    try:
        with pytest.raises(ConnectionFailed, match=r"did not finish within 0\.3 s: 127\.0\.77\.2 port 2299 accepts"):
            read.read_uri(uris.parse(SSH), ["lease", "arp"])
    finally:
        release.set()
    assert opened == [SSH]
    seen = []
    monkeypatch.setattr(c.Connection, "_start_keepalive", staticmethod(lambda conn, *ka: seen.append(ka) or (0, 0)))
    assert read.read_uri(uris.parse("test:///default"), ["agent"]) and seen == [c.keepalive_settings()]


# --------------------------------------------------------------------------- an open that does not come back


def test_a_remote_open_that_does_not_come_back_names_the_host_and_port(monkeypatch):
    release = threading.Event()

    def hanging_open(_uri):
        release.wait(10)
        raise lv_error("Cannot recv data: Connection reset by peer")

    monkeypatch.setenv(c.OPEN_TIMEOUT_ENV, "0.3")
    monkeypatch.setattr(libvirt, "open", hanging_open)
    uri = "qemu+ssh://root@kvm1:2222/system"
    t0 = time.monotonic()
    try:
        with pytest.raises(ConnectionFailed) as info:
            assert c.Connection(uri).conn is None
    finally:
        release.set()
    assert time.monotonic() - t0 < 2
    msg = info.value.message
    assert info.value.__class__ is ConnectionFailed
    assert f"Connecting to libvirt at '{uri}' did not finish within 0.3 s: kvm1 port 2222 accepts" in msg
    assert "'ssh -p 2222 root@kvm1 true'" in msg and c.OPEN_TIMEOUT_ENV in msg
