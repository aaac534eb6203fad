# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Why a libvirt connection did not open, in plain words: the URI, what failed, what to do.

``refuse_hostless()`` stops a remote URI that has no host before libvirt is called: libvirt
would go to localhost, and when ssh there is refused it used to read as "the daemon is not
running". ``opening_failed()`` reads the libvirtError of an open. libvirt's ssh transport runs
the ssh command and hands back what ssh printed, wrapped ("Cannot recv data: <ssh's stderr>:
Connection reset by peer"); nearly every transport failure has the same code (38, system
error), so the cause is read from the text. The texts, as libvirt 9.0 and OpenSSH 9.2 print
them on this project's machines, are in tests/unit/plugins/module_utils/test_connection_errors.py
(tests/integration/test_connection_errors.py provokes them for real):

- ssh refused: ``ssh: connect to host H port P: Connection refused``; libssh/libssh2/tcp/tls:
  ``unable to connect to server at 'H:P': Connection refused``
- ssh login: ``user@H: Permission denied (publickey).``; libssh(2): ``failed to authenticate``,
  ``Username/PublicKey combination invalid``, ``... rejected by the server``
- host key: ``Host key verification failed.`` (after OpenSSH's "REMOTE HOST IDENTIFICATION HAS
  CHANGED" banner when the key changed); libssh(2): ``SSH HOST KEY VERIFICATION FAILED``,
  ``Can't verify the session host key``
- no answer: ``Connection timed out``, ``No route to host``, ``Could not resolve hostname``
- the daemon behind ssh: ``virt-ssh-helper: cannot connect to '...'``, ``nc: not found``
- local socket: ``Failed to connect socket to 'S': No such file or directory | Connection
  refused | Permission denied``
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    AuthenticationFailed,
    ConnectionFailed,
    ConnectionRefused,
    DaemonNotRunning,
    HostKeyRejected,
    HostUnreachable,
    InvalidInput,
    KvmError,
    PermissionDenied,
    UnknownUri,
)

#: the transports that reach another host (``unix`` and ``ext`` do not need one)
REMOTE_TRANSPORTS = ("ssh", "libssh", "libssh2", "tcp", "tls")
SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
DEFAULT_PORTS = dict(ssh=22, libssh=22, libssh2=22, tcp=16509, tls=16514)
OPEN_TIMEOUT_ENV = "VIRTOPS_KVM_OPEN_TIMEOUT"

START_HINT = (
    "Start it with 'systemctl enable --now libvirtd' (or virtqemud.socket on distros with "
    "modular daemons), or on a host without systemd run 'virtlogd -d && libvirtd -d'; "
    "virtops.kvm.kvm_host with daemon_state=started does this for you."
)
REMOTE_HINT = (
    "Check that the host answers and that libvirtd runs there, and that ssh logs in without a prompt "
    "(a key: keyfile= in the URI or an ssh agent; a known host key or no_verify=1; no_tty=1 makes ssh fail "
    "instead of asking for a password)."
)

# What libvirt's client says when the connection under a call is gone (error domain RPC or remote).
LOST = (
    "keepalive timeout",
    "client socket is closed",
    "end of file while reading data",
    "cannot recv data",
    "cannot write data",
    "connection reset by peer",
    "broken pipe",
)
# libvirt's wrapping around what the ssh command printed
_WRAP = re.compile(
    r"^(?:cannot recv data|end of file while reading data|cannot write data):\s*|"
    r":\s*(?:connection reset by peer|input/output error|broken pipe)$",
    re.I,
)
_CONNECT = re.compile(r"connect to host (\S+) port (\d+): ([^:\r\n]+)", re.I)
_SERVER = re.compile(r"unable to connect to server at '([^']*?):(\d+)': ([^:\r\n]+)", re.I)
_LOGIN = re.compile(r"(\S+)@(\S+): (Permission denied \([^)]*\))", re.I)
_RESOLVE = re.compile(r"could not resolve hostname (\S+?):|unable to resolve address '([^']*)'", re.I)
_OFFENDING = re.compile(r"Offending \S+ key in (\S+):(\d+)")
_REMOVE = re.compile(r"(ssh-keygen -f \"[^\"]*\" -R \"[^\"]*\")")
_SOCKET = re.compile(r"failed to connect socket to '([^']*)': ([^:\r\n]+)", re.I)


