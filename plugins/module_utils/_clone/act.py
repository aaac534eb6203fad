# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Carrying out a plan: create (each clone atomically), update, remove, protect the bases.

Runs under the host lock, never in check mode (``preview_removals`` is the
check-mode twin of ``remove_all``). Each function returns an outcome per clone
(``{ok, changed[, error]}``) rather than raising, so one failed clone does not
stop the others: a clone whose create fails is rolled back (its domain
undefined, every file it made deleted) and the manager reports it at the end.
"""

from __future__ import annotations

import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils._clone import seed, space
from ansible_collections.virtops.kvm.plugins.module_utils._connection import connection_lost
from ansible_collections.virtops.kvm.plugins.module_utils._errors import KvmError, LibvirtFailed
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan


def create_all(
    conn, runner, items: list[dict], parallel: int, which=shutil.which, between=None, journal=None
) -> dict[str, dict]:
    """Create the clones: files, then ``between`` (the identity reset), then domains; name -> outcome.

    Files (disks, NVRAM, seed) and domains are made in up to ``parallel``
    threads (the connection is shared). ``between(ready)`` sees every clone
    whose files exist and no domain uses yet, and returns name -> error for
    the ones that must not be defined; those are rolled back like any other.
    """
    if not items:
        return {}
    if journal is not None:  # written down before the first file exists, so a rerun can tell them ours
        for item in items:
            journal.write("create", item["name"], item["uuid"], planned_files(item))
    workers = min(parallel, len(items))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {item["name"]: pool.submit(make_files, runner, which, item) for item in items}
        made = {name: future.result() for name, future in futures.items()}
    outcomes: dict[str, dict] = {}
    ready = []
    for item in items:
        files, error = made[item["name"]]
        if error is None:
            ready.append(item)
        else:
            outcomes[item["name"]] = _failed(error, rollback(None, files))
    if between is not None and ready:
        refused = between(ready)
        for item in ready:
            if item["name"] in refused:
                outcomes[item["name"]] = _failed(refused[item["name"]], rollback(None, made[item["name"]][0]))
        ready = [i for i in ready if i["name"] not in refused]
    if ready:
        with ThreadPoolExecutor(max_workers=min(parallel, len(ready))) as pool:
            futures = {i["name"]: pool.submit(define_one, conn, i, made[i["name"]][0]) for i in ready}
            outcomes.update((name, future.result()) for name, future in futures.items())
    if journal is not None:
        for item in items:
            o = outcomes[item["name"]]
            if o["ok"] or not (o.get("pending") or "(rollback:" in o.get("error", "")):
                journal.done(item["name"])  # defined, or rolled back completely: nothing left to finish
    return {item["name"]: outcomes[item["name"]] for item in items}


def planned_files(item: dict) -> list[str]:
    """Every file a new clone's creation may leave: disks, NVRAM, seed, XML file."""
    files = [d["path"] for d in item["disks"]]
    if item["nvram"]:
        files.append(item["nvram"][1])
    if item.get("seed"):
        files.append(item["seed"]["path"])
    if item["xml_path"]:
        files.append(item["xml_path"])
    return files


def make_files(runner, which, item: dict) -> tuple[list[str], str | None]:
    """The clone's disks, NVRAM and cloud-init seed: (files made, error or None)."""
    made: list[str] = []
    try:
        for d in item["disks"]:
            space.make_disk(runner, item["name"], d)  # leaves nothing on failure; explains ENOSPC
            made.append(d["path"])
        if item["nvram"]:
            src, dst = item["nvram"]
            made.append(dst)
            shutil.copyfile(src, dst)
        if item.get("seed"):
            seed.build_seed(runner, which, item["seed"]["path"], item["seed"]["documents"])
            made.append(item["seed"]["path"])
    except (KvmError, OSError) as exc:
        return made, space.explain_failure(_message(exc), item)
    return made, None


def define_one(conn, item: dict, made: list[str]) -> dict:
    """Define, autostart, start, write the XML file; on any failure undo all of it (and the files made)."""
    lv = _deps.libvirt
    made = list(made)
    dom = None
    try:
        try:
            dom = conn.defineXML(item["xml"])
            if item["spec"]["autostart"]:
                dom.setAutostart(1)
            if item["spec"]["state"] == "running":
                dom.create()
            xml_text = dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE) if item["xml_path"] else None
        except lv.libvirtError as exc:
            lost = connection_lost(exc, f"Defining clone {item['name']}")
            if lost is not None:
                # whether the daemon defined it is unknown: nothing is undone, the journal decides next run
                return dict(
                    ok=False,
                    changed=False,
                    pending=True,
                    error=f"{lost.message} Its files are kept; the next run finishes the clone or removes them.",
                )
            raise LibvirtFailed(f"{exc.get_error_message() or exc}") from exc
        if item["xml_path"]:
            made.append(item["xml_path"])
            _write_new(item["xml_path"], xml_text)
        return dict(ok=True, changed=True)
    except (KvmError, OSError) as exc:
        return _failed(_message(exc), rollback(dom, made))


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, KvmError) else f"{exc.strerror or exc} ({exc.filename or ''})"


def _failed(error: str, undo: str) -> dict:
    return dict(ok=False, changed=False, error=error + (f" (rollback: {undo})" if undo else ""))


