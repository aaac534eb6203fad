# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The domain's persistent config: validate the options, define or update, and what needs no restart.

``validate`` checks every option that needs no libvirt before anything is read.
``Config.apply`` compares the requested XML (or the current one with the
targeted edits ``memory``/``vcpus``/``title``/``description``, what ``virsh
edit`` is used for) with the inactive XML through ``_xml_compare``, and defines
only when they differ, keeping the domain's UUID and MACs. ``autostart`` and
``live_metadata`` apply the settings a running domain takes without a restart.
"""

from __future__ import annotations

import copy

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils import _xml_compare as xc
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._domain.context import DomainContext
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, DomainNotFound, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._host.probe import usable_domain_type
from ansible_collections.virtops.kvm.plugins.module_utils._scan import gone

# The options that edit the config without a full XML.
TARGETED = ("memory", "vcpus", "title", "description")


def validate(p: dict) -> tuple:
    """Check every option that does not need libvirt; returns (name, the parsed XML with its <name> or None).

    Without ``name`` the name is the XML's ``<name>``. A domain the run defines (``xml`` given) must have
    a name that keeps the collection's naming rule; without ``xml`` the domain exists already and its name
    is only looked up, so a domain defined elsewhere under another name can still be started, stopped or
    removed (docs/names.md).
    """
    name = p["name"]
    root = dx.parse(p["xml"]) if p["xml"] else None
    xml_name = dx.name_of(root) if root is not None else None
    if name is None and root is not None:
        if not xml_name:
            raise InvalidInput("The xml option has no <name>.", hint="Give the name option, or a <name> in the xml.")
        name = vd.validate_name(xml_name, "the <name> in xml")
    elif root is not None:
        vd.validate_name(name, "name")
    else:
        vd.existing_name(name, "name")
    if p["title"] is not None:
        vd.xml_text(p["title"], "title", single_line=True)
    if p["description"] is not None:
        vd.xml_text(p["description"], "description")
    for option in ("memory", "vcpus", "shutdown_timeout"):
        if p[option] is not None or option == "shutdown_timeout":
            vd.number(p[option], option, *vd.limit(option))
    if root is None:
        return name, None
    if xml_name is None:
        el = _deps.etree.Element("name")
        el.text = name
        root.insert(0, el)
    elif xml_name != name:
        raise InvalidInput(
            f"The XML names the domain {xml_name!r} but the name option is {name!r}.",
            hint="Make <name> in the XML and the name option the same (to rename, define a new domain).",
        )
    return name, root


def apply_targeted(root, p: dict) -> None:
    """memory/vcpus/title/description onto a domain XML tree, in place."""
    etree = _deps.etree

    def child(tag: str, after: tuple = ("name",)):
        el = root.find(tag)
        if el is None:
            el = etree.Element(tag)
            anchor = None
            for a in after:
                if root.find(a) is not None:
                    anchor = root.find(a)
            (anchor.addnext(el) if anchor is not None else root.insert(0, el))
        return el

    if p["memory"] is not None:
        kib = str(p["memory"] * 1024)
        for tag in ("memory", "currentMemory"):
            el = child(tag, ("name", "uuid", "title", "description", "metadata", "maxMemory", "memory"))
            el.text = kib
            el.set("unit", "KiB")
    if p["vcpus"] is not None:
        el = child("vcpu", ("name", "uuid", "title", "description", "metadata", "memory", "currentMemory"))
        el.text = str(p["vcpus"])
        el.attrib.pop("current", None)
    for tag in ("title", "description"):
        value = p[tag]
        if value is None:
            continue
        if value == "":
            el = root.find(tag)
            if el is not None:
                root.remove(el)
        else:
            child(tag, ("name", "uuid", "genid", "title")).text = value


def not_defined(name: str) -> DomainNotFound:
    return DomainNotFound(
        f"Domain {name} is not defined, and no xml was given to define it.",
        hint="Give the full definition in the xml option (for example from 'virsh dumpxml'), "
        "or clone one with virtops.kvm.kvm_clone.",
    )


class Config:
    """Define or update one domain's persistent config; autostart and live title/description."""

    def __init__(self, ctx: DomainContext, p: dict, warn):
        self.ctx = ctx
        self.p = p
        self.warn = warn

    def _domain_type(self, root) -> None:
        wanted = self.p["domain_type"]
        if wanted in ("kvm", "qemu"):
            root.set("type", wanted)
        elif wanted == "auto" or root.get("type") in (None, "auto"):
            kind, _reason = usable_domain_type(self.ctx.conn)
            root.set("type", kind)

    def _check_identity(self, root, dom) -> None:
        """The XML's UUID must be the domain's own, or (for a new domain) nobody's."""
        lv = _deps.libvirt
        name = self.ctx.name
        uuid = (dx.uuid_of(root) or "").strip().lower()
        if dom is not None:
            if uuid and uuid != dom.UUIDString().lower():
                raise Conflict(
                    f"Domain {name} exists with UUID {dom.UUIDString()}, but the XML gives UUID {uuid}.",
                    hint="Drop <uuid> from the XML (the existing one is kept) or undefine the domain first.",
                )
            return
        if not uuid:
            return
        try:
            other = self.ctx.conn.lookupByUUIDString(uuid)
        except lv.libvirtError as exc:
            if not gone(exc):
                raise libvirt_failed(exc, f"Looking up UUID {uuid}") from exc
            return
        raise Conflict(
            f"The UUID {uuid} in the XML belongs to domain {other.name()}, not {name}.",
            hint="Drop <uuid> from the XML to let libvirt generate one, or use another UUID.",
        )

    def _define(self, root):
        lv = _deps.libvirt
        conn = self.ctx.conn
        text = dx.tostring(root)
        what = f"Defining domain {self.ctx.name}"
        try:
            return conn.defineXMLFlags(text, lv.VIR_DOMAIN_DEFINE_VALIDATE)
        except lv.libvirtError as exc:
            if exc.get_error_code() not in (lv.VIR_ERR_NO_SUPPORT, lv.VIR_ERR_INVALID_ARG):
                raise libvirt_failed(exc, what) from exc
        try:
            return conn.defineXML(text)
        except lv.libvirtError as exc:
            raise libvirt_failed(exc, what) from exc

    def apply(self, dom, wanted_root):
        """Define or update the persistent config. Returns (dom, after_xml_root)."""
        ctx = self.ctx
        current = ctx.inactive_root(dom) if dom is not None else None
        targeted = any(self.p[k] is not None for k in TARGETED)
        if wanted_root is None and not targeted:
            return dom, current
        if wanted_root is None:
            if dom is None:
                raise not_defined(ctx.name)
            wanted = copy.deepcopy(current)
        else:
            wanted = wanted_root
            self._domain_type(wanted)
        apply_targeted(wanted, self.p)
        self._check_identity(wanted, dom)
        if current is None:
            ctx.note("define")
            after = xc.canonical(wanted)
            if not ctx.check_mode:
                dom = self._define(wanted)
            return dom, after
        xc.carry_identity(wanted, current)
        diffs = xc.differences(wanted, current)
        if not diffs:
            return dom, xc.canonical(current)
        ctx.note("config: " + "; ".join(diffs))
        if not dom.isPersistent():
            raise InvalidInput(
                f"Domain {ctx.name} is transient (it has no persistent config to update).",
                hint="Define it first (virsh dumpxml NAME > f.xml; virsh define f.xml).",
            )
        if not ctx.check_mode:
            dom = self._define(wanted)
            left = xc.differences(wanted, ctx.inactive_root(dom))
            if left:
                self.warn(
                    "libvirt stored parts of the XML differently from how they were written, so the next run "
                    "will report a change again; write them as 'virsh dumpxml --inactive' shows them: "
                    + "; ".join(left)
                )
        return dom, xc.predict(wanted, current)

    def autostart(self, dom) -> None:
        wanted = self.p["autostart"]
        if wanted is None:
            return
        current = self.ctx.autostart(dom) if dom is not None else False
        if current != wanted:
            self.ctx.note(f"autostart: {current} -> {wanted}")
            if not self.ctx.check_mode:
                self.ctx.call("Setting autostart", dom.setAutostart, int(wanted))

    def live_metadata(self, dom) -> None:
        """title/description also on the running domain: they need no restart."""
        lv = _deps.libvirt
        ctx = self.ctx
        if dom is None or (self.p["title"] is None and self.p["description"] is None) or not ctx.active(dom):
            return
        live = ctx.live_root(dom)
        for tag, kind in (("title", lv.VIR_DOMAIN_METADATA_TITLE), ("description", lv.VIR_DOMAIN_METADATA_DESCRIPTION)):
            wanted = self.p[tag]
            if wanted is None or (dx.text(live, tag) or "") == wanted:
                continue
            ctx.note(f"live {tag}")
            if not ctx.check_mode:
                ctx.call(
                    f"Setting the live {tag}",
                    dom.setMetadata,
                    kind,
                    wanted or None,
                    None,
                    None,
                    lv.VIR_DOMAIN_AFFECT_LIVE,
                )
