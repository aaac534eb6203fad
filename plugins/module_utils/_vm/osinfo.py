# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The libosinfo database (osinfo-db) read with lxml: an OS's device and resource defaults by short id.

kvm_vm's ``os_variant`` names an OS by its libosinfo short id (``debian11``,
``win11``, ``linux2022``, ``generic``); ``lookup()`` turns it into the defaults a
new VM of that OS gets, as virt-install does, without the libosinfo binding:

- the database folders are libosinfo's own, later ones overriding earlier ones
  for the same OS id: ``$OSINFO_SYSTEM_DIR`` (older name ``$OSINFO_DATA_DIR``) or
  /usr/share/osinfo (the osinfo-db package), ``$OSINFO_LOCAL_DIR`` or /etc/osinfo
  (``osinfo-db-import --local``), ``$OSINFO_USER_DIR`` or ~/.config/osinfo;
- one pass of byte regexes over the ``os/**/*.xml`` files maps short ids and OS
  URIs to files (no XML parsing); only the OS's file and those of its
  ``<derives-from>``/``<clones>`` chain are parsed. Both are cached per process;
- an OS inherits what it does not say itself from that chain, nearest first:
  family, release date, resources, firmware, and devices (a ``supported="false"``
  device removes an inherited one, as libosinfo does);
- the ``NAME.d/`` folders hold installable drivers (Windows virtio drivers): they
  are not what the OS supports out of the box, so they are skipped, which keeps
  Windows on SATA and e1000e as virt-install does.
"""

from __future__ import annotations

import difflib
import os
import re
from xml.etree import ElementTree

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import HostError, InvalidInput


def _default_dirs() -> tuple[str, ...]:
    """libosinfo's database folders from the environment, lowest priority first."""
    env = os.environ
    config = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return (
        env.get("OSINFO_SYSTEM_DIR") or env.get("OSINFO_DATA_DIR") or "/usr/share/osinfo",
        env.get("OSINFO_LOCAL_DIR") or "/etc/osinfo",
        env.get("OSINFO_USER_DIR") or os.path.join(config, "osinfo"),
    )


DB_DIRS: tuple[str, ...] = _default_dirs()

MIB = 1024 * 1024
PCI = "http://pcisig.com/pci/"
VIRTIO_BLOCK = {PCI + "1af4/1001", PCI + "1af4/1042"}  # virtio-block, virtio1.0-block
VIRTIO_NET = {PCI + "1af4/1000", PCI + "1af4/1041"}  # virtio-net, virtio1.0-net
E1000E = PCI + "8086/10d3"
E1000 = PCI + "8086/100e"
# Released before AHCI drivers were common (Windows XP/2003, Linux before ~2.6.15): IDE disks,
# and so the i440fx machine, since q35 has no IDE controller.
OLD_BEFORE = "2006-01-01"
GENERIC = "generic"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

_SHORT_ID_RE = re.compile(rb"<short-id>\s*([^<\s]+)\s*</short-id>")
_OS_ID_RE = re.compile(rb'<os\s+id="([^"]+)"')
_INDEX: dict = {}
_PARSED: dict = {}
_RESULTS: dict = {}

INSTALL_HINT = (
    "Install the OS database: apt-get install osinfo-db (Debian/Ubuntu) or dnf install osinfo-db "
    "(Fedora/RHEL), or use os_variant 'generic'."
)


def _os_files(dirs: tuple[str, ...]):
    """Every OS file under <dir>/os, folders in order, skipping the NAME.d driver folders."""
    for base in dirs:
        for dirpath, dirnames, filenames in os.walk(os.path.join(base, "os")):
            dirnames[:] = sorted(n for n in dirnames if not n.endswith(".d"))
            for name in sorted(filenames):
                if name.endswith(".xml"):
                    yield os.path.join(dirpath, name)


def _index(dirs: tuple[str, ...]) -> dict:
    """{"short": {short id: OS URI}, "uri": {OS URI: file}}, later folders winning; cached."""
    key = tuple(dirs)
    if key not in _INDEX:
        short: dict[str, str] = {}
        uris: dict[str, str] = {}
        for path in _os_files(key):
            with open(path, "rb") as f:
                data = f.read()
            found = _OS_ID_RE.search(data)
            if not found:
                continue
            uri = found.group(1).decode()
            uris[uri] = path
            for sid in _SHORT_ID_RE.findall(data):
                short[sid.decode()] = uri
        _INDEX[key] = {"short": short, "uri": uris}
    return _INDEX[key]


