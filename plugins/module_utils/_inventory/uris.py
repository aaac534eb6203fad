# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The inventory's ``uris`` option: syntax checks, a hypervisor name per URI, and the ProxyJump target.

A URI is refused here, before anything connects, when libvirt could not read
it at all (no ``driver://``, an unknown transport, a port that is no number,
spaces) or it uses a transport to another host but names none. Whether the
driver exists or the host answers is found out by connecting, and is a per-URI
warning, not an option error.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ansible_collections.virtops.kvm.plugins.module_utils._connection import refuse_hostless
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

# libvirt's transports (https://libvirt.org/uri.html#transport-configuration).
TRANSPORTS = ("unix", "ssh", "libssh", "libssh2", "tcp", "tls", "ext")
# The transports that log in with ssh: their user and port are the ssh ones.
SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
_SCHEME = re.compile(r"^([a-z][a-z0-9]*)(?:\+([a-z0-9]+))?$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_URI_HINT = (
    "Write each URI as driver[+transport]://[user@][host][:port]/path[?parameters], for example "
    "qemu:///system or qemu+ssh://root@kvm1.example.com/system?keyfile=/path/to/key."
)


def safe(name: str) -> str:
    """``name`` with every character other than letters, digits and ``_`` made ``_`` (a valid group name)."""
    return _UNSAFE.sub("_", name)


def parse(uri) -> dict:
    """One URI's parts: ``uri driver transport user host port remote``; InvalidInput when libvirt could not read it."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidInput(f"An entry of uris is empty or not a string ({uri!r}).", hint=_URI_HINT)
    if uri != uri.strip() or any(c.isspace() for c in uri):
        raise InvalidInput(f"The URI {uri!r} in uris contains white space.", hint=_URI_HINT)
    scheme, sep, _rest = uri.partition("://")
    if not sep:
        raise InvalidInput(f"The URI {uri!r} in uris has no 'driver://' part.", hint=_URI_HINT)
    m = _SCHEME.match(scheme)
    if not m:
        raise InvalidInput(f"The URI {uri!r} in uris has an invalid scheme {scheme!r}.", hint=_URI_HINT)
    driver, transport = m.group(1), m.group(2)
    if transport is not None and transport not in TRANSPORTS:
        raise InvalidInput(
            f"The URI {uri!r} in uris has an unknown transport {transport!r}.",
            hint=f"Use one of {', '.join(TRANSPORTS)} (or none for the local daemon).",
        )
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"The URI {uri!r} in uris has an invalid port.", hint=_URI_HINT) from exc
    refuse_hostless(uri, "uris")  # qemu+ssh:///system: libvirt would go to localhost
    host = parts.hostname
    return dict(
        uri=uri,
        driver=driver,
        transport=transport,
        user=parts.username,
        host=host,
        port=port,
        remote=bool(host),
    )


def parse_all(uris) -> list[dict]:
    """Every URI parsed, each with a ``hypervisor`` name unique in the list (see ``hypervisor_names``)."""
    if not isinstance(uris, list) or not uris:
        raise InvalidInput(
            "The uris option is empty.", hint="List at least one libvirt URI, for example qemu:///system."
        )
    parsed = [parse(u) for u in uris]
    seen = set()
    for p in parsed:
        if p["uri"] in seen:
            raise InvalidInput(f"The URI {p['uri']!r} is listed twice in uris.", hint="List each URI once.")
        seen.add(p["uri"])
    for p, name in zip(parsed, hypervisor_names(parsed)):
        p["hypervisor"] = name
    return parsed


def hypervisor_names(parsed: list[dict]) -> list[str]:
    """The hypervisor name of each URI: its host (lower case), ``localhost`` when it has none.

    A name already taken by an earlier URI gets ``_2``, ``_3``... in the order of ``uris``
    (``qemu:///system`` and ``qemu:///session`` are ``localhost`` and ``localhost_2``), so
    every URI has its own ``hypervisor_*`` group.
    """
    out: list[str] = []
    for p in parsed:
        base = (p["host"] or "localhost").lower()
        name, n = base, 1
        while name in out:
            n += 1
            name = f"{base}_{n}"
        out.append(name)
    return out


def jump_target(p: dict) -> str | None:
    """What ``ssh -o ProxyJump=`` needs to reach this URI's host: ``[user@]host[:port]``; None for a local URI.

    The user and port are the URI's only for the ssh transports (for tcp/tls they are libvirt's, not ssh's).
    """
    if not p["remote"]:
        return None
    host = p["host"]
    if ":" in host:
        host = f"[{host}]"
    if p["transport"] in SSH_TRANSPORTS:
        user = f"{p['user']}@" if p["user"] else ""
        port = f":{p['port']}" if p["port"] else ""
        return f"{user}{host}{port}"
    return host
