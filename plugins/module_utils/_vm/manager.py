# Private to the virtops.kvm collection: not a public API, may change without notice.
"""VmManager, kvm_vm's work: one VM (``name``) or a batch (``vms``), planned from one scan, then made.

Three passes, so a bad item changes nothing and a batch costs about one VM's time:

1. every VM's options are checked without libvirt (spec.py), its OS looked up
   in the osinfo database; a name given twice refuses the batch;
2. under the host lock kvm_clone takes (no lock in check mode), one
   ``HostScan`` plans every VM: where its files go, what exists, every
   refusal (files.py), and no file claimed twice across the batch;
3. the VMs run (converge.py), up to ``parallel`` at once; a VM that fails
   fails alone, and the task then fails naming it, with every VM's result.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone.lock import HostLock
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import seed_path
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
        boot_marker=dict(type="str"),
        boot_timeout=dict(type="int", default=180),
    )
    MODULE_OPTIONS = dict(required_one_of=[("name", "vms")], mutually_exclusive=[("name", "vms")])

    #: clock: the waits' time source; lock_path/lock_timeout: the host lock; osinfo_dirs: the osinfo database
    SEAMS = dict(clock=SYSTEM, lock_path=None, lock_timeout=900, osinfo_dirs=None)

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
            self.connection, p, name, root, self.check_mode, scan=self.scan, warn=self.warn, clock=self.clock
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
        dirs = {
            i: os.path.dirname(d["path"]) if d["path"] else files.pool_dir(self.conn, d["pool"] or vm["pool"], pools)
            for i, d in enumerate(disks)
        }
        existing = scanned.inactive if scanned is not None else None
        planned = files.plan_disks(vm, disks, dirs, existing, scan)
        seed = None
        if vm["cloud_init"] is not None:
            made = [os.path.dirname(d["path"]) for d in planned if d["mode"] != "as_is"]
            seed = seed_path(made[0] if made else files.pool_dir(self.conn, vm["pool"], pools), name)
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

    def _one(self, vm: dict, plan: dict) -> dict:
        try:
            return VmRun(self, vm, plan).run()
        except KvmError as exc:
            return dict(name=vm["name"], failed=True, msg=exc.message, error=type(exc).__name__, changed=False)

    def _act(self) -> list[dict]:
        self._scan = HostScan.take(self.conn)
        plans = self._plans(self._scan)
        if len(self.vms) == 1:
            results = [VmRun(self, self.vms[0], plans[self.vms[0]["name"]]).run()]
        else:
            workers = max(1, min(self.p["parallel"], len(self.vms)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(self._one, v, plans[v["name"]]) for v in self.vms]
                results = [f.result() for f in futures]
        self._protect(plans, results)
        return results

    def _protect(self, plans: dict, results: list[dict]) -> None:
        """chmod a-w each base an overlay of a VM that did not fail stands on, once, after the whole batch.

        The change is reported by the first such VM in the list's order, in check mode as in a real run (VMs
        made concurrently would otherwise each see the base writable in check mode, only one in a real run).
        """
        done: set = set()
        for r in results:
            if r.get("failed"):
                continue
            disks = [d for d in plans[r["name"]]["disks"] if d["mode"] != "overlay" or d["source"] not in done]
            done.update(d["source"] for d in disks if d["mode"] == "overlay")
            for base in files.protect(disks, self.check_mode):
                r["changes"].append(f"protect base {base} (read-only: overlays stand on it)")
                r["changed"] = True

    def run(self) -> dict:
        if self.check_mode:
            results = self._act()
        else:
            with HostLock(self.lock_path, self.lock_timeout, self.clock):
                results = self._act()
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
