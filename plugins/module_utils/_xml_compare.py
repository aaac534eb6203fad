# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Semantic comparison of a requested domain XML with libvirt's inactive XML.

Why: libvirt rewrites what it is given. It adds a UUID, MAC addresses, PCI and
drive addresses, controllers, input devices, a memballoon, default attributes,
and it writes memory in KiB. Comparing strings would report a change on every
run; redefining blindly would churn UUIDs and MACs. The rules here, all pure
lxml with no connection, so check mode can predict exactly what a real run does:

* **Subset rule.** Every element, attribute and text the user wrote must be in
  the current XML with an equivalent value (memory units converted, numbers
  compared as numbers, MACs and UUIDs case-insensitively, machine aliases such
  as ``pc`` matching ``pc-i440fx-7.2``). What the user omitted is libvirt's.
* **Removals count where presence means something.** A current element the
  user's XML does not have is a change, unless it is one libvirt fills in by
  itself (``FILLED``): at the top level (``<title>``, ``<features>``, ...), in
  ``<os>`` and ``<features>``, among the devices (a disk, an interface, a serial
  port), and directly inside a device (``<readonly/>``, ``<boot/>``). Deeper
  down, and for attributes, an omission keeps libvirt's value: to change such a
  value, write it explicitly.
* **Identity is carried, never churned.** ``carry_identity`` copies the UUID,
  the MAC of each interface and the ``<metadata>`` of the defined domain into
  the XML about to be defined, when the user's XML omits them.

