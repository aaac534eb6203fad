# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The pool definition: built from kvm_pool's options (or given as XML), and compared semantically.

Pure lxml, no connection, so every rule is unit-tested without a daemon.

Why a semantic compare: libvirt rewrites what it is given. It adds a UUID,
the sizes it measured (capacity, allocation, available), the permissions of
the target directory, a ``<format>`` and a ``<name>`` in the source of netfs
and logical pools, and it drops a trailing ``/`` from paths. None of that is a
change. The rules, as for domains (``_xml_compare``):

* **Subset rule.** Every element, attribute and text the request has must be
  in the current XML with an equivalent value (paths normalised, modes as
  octal numbers, UUIDs case-insensitively).
* **Removals count where presence means something**: a child of ``<source>``
  (a host, an export directory, a device) or of ``<target>`` that a request
  with that element lacks is a change, unless libvirt fills it in (``FILLED``).
  A request without ``<source>`` or ``<target>`` leaves them as they are.
* **Identity is carried.** ``predict`` lays the request over the current XML:
  what a define would make of it (UUID and the filled-in values kept), used
  both for the define and for the diff, so check mode predicts the real run.
"""

from __future__ import annotations

import copy
import posixpath

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput

POOL_TYPES = ("dir", "logical", "netfs")
SOURCE_FORMATS = {"netfs": ("auto", "nfs", "glusterfs", "cifs"), "logical": ("lvm2",)}
# Which source options each type takes.
SOURCE_OPTIONS = {
    "dir": (),
    "netfs": ("source_host", "source_path", "source_format"),
    "logical": ("source_devices", "source_name", "source_format"),
}
DEFINITION_OPTIONS = ("type", "path", "source_host", "source_path", "source_format", "source_devices", "source_name")

# Measured by libvirt on every read: never part of a definition, compare or diff.
VOLATILE = ("capacity", "allocation", "available")
# Children libvirt fills in, per context: their absence from the request is not a removal.
FILLED = {
    # a request without <source> or <target> leaves them as they are (the typed options always give
    # a new dir or netfs pool its target: require_complete)
    "pool": frozenset({"uuid", "source", "target", *VOLATILE}),
    "pool/source": frozenset({"format", "name"}),
    "pool/target": frozenset({"permissions"}),
}
_PATH_ATTRS = {("dir", "path"), ("device", "path")}
# What else in <source> libvirt passes to mount(8), iscsiadm or LVM: element@attribute (no attribute: its text).
_SOURCE_ARGS = (
    ("dir@path", "source_path"),
    ("device@path", "source_devices"),
    ("name@", "source_name"),
    ("adapter@name", "the source adapter in xml"),
    ("initiator/iqn@name", "the initiator IQN in xml"),
)


def parse(xml: str | bytes, what: str = "pool XML"):
    """Parse pool XML; a syntax error names line and column, another root element is refused."""
    return dx.parse(xml, what, root_tag="pool", dump="virsh pool-dumpxml")


tostring = dx.tostring


def _sub(parent, tag: str, text: str | None = None, **attrib):
    el = _deps.etree.SubElement(parent, tag, attrib={k: v for k, v in attrib.items() if v is not None})
    if text is not None:
        el.text = text
    return el


def _absolute(value: str, option: str) -> str:
    """An absolute path that mount(8) or iscsiadm can take as one argument (no whitespace or control chars)."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise vd.refuse(option, value, "an absolute path (starting with '/') is expected")
    return posixpath.normpath(vd.mount_arg(value, option))


def check_sources(root) -> None:
    """What libvirt hands to mount(8) or iscsiadm from a pool definition (typed options or xml): never an option.

    A server is an address or a host name; an export, device, target or source name is one argument
    that does not start with '-' and has no whitespace or control characters.
    """
    src = root.find("source")
    if src is not None:
        for host in src.findall("host"):
            vd.host(host.get("name"), "source_host")
        for path, option in _SOURCE_ARGS:
            tag, attr = path.split("@")
            for el in src.findall(tag):
                value = el.get(attr) if attr else (el.text or "").strip()
                if value:
                    vd.mount_arg(value, option)
    target = (root.findtext("target/path") or "").strip()
    if target:
        vd.mount_arg(target, "path")


