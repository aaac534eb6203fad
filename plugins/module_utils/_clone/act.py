# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Carrying out a plan, phase by phase: remove, make files, define, update, protect the bases.

Runs under the host lock, never in check mode (``preview_removals`` is the
check-mode twin of ``remove_all``). Each phase returns an ``Outcome`` per clone
rather than raising, so one failed clone does not stop the others: a clone
whose create fails is rolled back (its domain undefined, every file it made
deleted) and the manager reports it at the end. The manager runs the phases
in order (the identity reset, reset.py, between making files and defining).
"""

from __future__ import annotations

import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils._clone import seed, space
from ansible_collections.virtops.kvm.plugins.module_utils._clone.journal import Journal
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import (
    KEPT,
    PARTLY_ROLLED_BACK,
    REMOVE,
    REMOVE_XML,
    ROLLED_BACK,
    Item,
    Outcome,
    Plan,
    failed,
)
from ansible_collections.virtops.kvm.plugins.module_utils._connection import connection_lost
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmError, LibvirtFailed
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan


def write_intents(journal: Journal, items: list[Item]) -> None:
    """Write each new clone's intent down before its first file exists, so a rerun can tell them ours."""
    for item in items:
        journal.write("create", item.name, item.uuid, planned_files(item))


def close_intents(journal: Journal, items: list[Item], outcomes: dict[str, Outcome]) -> None:
    """Drop the intents of the clones defined or rolled back completely: nothing is left to finish."""
    for item in items:
        if not outcomes[item.name].intent_open:
            journal.done(item.name)


def planned_files(item: Item) -> list[str]:
    """Every file a new clone's creation may leave: disks, NVRAM, seed, XML file."""
    files = [d["path"] for d in item.disks]
    if item.nvram:
        files.append(item.nvram[1])
    if item.seed:
        files.append(item.seed["path"])
    if item.xml_path:
        files.append(item.xml_path)
    return files


def make_all(runner, which, items: list[Item], parallel: int) -> tuple[dict[str, list[str]], dict[str, Outcome]]:
    """Make the new clones' files in up to ``parallel`` threads: (name -> files made, name -> outcome of the failed).

    A clone whose files could not all be made is rolled back here; the others
    go on to the identity reset and the define phase with their files.
    """
    if not items:
        return {}, {}
    with ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
        futures = {item.name: pool.submit(make_files, runner, which, item) for item in items}
        made = {name: future.result() for name, future in futures.items()}
    failures = {}
    for item in items:
        files, error, partial = made[item.name]
        if error is not None:
            failures[item.name] = undo(error, None, files, partial)
    return {name: m[0] for name, m in made.items()}, failures


def make_files(runner, which, item: Item) -> tuple[list[str], str | None, bool]:
    """The clone's disks, NVRAM and cloud-init seed: (files made, error or None, a partial file left behind)."""
    made: list[str] = []
    try:
        for d in item.disks:
            space.make_disk(runner, item.name, d)  # leaves nothing on failure, or says so; explains ENOSPC
            made.append(d["path"])
        if item.nvram:
            src, dst = item.nvram
            made.append(dst)
            shutil.copyfile(src, dst)
        if item.seed:
            seed.build_seed(runner, which, item.seed["path"], item.seed["documents"])
            made.append(item.seed["path"])
    except (KvmError, OSError) as exc:
        partial = isinstance(exc, KvmError) and bool(exc.details.get("partial_file"))
        return made, space.explain_failure(_message(exc), item.files_view()), partial
    return made, None, False


def define_all(conn, items: list[Item], made: dict[str, list[str]], parallel: int) -> dict[str, Outcome]:
    """Define the clones whose files are ready (and identity reset), in up to ``parallel`` threads."""
    if not items:
        return {}
    with ThreadPoolExecutor(max_workers=min(parallel, len(items))) as pool:
        futures = {i.name: pool.submit(define_one, conn, i, made[i.name]) for i in items}
        return {name: future.result() for name, future in futures.items()}


