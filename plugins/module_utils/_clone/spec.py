# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The clone specs of one task (name, overrides, MACs, UUID, state, address, identity), checked before the host is read.

``clones`` is a list of names or dicts, so the argument spec cannot say what is
allowed in it; this file does, and refuses unsafe or duplicate names, unknown
keys and bad MACs or UUIDs before anything on the host is looked at. It also
picks the MACs and UUIDs a new clone gets when the task gives none.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import uuid as uuidlib

from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone.identity import check_files
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import check_cloud_init
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput

MAC_PREFIX = "52:54:00"
STATES = ("present", "running", "absent")
CLONE_KEYS = ("name", "memory", "vcpus", "autostart", "macs", "uuid", "state", "ip", "hostname", "files", "cloud_init")

_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def normalize_mac(mac: str) -> str:
    """Lower-case a MAC and refuse anything that is not a unicast MAC."""
    if not isinstance(mac, str):
        raise InvalidInput(f"MAC address {mac!r} is not a string.")
    m = mac.strip().lower().replace("-", ":")
    if not _MAC_RE.match(m):
        raise InvalidInput(f"MAC address {mac!r} is not of the form 52:54:00:xx:xx:xx.")
    if int(m[:2], 16) & 1:
        raise InvalidInput(f"MAC address {mac!r} is a multicast address; a NIC needs a unicast one.")
    return m


def normalize_ip(value, cname: str) -> str:
    """The IPv4 address a clone's DHCP reservation asks for, in canonical form."""
    try:
        addr = ipaddress.ip_address(str(value).strip())
    except ValueError as exc:
        raise InvalidInput(f"ip of clone {cname!r} ({value!r}) is not an IP address.") from exc
    if addr.version != 4:
        raise InvalidInput(f"ip of clone {cname!r} ({value}) is not IPv4; reservations are made for IPv4 DHCP.")
    return str(addr)


def normalize_uuid(value: str) -> str:
    try:
        return str(uuidlib.UUID(str(value)))
    except ValueError as exc:
        raise InvalidInput(f"UUID {value!r} is not a valid UUID.") from exc


def new_mac(used: set[str]) -> str:
    """A random MAC in QEMU's 52:54:00 range that is not in ``used`` (which it extends)."""
    for _attempt in range(1000):
        mac = MAC_PREFIX + ":" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in used:
            used.add(mac)
            return mac
    raise Conflict("Could not find a free MAC address in 52:54:00:00:00:00/24 after 1000 tries.")


def new_uuid(used: set[str]) -> str:
    """A random UUID not in ``used`` (which it extends)."""
    while True:
        u = str(uuidlib.uuid4())
        if u not in used:
            used.add(u)
            return u


def normalize_clones(name: str | None, clones: list | None, default_state: str = "present") -> list[dict]:
    """One dict per clone (name, memory, vcpus, autostart, macs, uuid, state), validated."""
    items: list = [name] if name is not None else list(clones or [])
    if not items:
        raise InvalidInput("No clones given.", hint="Set name or a non-empty clones list.")
    out, seen = [], set()
    for i, item in enumerate(items):
        if isinstance(item, str) or item is None:
            item = {"name": item}
        if not isinstance(item, dict):
            raise InvalidInput(f"clones[{i}] must be a name or a dict, not {type(item).__name__}.")
        unknown = sorted(set(item) - set(CLONE_KEYS))
        if unknown:
            raise InvalidInput(
                f"clones[{i}] has unknown key(s) {', '.join(unknown)}.", hint=f"Allowed: {', '.join(CLONE_KEYS)}."
            )
        cname = vd.validate_name(
            item.get("name") if item.get("name") is not None else "",
            "name" if name is not None else f"clones[{i}].name",
        )
        if cname in seen:
            raise InvalidInput(f"The clone name {cname!r} appears more than once in the batch.")
        seen.add(cname)
        out.append(_one(cname, item, default_state))
    _refuse_batch_duplicates(out)
    return out


def _one(cname: str, item: dict, default_state: str) -> dict:
    """The spec of the clone ``cname`` from its item (a dict with known keys)."""
    spec = dict(name=cname, memory=None, vcpus=None, autostart=None, macs=[], uuid=None, state=default_state)
    for key in ("memory", "vcpus"):
        if item.get(key) is not None:
            try:
                val = int(item[key])
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"{key} of clone {cname!r} must be an integer.") from exc
            spec[key] = vd.number(val, f"{key} of clone {cname!r}", *vd.limit(key))
    if item.get("autostart") is not None:
        if not isinstance(item["autostart"], bool):
            raise InvalidInput(f"autostart of clone {cname!r} must be true or false.")
        spec["autostart"] = item["autostart"]
    macs = item.get("macs") or []
    if isinstance(macs, str):
        macs = [macs]
    spec["macs"] = [normalize_mac(m) for m in macs]
    if len(set(spec["macs"])) != len(spec["macs"]):
        raise InvalidInput(f"Clone {cname!r} lists the same MAC address twice.")
    if item.get("uuid"):
        spec["uuid"] = normalize_uuid(item["uuid"])
    if item.get("ip"):  # only with a network (kvm_clone's ``network`` option); absent otherwise
        spec["ip"] = normalize_ip(item["ip"], cname)
    if item.get("hostname") is not None:
        spec["hostname"] = vd.hostname(item["hostname"], f"hostname of clone {cname!r}")
    if item.get("files") is not None:  # the identity reset's files, this clone's own
        spec["files"] = check_files(item["files"], f"files of clone {cname!r}")
    if item.get("cloud_init") is not None:
        spec["cloud_init"] = check_cloud_init(item["cloud_init"], f"cloud_init of clone {cname!r}")
    if item.get("state") is not None:
        if item["state"] not in STATES:
            raise InvalidInput(f"state of clone {cname!r} must be one of {', '.join(STATES)}.")
        spec["state"] = item["state"]
    return spec


def _refuse_batch_duplicates(specs: list[dict]) -> None:
    owners: dict[str, str] = {}
    for s in specs:
        for mac in s["macs"]:
            if mac in owners:
                raise InvalidInput(f"MAC {mac} is given to both {owners[mac]!r} and {s['name']!r} in the batch.")
            owners[mac] = s["name"]
    ips: dict[str, str] = {}
    for s in specs:
        if s.get("ip"):
            if s["ip"] in ips:
                raise InvalidInput(f"ip {s['ip']} is given to both {ips[s['ip']]!r} and {s['name']!r} in the batch.")
            ips[s["ip"]] = s["name"]
    uuids: dict[str, str] = {}
    for s in specs:
        if s["uuid"]:
            if s["uuid"] in uuids:
                raise InvalidInput(f"UUID {s['uuid']} is given to both {uuids[s['uuid']]!r} and {s['name']!r}.")
            uuids[s["uuid"]] = s["name"]