def definition_given(p: dict) -> bool:
    """Whether the options describe the pool (else an existing pool's definition is left alone)."""
    return bool(p.get("xml")) or any(p.get(k) not in (None, []) for k in DEFINITION_OPTIONS)


def _check_sources(p: dict, kind: str) -> None:
    for option in ("source_host", "source_path", "source_format", "source_devices", "source_name"):
        if p.get(option) not in (None, []) and option not in SOURCE_OPTIONS[kind]:
            takes = ", ".join(SOURCE_OPTIONS[kind]) or "no source options"
            raise InvalidInput(f"{option} does not apply to a {kind} pool ({kind} takes {takes}).")
    fmt = p.get("source_format")
    if fmt is not None and fmt not in SOURCE_FORMATS.get(kind, ()):
        raise InvalidInput(
            f"source_format {fmt!r} is not one of a {kind} pool: {', '.join(SOURCE_FORMATS.get(kind, ()))}."
        )


def from_options(p: dict, current_type: str | None = None):
    """The requested pool XML from the options (``xml`` or the typed ones), or None if none describe it.

    ``current_type`` is the defined pool's type, used when ``type`` is not given.
    """
    name = vd.validate_name(p["name"], "name")
    if p.get("xml"):
        root = parse(p["xml"])
        xml_name = dx.text(root, "name")
        if xml_name is None:
            el = _deps.etree.Element("name")
            el.text = name
            root.insert(0, el)
        elif xml_name != name:
            raise InvalidInput(f"The xml names the pool {xml_name!r}, but the name option is {name!r}.")
        if root.get("type") is None:
            raise InvalidInput("The pool XML has no type attribute (<pool type='dir'>).")
        check_sources(root)
        return root
    if not definition_given(p):
        return None
    kind = p.get("type") or current_type or "dir"
    _check_sources(p, kind)
    root = _deps.etree.Element("pool", type=kind)
    _sub(root, "name", name)
    if kind == "netfs" and (p.get("source_host") or p.get("source_path") or p.get("source_format")):
        src = _sub(root, "source")
        if p.get("source_host"):
            _sub(src, "host", name=p["source_host"])
        if p.get("source_path"):
            _sub(src, "dir", path=_absolute(p["source_path"], "source_path"))
        if p.get("source_format"):
            _sub(src, "format", type=p["source_format"])
    elif kind == "logical" and (p.get("source_devices") or p.get("source_name") or p.get("source_format")):
        src = _sub(root, "source")
        for dev in p.get("source_devices") or []:
            _sub(src, "device", path=_absolute(dev, "source_devices"))
        if p.get("source_name"):
            vd.validate_name(p["source_name"], "source_name")
            _sub(src, "name", p["source_name"])
        if p.get("source_format"):
            _sub(src, "format", type=p["source_format"])
    if p.get("path"):
        _sub(_sub(root, "target"), "path", _absolute(p["path"], "path"))
    check_sources(root)
    return root


def require_complete(root) -> None:
    """Refuse to define a new pool that lacks what its type needs."""
    info = read(root)
    kind = info["type"]
    if kind in ("dir", "netfs") and not info["path"]:
        raise InvalidInput(f"A new {kind} pool needs its directory: give path (the target, like --target).")
    if kind == "netfs" and not (info["source"]["hosts"] and info["source"]["dir"]):
        raise InvalidInput(
            "A new netfs pool needs source_host and source_path (the server and its exported directory)."
        )


def read(root) -> dict:
    """The definition as facts: type, name, uuid, target path and source."""
    src = root.find("source")
    fmt = src.find("format") if src is not None else None
    d = src.find("dir") if src is not None else None
    return dict(
        type=root.get("type"),
        name=dx.text(root, "name"),
        uuid=dx.text(root, "uuid"),
        path=dx.text(root, "target/path"),
        source=dict(
            hosts=[h.get("name") for h in src.findall("host")] if src is not None else [],
            dir=d.get("path") if d is not None else None,
            devices=[e.get("path") for e in src.findall("device")] if src is not None else [],
            name=dx.text(src, "name") if src is not None else None,
            format=fmt.get("type") if fmt is not None else None,
        ),
    )