def define_one(conn, item: Item, made: list[str]) -> Outcome:
    """Define, autostart, start, write the XML file; on any failure undo all of it (and the files made)."""
    lv = _deps.libvirt
    made = list(made)
    dom = None
    try:
        try:
            dom = conn.defineXML(item.xml)
            if item.spec["autostart"]:
                dom.setAutostart(1)
            if item.spec["state"] == "running":
                dom.create()
            xml_text = dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE) if item.xml_path else None
        except lv.libvirtError as exc:
            lost = connection_lost(exc, f"Defining clone {item.name}")
            if lost is not None:
                # whether the daemon defined it is unknown: nothing is undone, the journal decides next run
                return Outcome(
                    ok=False,
                    changed=False,
                    error=f"{lost.message} Its files are kept; the next run finishes the clone or removes them.",
                    rolled_back=KEPT,
                    files_kept=True,
                )
            raise LibvirtFailed(f"{exc.get_error_message() or exc}") from exc
        if item.xml_path:
            made.append(item.xml_path)
            _write_new(item.xml_path, xml_text)
        return Outcome(ok=True, changed=True)
    except (KvmError, OSError) as exc:
        return undo(_message(exc), dom, made)


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, KvmError) else f"{exc.strerror or exc} ({exc.filename or ''})"


def undo(error: str, dom, files: list[str], partial: bool = False) -> Outcome:
    """A failed new clone, rolled back: ``dom`` (if defined) and ``files`` removed, what was not said.

    ``partial``: the error already says a file is left (space.make_disk could not delete it).
    """
    status, note = rollback(dom, files)
    if partial and status == ROLLED_BACK:
        status = PARTLY_ROLLED_BACK
    return Outcome(
        ok=False,
        changed=False,
        error=error + (f" (rollback: {note})" if note else ""),
        rolled_back=status,
        files_kept=status == KEPT,
    )


def rollback(dom, files: list[str]) -> tuple[str, str]:
    """Destroy and undefine ``dom`` (if defined), delete ``files``: (how far, what could not be undone or '')."""
    lv = _deps.libvirt
    problems = []
    if dom is not None:
        try:
            if dom.isActive():
                dom.destroy()
            _undefine(dom)
        except lv.libvirtError as exc:
            # never a domain without its disks: the files stay, with the intent, for the next run
            return KEPT, f"undefine failed ({exc.get_error_message()}); its files are kept for the next run"
    for path in reversed(files):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"cannot delete {path}: {exc.strerror}")
    return (PARTLY_ROLLED_BACK if problems else ROLLED_BACK), "; ".join(problems)


def update_one(item: Item) -> Outcome:
    """An existing clone: set autostart, start it, rewrite its XML file, as the plan says."""
    lv = _deps.libvirt
    dom = item.dom
    actions = item.actions
    try:
        if "autostart" in actions:
            dom.setAutostart(1 if item.spec["autostart"] else 0)
        if "start" in actions:
            dom.create()
        if "write_xml" in actions:
            _write_replace(item.xml_path, item.xml)
    except lv.libvirtError as exc:
        return failed(exc.get_error_message() or str(exc))
    except OSError as exc:
        return failed(f"{exc.strerror} ({exc.filename})")
    return Outcome(ok=True, changed=item.action != "none")


def remove_all(items: list[Item], scan: HostScan, journal: Journal) -> tuple[dict[str, Outcome], list[str], list[dict]]:
    """Destroy and undefine the clones, then delete the files they alone used: (outcomes, removed, kept)."""
    lv = _deps.libvirt
    outcomes: dict[str, Outcome] = {}
    removed = []
    going = {i.name for i in items if i.action == REMOVE}
    # what will be deleted, written down before the domain goes
    deletable, _kept = disk_fates(items, going, scan)
    for item in items:
        if item.action == REMOVE:
            nvram = [f["path"] for f in item.files if f["nvram"]]
            journal.write("remove", item.name, item.uuid, deletable[item.name] + nvram + item.xml_paths)
    for item in items:
        if item.action == "none":
            outcomes[item.name] = Outcome(ok=True, changed=False)
            continue
        if item.action == REMOVE_XML:
            for path in item.xml_paths:
                st.unlink(path)
                removed.append(path)
            outcomes[item.name] = Outcome(ok=True, changed=True)
            continue
        dom = item.dom
        try:
            if dom.isActive():
                dom.destroy()
            _undefine(dom)
            outcomes[item.name] = Outcome(ok=True, changed=True)
        except lv.libvirtError as exc:
            outcomes[item.name] = failed(exc.get_error_message() or str(exc))
            going.discard(item.name)
            journal.done(item.name)  # still defined, nothing deleted: no intent to finish
        for f in item.files:
            if f["nvram"] and item.name in going and not os.path.exists(f["path"]):
                removed.append(f["path"])  # libvirt removed it with the domain
    deletable, kept = disk_fates(items, going, scan)
    for item in items:
        if item.action != REMOVE or item.name not in going:
            continue
        for path in deletable[item.name] + item.xml_paths:
            if os.path.lexists(path):
                st.unlink(path)
                removed.append(path)
        journal.done(item.name)
    return outcomes, removed, kept