def parts(uri: str) -> dict:
    """The URI's ``scheme driver transport user host port path``; empty values where it has none."""
    scheme = uri.partition("://")[0] if "://" in uri else ""
    driver, _plus, transport = scheme.partition("+")
    try:
        split = urlsplit(uri)
        user, host, port, path = split.username, split.hostname, split.port, split.path
    except ValueError:  # an unreadable port: libvirt will say so
        user = host = port = None
        path = ""
    return dict(scheme=scheme, driver=driver, transport=transport, user=user, host=host, port=port, path=path)


def refuse_hostless(uri: str, option: str = "uri") -> None:
    """InvalidInput when ``uri`` uses a transport to another host (ssh, tcp, tls...) but names none."""
    p = parts(uri)
    if p["transport"] not in REMOTE_TRANSPORTS or p["host"]:
        return
    origin = " (from LIBVIRT_DEFAULT_URI)" if option == "uri" and uri == os.environ.get("LIBVIRT_DEFAULT_URI") else ""
    who = "user@" if p["transport"] in SSH_TRANSPORTS else ""
    path = p["path"] or "/system"
    raise InvalidInput(
        f"The URI '{uri}' given in {option}{origin} has no host, but its '{p['transport']}' transport connects "
        f"to one: libvirt would try localhost port {DEFAULT_PORTS[p['transport']]} instead, which is not what "
        "such a URI is for, so nothing was tried.",
        hint=f"A {p['scheme']} URI needs a host: {p['scheme']}://{who}host{path} (e.g. "
        f"{p['scheme']}://{who.replace('user', 'root')}kvm1.example.com{path}); for the libvirt daemon of the "
        f"machine the task runs on, leave the transport out: {p['driver']}://{path}.",
    )


def daemon_hint(uri: str) -> str:
    return (
        "Check that the libvirt daemon (libvirtd, or virtqemud on hosts with modular daemons) is running and "
        f"answers: 'virsh -c {uri} list' (one that hangs needs a restart, e.g. 'systemctl restart libvirtd'). "
        "Then rerun the task, which converges from what this run left."
    )


def open_timed_out(uri: str, timeout: float) -> ConnectionFailed:
    """The failure of an open that did not come back within ``timeout`` s."""
    p = parts(uri)
    more = (
        " A daemon that is only slow to start can be given more time with the environment variable "
        f"{OPEN_TIMEOUT_ENV} (seconds)."
    )
    if not p["host"]:
        return ConnectionFailed(
            f"The libvirt daemon at '{uri}' did not answer within {timeout:g} s when the connection "
            "was opened: its socket accepts connections but the daemon does not reply (it hangs or is "
            "stopped), so the task stopped here instead of waiting forever.",
            hint=daemon_hint(uri) + more,
        )
    host, port = p["host"], p["port"] or DEFAULT_PORTS.get(p["transport"], 16514)
    ssh = p["transport"] in SSH_TRANSPORTS
    who = "the sshd there, or the libvirt daemon behind it," if ssh else "the libvirt daemon listening there"
    check = f"'ssh -p {port} {_login(p)}{host} true' and " if ssh else ""
    return ConnectionFailed(
        f"Connecting to libvirt at '{uri}' did not finish within {timeout:g} s: {host} port {port} accepts the "
        f"connection but does not complete it ({who} hangs or is stopped), so the task stopped here instead of "
        "waiting forever.",
        hint=f"Check that {check}'virsh -c {uri} list' work from the machine the task runs on; restart what "
        f"hangs on {host}, then rerun the task.{more}",
    )


def _login(p: dict) -> str:
    return f"{p['user']}@" if p["user"] else ""


def _said(text: str) -> str:
    """What the ssh command (or the helper behind it) printed: libvirt's wrapping and ssh's chatter taken off."""
    inner = _WRAP.sub("", _WRAP.sub("", text.strip()))
    lines = [ln.strip() for ln in inner.replace("\r", "\n").split("\n")]
    return " ".join(ln for ln in lines if ln and not ln.startswith("Warning: Permanently added"))


def _where(p: dict, text: str) -> tuple:
    """(host, port) as ssh or libvirt reported them, else from the URI with the transport's default port."""
    m = _CONNECT.search(text) or _SERVER.search(text)
    if m:
        return m.group(1), m.group(2)
    return p["host"] or "localhost", p["port"] or DEFAULT_PORTS.get(p["transport"], "")