# --------------------------------------------------------------------------- canonical form


def canonical(root):
    """A normalised deep copy: no comments, no measured sizes, trimmed text, normalised paths and modes."""
    etree = _deps.etree
    root = copy.deepcopy(root)
    for node in list(root.iter(etree.Comment, etree.ProcessingInstruction)):
        node.getparent().remove(node)
    for tag in VOLATILE:
        for el in root.findall(tag):
            root.remove(el)
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        el.text = el.text.strip() or None if el.text is not None else None
        el.tail = None
        for tag, attr in _PATH_ATTRS:
            if el.tag == tag and el.get(attr):
                el.set(attr, posixpath.normpath(el.get(attr)))
    for path in ("target/path",):
        el = root.find(path)
        if el is not None and el.text:
            el.text = posixpath.normpath(el.text)
    mode = root.find("target/permissions/mode")
    if mode is not None and mode.text:
        try:
            mode.text = "0" + format(int(mode.text, 8), "o")
        except ValueError:
            pass
    uuid = root.find("uuid")
    if uuid is not None and uuid.text:
        uuid.text = uuid.text.lower()
    return root


def _key(el) -> tuple:
    if el.tag == "host":
        return ("host", el.get("name"))
    if el.tag == "device":
        return ("device", el.get("path"))
    return (el.tag,)


def _pair(wanted, current) -> tuple[list, list]:
    """([(wanted child, current child or None)], [unpaired current children]); by key, then in order."""
    pool = [c for c in current if isinstance(c.tag, str)]
    pairs = []
    for w in wanted:
        if not isinstance(w.tag, str):
            continue
        match = next((c for c in pool if _key(c) == _key(w)), None)
        if match is not None:
            pool.remove(match)
        pairs.append((w, match))
    return pairs, pool


def _label(path: str, el) -> str:
    key = _key(el)
    return f"{path}/{el.tag}" + (f"[{key[1]}]" if len(key) > 1 else "")


def _compare(wanted, current, context: str, path: str, out: list) -> None:
    for attr, value in wanted.attrib.items():
        if value != current.get(attr):
            out.append(f"{path}/@{attr}: {current.get(attr)!r} -> {value!r}")
    if len(wanted) == 0 and (wanted.text or None) != (current.text or None):
        out.append(f"{path}: {current.text!r} -> {wanted.text!r}")
    pairs, extra = _pair(wanted, current)
    for w, c in pairs:
        if c is None:
            out.append(f"{_label(path, w)}: added")
        else:
            _compare(w, c, f"{context}/{w.tag}", _label(path, w), out)
    if context in FILLED:
        out.extend(f"{_label(path, c)}: removed" for c in extra if c.tag not in FILLED[context])


def differences(wanted, current) -> list[str]:
    """What defining ``wanted`` would change in ``current`` (both pool roots); [] if nothing."""
    w, c = canonical(wanted), canonical(current)
    out: list[str] = []
    _compare(w, c, "pool", "/pool", out)
    return out


def _overlay(wanted, current, context: str) -> None:
    for attr, value in wanted.attrib.items():
        current.set(attr, value)
    if len(wanted) == 0 and (wanted.text or None) != (current.text or None):
        current.text = wanted.text
    pairs, extra = _pair(wanted, current)
    if context in FILLED:
        for c in extra:
            if c.tag not in FILLED[context]:
                current.remove(c)
    for w, c in pairs:
        if c is None:
            current.append(copy.deepcopy(w))
        else:
            _overlay(w, c, f"{context}/{w.tag}")


def predict(wanted, current=None):
    """The definition libvirt holds after defining ``wanted`` over ``current`` (canonical).

    The target's permissions are kept only when the request has them: libvirt
    reports the directory's own as if they were defined, and carrying them
    would make them part of the definition.
    """
    if current is None:
        return canonical(wanted)
    result = canonical(current)
    if wanted.find("target/permissions") is None:
        for el in result.findall("target/permissions"):
            el.getparent().remove(el)
    _overlay(canonical(wanted), result, "pool")
    return result