def preview_removals(items: list[Item], scan: HostScan) -> tuple[list[str], list[dict]]:
    """Check mode: the files a real run would delete (and keep), found the same way; touches nothing."""
    going = {i.name for i in items if i.action == REMOVE}
    deletable, kept = disk_fates(items, going, scan)
    removed = []
    for item in items:
        if item.action == REMOVE_XML:
            removed += item.xml_paths
        elif item.action == REMOVE:
            nvram = [f["path"] for f in item.files if f["nvram"] and os.path.exists(f["path"])]
            removed += [p for p in nvram + deletable[item.name] + item.xml_paths if os.path.lexists(p)]
    return removed, kept


def disk_fates(items: list[Item], going: set[str], scan: HostScan) -> tuple[dict[str, list[str]], list[dict]]:
    """Per removed clone, the disk files it created that nothing else uses; the rest are kept.

    "Something else" is any dependant by the host's write guard but the clones going away:
    another domain (named), a hand-made overlay file (named by its path), a snapshot layer.
    """
    candidates = [f["path"] for i in items if i.name in going for f in i.files if not f["nvram"]]
    users = {p: scan.dependants(p) for p in candidates}
    deletable: dict[str, list[str]] = {}
    kept = []
    for item in items:
        if item.name not in going:
            continue
        deletable[item.name] = []
        for f in item.files:
            if f["nvram"]:
                continue
            others = sorted({_who(u) for u in users.get(f["path"], []) if u["domain"] not in going})
            if others:
                kept.append(dict(path=f["path"], used_by=others))
                continue
            deletable[item.name].append(f["path"])
    return deletable, kept


def _who(u: dict) -> str:
    if u["relation"] == "snapshot":
        return f"snapshot {u['snapshot']} of domain {u['domain']}"
    return u["domain"] or u["disk"]


def protect_bases(plan: Plan, outcomes: dict[str, Outcome]) -> bool:
    """chmod a-w every base that now has overlays (the course's 'never modify a base'); whether one changed."""
    if not plan.bases:
        return False
    if not any(i.action != REMOVE and not i.absent and i.name in outcomes and outcomes[i.name].ok for i in plan.items):
        return False
    changed = False
    for base in plan.bases:
        mode = os.stat(base).st_mode
        if mode & 0o222:
            os.chmod(base, stat.S_IMODE(mode) & ~0o222)
            changed = True
    return changed


def _undefine(dom) -> None:
    """Undefine with its NVRAM and managed save, or plainly where libvirt has no such flags."""
    lv = _deps.libvirt
    flags = lv.VIR_DOMAIN_UNDEFINE_NVRAM | lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    try:
        dom.undefineFlags(flags)
    except lv.libvirtError as exc:
        if exc.get_error_code() not in (lv.VIR_ERR_INVALID_ARG, lv.VIR_ERR_NO_SUPPORT, lv.VIR_ERR_ARGUMENT_UNSUPPORTED):
            raise
        dom.undefine()


def _write_new(path: str, text: str) -> None:
    """Create ``path`` exclusively (never overwrite what someone else put there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _write_replace(path: str, text: str) -> None:
    """Replace ``path`` atomically (a reader never sees half a file)."""
    tmp = f"{path}.virtops-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
