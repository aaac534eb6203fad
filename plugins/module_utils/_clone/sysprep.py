# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The identity operations on one mounted clone disk: hostname, machine-id, SSH host keys, leases, logs, files.

Each operation works on a libguestfs handle whose guest filesystems are
mounted read-write (only ever a new clone's own disk, see identity.py) and
returns ``(done, detail)``: done is False when the operation does not apply
to this guest (no systemd, no SSH server...), and ``detail`` says why or what
was changed. Names follow virt-sysprep's operations where they match. Nothing
here runs a program inside the guest: only the appliance's file calls.
"""

from __future__ import annotations

import posixpath

from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.guest import Owners, is_file

OPERATIONS = ("hostname", "machine-id", "ssh-hostkeys", "net-persistent", "dhcp-leases", "logfiles")

_PERSISTENT_NET = (
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/udev/rules.d/70-persistent-cd.rules",
)
_LEASE_GLOBS = (
    "/var/lib/dhcp/*.leases",
    "/var/lib/dhcp/dhclient*",
    "/var/lib/dhclient/*",
    "/var/lib/NetworkManager/*.lease",
    "/var/lib/NetworkManager/dhclient-*",
    "/var/lib/dhcpcd/*.lease",
    "/var/lib/dhcpcd5/*.lease",
    "/var/lib/wicked/lease-*",
    "/var/lib/udhcpc/*",
)


def remove(g, paths: list[str]) -> list[str]:
    """rm each regular file or symlink; the ones removed."""
    out = []
    for p in paths:
        if is_file(g, p) or g.is_symlink(p):
            g.rm(p)
            out.append(p)
    return out


def _glob(g, pattern: str) -> list[str]:
    return sorted(g.glob_expand(pattern))


def hostname(g, name: str) -> tuple[bool, str]:
    """/etc/hostname = name; in /etc/hosts the template's name (and its FQDN's host part) becomes name."""
    if not g.is_dir("/etc"):
        return False, "no /etc (not a Linux guest)"
    old = g.cat("/etc/hostname").strip() if is_file(g, "/etc/hostname") else ""
    g.write("/etc/hostname", f"{name}\n")
    touched = ["/etc/hostname"]
    if is_file(g, "/etc/hosts"):
        text = g.cat("/etc/hosts")
        new = hosts_with_name(text, old, name)
        if new != text:
            g.write("/etc/hosts", new)
            touched.append("/etc/hosts")
    return True, f"{old or '(none)'} -> {name} in {', '.join(touched)}"


def _loopback_name(name: str) -> bool:
    """Names that belong to the loopback entries of every host, never to one machine."""
    return name.startswith(("localhost", "ip6-"))


def hosts_with_name(text: str, old: str, name: str) -> str:
    """``text`` of /etc/hosts with the host's own entry naming ``name``.

    Names equal to ``old`` (or ``old.<domain>``, and ``old``'s short name when
    it is fully qualified) become ``name`` (``name.<domain>``) on every line;
    loopback names (``localhost*``, ``ip6-*``) are never renamed, and an
    ``old`` of ``localhost`` counts as none. If no line named the host, the
    127.0.1.1 line (Debian's convention) is given the name, or one is added.
    """
    old = "" if _loopback_name(old) else old
    short_old, short_new = old.split(".")[0], name.split(".")[0]
    found = False
    out = []
    for line in text.splitlines():
        body, sep, comment = line.partition("#")
        fields = body.split()
        if len(fields) >= 2 and old:
            names = []
            for n in fields[1:]:
                if _loopback_name(n):
                    pass
                elif n == old:
                    n, found = name, True
                elif n.startswith(old + "."):
                    n, found = name + n[len(old) :], True
                elif n == short_old and short_old != old:
                    n, found = short_new, True
                names.append(n)
            if names != fields[1:]:
                line = "\t".join([fields[0], *dict.fromkeys(names)]) + (f" {sep}{comment}" if sep else "")
        out.append(line)
    if not found:
        for i, line in enumerate(out):
            fields = line.partition("#")[0].split()
            if fields and fields[0] == "127.0.1.1":
                out[i] = f"127.0.1.1\t{name}"
                found = True
                break
    if not found:
        out.append(f"127.0.1.1\t{name}")
    return "\n".join(out) + "\n"


def machine_id(g) -> tuple[bool, str]:
    """Empty /etc/machine-id (systemd makes a new one at first boot); remove D-Bus's own copy."""
    if not is_file(g, "/etc/machine-id"):
        return False, "no /etc/machine-id (no systemd)"
    g.truncate("/etc/machine-id")
    detail = "/etc/machine-id emptied"
    if is_file(g, "/var/lib/dbus/machine-id"):  # a copy (a symlink to /etc/machine-id is left)
        g.rm("/var/lib/dbus/machine-id")
        detail += ", /var/lib/dbus/machine-id removed"
    return True, detail


# Installed where nothing else makes new SSH host keys at first boot (Debian and Ubuntu without
# cloud-init, or with cloud-init but no datasource): ssh.service fails without keys. EL and Fedora
# have sshd-keygen@.service. With its default dependencies the unit runs after sysinit.target,
# so after cloud-init.service (ordered before sysinit.target), which makes keys when it has a
# seed: then the condition skips it. No ordering against cloud-init here: Before=cloud-init.service
# made a cycle that systemd broke by dropping cloud-init (found on a real Debian 12 guest).
KEYGEN_UNIT = "virtops-ssh-hostkeys.service"
KEYGEN_UNIT_TEXT = """[Unit]
Description=Make SSH host keys this clone does not have yet (virtops.kvm)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service sshd.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
"""
_OWN_KEYGEN = (
    "/usr/lib/systemd/system/sshd-keygen@.service",
    "/lib/systemd/system/sshd-keygen@.service",
    "/usr/lib/systemd/system/sshd-keygen.service",
)


def enable_unit(g, name: str, text: str) -> None:
    """Write systemd unit ``name`` into /etc/systemd/system and enable it for multi-user.target."""
    unit = f"/etc/systemd/system/{name}"
    g.write(unit, text.encode())
    g.chmod(0o644, unit)
    wants = "/etc/systemd/system/multi-user.target.wants"
    if not g.is_dir(wants):
        g.mkdir_p(wants)
    link = f"{wants}/{name}"
    if not g.is_symlink(link):
        g.ln_sf(unit, link)


def keygen_at_first_boot(g) -> str | None:
    """Install and enable KEYGEN_UNIT where the guest needs it; what was done, or None."""
    if not g.is_dir("/etc/systemd/system") or not is_file(g, "/usr/bin/ssh-keygen"):
        return None
    if any(g.exists(p) for p in _OWN_KEYGEN):
        return None
    enable_unit(g, KEYGEN_UNIT, KEYGEN_UNIT_TEXT)
    return f"first-boot key generation {KEYGEN_UNIT} enabled"


def ssh_hostkeys(g) -> tuple[bool, str]:
    """Remove /etc/ssh/ssh_host_*; make sure something makes new ones at first boot."""
    if not g.is_dir("/etc/ssh"):
        return False, "no /etc/ssh (no SSH server installed)"
    gone = remove(g, _glob(g, "/etc/ssh/ssh_host_*"))
    if not gone:
        return False, "no SSH host keys in /etc/ssh"
    unit = keygen_at_first_boot(g)
    return True, f"{len(gone)} host key file(s) removed" + (f", {unit}" if unit else "")


def net_persistent(g) -> tuple[bool, str]:
    gone = remove(g, list(_PERSISTENT_NET))
    if not gone:
        return False, "no udev persistent-net rules"
    return True, f"removed {', '.join(gone)}"


def dhcp_leases(g) -> tuple[bool, str]:
    files = sorted({p for pattern in _LEASE_GLOBS for p in _glob(g, pattern)})
    gone = remove(g, files)
    if not gone:
        return False, "no DHCP client lease files"
    return True, f"{len(gone)} lease file(s) removed"


def logfiles(g) -> tuple[bool, str]:
    """Truncate every regular file below /var/log; the journal's files go, with their machine-id directories.

    Journal files would be corrupt if truncated, and their directories are named after the
    template's machine-id: the clone starts a journal of its own. ``find`` names files below
    the directory with or without a leading '/' (libguestfs 1.48 adds one): both are read.
    """
    if not g.is_dir("/var/log"):
        return False, "no /var/log"
    truncated = 0
    journals = []
    for found in g.find("/var/log"):
        rel = found.lstrip("/")
        path = posixpath.join("/var/log", rel)
        if rel.startswith("journal/") and rel.count("/") == 1 and g.is_dir(path):
            journals.append(path)
        if rel.startswith("journal/") or not is_file(g, path):
            continue
        if g.filesize(path) > 0:
            g.truncate(path)
            truncated += 1
    for path in journals:
        g.rm_rf(path)
    detail = f"{truncated} log file(s) truncated"
    return True, detail + (f", {len(journals)} journal directory(ies) removed" if journals else "")


def write_files(g, files: list[dict]) -> list[str]:
    """Write each ``{path, content, mode, owner}`` (parents made as needed); the paths written."""
    owners = Owners(g)
    out = []
    for f in files:
        path = f["path"]
        parent = posixpath.dirname(path)
        if not g.is_dir(parent):
            g.mkdir_p(parent)
        mode = f["mode"]
        if mode is None:  # an existing file keeps its mode, a new one is 0644
            mode = g.statns(path)["st_mode"] & 0o7777 if is_file(g, path) else 0o644
        g.write(path, f["content"].encode("utf-8") if isinstance(f["content"], str) else f["content"])
        g.chmod(mode, path)
        if f["owner"]:
            uid, gid = owners.resolve(f["owner"], path)
            g.chown(uid, gid, path)
        out.append(path)
    return out


def run_operations(g, operations: list[str], name: str, files: list[dict]) -> dict:
    """Every operation in order on the mounted guest: ``{done: [...], skipped: [{operation, reason}], files}``."""
    done, skipped, details = [], [], {}
    for op in operations:
        if op == "hostname":
            ok, detail = hostname(g, name)
        else:
            ok, detail = SIMPLE[op](g)
        if ok:
            done.append(op)
            details[op] = detail
        else:
            skipped.append(dict(operation=op, reason=detail))
    written = write_files(g, files) if files else []
    return dict(done=done, skipped=skipped, details=details, files=written)


SIMPLE = {
    "machine-id": machine_id,
    "ssh-hostkeys": ssh_hostkeys,
    "net-persistent": net_persistent,
    "dhcp-leases": dhcp_leases,
    "logfiles": logfiles,
}