``predict`` applies the same rules to build the XML a define would produce, so
the diff of check mode and of a real run are one and the same.
"""

from __future__ import annotations

import copy

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx

# Machine type aliases and the prefix of the versioned names libvirt expands them to.
MACHINE_ALIASES = {"pc": "pc-i440fx-", "q35": "pc-q35-"}

# Child elements libvirt adds on its own, per context: their absence from the
# user's XML is not a removal. Contexts are "domain", "domain/<child>" and
# "device:<tag>" for the children of one device.
_DEVICE_COMMON = frozenset({"address", "alias"})
FILLED = {
    "domain": frozenset(
        {
            "uuid",
            "currentMemory",
            "vcpu",
            "cpu",
            "clock",
            "on_poweroff",
            "on_reboot",
            "on_crash",
            "pm",
            "resource",
            "seclabel",
            "metadata",
            "genid",
        }
    ),
    "domain/os": frozenset({"type", "boot", "loader", "nvram"}),
    "domain/features": frozenset(),
    "domain/cpu": frozenset({"model"}),
    "domain/devices": frozenset({"emulator", "controller", "input", "memballoon", "console", "video", "audio"}),
    "device:disk": _DEVICE_COMMON | {"driver", "backingStore"},
    "device:interface": _DEVICE_COMMON | {"mac", "target", "rom"},
    "device:serial": _DEVICE_COMMON | {"target"},
    "device:parallel": _DEVICE_COMMON | {"target"},
    "device:channel": _DEVICE_COMMON | {"target"},
    "device:console": _DEVICE_COMMON | {"target", "source"},
    "device:controller": _DEVICE_COMMON | {"model", "target", "driver"},
    "device:graphics": _DEVICE_COMMON | {"listen"},
    "device:video": _DEVICE_COMMON | {"model", "driver"},
    "device:memballoon": _DEVICE_COMMON | {"stats", "driver"},
    "device:input": _DEVICE_COMMON | {"driver"},
    "device:hostdev": _DEVICE_COMMON | {"driver"},
    "device:filesystem": _DEVICE_COMMON | {"driver"},
}


def _strict_context(context: str) -> bool:
    return context in FILLED or (context.startswith("device:") and "/" not in context)


def _filled(context: str) -> frozenset:
    return FILLED.get(context, _DEVICE_COMMON if context.startswith("device:") else frozenset())


# --------------------------------------------------------------------------- canonical form


def _to_kib(value: str, unit: str | None) -> str | None:
    kib = dx.to_kib(value, unit)
    return None if kib is None else str(kib)


def canonical(root):
    """A normalised deep copy: what libvirt writes differently but means the same is made equal.

    Removes comments, the live-only ``id``, generated aliases (user aliases ``ua-*``
    stay), whitespace around text; converts memory sizes to KiB; lower-cases MACs
    and UUIDs; spells out ``<vcpu current>`` (all of them when not given).
    """
    etree = _deps.etree
    root = copy.deepcopy(root)
    for node in list(root.iter(etree.Comment, etree.ProcessingInstruction)):
        parent = node.getparent()
        if parent is not None:
            parent.remove(node)
    root.attrib.pop("id", None)
    for el in [e for e in root.iter("alias") if not (e.get("name") or "").startswith("ua-")]:
        el.getparent().remove(el)
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        if el.text is not None:
            el.text = el.text.strip() or None
        el.tail = None
        unit = el.get("unit")
        if el.tag in ("memory", "currentMemory", "maxMemory") and el.getparent() is root:
            kib = _to_kib(el.text, unit)
            if kib is not None:
                el.text = kib
                el.set("unit", "KiB")
        elif unit is not None and el.text and unit.strip().lower() in dx.UNITS and len(el) == 0:
            kib = _to_kib(el.text, unit)
            if kib is not None:
                el.text = kib
                el.set("unit", "KiB")
        if el.tag == "vcpu" and el.getparent() is root and el.text and el.get("current") is None:
            # libvirt drops current= when all vCPUs are online: spelled out, going back to all is a change
            el.set("current", el.text)
        if el.tag == "mac" and el.get("address"):
            el.set("address", el.get("address").lower())
        if el.tag == "uuid" and el.text:
            el.text = el.text.lower()
    return root


# --------------------------------------------------------------------------- pairing


def _device_key(el) -> tuple | None:
    """A key that identifies a device across rewrites, or None to pair by position."""
    tag = el.tag
    if tag == "disk":
        tgt = el.find("target")
        return ("disk", tgt.get("dev")) if tgt is not None and tgt.get("dev") else None
    if tag == "interface":
        mac = el.find("mac")
        return ("interface", mac.get("address").lower()) if mac is not None and mac.get("address") else None
    if tag == "controller":
        return ("controller", el.get("type"), str(int(el.get("index"), 0))) if el.get("index") else None
    if tag == "filesystem":
        tgt = el.find("target")
        return ("filesystem", tgt.get("dir")) if tgt is not None and tgt.get("dir") else None
    if tag == "channel":
        tgt = el.find("target")
        return ("channel", tgt.get("name")) if tgt is not None and tgt.get("name") else None
    if tag == "input" and el.get("bus"):
        return ("input", el.get("type"), el.get("bus"))
    if tag == "graphics":
        return ("graphics", el.get("type"))
    return None


# Devices whose positional partner must also be of the same type.
_TYPED = frozenset({"controller", "input", "graphics", "video", "channel", "hostdev"})


def _other_key(el) -> tuple | None:
    if el.tag in ("feature", "timer") and el.get("name"):
        return (el.tag, el.get("name"))
    return None


def pair(wanted, current, context: str) -> tuple[list, list]:
    """Pair the children of two elements: ([(wanted_child, current_child or None)], [unpaired current])."""
    keyfn = _device_key if context == "domain/devices" else _other_key
    cur = [c for c in current if isinstance(c.tag, str)]
    cur_keys = {}
    for c in cur:
        k = keyfn(c)
        if k is not None:
            cur_keys.setdefault(k, c)
    used: set[int] = set()
    pairs: list = []
    pending = []
    for w in wanted:
        if not isinstance(w.tag, str):
            continue
        k = keyfn(w)
        if k is not None and k in cur_keys and id(cur_keys[k]) not in used:
            used.add(id(cur_keys[k]))
            pairs.append([w, cur_keys[k]])
        elif k is not None and keyfn is _device_key and w.tag in ("disk", "interface", "filesystem", "channel"):
            # an explicit identity that is not there: a new device, never a positional match
            pairs.append([w, None])
        else:
            entry = [w, None]
            pairs.append(entry)
            pending.append(entry)
    for entry in pending:
        w = entry[0]
        for c in cur:
            if id(c) in used or c.tag != w.tag:
                continue
            if c.tag in _TYPED and c.get("type") != w.get("type"):
                continue
            # a current device with an explicit identity the user did not claim may still be
            # the positional partner (the user omitted its MAC), but not one whose key the
            # user gave to a different element
            ck = keyfn(c)
            if ck is not None and keyfn is _device_key and c.tag == "disk":
                continue
            used.add(id(c))
            entry[1] = c
            break
    return [tuple(p) for p in pairs], [c for c in cur if id(c) not in used]


def _child_context(context: str, child_tag: str) -> str:
    if context == "domain":
        return f"domain/{child_tag}"
    if context == "domain/devices":
        return f"device:{child_tag}"
    return f"{context}/{child_tag}"


# --------------------------------------------------------------------------- values


def _number(value: str):
    try:
        return int(value, 0)
    except (TypeError, ValueError):
        try:
            return int(value, 10)
        except (TypeError, ValueError):
            return None


def values_equal(wanted: str | None, current: str | None, attr: str | None = None, context: str = "") -> bool:
    if wanted == current:
        return True
    if wanted is None or current is None:
        return False
    if attr == "machine" and context == "domain/os/type":
        prefix = MACHINE_ALIASES.get(wanted, wanted + "-")
        return current.startswith(prefix)
    a, b = _number(wanted), _number(current)
    if a is not None and a == b:
        return True
    return wanted.strip().lower() == current.strip().lower() and attr in ("address", "uuid")


# --------------------------------------------------------------------------- compare


def _path_of(path: str, el) -> str:
    key = _device_key(el) if path.endswith("/devices") else _other_key(el)
    label = el.tag if isinstance(el.tag, str) else "?"
    if "}" in label:
        label = label.split("}", 1)[1]
    if key is not None and len(key) > 1:
        label += "[" + ",".join(str(k) for k in key[1:]) + "]"
    return f"{path}/{label}"


def _compare(wanted, current, context: str, path: str, out: list) -> None:
    for attr, value in wanted.attrib.items():
        cur = current.get(attr)
        if not values_equal(value, cur, attr, context):
            out.append(f"{path}/@{attr}: {cur!r} -> {value!r}")
    if len(wanted) == 0 and not values_equal(wanted.text or "", current.text or "", None, context):
        out.append(f"{path}: {current.text!r} -> {wanted.text!r}")
    pairs, extra = pair(wanted, current, context)
    for w, c in pairs:
        child_path = _path_of(path, w)
        if c is None:
            out.append(f"{child_path}: added")
        else:
            _compare(w, c, _child_context(context, w.tag), child_path, out)
    if _strict_context(context):
        filled = _filled(context)
        for c in extra:
            if c.tag not in filled and not _auto_device(context, c):
                out.append(f"{_path_of(path, c)}: removed")


def _auto_device(context: str, el) -> bool:
    """Devices libvirt adds on its own though their tag is not always automatic."""
    return context == "domain/devices" and el.tag == "input" and el.get("bus") == "ps2"


def differences(wanted, current) -> list[str]:
    """What defining ``wanted`` would change in ``current`` (both lxml domain roots); [] if nothing."""
    out: list[str] = []
    w, c = canonical(wanted), canonical(current)
    if w.tag != c.tag:
        return [f"root: <{c.tag}> -> <{w.tag}>"]
    _compare(w, c, "domain", "/domain", out)
    return out


# --------------------------------------------------------------------------- carry and predict


def carry_identity(wanted, current) -> list[str]:
    """Copy UUID, interface MACs and <metadata> of the defined domain into ``wanted`` (in place).

    Only what the user's XML omits is copied. Returns what was carried, for the log.
    """
    etree = _deps.etree
    carried = []
    if wanted.find("uuid") is None and current.find("uuid") is not None:
        el = etree.Element("uuid")
        el.text = current.find("uuid").text
        name = wanted.find("name")
        (name.addnext(el) if name is not None else wanted.insert(0, el))
        carried.append("uuid")
    wdev, cdev = wanted.find("devices"), current.find("devices")
    if wdev is not None and cdev is not None:
        only_ifaces = [i for i in wdev if i.tag == "interface"]
        pairs = pair(only_ifaces, [i for i in cdev if i.tag == "interface"], "domain/devices")[0]
        for w, c in pairs:
            if c is None or w.find("mac") is not None or c.find("mac") is None:
                continue
            mac = etree.Element("mac", address=c.find("mac").get("address"))
            w.insert(0, mac)
            carried.append(f"mac {mac.get('address')}")
    cmeta = current.find("metadata")
    if cmeta is not None and len(cmeta):
        wmeta = wanted.find("metadata")
        if wmeta is None:
            wanted.append(copy.deepcopy(cmeta))
            carried.append("metadata")
        else:
            have = {child.tag for child in wmeta if isinstance(child.tag, str)}
            for child in cmeta:
                if isinstance(child.tag, str) and child.tag not in have:
                    wmeta.append(copy.deepcopy(child))
                    carried.append(f"metadata {child.tag}")
    return carried


def _overlay(wanted, current, context: str) -> None:
    for attr, value in wanted.attrib.items():
        if not values_equal(value, current.get(attr), attr, context):
            current.set(attr, value)
    if len(wanted) == 0 and not values_equal(wanted.text or "", current.text or "", None, context):
        current.text = wanted.text
    pairs, extra = pair(wanted, current, context)
    if _strict_context(context):
        filled = _filled(context)
        for c in extra:
            if c.tag not in filled and not _auto_device(context, c):
                current.remove(c)
    for w, c in pairs:
        if c is None:
            current.append(copy.deepcopy(w))
        else:
            _overlay(w, c, _child_context(context, w.tag))


def predict(wanted, current):
    """The inactive XML libvirt would hold after defining ``wanted`` over ``current`` (canonical)."""
    result = canonical(current)
    _overlay(canonical(wanted), result, "domain")
    return result
