# Private to the virtops.kvm collection: not a public API, may change without notice.
"""FleetHostManager, kvm_fleet_host's work: one hypervisor's share of a fleet, in one module run.

The kvm_fleet role ran up to nine module tasks per hypervisor (each an SSH round trip and a
module start); this runs the same steps, in the same order and with the same rules, inside one
module run over one libvirt connection, each step by the manager of the module it replaces
(``Manager.compose``: its options checked as that module checks them):

1. what is defined (one list of names) and, with ``prune``, what the fleet has that is no
   longer listed (kvm_domain_info's provenance, rules.unlisted);
2. the template sealed once (kvm_template); a template others already stand on is left as it
   is, with a warning naming them;
3. the clones (kvm_clone, one batch; creation-time options only for clones not there yet);
4. the fleet's network started (kvm_network) and the clones' reserved addresses;
5. the first boot of the clones made now (kvm_domain, with ``first_boot``);
6. every defined clone put in its state (kvm_domain, one batch);
7. the files read from the clones left shut off (kvm_guestfs, read-only, one appliance per
   250 drives);
8. the unlisted clones of the fleet removed (kvm_clone, ``prune``).

A step that fails ends the run with its own typed error, which also says the step (``step``)
and what the steps before it did (``done``). In check mode the clones kvm_clone would create
are not defined, so they are not put in a state or read (as the role did).
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager
from ansible_collections.virtops.kvm.plugins.module_utils._clone.template_manager import TemplateManager
from ansible_collections.virtops.kvm.plugins.module_utils._domain.info import DomainInfoManager
from ansible_collections.virtops.kvm.plugins.module_utils._domain.manager import DomainManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._fleet import rules
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.manager import GuestfsManager
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._network.manager import NetworkManager
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM

# The clone states after which a clone is off (its disks can be read offline).
OFF_STATES = ("shutdown", "destroyed")
CLONE_STATES = ("running", "shutdown", "destroyed", "paused", "present")
# The options passed on to kvm_clone as they are.
CLONE_OPTIONS = (
    "mode",
    "dest_dir",
    "xml_dir",
    "domain_type",
    "protect_base",
    "parallel",
    "network",
    "dhcp_reservations",
    "identity",
    "cloud_init",
)
TEMPLATE_SOURCES = ("template", "template_xml", "template_xml_file")


class FleetHostManager(Manager):
    """Converge one hypervisor's share of a fleet of clones of one template (see the kvm_fleet_host module)."""

    ARGUMENT_SPEC = dict(
        state=dict(type="str", choices=["present", "absent"], default="present"),
        clones=dict(type="list", elements="dict", default=[]),
        template=dict(type="str"),
        template_xml=dict(type="str"),
        template_xml_file=dict(type="path"),
        seal=dict(type="bool", default=False),
        create=dict(type="bool", default=True),
        mode=dict(type="str", choices=["overlay", "copy"], default="overlay"),
        dest_dir=dict(type="path"),
        xml_dir=dict(type="path"),
        domain_type=dict(type="str", choices=["auto", "kvm", "qemu"], default="auto"),
        protect_base=dict(type="bool", default=True),
        parallel=dict(type="int", default=4),
        network=dict(type="str"),
        dhcp_reservations=dict(type="bool", default=True),
        identity=dict(type="dict"),
        cloud_init=dict(type="dict"),
        clone_state=dict(type="str", choices=list(CLONE_STATES), default="running"),
        shutdown_timeout=dict(type="int", default=120),
        force=dict(type="bool", default=False),
        first_boot=dict(type="bool", default=False),
        boot_marker=dict(type="str"),
        boot_timeout=dict(type="int", default=180),
        verify_paths=dict(type="list", elements="str", default=[]),
        verify_mounts=dict(type="dict"),
        prune=dict(type="bool", default=False),
        fleet_name=dict(type="str"),
    )
    MODULE_OPTIONS = dict(
        mutually_exclusive=[TEMPLATE_SOURCES],
        required_if=[
            ("prune", True, ("fleet_name",)),
            ("first_boot", True, ("boot_marker",)),
        ],
    )
    LIBRARIES = ("libvirt", "lxml")

    #: the seams of the managers it runs: the waits' clock, the host lock, libguestfs handles, the journal
    SEAMS = dict(clock=SYSTEM, lock_path=None, lock_timeout=900, handle_factory=None, journal_dir=None)

    @classmethod
    def needs(cls, params: dict) -> tuple:
        """libguestfs only when a step uses an appliance: the seal and the read of shut-off clones."""
        present = params.get("state", "present") == "present"
        appliance = present and ((params.get("seal") and params.get("template")) or params.get("verify_paths"))
        return (*cls.LIBRARIES, "guestfs") if appliance else cls.LIBRARIES

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.clones = _checked_clones(self.p["clones"])
        self.names = [c["name"] for c in self.clones]
        if self.p["fleet_name"] is not None:
            vd.validate_name(self.p["fleet_name"], "fleet_name")
        #: whether this run makes clones (and so needs the template): state present, create, clones listed
        self.making = self.p["state"] == "present" and self.p["create"] and bool(self.clones)
        if self.making and not any(self.p[k] for k in TEMPLATE_SOURCES):
            raise InvalidInput(
                "state=present needs the template: give one of template, template_xml and template_xml_file.",
                hint="Name the template domain (shut off), or give its XML.",
            )
        self.done: dict = {}
        self.diffs: list = []

    # ------------------------------------------------------------------ steps

    def step(self, name: str, manager_cls: type[Manager], params: dict) -> dict:
        """Run one step's manager; its warnings join this run's, a failure says the step and what was done."""
        sub = None
        try:
            sub = self.compose(manager_cls, params)
            out = sub.run()
        except KvmError as exc:
            exc.details.setdefault("step", name)
            exc.details.setdefault("done", dict(self.done))
            raise
        finally:
            if sub is not None:
                self.warnings.extend(sub.warnings)
        self.warnings.extend(out.pop("warnings", []))
        diff = out.pop("diff", None)
        if out.get("changed") and diff:
            self.diffs.extend(dict(d, before_header=name) for d in (diff if isinstance(diff, list) else [diff]))
        return out

    def _template_xml(self) -> str | None:
        path = self.p["template_xml_file"]
        if not path:
            return self.p["template_xml"]
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            raise InvalidInput(
                f"template_xml_file {path} cannot be read on the hypervisor: {exc.strerror or exc}.",
                hint="Give the path of a domain XML on the managed host (e.g. written by virsh dumpxml).",
            ) from exc

    def _template_name(self, xml: str | None) -> str | None:
        """The template's name as kvm_clone records it in a clone's provenance (the prune rule reads it)."""
        if self.p["template"]:
            return self.p["template"]
        return dx.name_of(dx.parse(xml, "template XML")) if xml else None

    def _unlisted(self, template_name: str | None) -> list:
        if not self.p["prune"]:
            return []
        found = self.step("find the fleet's clones", DomainInfoManager, {})
        return rules.unlisted(found["domains"], self.p["fleet_name"], self.names, template_name)

    def _defined(self) -> set:
        return {d.name() for d in self.conn.listAllDomains(0)}

    # ------------------------------------------------------------------ run

    def run(self) -> dict:
        xml = self._template_xml() if self.making or self.p["prune"] else None
        unlisted = self._unlisted(self._template_name(xml))
        if self.p["state"] == "absent":
            return self._absent(unlisted)
        return self._present(xml, unlisted)

    def _absent(self, unlisted: list) -> dict:
        gone = self.names + unlisted
        removed = []
        if gone:
            params = dict(clones=gone, state="absent", xml_dir=self.p["xml_dir"])
            out = self.done["clone"] = self.step("remove the clones", CloneManager, params)
            removed = [c["name"] for c in out["clones"] if c["changed"]]
        return self._result(removed=removed)

    def _present(self, xml: str | None, unlisted: list) -> dict:
        p = self.p
        defined = self._defined()
        existing = [n for n in self.names if n in defined]
        if self.making and p["seal"] and p["template"]:
            self.done["seal"] = self._seal()
        clone = {}
        if self.making:
            params = {k: p[k] for k in CLONE_OPTIONS}
            source = dict(template=p["template"]) if p["template"] else dict(template_xml=xml)
            params.update(source, clones=rules.clone_specs(self.clones, existing), state="present")
            clone = self.done["clone"] = self.step("clone", CloneManager, params)
        made = [c["name"] for c in clone.get("clones", []) if c["changed"] and c["name"] not in existing]
        created = [] if self.check_mode else made
        now_defined = existing + created
        addresses = {}
        if p["network"]:
            self.done["network"] = self.step(
                "start the network", NetworkManager, dict(name=p["network"], state="active")
            )
            addresses = {c["name"]: c["ip"] for c in clone.get("clones", []) if c.get("ip")}
        if p["first_boot"] and created:
            items = rules.domain_items(self.clones, created, state="running")
            boot = dict(domains=items, boot_marker=p["boot_marker"], boot_timeout=p["boot_timeout"])
            self.done["first_boot"] = self.step("first boot", DomainManager, boot)
        states = {}
        wanted = rules.domain_items(self.clones, now_defined, p["clone_state"])
        if wanted:
            params = {k: p[k] for k in ("shutdown_timeout", "force", "boot_marker", "boot_timeout")}
            states = self.done["states"] = self.step("states", DomainManager, dict(params, domains=wanted))
        verified = {}
        off = [i["name"] for i in wanted if i.get("state") in OFF_STATES]
        if p["verify_paths"] and off:
            read = dict(domains=off, paths=p["verify_paths"], mounts=p["verify_mounts"], fail_missing=True)
            self.done["verify"] = self.step("verify", GuestfsManager, read)
            verified = _contents(self.done["verify"])
        if unlisted:
            self.done["prune"] = self.step("prune", CloneManager, dict(clones=unlisted, state="absent"))
        return self._result(
            created=made,
            existing=existing,
            clones=clone.get("clones", []),
            bases=clone.get("bases", []),
            domains=[d["domain"] for d in states.get("domains", []) if d.get("domain")],
            addresses=addresses,
            verified=verified,
            pruned=unlisted,
        )

    def _seal(self) -> dict:
        """Seal the template once; one others already stand on is left as it is (kvm_clone resets its clones)."""
        try:
            return self.step("seal", TemplateManager, dict(name=self.p["template"], state="sealed"))
        except KvmError as exc:
            if not exc.details.get("dependants"):
                raise
            self.warn(f"The template was not sealed, and its new clones get the offline reset: {exc.msg}")
            return dict(changed=False, sealed=False, dependants=exc.details["dependants"])

    def _result(self, **out) -> dict:
        changed = any(r.get("changed") for r in self.done.values())
        return dict(out, changed=changed, steps=sorted(self.done), diff=self.diffs)