def opening_failed(exc, uri: str) -> KvmError | None:
    """The typed failure for a libvirtError raised while opening ``uri``; None when no rule here knows it."""
    lv = _deps.libvirt
    code = exc.get_error_code()
    text = exc.get_error_message() or str(exc)
    low = text.lower()
    p = parts(uri)
    if code == lv.VIR_ERR_NO_CONNECT and "no connection driver" in low:
        return UnknownUri(
            f"Cannot connect to libvirt at '{uri}': no libvirt driver handles it ({text}).",
            hint="Check the uri option (for example qemu:///system, qemu:///session, "
            "qemu+ssh://host/system, test:///default) and that the hypervisor driver package "
            "(libvirt-daemon-driver-qemu) is installed.",
        )
    if "unexpected" in low and "uri" in low:
        return UnknownUri(
            f"Cannot connect to libvirt at '{uri}': the driver does not know that path ({text}).",
            hint="Use /system (the system daemon) or /session (the user's own), e.g. qemu:///system.",
        )
    if p["host"] and p["transport"] in ("", *REMOTE_TRANSPORTS):
        return _remote(p, uri, code, text, low)
    return _local(uri, code, text, low)


def _local(uri: str, code: int, text: str, low: str) -> KvmError | None:
    lv = _deps.libvirt
    sock = _SOCKET.search(text)
    if "permission denied" in low or code in (lv.VIR_ERR_AUTH_FAILED, lv.VIR_ERR_AUTH_UNAVAILABLE):
        what = f"may not use the daemon's socket {sock.group(1)}" if sock else "may not use it"
        return PermissionDenied(
            f"Permission denied to connect to libvirt at '{uri}': the user running the task {what} ({text}).",
            hint="Run the task with become: true, or add the remote user to the 'libvirt' group, "
            "or use qemu:///session for an unprivileged user.",
        )
    if code in (lv.VIR_ERR_SYSTEM_ERROR, lv.VIR_ERR_NO_CONNECT) and (
        "failed to connect socket" in low or "connection refused" in low or "no such file" in low
    ):
        return DaemonNotRunning(f"The libvirt daemon for '{uri}' is not running ({text}).", hint=START_HINT)
    return None


