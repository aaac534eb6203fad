# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Every new clone boots as itself: the ``identity`` option, each clone's plan, and the batch's one appliance.

A clone of a template is a byte-for-byte copy of its identity: hostname,
machine-id, SSH host keys, leases. kvm_clone resets them offline, before the
first boot, on the disks it has just created for the NEW clones of the run
(never a base, never a clone that existed, never a running domain): every
such disk is a drive of ONE read-write libguestfs appliance, and each clone
is mounted and changed in turn (sysprep.py has the operations). A launch
costs ~20 s under software emulation; a clone more costs a mount. The
clones share their template's layout, found once (layout.py) instead of by
OS inspection of every disk.

A batch whose first clone has no root filesystem this recognises fails with
a hint to give ``mounts``; a clone that cannot be mounted fails alone; an appliance that does not launch fails every
clone that needed it. Check mode plans and never launches.
"""

from __future__ import annotations

import os

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils import _validate as vd
from ansible_collections.virtops.kvm.plugins.module_utils._clone.layout import find_layout
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import Item
from ansible_collections.virtops.kvm.plugins.module_utils._clone.sysprep import OPERATIONS, run_operations
from ansible_collections.virtops.kvm.plugins.module_utils._errors import GuestfsError, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.devices import (
    MAX_DRIVES as APPLIANCE_DRIVES,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.devices import by_launch, parts_of
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import check_mounts
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.guest import OwnerError
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.session import GuestfsSession, runtime_message

CONFIG_KEYS = ("operations", "files", "mounts", "force_tcg")
FILE_KEYS = ("path", "content", "mode", "owner")


def check_config(value) -> dict:
    """The ``identity`` option, completed and checked: ``{operations, files, mounts, force_tcg}``."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise InvalidInput("identity must be a dict (operations, files, mounts, force_tcg).")
    unknown = sorted(k for k in value if k not in CONFIG_KEYS)
    if unknown:
        raise InvalidInput(
            f"identity has unknown key(s) {', '.join(unknown)}.", hint=f"Allowed: {', '.join(CONFIG_KEYS)}."
        )
    ops = value.get("operations")  # None: the default, decided per template (sealed or not) by the plan
    if ops is not None and not isinstance(ops, list):
        raise InvalidInput("identity.operations must be a list of operation names.")
    bad = [o for o in ops or [] if o not in OPERATIONS]
    if bad:
        raise InvalidInput(
            f"identity.operations has unknown operation(s) {', '.join(map(str, bad))}.",
            hint=f"Known: {', '.join(OPERATIONS)} (an empty list turns the reset off).",
        )
    force_tcg = value.get("force_tcg") or "auto"
    if force_tcg not in ("auto", "yes", "no"):
        raise InvalidInput("identity.force_tcg must be auto, yes or no.")
    return dict(
        operations=None if ops is None else list(dict.fromkeys(ops)),
        files=check_files(value.get("files"), "identity.files"),
        mounts=check_mounts(value.get("mounts")),
        force_tcg=force_tcg,
    )


def check_files(files, where: str) -> list[dict]:
    """``[{path, content, mode, owner}]``: absolute clean paths, octal modes, ``user[:group]`` owners."""
    if files is None:
        return []
    if not isinstance(files, list):
        raise InvalidInput(f"{where} must be a list of dicts with path and content.")
    out, seen = [], set()
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise InvalidInput(f"{where}[{i}] must be a dict with path and content.")
        unknown = sorted(k for k in f if k not in FILE_KEYS)
        if unknown:
            raise InvalidInput(
                f"{where}[{i}] has unknown key(s) {', '.join(unknown)}.", hint="Allowed: path, content, mode, owner."
            )
        path = vd.guest_path(f.get("path"), f"{where}[{i}].path")
        if path in seen:
            raise InvalidInput(f"{where} writes {path} twice.")
        seen.add(path)
        content = f.get("content", "")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidInput(f"{where}[{i}].content must be a string (the file's text).")
        out.append(
            dict(
                path=path,
                content=content,
                mode=vd.octal_mode(f.get("mode"), f"{where}[{i}].mode"),
                owner=vd.guest_owner(f.get("owner"), f"{where}[{i}].owner"),
            )
        )
    return out


