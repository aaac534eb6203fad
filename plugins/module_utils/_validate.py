# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What users type, checked once and the same way in every module (docs/names.md).

Every module sends the text and numbers it takes from the user through these
checks before it reads or changes anything, so a bad value is refused with a
message of one form: ``<option> is <value>: <what is allowed>.`` and a hint,
never with an lxml, libvirt, mount(8) or iSCSI error about something the
collection built. The bottom layer: it imports nothing of the collection but
``_errors``, so every other file may use it.

* **Names** of what the collection defines (domains, clones, networks, pools,
  volumes, snapshots) follow one rule, ``NAME_RULE``: they become file names.
  Names of what already exists are only looked up (``existing_name``): any
  name libvirt has, except one with a '/' or a control character.
* **Host names** are RFC 1123; **addresses** IPv4 or IPv6.
* **Mount and iSCSI arguments** (a server, an export, a device, a target) never
  start with '-' (mount(8) would read an option) and hold no whitespace or
  control character.
* **Sizes** take a unit (``10G``, ``10GiB``, ``10GB``) and are at most ``MAX_SIZE``.
* **Numbers** (timeouts, counts, sizes in MiB) are non-negative and bounded: ``LIMITS``.
* **Free text** put in XML (title, description) holds only characters XML
  allows, and no control character.
* **Files inside a guest** (kvm_clone's identity files, kvm_customize): an absolute,
  normalised path, an octal mode, an owner ``user[:group]`` as the guest names it.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re

from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

NAME_RULE = "1 to 64 characters: letters, digits, '.', '_', '+' and '-', starting with a letter or digit, without '..'"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SIZE = re.compile(r" *([0-9]+) *([A-Za-z]*) *")
_NAMES_DOC = "See 'Names and values' in the collection's docs (docs/names.md)."
_GUEST_OWNER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")

# Units of sizes, in bytes: libvirt's and qemu-img's spelling (K = KiB; KB is decimal). The one table.
UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
    "pb": 1000**5,
    "p": 1024**5,
    "pib": 1024**5,
}
# The largest size any option takes: 1 PiB (no disk image, volume or pool here is larger).
MAX_SIZE = 1024**5

DAY = 24 * 3600
WEEK = 7 * DAY
INT_MAX = 2**31 - 1
# (lowest, highest, what the number counts) of the numeric options, by option name, in every module.
# An int option not named here is a count from 0 to INT_MAX; a name ending in 'timeout' is seconds up to a week.
LIMITS = {
    "timeout": (0, WEEK, "seconds"),
    "memory": (1, 16 * 1024**2, "MiB"),  # 16 TiB
    "vcpus": (1, 4096, "virtual CPUs"),
    "parallel": (1, 1024, "tasks at once"),
    "prefix": (0, 128, "bits"),
    "bandwidth": (0, 1024**2, "MiB/s"),
    "progress_mib": (0, 1024**2, "MiB"),
    "max_size": (0, 1024**3, "bytes"),
}


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def refuse(option: str, value, allowed: str, hint: str | None = None) -> InvalidInput:
    """The one refusal: ``<option> is <value>: <allowed>.`` plus a hint."""
    return InvalidInput(f"{option} is {shown(value)}: {allowed}.", hint=hint, option=option)


def _control(ch: str) -> bool:
    """C0/C1 control characters and what XML 1.0 cannot hold (surrogates, U+FFFE, U+FFFF)."""
    o = ord(ch)
    return o < 0x20 or 0x7F <= o < 0xA0 or 0xD800 <= o <= 0xDFFF or o in (0xFFFE, 0xFFFF)