def _parse(path: str):
    """The <os> element of one file, parsed once per process."""
    if path not in _PARSED:
        etree = _deps.etree if _deps.etree is not None else ElementTree
        try:
            root = etree.parse(path).getroot()
        except (OSError, SyntaxError, ValueError) as e:  # lxml's XMLSyntaxError is a SyntaxError
            raise HostError(f"Cannot read the OS database file {path}: {e}", hint=INSTALL_HINT) from e
        _PARSED[path] = root if root.tag == "os" else root.find("os")
    return _PARSED[path]


def _chain(uri: str, index: dict) -> list:
    """The OS and everything it derives from or clones, nearest first, each once."""
    out, seen, todo = [], set(), [uri]
    while todo:
        current = todo.pop(0)
        if current in seen or current not in index["uri"]:
            continue  # a parent missing from the database gives nothing, as in libosinfo
        seen.add(current)
        elem = _parse(index["uri"][current])
        if elem is None:
            continue
        out.append(elem)
        todo.extend(p.get("id") for p in elem if p.tag in ("derives-from", "clones") and p.get("id"))
    return out


def _text(chain: list, tag: str) -> str | None:
    """The nearest untranslated <tag> text directly under an <os> of the chain."""
    for elem in chain:
        for child in elem.findall(tag):
            if child.get(_XML_LANG) is None and (child.text or "").strip():
                return child.text.strip()
    return None


def _devices(chain: list) -> set[str]:
    """Device ids the OS supports: the nearest declaration of each wins."""
    decided: dict[str, bool] = {}
    for elem in chain:
        for dev in elem.findall("devices/device"):
            decided.setdefault(dev.get("id", ""), dev.get("supported", "true") != "false")
    return {dev for dev, ok in decided.items() if ok}


def _resource(chain: list, arch: str, kind: str, field: str) -> int | None:
    """The nearest <resources>/<kind>/<field> value, this arch before "all" within one OS."""
    for elem in chain:
        for want in (arch, "all"):
            for res in elem.findall("resources"):
                value = res.findtext(f"{kind}/{field}") if res.get("arch") == want else None
                if value and value.strip().isdigit():
                    return int(value)
    return None


def _at_least(recommended: int | None, minimum: int | None) -> int | None:
    """The recommendation raised to the minimum; whichever is known; None when neither is."""
    known = [n for n in (recommended, minimum) if n]
    return max(known) if known else None


def _firmware(chain: list, arch: str) -> tuple[dict, object]:
    """({type: supported} for this arch, nearest declaration first; the nearest efi element)."""
    kinds: dict[str, bool] = {}
    efi = None
    for elem in chain:
        for fw in elem.findall("firmware"):
            if fw.get("arch") not in (arch, "all"):
                continue
            kind = fw.get("type", "")
            if kind not in kinds:
                kinds[kind] = fw.get("supported", "true") != "false"
                efi = fw if kind == "efi" else efi
    return kinds, efi


def _generic() -> dict:
    """No OS knowledge: devices every x86 guest of the last 15 years drives (virt-install's 'generic')."""
    return {
        "short_id": GENERIC,
        "name": "Generic OS",
        "id": None,
        "family": None,
        "virtio": False,
        "virtio_net": False,
        "disk_bus": "sata",
        "nic_model": "e1000e",
        "memory_mib": None,
        "min_memory_mib": None,
        "vcpus": None,
        "firmware": None,
        "secure_boot": False,
        "machine": None,
    }


