# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The batch plan: every clone's action, with the paths, MACs, UUIDs and XML of new ones.

The whole batch is validated against one scan of the host before anything is
touched: names, free disk/NVRAM/XML paths, MACs and UUIDs unused on the host
and in the batch, the directories, the template, and that no running domain
writes to a disk that is about to become a base. So bad input changes nothing.
The plan is a ``model.Plan`` of ``model.Item``s; each item says what to do
with one clone (``create``, ``update``, ``none``, ``remove``, ``remove_xml``).
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import seal, space
from ansible_collections.virtops.kvm.plugins.module_utils._clone.existing import plan_absent, plan_existing, xml_path
from ansible_collections.virtops.kvm.plugins.module_utils._clone.identity import clone_plan
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import CREATE, Item, Plan
from ansible_collections.virtops.kvm.plugins.module_utils._clone.network import Reservations
from ansible_collections.virtops.kvm.plugins.module_utils._clone.seed import (
    attach_cdrom,
    merge_cloud_init,
    seed_documents,
    seed_path,
)
from ansible_collections.virtops.kvm.plugins.module_utils._clone.spec import new_mac, new_uuid
from ansible_collections.virtops.kvm.plugins.module_utils._clone.sysprep import OPERATIONS
from ansible_collections.virtops.kvm.plugins.module_utils._clone.template import load_template
from ansible_collections.virtops.kvm.plugins.module_utils._clone.transform import (
    clone_disk_path,
    clone_format,
    derived_path,
    transform,
)
from ansible_collections.virtops.kvm.plugins.module_utils._drift import Bases, dependents, refusal
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._host.probe import usable_domain_type
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan


def resolve_domain_type(conn, requested: str) -> tuple[str, str]:
    """``kvm``/``qemu`` as asked, or for ``auto`` the host's verdict (the code kvm_host uses)."""
    if requested in ("kvm", "qemu"):
        return requested, "set explicitly"
    return usable_domain_type(conn)


def check_dir(path: str, what: str) -> str:
    """``path`` normalised, if it is an absolute, existing, writable directory."""
    if not os.path.isabs(path):
        raise InvalidInput(f"{what} {path!r} must be an absolute path.")
    if not os.path.isdir(path):
        raise StorageError(f"{what} {path} does not exist or is not a directory.", hint="Create it first.")
    if not os.access(path, os.W_OK | os.X_OK):
        raise StorageError(f"{what} {path} is not writable.", hint="Fix its permissions or choose another one.")
    return os.path.normpath(path)