def _string(value, option: str, allowed: str, hint: str | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise refuse(option, value, allowed, hint)
    return value


def validate_name(value, option: str = "name") -> str:
    """A name the collection defines (or acts on through a file path): ``NAME_RULE``, the same in every module."""
    allowed = f"a name is {NAME_RULE}"
    hint = "Names become file names (disks, XML files, logs) on the host. " + _NAMES_DOC
    _string(value, option, allowed, hint)
    if not _NAME.fullmatch(value) or ".." in value:
        raise refuse(option, value, allowed, hint)
    return value


def existing_name(value, option: str = "name") -> str:
    """The name of something that exists, to look up (read, stop, remove): any name libvirt takes, without '/'
    or control characters (nothing the collection defines by it)."""
    allowed = "the name of an existing object is not empty and has no '/' and no control characters"
    _string(value, option, allowed, _NAMES_DOC)
    if "/" in value or any(_control(c) for c in value) or value.strip() != value:
        raise refuse(option, value, allowed, _NAMES_DOC)
    return value


def is_hostname(value) -> bool:
    if not isinstance(value, str) or not 1 <= len(value) <= 253:
        return False
    return all(_LABEL.fullmatch(label) for label in value.split("."))


def hostname(value, option: str = "hostname") -> str:
    """An RFC 1123 host name: dot-separated labels of letters, digits and '-', at most 253 characters."""
    if not is_hostname(value):
        raise refuse(
            option,
            value,
            "a host name (RFC 1123) is labels of 1 to 63 letters, digits and '-' (not first or last) "
            "joined by '.', at most 253 characters",
            hint="'_', ';', spaces and other characters are not allowed in a host name.",
        )
    return value


def address(value, option: str = "address", version: int | None = None) -> str:
    """An IPv4 or IPv6 address (``version`` 4 or 6 to require one), in its normal form."""
    kind = {4: "an IPv4 address", 6: "an IPv6 address"}.get(version, "an IPv4 or IPv6 address")
    try:
        ip = ipaddress.ip_address(value if isinstance(value, str) else "")
    except ValueError:
        raise refuse(option, value, f"{kind} is expected, such as 192.0.2.10 or 2001:db8::10") from None
    if version is not None and ip.version != version:
        raise refuse(option, value, f"{kind} is expected here")
    return str(ip)


def host(value, option: str = "host") -> str:
    """A server to reach: an address or an RFC 1123 host name (so never an option for mount or iscsiadm)."""
    try:
        return address(value, option)
    except InvalidInput:
        pass
    if not is_hostname(value):
        raise refuse(
            option,
            value,
            "a server is an IPv4 or IPv6 address or an RFC 1123 host name (letters, digits, '-' and '.', "
            "not starting with '-')",
            hint="libvirt hands it to mount(8) or iscsiadm, which would read a leading '-' as an option.",
        )
    return value


def argument(value, option: str, program: str) -> str:
    """A value handed to ``program`` as one argument of its command line: never read as an option."""
    allowed = f"it is passed to {program} as one argument: not empty, not starting with '-', "
    allowed += "without whitespace or control characters"
    _string(value, option, allowed)
    if value.startswith("-") or any(c.isspace() or _control(c) for c in value):
        raise refuse(option, value, allowed, hint=f"A leading '-' would be read as an option by {program}.")
    return value


def mount_arg(value, option: str) -> str:
    """A path, export, device or iSCSI target libvirt hands to mount(8), iscsiadm or LVM as one argument."""
    return argument(value, option, "mount(8), iscsiadm or LVM")


def path(value, option: str) -> str:
    """A file or directory path the collection writes into XML: not empty, no control characters."""
    allowed = "a path is not empty and has no control characters (no line breaks)"
    _string(value, option, allowed)
    if any(_control(c) for c in value):
        raise refuse(option, value, allowed)
    return value


def xml_text(value, option: str, single_line: bool = False) -> str:
    """Free text the collection puts in XML (a title, a description): printable, XML-compatible characters."""
    if not isinstance(value, str):
        raise refuse(option, value, "text is expected")
    allowed_ws = "\t" if single_line else "\t\n\r"
    if any(_control(c) and c not in allowed_ws for c in value):
        what = "one line of text" if single_line else "text"
        raise refuse(
            option,
            value,
            f"{what} without control characters"
            + (" (no line breaks)" if single_line else " (tabs and line breaks are allowed)"),
            hint="Remove the control characters (for example a NUL or an escape) from the value.",
        )
    return value


def size(value, option: str = "size", minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    """Bytes from ``10G``, ``10 GiB``, ``10GB``, ``512M`` or a number of bytes; between minimum and maximum."""
    units = "B, K/KiB, M/MiB, G/GiB, T/TiB, P/PiB (binary) or KB, MB, GB, TB, PB (decimal)"
    allowed = f"a size is a whole number with an optional unit ({units}), from {minimum} to {maximum} bytes"
    hint = "For example 10G or 10GiB (10 * 1024**3 bytes), 10GB (10 * 1000**3), or 1048576 (bytes)."
    if isinstance(value, bool):
        raise refuse(option, value, allowed, hint)
    m = _SIZE.fullmatch(str(value)) if isinstance(value, (int, str)) else None
    factor = UNITS.get((m.group(2) or "b").lower()) if m else None
    if factor is None:
        raise refuse(option, value, allowed, hint)
    out = int(m.group(1)) * factor
    if not minimum <= out <= maximum:
        raise refuse(option, value, allowed, hint)
    return out


def number(value, option: str, low: int | float, high: int | float, unit: str = ""):
    """An int (or float) from ``low`` to ``high`` inclusive; never a bool."""
    allowed = f"allowed are {low} to {high}" + (f" {unit}" if unit else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise refuse(option, value, allowed)
    return value


def limit(name: str, limits: dict | None = None) -> tuple:
    """(low, high, unit) of the numeric option ``name``: the manager's own, else the collection's table."""
    for table in (limits or {}, LIMITS):
        if name in table:
            return table[name]
    if name.endswith("timeout"):
        return LIMITS["timeout"]
    return (0, INT_MAX, "")


def _out_of_range(spec: dict, params: dict, limits: dict | None, prefix: str) -> list:
    problems = []
    for name, opt in spec.items():
        value = params.get(name)
        kind = opt.get("type")
        if value is None:
            continue
        if kind in ("int", "float"):
            low, high, unit = limit(name, limits)
            try:
                number(value, prefix + name, low, high, unit)
            except InvalidInput as exc:
                problems.append(exc.msg)
        elif opt.get("options") and kind == "dict" and isinstance(value, dict):
            problems += _out_of_range(opt["options"], value, limits, f"{prefix}{name}.")
        elif opt.get("options") and kind == "list" and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    problems += _out_of_range(opt["options"], item, limits, f"{prefix}{name}[{i}].")
    return problems


def numbers(spec: dict, params: dict, limits: dict | None = None) -> None:
    """Every int/float option of ``spec`` in ``params`` (suboptions too) within its ``limit``; one refusal for all."""
    problems = _out_of_range(spec, params, limits, "")
    if problems:
        raise InvalidInput(" ".join(problems), hint="Give values in those ranges; nothing was changed.")


def guest_path(value, option: str) -> str:
    """An absolute, normalised path of a file inside a guest (not / itself)."""
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or value.startswith("//")
        or posixpath.normpath(value) != value
        or value == "/"
        or "\0" in value
    ):
        raise InvalidInput(
            f"{option} {value!r} must be an absolute, normalised file path in the guest.", hint="For example /etc/motd."
        )
    return value


def octal_mode(value, option: str) -> int | None:
    """Permission bits from an octal string ('0644') or a number; None when not given."""
    if value is None:
        return None
    try:
        mode = int(value, 8) if isinstance(value, str) else int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{option} {value!r} is not an octal mode such as '0644'.", hint="Quote it.") from exc
    if not 0 <= mode <= 0o7777:
        raise InvalidInput(f"{option} {value!r} is out of range (0000 to 7777).")
    return mode


def guest_owner(value, option: str) -> str | None:
    """``user`` or ``user:group`` (names or numbers, as the guest knows them); None when not given."""
    if value is None or value == "":
        return None
    if not _GUEST_OWNER.match(str(value)):
        raise InvalidInput(f"{option} {value!r} must be 'user' or 'user:group' (names or numbers, as in the guest).")
    return str(value)
