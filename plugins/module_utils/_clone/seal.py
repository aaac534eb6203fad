# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A sealed template: what sealing does inside the guest, and the record that says a template is sealed.

Sealing (``virtops.kvm.kvm_template state=sealed``) is what virt-sysprep does
to a golden image, once, on the template's own disks: the identity a clone
must not inherit is removed (machine-id, SSH host keys, persistent NIC names,
DHCP leases, logs and the journal), and what the guest needs to make its own at
first boot is left in place (an empty machine-id that systemd fills, a
first-boot unit that makes SSH host keys where the distribution has none, no
``/etc/hostname`` so the name comes from cloud-init or the DHCP reservation).
Clones of a sealed template then need no appliance of their own.

The record lives in the domain's metadata, in a namespace of its own (libvirt
keeps one element per namespace, and a template may also be a clone with
provenance): when, which operations, and each disk's fingerprint (``_drift``'s
sampled digest). A template is *sealed* while every writable disk still has
the fingerprint recorded: booting it, or any other write, unseals it.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _deps, _drift
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import sysprep
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError

NS = "https://virtops.dev/xmlns/kvm/seal/1"
PREFIX = "virtopsseal"
OPERATIONS = sysprep.OPERATIONS


# A clone without a seed takes its name from its DHCP lease. systemd-networkd asks hostnamed to set
# it, which a minimal Debian (no polkit) refuses ("Could not set hostname: Access denied"), so the
# clone stayed "localhost": this unit, as root, writes the lease's name once (waiting up to 2 minutes
# for a lease: network-online.target is reached early where nothing waits for networkd), after cloud-init
# (which writes /etc/hostname itself when it has a seed) and only while there is no /etc/hostname.
# ($$ is a literal $ for the shell: systemd expands $NAME in ExecStart itself.)
HOSTNAME_UNIT = "virtops-hostname.service"
HOSTNAME_UNIT_TEXT = """[Unit]
Description=Name this clone after its DHCP lease when nothing else did (virtops.kvm)
ConditionPathExists=!/etc/hostname
Wants=network-online.target
After=network-online.target cloud-init.service

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'i=0; while [ $$i -lt 120 ]; do for f in /run/systemd/netif/leases/*; do \
n=$$(sed -n "s/^HOSTNAME=//p" "$$f" 2>/dev/null); if [ -n "$$n" ]; then echo "$$n" > /etc/hostname; \
hostname "$$n"; exit 0; fi; done; sleep 1; i=$$((i+1)); done; exit 0'

[Install]
WantedBy=multi-user.target
"""


def unset_hostname(g) -> tuple[bool, str]:
    """Remove /etc/hostname and the template's name from /etc/hosts' 127.0.1.1 line (the clone gets its own).

    Where the guest runs systemd, HOSTNAME_UNIT names a clone without a seed after its DHCP lease.
    """
    if not g.is_dir("/etc"):
        return False, "no /etc (not a Linux guest)"
    old = g.cat("/etc/hostname").strip() if sysprep.is_file(g, "/etc/hostname") else ""
    touched = sysprep.remove(g, ["/etc/hostname"])
    if old and sysprep.is_file(g, "/etc/hosts"):
        text = g.cat("/etc/hosts")
        new = hosts_without(text, old)
        if new != text:
            g.write("/etc/hosts", new)
            touched.append("/etc/hosts")
    unit = ""
    if g.is_dir("/etc/systemd/system"):
        sysprep.enable_unit(g, HOSTNAME_UNIT, HOSTNAME_UNIT_TEXT)
        unit = f", {HOSTNAME_UNIT} enabled (the DHCP lease's name when there is no seed)"
    if not touched:
        return True, "no /etc/hostname (the name comes from cloud-init or DHCP)" + unit
    return True, f"{old or '(empty)'} removed from {', '.join(touched)}" + unit


def hosts_without(text: str, old: str) -> str:
    """/etc/hosts without ``old`` (and its short name) on 127.0.1.1 lines; a line left with no name goes."""
    short = old.split(".")[0]
    out = []
    for line in text.splitlines():
        fields = line.partition("#")[0].split()
        if fields and fields[0] == "127.0.1.1":
            names = [n for n in fields[1:] if n not in (old, short) and not n.startswith(old + ".")]
            if not names:
                continue
            line = "\t".join([fields[0], *names])
        out.append(line)
    return "\n".join(out) + "\n"


def run(g, operations: list[str]) -> dict:
    """The seal's operations on the mounted template: ``{done, skipped, details}``."""
    done, skipped, details = [], [], {}
    for op in operations:
        ok, detail = unset_hostname(g) if op == "hostname" else sysprep.SIMPLE[op](g)
        if ok:
            done.append(op)
            details[op] = detail
        else:
            skipped.append(dict(operation=op, reason=detail))
    return dict(done=done, skipped=skipped, details=details)


# ---------------------------------------------------------------------- the record


def record_of(root) -> dict | None:
    """The seal recorded in domain XML ``root``: ``{at, done, skipped, disks: [{path, size, mtime, digest}]}``."""
    el = root.find(f"metadata/{{{NS}}}seal")
    if el is None:
        return None
    return dict(
        at=el.get("at"),
        **dx.read_operations(el, NS),
        disks=[
            dict(path=d.get("path"), size=_int(d.get("size")), mtime=_int(d.get("mtime")), digest=d.get("digest"))
            for d in el.findall(f"{{{NS}}}disk")
        ],
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def drift(record: dict | None, paths: list[str]) -> list[str]:
    """Why the template is no longer as sealed (empty: it is): per disk, what changed since."""
    if record is None:
        return ["never sealed"]
    by_path = {d["path"]: d for d in record["disks"]}
    out = []
    for path in paths:
        if path not in by_path:
            out.append(f"{path}: not sealed")
            continue
        try:
            now = _drift.fingerprint(path)
        except StorageError:
            now = None
        changed = _drift.changes(by_path[path], now)
        if changed:
            out.append(f"{path}: {', '.join(changed)} changed since the seal")
    return out


def element(record: dict):
    """``<seal>`` in the seal namespace, as virDomainSetMetadata stores it."""
    etree = _deps.etree
    el = etree.Element(f"{{{NS}}}seal", nsmap={PREFIX: NS}, attrib={"at": record["at"], "by": "virtops.kvm"})
    dx.write_operations(el, record, NS)
    for d in record["disks"]:
        attrib = {"path": d["path"], "size": str(d["size"]), "mtime": str(d["mtime"]), "digest": d["digest"]}
        etree.SubElement(el, f"{{{NS}}}disk", attrib=attrib)
    return el


def sealed(root, paths: list[str]) -> bool:
    """Whether the template (XML ``root``, writable disks ``paths``) is sealed and unchanged since."""
    return bool(paths) and not drift(record_of(root), paths)
