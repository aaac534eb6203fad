# Private to the virtops.kvm collection: not a public API, may change without notice.
"""CloneManager: the kvm_clone module's options, and its run (scan, plan, act, report).

One run reads the host once (``HostScan``, under the host lock unless in
check mode), plans the whole batch against that scan, and then, unless in
check mode, removes, creates (in bounded parallel, each clone atomically) and
updates, and makes the bases read-only. A clone that fails is rolled back,
the others complete, and the run ends with an error naming the failed ones.
"""

from __future__ import annotations

import copy

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone import act, identity, result, space
from ansible_collections.virtops.kvm.plugins.module_utils._clone.journal import Journal
from ansible_collections.virtops.kvm.plugins.module_utils._clone.lock import HostLock
from ansible_collections.virtops.kvm.plugins.module_utils._clone.plan import Planner
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import check_cloud_init
from ansible_collections.virtops.kvm.plugins.module_utils._clone.spec import normalize_clones
from ansible_collections.virtops.kvm.plugins.module_utils._drift import describe, rerecord
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, KvmError, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import decide_force_tcg, kvm_usable
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
            outcomes = {i["name"]: _preview(i) for i in plan["items"]}
            removed, kept = act.preview_removals(_absent(plan), scan)
            base_changed = False
        else:
            with HostLock(self.lock_path, self.lock_timeout):
                scan = HostScan.take(self.conn)
                self.recovered = journal.recover(scan, False, {sp["name"] for sp in self.specs})
                plan = self._plan(scan)
                outcomes, removed, kept, base_changed = self._act(plan, scan, journal)
        rerecorded = self._base_drift(plan)
        for warning in space.headroom_warnings(plan["space"]):
            self.warn(warning)
        self._report_recovery()
        verb = "Would keep" if self.check_mode else "Kept"
        for k in kept:
            self.warn(f"{verb} {k['path']}: still used by {', '.join(k['used_by'])}.")
        bases = result.bases_report(plan, outcomes, scan, self.p["protect_base"], self.check_mode)
        out = result.build(plan, outcomes, bases, removed, kept)
        plan["reservations"].annotate(out, plan["items"])
        out["changed"] = out["changed"] or base_changed or bool(rerecorded) or any(r["removed"] for r in self.recovered)
        if self.recovered:
            out["recovered"] = self.recovered
        if rerecorded:
            out["base_change_accepted"] = rerecorded
        failed = [(n, o["error"]) for n, o in outcomes.items() if not o["ok"]]
        if failed:
            names = ", ".join(n for n, _why in failed)
            why = "; ".join(f"{n}: {e}" for n, e in failed)
            kept = [n for n, _why in failed if outcomes[n].get("pending") or "files are kept" in outcomes[n]["error"]]
            fate = (
                "each failed clone was rolled back and left nothing behind"
                if not kept
                else f"{', '.join(kept)} kept their files for the next run to finish or remove (the daemon was "
                "lost under them); the others were rolled back"
            )
            raise KvmError(
                f"{len(failed)} of {len(plan['items'])} clone(s) failed ({names}); {fate}. {why}",
                changed=out["changed"],
                clones=out["clones"],
                bases=out["bases"],
                failed_clones=[n for n, _why in failed],
            )
        return out

    def _plan(self, scan: HostScan) -> dict:
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

    def _act(self, plan: dict, scan: HostScan, journal: Journal) -> tuple[dict, list[str], list[dict], bool]:
        """Remove, create, update, protect: (outcomes, removed files, kept files, whether a base changed)."""
        outcomes: dict[str, dict] = {}
        removed, kept = act.remove_all(_absent(plan), outcomes, scan, journal)
        plan["reservations"].after_remove(plan["items"], outcomes)
        creates = [i for i in plan["items"] if i["action"] == "create"]
        plan["reservations"].before_create(plan["items"])
        created = act.create_all(
            self.conn,
            self.runner,
            creates,
            self.p["parallel"],
            which=self.which,
            between=self._reset_identities,
            journal=journal,
        )
        plan["reservations"].after_create(created)
        for item in creates:
            if created[item["name"]]["ok"] and item.get("identity_report"):
                created[item["name"]]["identity"] = item["identity_report"]
        outcomes.update(created)
        for item in plan["items"]:
            if item["action"] in ("update", "none") and not item.get("absent"):
                outcomes[item["name"]] = act.update_one(item)
        base_changed = self.p["protect_base"] and act.protect_bases(plan, outcomes)
        return outcomes, removed, kept, base_changed

    def _base_drift(self, plan: dict) -> list[str]:
        """Warn about clones whose base drifted, or with accept_base_change re-record it; the names re-recorded."""
        drifted = plan["drifted"]
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
                    rerecord(d["dom"], copy.deepcopy(d["root"]), plan["base_prints"])
        return [d["name"] for d in drifted]

    def _guard_disks(self, items: list[dict]) -> dict[str, str]:
        """The host's write guard before the appliance writes into new clone disks: name -> refusal."""
        scan = HostScan.take(self.conn)
        refused = {}
        for item in items:
            try:
                scan.guard([d["path"] for d in item["disks"]], f"reset the identity of clone {item['name']} offline")
            except StorageError as exc:
                refused[item["name"]] = exc.message
        return refused

    def _reset_identities(self, ready: list[dict]) -> dict[str, str]:
        """The batch's one appliance over every new clone disk; name -> error for the clones it failed."""
        todo = [i for i in ready if i.get("identity")]
        if not todo:
            return {}
        if self.handle_factory is None and _deps.guestfs is None:
            why = (
                "the identity reset needs the libguestfs Python binding, which is not installed: "
                f"{_deps.install_hint('guestfs')} Or set identity.operations to [] (and no files) to clone without it."
            )
            return {i["name"]: why for i in todo}
        refused = self._guard_disks(todo)
        todo = [i for i in todo if i["name"] not in refused]
        if not todo:
            return refused
        force_tcg, _why = decide_force_tcg(self.identity["force_tcg"], lambda: kvm_usable(self.conn))
        done: dict = {}
        for chunk in identity.chunks(todo):  # an appliance takes at most 255 drives
            got, warnings = identity.reset_batch(chunk, self.identity, force_tcg, self.handle_factory)
            done.update(got)
            self.warnings.extend(w for w in warnings if w not in self.warnings)
        for item in todo:
            o = done[item["name"]]
            if not o["ok"]:
                refused[item["name"]] = o["error"]
                continue
            item["identity_report"] = o["report"]
            root = dx.parse(item["xml"])
            identity.record(root, o["report"])
            item["xml"] = dx.tostring(root)
        return refused


def _preview(item: dict) -> dict:
    """Check mode: the outcome a real run would have (the identity reset planned, not done)."""
    out = dict(ok=True, changed=item["action"] != "none")
    if item["action"] == "create" and item.get("identity"):
        plan = item["identity"]
        out["identity"] = dict(
            hostname=plan["hostname"], planned=plan["operations"], files=[f["path"] for f in plan["files"]]
        )
    return out


def _absent(plan: dict) -> list[dict]:
    """The plan's items for clones that are to be absent."""
    return [i for i in plan["items"] if i.get("absent")]