def rollback(dom, files: list[str]) -> str:
    """Destroy and undefine ``dom`` (if defined), delete ``files``; what could not be undone, or ''."""
    lv = _deps.libvirt
    problems = []
    if dom is not None:
        try:
            if dom.isActive():
                dom.destroy()
            _undefine(dom)
        except lv.libvirtError as exc:
            # never a domain without its disks: the files stay, with the intent, for the next run
            return f"undefine failed ({exc.get_error_message()}); its files are kept for the next run"
    for path in reversed(files):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"cannot delete {path}: {exc.strerror}")
    return "; ".join(problems)


def update_one(item: dict) -> dict:
    """An existing clone: set autostart, start it, rewrite its XML file, as the plan says."""
    lv = _deps.libvirt
    dom = item.get("dom")
    actions = item.get("actions", [])
    try:
        if "autostart" in actions:
            dom.setAutostart(1 if item["spec"]["autostart"] else 0)
        if "start" in actions:
            dom.create()
        if "write_xml" in actions:
            _write_replace(item["xml_path"], item["xml"])
    except lv.libvirtError as exc:
        return dict(ok=False, changed=False, error=exc.get_error_message() or str(exc))
    except OSError as exc:
        return dict(ok=False, changed=False, error=f"{exc.strerror} ({exc.filename})")
    return dict(ok=True, changed=item["action"] != "none")


def remove_all(items: list[dict], outcomes: dict, scan: HostScan, journal=None) -> tuple[list[str], list[dict]]:
    """Destroy and undefine the clones, then delete the files they alone used: (removed, kept)."""
    lv = _deps.libvirt
    removed = []
    going = {i["name"] for i in items if i["action"] == "remove"}
    if journal is not None:  # what will be deleted, written down before the domain goes
        deletable, _kept = disk_fates(items, going, scan)
        for item in items:
            if item["action"] == "remove":
                nvram = [f["path"] for f in item["files"] if f["nvram"]]
                journal.write("remove", item["name"], item["uuid"], deletable[item["name"]] + nvram + item["xml_paths"])
    for item in items:
        if item["action"] == "none":
            outcomes[item["name"]] = dict(ok=True, changed=False)
            continue
        if item["action"] == "remove_xml":
            for path in item["xml_paths"]:
                st.unlink(path)
                removed.append(path)
            outcomes[item["name"]] = dict(ok=True, changed=True)
            continue
        dom = item["dom"]
        try:
            if dom.isActive():
                dom.destroy()
            _undefine(dom)
            outcomes[item["name"]] = dict(ok=True, changed=True)
        except lv.libvirtError as exc:
            outcomes[item["name"]] = dict(ok=False, changed=False, error=exc.get_error_message() or str(exc))
            going.discard(item["name"])
            if journal is not None:
                journal.done(item["name"])  # still defined, nothing deleted: no intent to finish
        for f in item["files"]:
            if f["nvram"] and item["name"] in going and not os.path.exists(f["path"]):
                removed.append(f["path"])  # libvirt removed it with the domain
    deletable, kept = disk_fates(items, going, scan)
    for item in items:
        if item["action"] != "remove" or item["name"] not in going:
            continue
        for path in deletable[item["name"]] + item["xml_paths"]:
            if os.path.lexists(path):
                st.unlink(path)
                removed.append(path)
        if journal is not None:
            journal.done(item["name"])
    return removed, kept


def preview_removals(items: list[dict], scan: HostScan) -> tuple[list[str], list[dict]]:
    """Check mode: the files a real run would delete (and keep), found the same way; touches nothing."""
    going = {i["name"] for i in items if i["action"] == "remove"}
    deletable, kept = disk_fates(items, going, scan)
    removed = []
    for item in items:
        if item["action"] == "remove_xml":
            removed += item["xml_paths"]
        elif item["action"] == "remove":
            nvram = [f["path"] for f in item["files"] if f["nvram"] and os.path.exists(f["path"])]
            removed += [p for p in nvram + deletable[item["name"]] + item["xml_paths"] if os.path.lexists(p)]
    return removed, kept


def disk_fates(items: list[dict], going: set[str], scan: HostScan) -> tuple[dict[str, list[str]], list[dict]]:
    """Per removed clone, the disk files it created that nothing else uses; the rest are kept.

    "Something else" is any dependant by the host's write guard but the clones going away:
    another domain (named), a hand-made overlay file (named by its path), a snapshot layer.
    """
    candidates = [f["path"] for i in items if i["name"] in going for f in i["files"] if not f["nvram"]]
    users = {p: scan.dependants(p) for p in candidates}
    deletable: dict[str, list[str]] = {}
    kept = []
    for item in items:
        if item["name"] not in going:
            continue
        deletable[item["name"]] = []
        for f in item["files"]:
            if f["nvram"]:
                continue
            others = sorted({_who(u) for u in users.get(f["path"], []) if u["domain"] not in going})
            if others:
                kept.append(dict(path=f["path"], used_by=others))
                continue
            deletable[item["name"]].append(f["path"])
    return deletable, kept


def _who(u: dict) -> str:
    if u["relation"] == "snapshot":
        return f"snapshot {u['snapshot']} of domain {u['domain']}"
    return u["domain"] or u["disk"]


def protect_bases(plan: dict, outcomes: dict) -> bool:
    """chmod a-w every base that now has overlays (the course's 'never modify a base'); whether one changed."""
    if not plan["bases"]:
        return False
    if not any(
        i["action"] != "remove" and not i.get("absent") and outcomes.get(i["name"], {}).get("ok") for i in plan["items"]
    ):
        return False
    changed = False
    for base in plan["bases"]:
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
