# Private to the virtops.kvm collection: not a public API, may change without notice.
"""VmRun: one VM brought to its description: files made, XML defined, state and live changes, its result.

The steps, each noted as a change in check mode as in a real run (before
them, the manager has made each overlay's base read-only, once per base):

1. the files the plan says to make (disks, then the cloud-init seed), the
   seed rewritten when its documents differ;
2. the domain XML built from the options (build.py) and handed to
   kvm_domain's ``DomainRun``: the same semantic compare (a rerun defines
   nothing), autostart, the state transitions and their waits;
3. on a VM that was running and stays up, what the new config changes that
   the guest can take live (live.py: memory, vCPUs, hot-plugged disks and
   NICs); the rest is reported in ``pending_restart``, never restarted;
4. the files made for it that the task no longer lists: deleted with
   ``remove_detached``, else kept and still recorded.

A new VM whose files, define or start fail is rolled back: its domain is
undefined and the files this run made are deleted (never an image), and the
error is raised. ``state: absent``
removes the domain (DomainRun, NVRAM included) and the files its provenance
says it made, refusing first if another disk or domain stands on one.
"""

from __future__ import annotations

import os
import uuid as uuidlib

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _xml_compare as xc
from ansible_collections.virtops.kvm.plugins.module_utils._clone import seed as sd
from ansible_collections.virtops.kvm.plugins.module_utils._domain.converge import DomainRun
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmError, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._vm import build, files, live

# kvm_domain's options that kvm_vm does not expose, as kvm_vm always wants them
_DOMAIN_FIXED = dict(
    xml=None,
    domain_type=None,
    memory=None,
    vcpus=None,
    title=None,
    description=None,
    allow_base_start=False,
    accept_base_change=False,
)


