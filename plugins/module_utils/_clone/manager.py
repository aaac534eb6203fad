# Private to the virtops.kvm collection: not a public API, may change without notice.
"""CloneManager: the kvm_clone module's options, and its run (scan, plan, act, report).

One run reads the host once (``HostScan``, under the host lock unless in
check mode), plans the whole batch against that scan, and then, unless in
check mode, runs the phases in order, handing each what it needs: remove;
make the new clones' files; reset their identity; define them; update the
existing ones; make the bases read-only. Every phase returns an outcome per
clone and never calls back. A clone that fails is rolled back, the others
complete, and the run ends with an error naming the failed ones.
"""

from __future__ import annotations

import copy

from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone import act, identity, reset, result, space
from ansible_collections.virtops.kvm.plugins.module_utils._clone.journal import Journal
from ansible_collections.virtops.kvm.plugins.module_utils._clone.lock import HostLock
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import CREATE, NONE, Item, Outcome, Plan
from ansible_collections.virtops.kvm.plugins.module_utils._clone.plan import Planner
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import check_cloud_init
from ansible_collections.virtops.kvm.plugins.module_utils._clone.spec import normalize_clones
from ansible_collections.virtops.kvm.plugins.module_utils._drift import describe, rerecord
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
        accept_base_change=dict(type="bool", default=False),
        # checked by identity.check_config, not by sub-options: ansible-core (2.19) crashes with a
        # traceback in set_fallbacks on a non-dict value for a dict option that has sub-options
        identity=dict(type="dict"),
        cloud_init=dict(type="dict"),
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
    #: handle_factory makes the identity reset's libguestfs handles
    #: journal_dir: where the intents of interrupted runs are kept
    SEAMS = dict(lock_path=None, lock_timeout=900, handle_factory=None, journal_dir=None)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.p["parallel"] < 1:
            raise InvalidInput("parallel must be at least 1.")
        self.specs = normalize_clones(self.p["name"], self.p["clones"], self.p["state"])
        for option in ("dest_dir", "xml_dir"):
            if self.p[option] is not None:
                vd.path(self.p[option], option)
        if self.p["template_snapshot"] is not None:
            vd.existing_name(self.p["template_snapshot"], "template_snapshot")
        self.identity = identity.check_config(self.p["identity"])
        self.cloud_init = check_cloud_init(self.p["cloud_init"], "cloud_init")

    def run(self) -> dict:
        """Scan and plan, then (unless check mode) act under the host lock; return the module result."""
        journal = Journal(self.journal_dir, self.uri)
        if self.check_mode:
            scan = HostScan.take(self.conn)
            self.recovered = journal.recover(scan, True, {sp["name"] for sp in self.specs})
            plan = self._plan(scan)
            outcomes = {i.name: _preview(i) for i in plan.items}
            removed, kept = act.preview_removals(plan.absent(), scan)
            base_changed = False
        else:
            with HostLock(self.lock_path, self.lock_timeout):
                scan = HostScan.take(self.conn)
                self.recovered = journal.recover(scan, False, {sp["name"] for sp in self.specs})
                plan = self._plan(scan)
                outcomes, removed, kept, base_changed = self._act(plan, scan, journal)
        rerecorded = self._base_drift(plan)
        for warning in space.headroom_warnings(plan.space):
            self.warn(warning)
        self._report_recovery()
        verb = "Would keep" if self.check_mode else "Kept"
        for k in kept:
            self.warn(f"{verb} {k['path']}: still used by {', '.join(k['used_by'])}.")
        bases = result.bases_report(plan, outcomes, scan, self.p["protect_base"], self.check_mode)
        out = result.build(plan, outcomes, bases, removed, kept)
        plan.reservations.annotate(out, plan.items)
        out["changed"] = out["changed"] or base_changed or bool(rerecorded) or any(r["removed"] for r in self.recovered)
        if self.recovered:
            out["recovered"] = self.recovered
        if rerecorded:
            out["base_change_accepted"] = rerecorded
        failed = [(n, o.error) for n, o in outcomes.items() if not o.ok]
        if failed:
            names = ", ".join(n for n, _why in failed)
            why = "; ".join(f"{n}: {e}" for n, e in failed)
            kept = [n for n, _why in failed if outcomes[n].files_kept]
            fate = (
                "each failed clone was rolled back and left nothing behind"
                if not kept
                else f"{', '.join(kept)} kept their files for the next run to finish or remove (the daemon was "
                "lost under them); the others were rolled back"
            )
            raise KvmError(
                f"{len(failed)} of {len(plan.items)} clone(s) failed ({names}); {fate}. {why}",
                changed=out["changed"],
                clones=out["clones"],
                bases=out["bases"],
                failed_clones=[n for n, _why in failed],
            )
        return out

    def _plan(self, scan: HostScan) -> Plan:
        reclaimed = {p for r in self.recovered for p in r["removed"]}
        return Planner(
            self.p, self.specs, scan, self.conn, self.runner, self.identity, self.cloud_init, reclaimed
        ).plan()

    def _report_recovery(self) -> None:
        verb = "Would remove" if self.check_mode else "Removed"
        for r in self.recovered:
            what = "creating" if r["op"] == "create" else "removing"
            if r["removed"]:
                self.warn(
                    f"An interrupted run left clone {r['name']} half-made while {what} it; {verb.lower()} its "
                    f"leftovers (recorded in its intent journal): {', '.join(r['removed'])}."
                )
            if r["kept"]:
                self.warn(f"Kept {', '.join(r['kept'])} of an interrupted run for {r['name']}: something uses them.")

    def _act(self, plan: Plan, scan: HostScan, journal: Journal) -> tuple[dict, list[str], list[dict], bool]:
        """The phases in order: (outcomes, removed files, kept files, whether a base changed)."""
        outcomes, removed, kept = act.remove_all(plan.absent(), scan, journal)
        plan.reservations.after_remove(plan.items, outcomes)
        plan.reservations.before_create(plan.items)
        created = self._create(plan.creates(), journal)
        plan.reservations.after_create(created)
        outcomes.update(created)
        for item in plan.kept():
            outcomes[item.name] = act.update_one(item)
        base_changed = self.p["protect_base"] and act.protect_bases(plan, outcomes)
        return outcomes, removed, kept, base_changed

    def _create(self, items: list[Item], journal: Journal) -> dict[str, Outcome]:
        """New clones: intents, files (in parallel), identity reset (one appliance), define; name -> outcome."""
        if not items:
            return {}
        act.write_intents(journal, items)
        made, outcomes = act.make_all(self.runner, self.which, items, self.p["parallel"])
        ready = [i for i in items if i.name not in outcomes]
        reports: dict[str, dict] = {}
        if ready:
            refused, reports, warnings = reset.reset_identities(self.conn, ready, self.identity, self.handle_factory)
            self.warnings.extend(w for w in warnings if w not in self.warnings)
            for item in ready:
                if item.name in refused:
                    outcomes[item.name] = act.undo(refused[item.name], None, made[item.name])
            ready = [i for i in ready if i.name not in refused]
        outcomes.update(act.define_all(self.conn, ready, made, self.p["parallel"]))
        act.close_intents(journal, items, outcomes)
        for item in items:
            if outcomes[item.name].ok and reports.get(item.name):
                outcomes[item.name].identity = reports[item.name]
        return {item.name: outcomes[item.name] for item in items}

    def _base_drift(self, plan: Plan) -> list[str]:
        """Warn about clones whose base drifted, or with accept_base_change re-record it; the names re-recorded."""
        drifted = plan.drifted
        if not drifted:
            return []
        if not self.p["accept_base_change"]:
            for d in drifted:
                self.warn(
                    f"The base of domain {d['name']} changed after its overlay was made: {describe(d['drifts'])}. "
                    "kvm_domain will not start it; set accept_base_change: true once you know it is good."
                )
            return []
        if not self.check_mode:
            with HostLock(self.lock_path, self.lock_timeout):
                for d in drifted:
                    rerecord(d["dom"], copy.deepcopy(d["root"]), plan.base_prints)
        return [d["name"] for d in drifted]


def _preview(item: Item) -> Outcome:
    """Check mode: the outcome a real run would have (the identity reset planned, not done)."""
    out = Outcome(ok=True, changed=item.action != NONE)
    if item.action == CREATE and item.identity:
        plan = item.identity
        out.identity = dict(
            hostname=plan["hostname"], planned=plan["operations"], files=[f["path"] for f in plan["files"]]
        )
    return out