def clone_plan(spec: dict, cfg: dict) -> dict | None:
    """What the reset does to one new clone: ``{operations, files, hostname}``, or None for nothing.

    The clone's own ``files`` replace the task's for the same path; its
    ``hostname`` (default: its name) must be a valid host name.
    """
    by_path = {f["path"]: f for f in cfg["files"]}
    by_path.update((f["path"], f) for f in spec.get("files") or [])
    files = list(by_path.values())
    ops = list(OPERATIONS) if cfg["operations"] is None else cfg["operations"]  # None: an unsealed template's
    if not ops and not files:
        return None
    name = spec.get("hostname") or spec["name"]
    if "hostname" in ops and not vd.is_hostname(name):
        if spec.get("hostname"):
            vd.hostname(name, f"hostname of clone {spec['name']!r}")
        raise vd.refuse(
            f"The name of clone {spec['name']!r} (its hostname, as none is given)",
            name,
            "the identity reset's hostname operation needs an RFC 1123 host name (letters, digits and '-', "
            "in labels joined by dots)",
            hint="Give the clone a hostname option, or leave hostname out of identity.operations.",
        )
    return dict(operations=list(ops), files=files, hostname=name)


#: drives of one appliance (devices.MAX_DRIVES; a name here so that a test can lower it)
MAX_DRIVES = APPLIANCE_DRIVES


def chunks(items: list[Item], limit: int | None = None) -> list[list[Item]]:
    """``items`` in order, cut so that no appliance gets more than ``limit`` drives (a clone is never split)."""
    return by_launch(items, lambda item: len(item.disks), limit or MAX_DRIVES)


def reset_batch(items: list[Item], cfg: dict, force_tcg: bool, handle_factory=None) -> tuple[dict, list[str]]:
    """Reset every item's identity in one appliance: (name -> ``{ok, report | error}``, warnings).

    ``items`` are new clones whose disk files exist and that no domain uses
    yet (each with ``identity`` from ``clone_plan`` and its ``disks``).
    """
    groups = [(i.name, [dict(path=d["path"], format=d["format"]) for d in i.disks]) for i in items]
    parts = parts_of(groups)
    drives = [d for _n, ds in groups for d in ds]
    # two vCPUs: under software emulation the appliance's start with many drives is ~25% faster
    smp = min(2, os.cpu_count() or 1)
    session = GuestfsSession(drives, force_tcg=force_tcg, handle_factory=handle_factory, writable=True, smp=smp)
    out: dict[str, dict] = {}
    try:
        try:
            session.launch()
        except GuestfsError as exc:
            why = f"identity reset: {exc.message}"
            return {i.name: dict(ok=False, error=why) for i in items}, session.warnings
        mounts = cfg["mounts"]
        if mounts is None:  # one layout for the batch: inspection of every disk costs ~8 s each under TCG
            try:
                mounts = find_layout(session.g, parts[0])
            except GuestfsError as exc:
                return {i.name: dict(ok=False, error=f"identity reset: {exc.message}") for i in items}, []
            except RuntimeError as exc:
                why = f"identity reset: reading the first clone's filesystems failed: {runtime_message(exc)}"
                return {i.name: dict(ok=False, error=why) for i in items}, []
        for part, item in zip(parts, items):
            where = "identity.mounts" if cfg["mounts"] else "the layout found on the batch's first clone"
            out[item.name] = _reset_one(session, part, item, mounts, where)
        try:
            session.g.sync()
        except RuntimeError as exc:  # the writes may not have reached the disks
            why = f"identity reset: syncing the clone disks failed: {runtime_message(exc)}"
            out = {n: (dict(ok=False, error=why) if o["ok"] else o) for n, o in out.items()}
    finally:
        session.close()
    return out, session.warnings


def _reset_one(session: GuestfsSession, part, item: Item, mounts: dict, where: str) -> dict:
    plan = item.identity
    try:
        session.mount(mounts, part=part, where=where)
        report = run_operations(session.g, plan["operations"], plan["hostname"], plan["files"])
        root = next(dev for dev, mp in mounts.items() if mp == "/") if "/" in mounts.values() else None
        report.update(hostname=plan["hostname"], root=part.own(root) if root else None)
        return dict(ok=True, report=report)
    except GuestfsError as exc:
        hint = "" if where == "identity.mounts" else " Give identity.mounts if this clone's disks differ."
        return dict(ok=False, error=f"identity reset: {exc.message}{hint}")
    except OwnerError as exc:
        return dict(ok=False, error=f"identity reset: {exc}")
    except RuntimeError as exc:
        return dict(ok=False, error=f"identity reset of {item.name}: {runtime_message(exc)}")
    finally:
        try:
            session.unmount_all()
        except GuestfsError:
            pass


def record(root, report: dict) -> None:
    """Write the reset's report into the clone's provenance (reruns read it instead of redoing it)."""
    dx.set_identity(root, report)
