# Private to the virtops.kvm collection: not a public API, may change without notice.
"""CloneManager: the kvm_clone module's options, and its run (scan, plan, act, report).

One run reads the host once (``HostScan``, under the host lock unless in
check mode), plans the whole batch against that scan, and then, unless in
check mode, removes, creates (in bounded parallel, each clone atomically) and
updates, and makes the bases read-only. A clone that fails is rolled back,
the others complete, and the run ends with an error naming the failed ones.
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils._clone import act, result
from ansible_collections.virtops.kvm.plugins.module_utils._clone.lock import HostLock
from ansible_collections.virtops.kvm.plugins.module_utils._clone.plan import Planner
from ansible_collections.virtops.kvm.plugins.module_utils._clone.spec import normalize_clones
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan


class CloneManager(Manager):
    """Plan and create (or remove) a batch of clones of one template, over one connection."""

    ARGUMENT_SPEC = dict(
        template=dict(type="str"),
        template_xml=dict(type="str"),
        template_snapshot=dict(type="str"),
        name=dict(type="str"),
        clones=dict(type="list", elements="raw"),
        mode=dict(type="str", choices=["overlay", "copy"], default="overlay"),
        dest_dir=dict(type="path"),
        xml_dir=dict(type="path"),
        domain_type=dict(type="str", choices=["auto", "kvm", "qemu"], default="auto"),
        state=dict(type="str", choices=["present", "running", "absent"], default="present"),
        protect_base=dict(type="bool", default=True),
        parallel=dict(type="int", default=4),
        network=dict(type="str"),
        dhcp_reservations=dict(type="bool", default=True),
    )
    MODULE_OPTIONS = dict(
        mutually_exclusive=[("template", "template_xml"), ("name", "clones")],
        required_by=dict(template_snapshot="template"),
        required_one_of=[("name", "clones")],
        required_if=[
            ("state", "present", ("template", "template_xml"), True),
            ("state", "running", ("template", "template_xml"), True),
        ],
    )

    #: where and how long to wait for the host lock (tests use their own)
    SEAMS = dict(lock_path=None, lock_timeout=900)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.p["parallel"] < 1:
            raise InvalidInput("parallel must be at least 1.")
        self.specs = normalize_clones(self.p["name"], self.p["clones"], self.p["state"])

    def run(self) -> dict:
        """Scan and plan, then (unless check mode) act under the host lock; return the module result."""
        if self.check_mode:
            scan = HostScan.take(self.conn)
            plan = self._plan(scan)
            outcomes = {i["name"]: dict(ok=True, changed=i["action"] != "none") for i in plan["items"]}
            removed, kept = act.preview_removals(_absent(plan), scan)
            base_changed = False
        else:
            with HostLock(self.lock_path, self.lock_timeout):
                scan = HostScan.take(self.conn)
                plan = self._plan(scan)
                outcomes, removed, kept, base_changed = self._act(plan, scan)
        verb = "Would keep" if self.check_mode else "Kept"
        for k in kept:
            self.warn(f"{verb} {k['path']}: still used by {', '.join(k['used_by'])}.")
        bases = result.bases_report(plan, outcomes, scan, self.p["protect_base"], self.check_mode)
        out = result.build(plan, outcomes, bases, removed, kept)
        plan["reservations"].annotate(out, plan["items"])
        out["changed"] = out["changed"] or base_changed
        failed = [(n, o["error"]) for n, o in outcomes.items() if not o["ok"]]
        if failed:
            names = ", ".join(n for n, _why in failed)
            why = "; ".join(f"{n}: {e}" for n, e in failed)
            raise KvmError(
                f"{len(failed)} of {len(plan['items'])} clone(s) failed ({names}); each failed clone was rolled "
                f"back and left nothing behind. {why}",
                changed=out["changed"],
                clones=out["clones"],
                bases=out["bases"],
                failed_clones=[n for n, _why in failed],
            )
        return out

    def _plan(self, scan: HostScan) -> dict:
        return Planner(self.p, self.specs, scan, self.conn, self.runner).plan()

    def _act(self, plan: dict, scan: HostScan) -> tuple[dict, list[str], list[dict], bool]:
        """Remove, create, update, protect: (outcomes, removed files, kept files, whether a base changed)."""
        outcomes: dict[str, dict] = {}
        removed, kept = act.remove_all(_absent(plan), outcomes, scan)
        plan["reservations"].after_remove(plan["items"], outcomes)
        creates = [i for i in plan["items"] if i["action"] == "create"]
        plan["reservations"].before_create(plan["items"])
        created = act.create_all(self.conn, self.runner, creates, self.p["parallel"])
        plan["reservations"].after_create(created)
        outcomes.update(created)
        for item in plan["items"]:
            if item["action"] in ("update", "none") and not item.get("absent"):
                outcomes[item["name"]] = act.update_one(item)
        base_changed = self.p["protect_base"] and act.protect_bases(plan, outcomes)
        return outcomes, removed, kept, base_changed


def _absent(plan: dict) -> list[dict]:
    """The plan's items for clones that are to be absent."""
    return [i for i in plan["items"] if i.get("absent")]