def _checked_clones(clones: list) -> list:
    """The clones as given, each a dict with a unique name and only keys a clone of the fleet has."""
    seen = set()
    for i, clone in enumerate(clones):
        name = clone.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"clones[{i}] needs a name.", hint="Give each clone a name.")
        vd.validate_name(name, f"clones[{i}].name")
        unknown = sorted(set(clone) - set(rules.CLONE_KEYS))
        if unknown:
            raise InvalidInput(
                f"clones[{i}] ({name}) has unknown key(s) {', '.join(unknown)}.",
                hint=f"A clone may have: {', '.join(rules.CLONE_KEYS)}.",
            )
        if name in seen:
            raise InvalidInput(f"Clone {name} is listed more than once.", hint="Give each clone once.")
        seen.add(name)
        state = clone.get("state")
        if state is not None and state not in CLONE_STATES:
            raise InvalidInput(
                f"clones[{i}] ({name}) has state {state!r}.", hint=f"Use one of: {', '.join(CLONE_STATES)}."
            )
    return clones


def _contents(read: dict) -> dict:
    """kvm_guestfs's result as ``{domain: {path: text}}`` (base64 for a file that is not text)."""
    return {
        name: {path: f.get("content", f.get("content_b64", "")) for path, f in r["files"].items()}
        for name, r in read["domains"].items()
    }