class Planner:
    """Decides what to do with every clone of the batch, from the options and one host scan."""

    def __init__(
        self,
        params: dict,
        specs: list[dict],
        scan: HostScan,
        conn,
        runner,
        identity_cfg: dict | None = None,
        cloud_init: dict | None = None,
        reclaimed: set[str] | None = None,
    ):
        self.p = params
        self.identity_cfg = identity_cfg or dict(operations=[], files=[], mounts=None, force_tcg="auto")
        self.cloud_init = cloud_init
        self.mode = params["mode"]
        self.specs = specs
        self.scan = scan
        self.conn = conn
        self.runner = runner
        # what new clones may not take: the host's UUIDs and MACs, and the files already planned
        self.used_uuids = scan.uuids()
        self.used_macs = scan.macs()
        self.batch_uuids = set(self.used_uuids) | {s["uuid"] for s in specs if s["uuid"]}
        self.batch_macs = set(self.used_macs) | {m for s in specs for m in s["macs"]}
        self.planned_paths: dict[str, str] = {}
        self.base_prints = Bases()  # each base's identity, read once per run
        # leftovers of interrupted runs that the journal removes (in check mode: would remove) first
        self.reclaimed = reclaimed or set()

    def _taken(self, path: str) -> bool:
        """Whether something is at ``path`` that this run may not overwrite."""
        return os.path.lexists(path) and path not in self.reclaimed

    def plan(self) -> Plan:
        """Validate the whole batch against the host and decide every action; touches nothing."""
        tpl = load_template(
            self.scan, self.runner, self.p["template"], self.p["template_xml"], self.p["template_snapshot"]
        )
        if tpl is None and any(s["state"] != "absent" for s in self.specs):
            raise InvalidInput("template or template_xml is required unless state is absent.")
        wants_create = any(s["state"] != "absent" and s["name"] not in self.scan for s in self.specs)
        dest_dir = self._dest_dir(tpl, wants_create)
        xml_dir = self._xml_dir()
        if self.p["template"] is not None and self.p["template"] in {s["name"] for s in self.specs}:
            raise InvalidInput(f"A clone cannot have the template's name {self.p['template']!r}.")
        domain_type, reason = None, None
        if wants_create:
            domain_type, reason = resolve_domain_type(self.conn, self.p["domain_type"])
        items = []
        for s in self.specs:
            found = self.scan.get(s["name"])
            if s["state"] == "absent":
                items.append(plan_absent(s, found, tpl, xml_dir))
            elif found is not None:
                items.append(plan_existing(s, found, tpl, self.mode, self.p["domain_type"], dest_dir, xml_dir))
            else:
                items.append(self._new(s, tpl, dest_dir, xml_dir, domain_type))
        bases = [d["path"] for d in tpl["disks"]] if tpl is not None and self.mode == "overlay" else []
        creates = [i for i in items if i.action == CREATE]
        if bases and creates:
            self._refuse_busy_bases(bases)
        drifted = self._drifted(items, bases)
        # the whole batch must fit before anything is created (refused here in check mode too)
        room = space.check_space([i.files_view() for i in creates], self.runner)
        reservations = Reservations(self.conn, self.p, self.scan)
        reservations.plan(items, tpl)
        return Plan(
            template=tpl,
            items=items,
            bases=bases,
            dest_dir=dest_dir,
            xml_dir=xml_dir,
            domain_type_reason=reason,
            reservations=reservations,
            drifted=drifted,
            base_prints=self.base_prints,
            space=room,
        )

    def _drifted(self, items: list[Item], bases: list[str]) -> list[dict]:
        """The domains on this template's bases whose base changed since their overlay was made.

        Refused (nothing created) when this run would add overlays, unless
        ``accept_base_change``; otherwise returned so the run can warn, or
        re-record them when accepted.
        """
        if not bases:
            return []
        real = {os.path.realpath(b) for b in bases}
        out = []
        for d in self.scan.domains.values():
            found = self.base_prints.drifts(d.inactive, only=real)
            if found:
                out.append(dict(name=d.name, dom=d.dom, root=d.inactive, drifts=found))
        if out and not self.p.get("accept_base_change") and any(i.action == CREATE for i in items):
            drifts = [x for o in out for x in o["drifts"]]
            drifts = list({(x["base"], tuple(x["changes"])): x for x in drifts}.values())
            deps = sorted({n for b in bases for n in dependents(self.scan.domains.values(), b)})
            raise refusal("Refusing to add overlays", drifts, deps)
        return out

    def _dest_dir(self, tpl: dict | None, wants_create: bool) -> str | None:
        """The checked dest_dir (by default the folder of the template's first disk)."""
        dest_dir = self.p["dest_dir"]
        if tpl is not None and dest_dir is None:
            dest_dir = os.path.dirname(tpl["disks"][0]["path"]) if tpl["disks"] else None
        seeds = self.cloud_init is not None or any(s.get("cloud_init") is not None for s in self.specs)
        if wants_create and (tpl["disks"] or seeds):
            if dest_dir is None:
                raise InvalidInput("dest_dir is required.")
            return check_dir(dest_dir, "dest_dir")
        return os.path.normpath(dest_dir) if dest_dir is not None else None

    def _xml_dir(self) -> str | None:
        """The checked xml_dir; a batch that only removes does not need it to exist.

        Writing XML files needs an existing, writable directory. When every
        clone is absent, a missing xml_dir just means there is no XML file
        there to remove.
        """
        xml_dir = self.p["xml_dir"]
        if not xml_dir:
            return None
        removal_only = all(s["state"] == "absent" for s in self.specs)
        if removal_only and os.path.isabs(xml_dir) and not os.path.lexists(xml_dir):
            return None
        return check_dir(xml_dir, "xml_dir")

    def _new(self, s: dict, tpl: dict, dest_dir: str, xml_dir: str | None, domain_type: str | None) -> Item:
        """A new clone: every path must be free, every explicit MAC/UUID unused."""
        name = s["name"]
        if s["uuid"] and s["uuid"] in self.used_uuids:
            raise Conflict(
                f"UUID {s['uuid']} of clone {name!r} is already used by domain {self.used_uuids[s['uuid']]!r}."
            )
        for m in s["macs"]:
            if m in self.used_macs:
                raise Conflict(f"MAC {m} of clone {name!r} is already used by domain {self.used_macs[m]!r}.")
        n_ifaces = len(tpl["root"].findall("devices/interface"))
        if len(s["macs"]) > n_ifaces:
            raise InvalidInput(
                f"Clone {name!r} lists {len(s['macs'])} MAC(s) but the template has {n_ifaces} interface(s)."
            )
        disks, disk_map, created = [], {}, []
        for i, d in enumerate(tpl["disks"]):
            disk = self._new_disk(name, i, d, dest_dir)
            disks.append(disk)
            disk_map[d["path"]] = dict(path=disk["path"], format=disk["format"])
            created.append(
                dict(
                    path=disk["path"],
                    base=d["path"],
                    mode=self.mode,
                    format=disk["format"],
                    base_fingerprint=self.base_prints.now(d["path"]) if self.mode == "overlay" else None,
                )
            )
        nvram_path, nvram_src = None, None
        if tpl["nvram"]:
            nvram_path = derived_path(tpl["nvram"], tpl["name"], name)
            if os.path.exists(tpl["nvram"]):
                nvram_src = tpl["nvram"]
                if self._taken(nvram_path):
                    raise Conflict(f"NVRAM file {nvram_path} for clone {name!r} already exists.")
                created.append(dict(path=nvram_path, base=nvram_src, mode="nvram"))
        path = xml_path(xml_dir, name)
        if path and self._taken(path):
            raise Conflict(
                f"XML file {path} for clone {name!r} already exists and is not overwritten.",
                hint="Remove it or choose another xml_dir.",
            )
        if path:
            # recorded so that a later state=absent finds it even without xml_dir
            created.append(dict(path=path, mode="xml"))
        uuid = s["uuid"] or new_uuid(self.batch_uuids)
        seed_cfg = merge_cloud_init(self.cloud_init, s.get("cloud_init"))
        hostname = s.get("hostname") or name
        seed_file = self._seed_path(name, dest_dir) if seed_cfg is not None else None
        if seed_file:
            created.append(dict(path=seed_file, mode="seed", format="raw"))
        macs = list(s["macs"]) + [new_mac(self.batch_macs) for _i in range(n_ifaces - len(s["macs"]))]
        root = transform(
            tpl["root"],
            name=name,
            uuid=uuid,
            macs=macs,
            disk_map=disk_map,
            domain_type=domain_type,
            template_name=tpl["name"],
            mode=self.mode,
            created=created,
            nvram_path=nvram_path,
            memory_mib=s["memory"],
            vcpus=s["vcpus"],
            network=self.p.get("network"),
        )
        if seed_file:
            attach_cdrom(root, seed_file)
        identity = clone_plan(s, self._identity_cfg(tpl)) if disks else None
        source = "offline-reset" if identity else ("sealed-template" if self._sealed(tpl) else "none")
        root.find(f"metadata/{{{dx.NS}}}clone").set("identity-source", source)
        return Item(
            action=CREATE,
            spec=s,
            name=name,
            uuid=uuid,
            macs=macs,
            disks=disks,
            nvram=(nvram_src, nvram_path) if nvram_src else None,
            xml=dx.tostring(root),
            xml_path=path,
            identity=identity,
            identity_source=source,
            seed=dict(path=seed_file, documents=seed_documents(name, uuid, hostname, seed_cfg)) if seed_file else None,
        )

    def _sealed(self, tpl: dict) -> bool:
        """Whether the template is sealed (kvm_template) and unchanged since: read once per run."""
        if "sealed" not in tpl:
            tpl["sealed"] = seal.sealed(tpl["root"], [d["path"] for d in tpl["disks"]])
        return tpl["sealed"]

    def _identity_cfg(self, tpl: dict) -> dict:
        """The identity option with its default resolved: no operations for a sealed template, all for another."""
        cfg = self.identity_cfg
        if cfg["operations"] is not None:
            return cfg
        return dict(cfg, operations=[] if self._sealed(tpl) else list(OPERATIONS))

    def _seed_path(self, name: str, dest_dir: str | None) -> str:
        """A free path for the clone's cloud-init seed, beside its disk (in dest_dir)."""
        if dest_dir is None:
            raise InvalidInput(
                f"Clone {name!r} has a cloud_init seed but no directory to put it in.", hint="Set dest_dir."
            )
        path = seed_path(dest_dir, name)
        if path in self.planned_paths:
            raise InvalidInput(f"Clones {self.planned_paths[path]!r} and {name!r} would both use seed file {path}.")
        self.planned_paths[path] = name
        if self._taken(path):
            raise Conflict(
                f"Seed file {path} for clone {name!r} already exists; it was not created by virtops.kvm for this "
                "clone and is not overwritten.",
                hint="Remove or move the file, or choose another clone name or dest_dir.",
            )
        return path

    def _new_disk(self, name: str, index: int, d: dict, dest_dir: str) -> dict:
        """The overlay or copy of template disk ``d`` for new clone ``name``, at a free path."""
        path = clone_disk_path(dest_dir, name, index, d, self.mode)
        if path in self.planned_paths:
            raise InvalidInput(f"Clones {self.planned_paths[path]!r} and {name!r} would both use disk file {path}.")
        self.planned_paths[path] = name
        if os.path.realpath(path) == os.path.realpath(d["path"]):
            raise Conflict(f"The disk of clone {name!r} would be the template's own disk {path}.")
        if self._taken(path):
            raise Conflict(
                f"Disk file {path} for clone {name!r} already exists; it was not created by "
                "virtops.kvm for this clone and is not overwritten.",
                hint="Remove or move the file, or choose another clone name or dest_dir.",
            )
        overlay = self.mode == "overlay"
        return dict(
            target=d["target"],
            path=path,
            format=clone_format(self.mode, d["format"]),
            backing_file=d["path"] if overlay else None,
            backing_format=d["format"] if overlay else None,
            mode=self.mode,
            source=d["path"],
            source_format=d["format"],
        )

    def _refuse_busy_bases(self, bases: list[str]) -> None:
        """No overlay on a file a running domain writes to: an overlay's base must never change."""
        for base, users in self.scan.users(bases).items():
            busy = [u["domain"] for u in users if u["active"] and u["writable"]]
            if busy:
                raise StorageError(
                    f"Refusing overlays on {base}: running domain(s) {', '.join(sorted(busy))} write to it.",
                    hint="Shut them down first; an overlay's base must never change.",
                )
