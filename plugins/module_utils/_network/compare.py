# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The semantic compare of network definitions, and the definition a define would leave.

libvirt rewrites what it is given: it adds a UUID, a MAC and a bridge name
(``virbrN``) with ``stp``/``delay``, a NAT port range, keeps ``netmask`` or
``prefix`` as written and lists host entries in the order they came. So:

* ``canonical`` makes equal what means the same: ``netmask`` becomes
  ``prefix``, addresses and MACs get one spelling, host entries are sorted,
  the live-only ``connections`` count goes.
* ``predict`` is the definition a define leaves. From options it is the wanted
  definition itself (it was built from the current one). From the user's XML,
  what the XML omits keeps libvirt's value (the subset rule): attributes it
  leaves out, and the elements libvirt fills in (``FILLED``); any other element
  the XML does not have is removed. A change of forward mode to or from
  ``bridge`` starts afresh (libvirt refuses leftovers such as STP on a host bridge).
* ``differences`` lists what differs, as paths, for ``changes`` and tests.
"""

from __future__ import annotations

import copy

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _network_xml as nx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

# Children libvirt adds by itself, per parent: their absence from the user's XML is no removal.
FILLED = {"network": frozenset({"uuid", "mac", "bridge"}), "forward": frozenset({"nat"})}
# <network> children that appear at most once.
_SINGLE = frozenset({"name", "uuid", "title", "description", "forward", "bridge", "mac", "domain", "dns", "mtu"})
_ADDRESS_ATTRS = {"ip": ("address",), "range": ("start", "end"), "host": ("ip",), "route": ("address", "gateway")}


def _canonical_ip(text: str | None) -> str | None:
    try:
        return str(nx.ip(text)) if text is not None else None
    except InvalidInput:
        return text


def canonical(root):
    """A normalised deep copy (see the module doc)."""
    etree = _deps.etree
    root = copy.deepcopy(root)
    for node in list(root.iter(etree.Comment, etree.ProcessingInstruction)):
        if node.getparent() is not None:
            node.getparent().remove(node)
    root.attrib.pop("connections", None)
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        el.text = (el.text.strip() or None) if el.text is not None else None
        el.tail = None
        for attr in _ADDRESS_ATTRS.get(el.tag, ()):
            if el.get(attr) is not None:
                el.set(attr, _canonical_ip(el.get(attr)))
        if el.get("mac") is not None:
            el.set("mac", el.get("mac").lower())
        if el.tag == "mac" and el.get("address"):
            el.set("address", el.get("address").lower())
        if el.tag == "uuid" and el.text:
            el.text = el.text.lower()
        if el.tag == "forward" and el.getparent() is root and not el.get("mode"):
            el.set("mode", "nat")
        if el.tag == "ip" and el.getparent() is root:
            _canonical_block(el)
    for parent in root.findall("ip/dhcp") + root.findall("dns"):
        hosts = parent.findall("host")
        for h in hosts:
            parent.remove(h)
        for h in sorted(hosts, key=_sort_key):
            parent.append(h)
    return root


def _canonical_block(el) -> None:
    prefix = nx.prefix_of(el)
    if el.get("netmask") is not None and prefix is not None:
        del el.attrib["netmask"]
        el.set("prefix", str(prefix))
    if nx.family_of(el) == "ipv6":
        el.set("family", "ipv6")
    else:
        el.attrib.pop("family", None)


def _sort_key(h) -> tuple:
    return (h.get("ip") or "", h.get("mac") or "", h.get("name") or "", h.get("id") or "")


def _key(el, parent_tag: str) -> tuple:
    """What pairs a child with its counterpart in the other definition."""
    tag = el.tag
    if parent_tag == "network":
        if tag in _SINGLE:
            return (tag,)
        if tag == "ip":
            return (tag, nx.family_of(el), el.get("address"))
        if tag == "route":
            return (tag, el.get("address"), el.get("prefix") or el.get("netmask"), el.get("gateway"))
        if tag == "portgroup":
            return (tag, el.get("name"))
    if parent_tag == "dhcp" and tag == "host":
        return (tag, *nx.host_key(el))
    if parent_tag == "dhcp" and tag == "range":
        return (tag, el.get("start"), el.get("end"))
    if parent_tag == "dns" and tag == "host":
        return (tag, el.get("ip"))
    return (tag, None)


def _pairs(wanted, current) -> tuple[list, list]:
    """[(wanted child, current child or None)], [unpaired current children]; same keys pair in order."""
    free: dict[tuple, list] = {}
    for c in current:
        if isinstance(c.tag, str):
            free.setdefault(_key(c, current.tag), []).append(c)
    pairs = []
    for w in wanted:
        if not isinstance(w.tag, str):
            continue
        bucket = free.get(_key(w, wanted.tag), [])
        pairs.append((w, bucket.pop(0) if bucket else None))
    return pairs, [c for bucket in free.values() for c in bucket]


def _label(el) -> str:
    key = _key(el, el.getparent().tag if el.getparent() is not None else "")
    extra = [str(k) for k in key[1:] if k is not None]
    return el.tag + (f"[{','.join(extra)}]" if extra else "")


def differences(wanted, current, path: str = "/network") -> list[str]:
    """What differs between two canonical definitions (exact: both are complete), as paths."""
    out = []
    for attr in sorted(set(wanted.attrib) | set(current.attrib)):
        if wanted.get(attr) != current.get(attr):
            out.append(f"{path}/@{attr}: {current.get(attr)!r} -> {wanted.get(attr)!r}")
    if (wanted.text or None) != (current.text or None):
        out.append(f"{path}: {current.text!r} -> {wanted.text!r}")
    pairs, extra = _pairs(wanted, current)
    for w, c in pairs:
        child = f"{path}/{_label(w)}"
        if c is None:
            out.append(f"{child}: added")
        else:
            out.extend(differences(w, c, child))
    for c in extra:
        out.append(f"{path}/{_label(c)}: removed")
    return out


def _overlay(wanted, current) -> None:
    """Write ``wanted`` over ``current`` in place by the subset rule (see the module doc)."""
    for attr, value in wanted.attrib.items():
        current.set(attr, value)
    if len(wanted) == 0:
        current.text = wanted.text
    pairs, extra = _pairs(wanted, current)
    filled = FILLED.get(current.tag, frozenset()) if current.tag in FILLED else frozenset()
    for c in extra:
        if c.tag not in filled:
            current.remove(c)
    for w, c in pairs:
        if c is None:
            current.append(copy.deepcopy(w))
        else:
            _overlay(w, c)


def predict(wanted, from_xml: bool, current):
    """The canonical definition after defining ``wanted`` over ``current`` (None: a new network)."""
    want = canonical(wanted)
    if current is None or not from_xml:
        return want
    cur = canonical(current)
    if (nx.forward_mode(want) == "bridge") != (nx.forward_mode(cur) == "bridge"):
        if want.find("uuid") is None and cur.find("uuid") is not None:
            want.find("name").addnext(copy.deepcopy(cur.find("uuid")))
        return want
    _overlay(want, cur)
    return canonical(cur)


def same(a, b) -> bool:
    """Whether two canonical definitions are equal."""
    return not differences(a, b)