class VmRun:
    """One VM (its checked options ``vm`` and its plan) over the manager's connection; ``run()`` -> result."""

    def __init__(self, manager, vm: dict, plan: dict):
        self.m = manager
        self.vm = vm
        self.plan = plan
        self.check_mode = manager.check_mode
        self.changes: list[str] = []
        self.made: list[str] = []
        # files this module made for the VM that the plan no longer names: kept (still recorded) or to delete
        self.kept: list[dict] = []
        self.dropped: list[str] = []
        #: the wait for boot_marker after this run started the VM (None: nothing to wait for)
        self.boot_watch = None

    def _domain_params(self, state: str, remove_storage: str = "none") -> dict:
        p = dict(_DOMAIN_FIXED, name=self.vm["name"], state=state, autostart=self.vm["autostart"])
        p.update(
            remove_storage=remove_storage,
            shutdown_timeout=self.m.p["shutdown_timeout"],
            force=self.m.p["force"],
            boot_marker=self.m.p["boot_marker"],
            boot_timeout=self.m.p["boot_timeout"],
        )
        return p

    def _domain_run(self, p: dict, root) -> DomainRun:
        return self.m.domain_run(p, self.vm["name"], root)

    # ------------------------------------------------------------------ files

    def _make_files(self) -> None:
        name = self.vm["name"]
        for d in self.plan["disks"]:
            if not d["create"]:
                continue
            what = f"{d['mode']} of {d['source']}" if d["source"] else f"blank {d['format']}"
            self.changes.append(f"create disk {d['target']} ({what}): {d['path']}")
            if not self.check_mode:
                files.make(self.m.runner, name, d)
                self.made.append(d["path"])
        seed = self.plan["seed"]
        if seed is None:
            return
        documents = sd.seed_documents(name, self.plan["uuid"], name, self.vm["cloud_init"])
        if os.path.exists(seed):
            if sd.read_seed(seed)[1] == documents:
                return
            self.m.scan().guard([seed], f"rewrite the cloud-init seed of VM {name}", domain=name)
            self.changes.append(f"rewrite cloud-init seed: {seed}")
        else:
            self.changes.append(f"create cloud-init seed: {seed}")
        if not self.check_mode:
            existed = os.path.exists(seed)
            sd.build_seed(self.m.runner, self.m.which, seed, documents, replace=existed)
            if not existed:
                self.made.append(seed)

    def _rollback(self) -> list[str]:
        """Undo what this run made for a new VM that failed (its domain, then its files); what was left."""
        left = []
        lv = _deps.libvirt
        try:
            dom = None if self.check_mode else self.m.lookup(self.vm["name"])
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                try:
                    dom.undefineFlags(lv.VIR_DOMAIN_UNDEFINE_NVRAM | lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
                except lv.libvirtError:
                    dom.undefine()
        except lv.libvirtError:
            left.append(f"domain {self.vm['name']}")
        for path in reversed(self.made):
            try:
                st.unlink(path)
            except StorageError:
                left.append(path)
        return left

    # ------------------------------------------------------------------ the domain

    def _root(self):
        created = [c for c in (files.record(d) for d in self.plan["disks"]) if c is not None]
        if self.plan["seed"]:
            created.append(dict(path=self.plan["seed"], mode="seed", format="raw"))
        created.extend(self.kept)
        return build.domain_xml(
            self.vm,
            self.plan["disks"],
            self.plan["os"],
            self.plan["domain_type"],
            self.plan["uuid"] if self.plan["new"] else None,
            self.plan["seed"],
            created,
        )

    def _live(self, dom, root, before, result: dict) -> None:
        """Live changes on a VM that was running (``before``: its config then) and still is; pending_restart."""
        if dom is None or before is None or self.vm["state"] not in ("present", "running"):
            return
        lv = _deps.libvirt
        inactive = dx.parse(dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE))
        # in check mode: the config a define of ``root`` would leave (the same compare DomainRun made)
        wanted = xc.predict(root, inactive) if self.check_mode else inactive
        current = dx.parse(dom.XMLDesc(0))
        steps = live.plan_live(wanted, current)
        # the balloon is a request the guest may not follow (no driver): the live memory is asked for when the
        # config's changes, not whenever the guest holds another amount, or a rerun would ask again forever
        if before is not None and dx.current_memory_mib(before) == dx.current_memory_mib(wanted):
            steps.steps = [s for s in steps.steps if s["kind"] != "memory"]
        for step in steps.steps:
            self.changes.append(step["what"])
        if self.check_mode:
            result["pending_restart"] = bool(steps.pending)
            return
        live.apply_live(dom, steps, clock=self.m.clock)
        after = dx.parse(dom.XMLDesc(0))
        # what is left after the steps, by the same rules check mode used (restart_differences alone misses
        # an online vCPU count the guest cannot lower live)
        result["pending_restart"] = bool(live.plan_live(wanted, after).pending)

    def run(self) -> dict:
        name = self.vm["name"]
        if self.vm["state"] == "absent":
            return self._absent()
        scanned = self.m.scan().get(name)
        before = scanned.inactive if scanned is not None and scanned.active else None
        self._sort_detached(scanned)
        try:
            self._make_files()
            files.fingerprint_bases(self.plan["disks"])
            root = self._root()
            domain_run = self._domain_run(self._domain_params(self.vm["state"]), root)
            result = domain_run.run()
            self.boot_watch = domain_run.boot_watch  # waited for by the manager, after the host lock
        except (KvmError, OSError):
            if self.plan["new"]:
                left = self._rollback()
                if left:
                    self.m.warn(f"VM {name}: could not delete {', '.join(left)} after the failure.")
            raise
        self.changes.extend(result["changes"])
        dom = None if self.check_mode and self.plan["new"] else self.m.lookup(name)
        self._live(dom, root, before, result)
        self._remove_detached()
        return self._result(result)

    def _sort_detached(self, scanned) -> None:
        """The files made for this VM that the plan no longer names (a dropped disk, the seed of a dropped
        cloud_init): deleted with remove_detached when nothing else uses them, else kept and still recorded, so a
        later run can take one back and state=absent still deletes it."""
        if scanned is None:
            return
        named = {os.path.realpath(d["path"]) for d in self.plan["disks"]}
        if self.plan["seed"]:
            named.add(os.path.realpath(self.plan["seed"]))
        prov = dx.provenance(scanned.inactive) or {}
        left = [
            c
            for c in prov.get("created_disks", [])
            if c.get("path") and os.path.realpath(c["path"]) not in named and os.path.exists(c["path"])
        ]
        held = self.m.scan().held([c["path"] for c in left], self.vm["name"]) if self.vm["remove_detached"] else set()
        for c in left:
            if self.vm["remove_detached"] and c["path"] not in held:
                self.dropped.append(c["path"])
            else:
                if c["path"] in held:
                    self.m.warn(f"VM {self.vm['name']}: the detached file {c['path']} is used elsewhere; it was kept.")
                self.kept.append(c)

    def _remove_detached(self) -> None:
        """Delete the dropped files (after the live detach: the guest no longer has them)."""
        for path in self.dropped:
            self.changes.append(f"delete detached file {path}")
            if not self.check_mode:
                st.unlink(path)

    def _absent(self) -> dict:
        """Undefine (DomainRun: its attached disks made here, NVRAM) and every other file recorded as made here."""
        name = self.vm["name"]
        scanned = self.m.scan().get(name)
        recorded: list[str] = []
        if scanned is not None:
            prov = dx.provenance(scanned.inactive) or {}
            recorded = [c["path"] for c in prov.get("created_disks", []) if c.get("path") and os.path.exists(c["path"])]
            held = self.m.scan().held(recorded, name)
            if held:
                raise StorageError(
                    f"Refusing to remove VM {name}, nothing was changed: something else uses or stands on "
                    f"{', '.join(sorted(held))}.",
                    hint="Remove what depends on these files first (kvm_domain_info shows who uses them).",
                )
        result = self._domain_run(self._domain_params("absent", "overlays"), None).run()
        self.changes.extend(result["changes"])
        removed = list(result["removed_files"])
        for path in recorded:
            if path in removed or not os.path.exists(path):
                continue
            removed.append(path)
            if not self.check_mode:
                st.unlink(path)
        result["removed_files"] = removed
        return self._result(result)

    def _result(self, result: dict) -> dict:
        info = result.get("domain")
        return dict(
            name=self.vm["name"],
            changed=bool(self.changes),
            changes=self.changes,
            pending_restart=bool(result.get("pending_restart")),
            removed_files=result.get("removed_files", []),
            console_log=build.console_log(self.vm) if self.vm["state"] != "absent" else None,
            disks=[
                dict(target=d["target"], path=d["path"], mode=d["mode"], format=d["format"], image=d["image"])
                for d in self.plan.get("disks", [])
            ],
            seed=self.plan.get("seed"),
            os_variant=(self.plan.get("os") or {}).get("short_id"),
            domain=info,
            diff=result.get("diff"),
        )


def new_uuid() -> str:
    return str(uuidlib.uuid4())
