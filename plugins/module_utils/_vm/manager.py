# Private to the virtops.kvm collection: not a public API, may change without notice.
"""VmManager, kvm_vm's work: one VM (``name``) or a batch (``vms``), planned from one scan, then made.

Three passes, so a bad item changes nothing and a batch costs about one VM's time:

1. every VM's options are checked without libvirt (spec.py), its OS looked up
   in the osinfo database; a name given twice refuses the batch;
2. under the host lock kvm_clone takes (no lock in check mode), one
   ``HostScan`` plans every VM: where its files go, what exists, every
   refusal (files.py), and no file claimed twice across the batch;
3. every base a planned overlay stands on is made read-only (once, before
   anything runs on it); then the VMs run (converge.py), up to ``parallel``
   at once; a VM that fails fails alone, and the task then fails naming it,
   with every VM's result;
4. the lock released, the boots (``boot_marker``) are waited for together,
   in one loop: a task waiting for slow guests does not hold up other tasks.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone.lock import HostLock
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import seed_path
from ansible_collections.virtops.kvm.plugins.module_utils._domain.boot import wait_all
from ansible_collections.virtops.kvm.plugins.module_utils._domain.converge import DomainRun
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._host.probe import usable_domain_type
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan, ScansHost, lookup_domain
from ansible_collections.virtops.kvm.plugins.module_utils._vm import build, files, osinfo, spec
from ansible_collections.virtops.kvm.plugins.module_utils._vm.converge import VmRun, new_uuid
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM


def _top_spec() -> dict:
    out = {}
    for key, opt in spec.VM_OPTIONS.items():
        out[key] = dict(opt, default=spec.VM_DEFAULTS[key]) if key in spec.VM_DEFAULTS else dict(opt)
    return out


class VmManager(ScansHost, Manager):
    """Make and converge VMs from typed descriptions (see the kvm_vm module)."""

    ARGUMENT_SPEC = dict(
        _top_spec(),
        vms=dict(type="list", elements="dict"),
        parallel=dict(type="int", default=8),
        shutdown_timeout=dict(type="int", default=120),
        force=dict(type="bool", default=False),
        boot_marker=dict(type="str"),
        boot_timeout=dict(type="int", default=180),
    )
    MODULE_OPTIONS = dict(required_one_of=[("name", "vms")], mutually_exclusive=[("name", "vms")])

    #: clock: the waits' time source; lock_path/lock_timeout: the host lock; osinfo_dirs: the osinfo database;
    #: default_dir: where files go when no pool "default" is defined
    SEAMS = dict(clock=SYSTEM, lock_path=None, lock_timeout=900, osinfo_dirs=None, default_dir=files.DEFAULT_DIR)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        p = self.p
        if p["vms"] is None:
            raw = [spec.vm_params(p, None, "")]
            wheres = [""]
        else:
            raw = [spec.vm_params(p, item, f"vms[{i}]") for i, item in enumerate(p["vms"])]
            wheres = [f"vms[{i}]" for i in range(len(p["vms"]))]
            if not raw:
                raise InvalidInput("vms is empty.", hint="List at least one VM, or use name.")
        self.vms = [spec.check_vm(r, w) for r, w in zip(raw, wheres)]
        names = [v["name"] for v in self.vms]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InvalidInput(f"vms names {', '.join(twice)} more than once.", hint="Give each VM once.")
        self._os: dict = {}
        for v in self.vms:
            if v["os_variant"] and v["os_variant"] not in self._os:
                dirs = self.osinfo_dirs or osinfo.DB_DIRS
                self._os[v["os_variant"]] = osinfo.lookup(v["os_variant"], dirs)

    # ------------------------------------------------------------------ seams for VmRun

    def domain_run(self, p: dict, name: str, root) -> DomainRun:
        return DomainRun(
            self.connection,
            p,
            name,
            root,
            self.check_mode,
            scan=self.scan,
            warn=self.warn,
            clock=self.clock,
            defer_boot_wait=True,  # the boots are waited for after the host lock is released (run)
        )

    def lookup(self, name: str):
        return lookup_domain(self.conn, name)

    # ------------------------------------------------------------------ planning

    def _plan(self, vm: dict, scan: HostScan, pools: dict, kind: str) -> dict:
        name = vm["name"]
        scanned = scan.get(name)
        if scanned is not None and (dx.provenance(scanned.inactive) or {}).get("mode") != "vm":
            raise Conflict(
                f"Domain {name} exists and was not made by kvm_vm, so kvm_vm does not redefine or remove it; "
                "nothing was changed.",
                hint="Manage it with virtops.kvm.kvm_domain (or kvm_clone for a clone), or give this VM another name.",
            )
        if vm["state"] == "absent":
            return dict(disks=[], seed=None, os=None)
        os_info = self._os.get(vm["os_variant"])
        bus = build.defaults(vm, os_info)["disk_bus"]
        disks = files.assign_targets(vm["disks"], bus)

        def folder(pool: str) -> str:
            return files.pool_dir(self.conn, pool, pools, self.default_dir)

        dirs = {
            i: os.path.dirname(d["path"]) if d["path"] else folder(d["pool"] or vm["pool"]) for i, d in enumerate(disks)
        }
        existing = scanned.inactive if scanned is not None else None
        planned = files.plan_disks(vm, disks, dirs, existing, scan)
        seed = None
        if vm["cloud_init"] is not None:
            made = [os.path.dirname(d["path"]) for d in planned if d["mode"] != "as_is"]
            seed = seed_path(made[0] if made else folder(vm["pool"]), name)
        return dict(
            disks=planned,
            seed=seed,
            os=os_info,
            domain_type=kind,
            new=scanned is None,
            uuid=scanned.dom.UUIDString() if scanned is not None else new_uuid(),
        )

    def _plans(self, scan: HostScan) -> dict[str, dict]:
        pools: dict = {}
        kind = usable_domain_type(self.conn)[0] if any(v["state"] != "absent" for v in self.vms) else "qemu"
        plans = {v["name"]: self._plan(v, scan, pools, kind) for v in self.vms}
        files.claims({n: p["disks"] for n, p in plans.items()}, scan, {n: p["seed"] for n, p in plans.items()})
        return plans

    # ------------------------------------------------------------------ acting

    def _one(self, run: VmRun) -> dict:
        try:
            return run.run()
        except KvmError as exc:
            return dict(name=run.vm["name"], failed=True, msg=exc.message, error=type(exc).__name__, changed=False)

    def _act(self) -> tuple[list[dict], dict]:
        """Plan, protect the bases, run every VM; (results, the boot waits they left by VM name)."""
        self._scan = HostScan.take(self.conn)
        plans = self._plans(self._scan)
        originals: dict[str, int] = {}
        protected = self._protect(plans, originals)
        runs = [VmRun(self, v, plans[v["name"]]) for v in self.vms]
        if len(runs) == 1:
            try:
                results = [runs[0].run()]
            except KvmError:
                self._unprotect(plans, [], originals)
                raise
        else:
            workers = max(1, min(self.p["parallel"], len(runs)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(self._one, runs))
        self._unprotect(plans, results, originals)
        for r in results:
            if protected.get(r["name"]) and not r.get("failed"):
                r["changes"][:0] = [f"protect base {b} (read-only: overlays stand on it)" for b in protected[r["name"]]]
                r["changed"] = True
        return results, {run.vm["name"]: run.boot_watch for run in runs if run.boot_watch is not None}

    def _protect(self, plans: dict, originals: dict) -> dict[str, list[str]]:
        """chmod a-w every base the planned overlays stand on, once, before any VM is defined or started.

        A VM never runs on an overlay whose base is still writable. Returns, per VM, the bases it reports: the
        first VM in the list's order standing on each base, in check mode as in a real run; ``originals`` gets
        each changed base's mode before.
        """
        done: set = set()
        out: dict[str, list[str]] = {}
        for vm in self.vms:
            disks = [d for d in plans[vm["name"]]["disks"] if d["mode"] == "overlay" and d["source"] not in done]
            done.update(d["source"] for d in disks)
            changed = files.protect(disks, self.check_mode, originals)
            if changed:
                out[vm["name"]] = changed
        return out

    def _unprotect(self, plans: dict, results: list[dict], originals: dict) -> None:
        """A base this run made read-only that no VM of the run stands on (each failed, its new overlay rolled
        back) gets its mode back when nothing else stands on it either (a fresh host scan): a failed run leaves
        the files as they were. A base something stands on stays read-only."""
        if self.check_mode:
            return
        standing = {
            d["source"]
            for r in results
            if not r.get("failed")
            for d in plans[r["name"]]["disks"]
            if d["mode"] == "overlay"
        }
        loose = {base: mode for base, mode in originals.items() if base not in standing}
        if not loose:
            return
        scan = HostScan.take(self.conn)
        for base, mode in loose.items():
            if not scan.stands_on(base):
                files.unprotect(base, mode)

    def run(self) -> dict:
        if self.check_mode:
            results, watches = self._act()
        else:
            # every refusal is answered before waiting for the lock, which another task may hold for long;
            # the plan is made again under the lock, from a scan nobody can change under it
            self._plans(HostScan.take(self.conn))
            with HostLock(self.lock_path, self.lock_timeout, self.clock):
                results, watches = self._act()
        # the boots (boot_marker) are waited for together, without the lock: other tasks may plan meanwhile
        late = wait_all(watches, self.clock)
        for r in results:
            if r["name"] in late:
                error = late[r["name"]]
                if self.p["vms"] is None:
                    raise error
                r.update(failed=True, msg=error.message, error=type(error).__name__)
        if self.p["vms"] is None:
            out = results[0]
            out.pop("name")
            return dict(out, vm=out.pop("domain"))
        failed = [r["name"] for r in results if r.get("failed")]
        changed = any(r["changed"] for r in results)
        diffs = [r.pop("diff") for r in results if r.get("diff")]
        out = dict(
            changed=changed,
            vms=results,
            diff=dict(
                before="".join(d["before"] for d in diffs),
                after="".join(d["after"] for d in diffs),
            ),
        )
        if failed:
            raise KvmError(
                f"{len(failed)} of {len(results)} VMs failed: {', '.join(failed)}; the others were made. "
                "Each VM's result is in vms.",
                vms=results,
                changed=changed,
            )
        return out