def _describe(short_id: str, uri: str, chain: list, arch: str) -> dict:
    """The defaults dict of one OS from its chain (see lookup)."""
    devices = _devices(chain)
    virtio = bool(devices & VIRTIO_BLOCK)
    virtio_net = bool(devices & VIRTIO_NET)
    released = _text(chain, "release-date")
    old = bool(released) and released < OLD_BEFORE
    if virtio_net:
        nic = "virtio"
    elif E1000E in devices or E1000 in devices:
        nic = "e1000e" if E1000E in devices else "e1000"
    else:
        nic = "e1000" if old else "e1000e"
    kinds, efi = _firmware(chain, arch)
    needs_efi = kinds.get("efi") is True and kinds.get("bios") is False
    # Recorded only by newer databases, as a feature of the efi firmware; none says it in 2022's.
    secure = needs_efi and any(
        f.get("name") == "secure-boot" and f.get("supported", "true") != "false" for f in efi.findall("feature")
    )
    min_ram = _resource(chain, arch, "minimum", "ram")
    # win11 raises its minimum above the recommendation it inherits: never recommend less than the minimum
    ram = _at_least(_resource(chain, arch, "recommended", "ram"), min_ram)
    cpus = _at_least(_resource(chain, arch, "recommended", "n-cpus"), _resource(chain, arch, "minimum", "n-cpus"))
    disk_bus = "virtio" if virtio else ("ide" if old else "sata")
    return {
        "short_id": short_id,
        "name": _text(chain, "name") or short_id,
        "id": uri,
        "family": _text(chain, "family"),
        "virtio": virtio,
        "virtio_net": virtio_net,
        "disk_bus": disk_bus,
        "nic_model": nic,
        "memory_mib": ram // MIB if ram else None,
        "min_memory_mib": min_ram // MIB if min_ram else None,
        "vcpus": cpus,
        "firmware": "efi" if needs_efi else None,
        "secure_boot": secure,
        "machine": "q35" if needs_efi else ("pc" if disk_bus == "ide" else None),
    }


def _unknown(short_id: str, index: dict, dirs: tuple[str, ...]) -> InvalidInput:
    """The error for an id the database does not hold, with its close matches and how to list the ids."""
    close = difflib.get_close_matches(short_id, sorted(index["short"]), n=5)
    found = f"close matches: {', '.join(close)}." if close else "no close match."
    where = ", ".join(d + "/os" for d in dirs if os.path.isdir(d))
    listing = f"The ids are the <short-id> entries of {where} ('osinfo-query os' lists them, from libosinfo-bin)."
    return InvalidInput(
        f"Unknown os_variant {short_id!r}: {found}",
        hint=f"{listing} For a release newer than the database use 'generic', a linuxYYYY id, or a newer osinfo-db.",
    )


def lookup(short_id: str, dirs: tuple[str, ...] = DB_DIRS, arch: str = "x86_64") -> dict:
    """The defaults of OS short_id for a new VM of arch, as a plain dict (a fresh copy per call).

    Keys: short_id, name, id (OS URI), family ("linux", "winnt"...), virtio and virtio_net
    (virtio block/net supported natively), disk_bus ("virtio", else "sata", "ide" for OSes
    released before 2006), nic_model ("virtio", else e1000e/e1000 as declared), memory_mib
    (recommended, at least the minimum), min_memory_mib, vcpus (recommended, at least the
    minimum), firmware ("efi" when BIOS is unsupported), secure_boot, machine ("q35" for
    EFI-only OSes, "pc" for IDE ones, else None). Unknown values are None.
    'generic' needs no database. Raises InvalidInput for an unknown id, HostError when
    no database is installed.
    """
    key = (short_id, tuple(dirs), arch)
    if key not in _RESULTS:
        index = _index(tuple(dirs))
        uri = index["short"].get(short_id)
        if uri is None and short_id == GENERIC:
            return _generic()
        if not index["uri"]:
            raise HostError(
                f"No OS database found for os_variant {short_id!r} in {', '.join(dirs)}.", hint=INSTALL_HINT
            )
        if uri is None:
            raise _unknown(short_id, index, tuple(dirs))
        _RESULTS[key] = _describe(short_id, uri, _chain(uri, index), arch)
    return dict(_RESULTS[key])


def summary(info: dict) -> str:
    """One line for messages: 'Debian 11 (debian11): virtio disk, virtio NIC, 1024 MiB, 1 vCPU, BIOS'."""
    parts = [f"{info['disk_bus']} disk", f"{info['nic_model']} NIC"]
    if info.get("memory_mib"):
        parts.append(f"{info['memory_mib']} MiB")
    if info.get("vcpus"):
        parts.append(f"{info['vcpus']} vCPU" + ("s" if info["vcpus"] > 1 else ""))
    parts.append("UEFI" + (" secure boot" if info.get("secure_boot") else "") if info.get("firmware") else "BIOS")
    if info.get("machine"):
        parts.append(info["machine"])
    return f"{info['name']} ({info['short_id']}): {', '.join(parts)}"