def _remote(p: dict, uri: str, code: int, text: str, low: str) -> KvmError | None:
    lv = _deps.libvirt
    ssh = p["transport"] in SSH_TRANSPORTS
    host, port = _where(p, text)
    said = _said(text) if p["transport"] == "ssh" else text
    head = f"Cannot connect to libvirt at '{uri}':"
    if ssh and ("host key verification failed" in low or "can't verify the session host key" in low):
        return _host_key(p, uri, host, port, text, low)
    login = _LOGIN.search(text)
    if ssh and (login or code == lv.VIR_ERR_AUTH_FAILED or "failed to authenticate" in low):
        user = login.group(1) if login else (p["user"] or "the local user's name (no user@ in the URI)")
        return AuthenticationFailed(
            f"{head} ssh reached {host} port {port} but could not log in as {user} "
            f"({login.group(3) if login else said}).",
            hint="A task cannot type a password: give ssh a key that host accepts for that user, with "
            "keyfile=/path/to/key in the URI, or in the ssh agent or ~/.ssh of the user the module runs as (root "
            "with become: true), and put its public half in that user's ~/.ssh/authorized_keys on the host. "
            f"'ssh -p {port} {_login(p)}{host} true' must work without a prompt.",
        )
    if "connection refused" in low:
        if ssh:
            return ConnectionRefused(
                f"{head} ssh to {host} port {port} was refused: no ssh server listens there ({said}).",
                hint=f"Is sshd running on {host} ('systemctl enable --now ssh' there), and is {port} its port? "
                f"Another port goes in the URI: {p['scheme']}://{_login(p)}{host}:2222{p['path'] or '/system'}.",
            )
        kind = "tcp" if p["transport"] == "tcp" else "tls"
        unit = f"libvirtd-{kind}.socket or virtproxyd-{kind}.socket"
        return ConnectionRefused(
            f"{head} {host} port {port} refused the connection: no libvirt daemon listens for "
            f"{kind} connections there ({text}).",
            hint=f"Enable the listener on {host} ({unit}) and open the port, or use "
            f"qemu+ssh://user@{host}/system, which needs only sshd.",
        )
    if "timed out during banner exchange" in low:
        return ConnectionFailed(
            f"{head} ssh reached {host} port {port} but no ssh server answered there in time: the sshd hangs, "
            f"or that port belongs to something else ({said}).",
            hint=f"Check with 'ssh -p {port} {_login(p)}{host} true'; restart sshd on {host}, then rerun the task.",
        )
    resolve = _RESOLVE.search(text)
    if resolve:
        name = resolve.group(1) or resolve.group(2)
        return HostUnreachable(
            f"{head} '{name}' is not a host name this machine can resolve ({said}).",
            hint="Check the spelling of the host in the URI, and DNS or /etc/hosts on the machine the task runs on.",
        )
    for cause, plain in (
        ("connection timed out", "the connection timed out: nothing answered"),
        ("no route to host", "there is no route to that host"),
        ("network is unreachable", "the network is unreachable"),
    ):
        if cause in low:
            return HostUnreachable(
                f"{head} connecting to {host} port {port} failed, {plain} (the host is down or unreachable from "
                f"here, or a firewall drops the packets; {said}).",
                hint=f"Check that {host} is up and reachable from the machine the task runs on, that {port} is "
                "the right port and that no firewall drops it; then rerun the task.",
            )
    if "failed to connect socket" in low or "virt-ssh-helper: cannot connect" in low:
        return DaemonNotRunning(
            f"The libvirt daemon for '{uri}' is not running on {host}: ssh to {host} worked, but nothing "
            f"answers on the daemon's socket there ({said}).",
            hint=f"Start it on {host}: 'systemctl enable --now libvirtd' there (or virtqemud.socket on distros with "
            f"modular daemons); virtops.kvm.kvm_host with daemon_state=started, run on {host}, does this for you.",
        )
    if re.search(r"\bnc: (?:command )?not found", low):
        return ConnectionFailed(
            f"{head} ssh to {host} worked, but the netcat (nc) command libvirt runs there is missing ({said}).",
            hint=f"Install netcat on {host} (netcat-openbsd or nmap-ncat), or leave socket= and proxy=netcat "
            "out of the URI so libvirt uses virt-ssh-helper there.",
        )
    if "certificate" in low and p["transport"] in ("", "tls"):
        return ConnectionFailed(
            f"{head} the tls transport needs certificates on this machine ({text}).",
            hint="Install the CA certificate and a client certificate and key (see "
            "https://libvirt.org/kbase/tlscerts.html; pkipath= in the URI names another directory), "
            f"or use qemu+ssh://user@{host}/system.",
        )
    if ssh and said and any(w in low for w in LOST[2:]):
        return ConnectionFailed(f"{head} ssh to {host} port {port} failed: {said}.", hint=REMOTE_HINT)
    return None


def _host_key(p: dict, uri: str, host: str, port, text: str, low: str) -> HostKeyRejected:
    spec = f"[{host}]:{port}" if str(port) != "22" else host
    if "has changed" in low or "differs from stored identity" in low:
        where = _OFFENDING.search(text)
        stored = re.search(r"The key is stored in '([^']*)'", text)
        recorded = (
            f" recorded in {where.group(1)} (line {where.group(2)})"
            if where
            else (f" recorded in {stored.group(1)}" if stored else "")
        )
        remove = _REMOVE.search(text)
        known = f"-f {stored.group(1)} " if stored else ""
        command = remove.group(1) if remove else f"ssh-keygen {known}-R {spec!r}"
        return HostKeyRejected(
            f"Cannot connect to libvirt at '{uri}': the ssh host key of {host} port {port} is not the one"
            f"{recorded}: it changed since it was recorded, so ssh refused to connect (host key verification "
            "failed).",
            hint=f"If {host} was reinstalled or its keys were made anew, remove the old key "
            f"({command}) and record the new one after checking "
            "its fingerprint; if not, someone may be intercepting the connection: find out before connecting.",
        )
    return HostKeyRejected(
        f"Cannot connect to libvirt at '{uri}': ssh does not know the host key of {host} port {port} and a task "
        "cannot ask whether to trust it, so ssh refused to connect (host key verification failed).",
        hint="Record the key once, after checking its fingerprint, in the known_hosts of the user the module "
        f"runs as: 'ssh -p {port} {_login(p)}{host} true' by hand, or 'ssh-keyscan -p {port} {host} >> "
        "~/.ssh/known_hosts' (libssh and libssh2 URIs read the file named by known_hosts=). no_verify=1 in the "
        "URI skips the check, and with it the protection against a man in the middle.",
    )
