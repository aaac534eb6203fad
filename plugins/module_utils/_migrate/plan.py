# Private to the virtops.kvm collection: not a public API, may change without notice.
"""What moves for each disk of a domain, decided before anything happens.

Each disk gets an action: ``top`` (an overlay whose base is already on the
destination: only the overlay's own file moves), ``whole`` (a disk with no
backing file: all of it moves), ``seed`` (the cloud-init seed kvm_clone or
kvm_vm made for the domain, a read-only CD-ROM: copied whole through a volume
stream, live or not) or ``shared`` (nothing moves: the same path must already
be there on the destination). A base that is missing on the
destination, or is not the same file there (size; and the fingerprint
kvm_clone recorded when the overlay was made, see _drift), is a problem; so is a
file that a copy would overwrite. Problems are collected for every disk, then
refused together, naming the host, the path and what is missing.

The two hosts are seen through objects with ``uri``, ``facts(path)`` (volume
facts or None), ``directory_exists(path)``, ``pool_type(path)`` and
``fingerprint_digest(path, size)`` (volumes.HostFiles; tests give fakes).
"""

from __future__ import annotations

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._migrate.volumes import SHARED_POOL_TYPES

STORAGE_CHOICES = ("auto", "shared", "copy")
#: the actions that put a file on the destination (and may remove it from the source after the move)
COPIED = ("top", "whole", "seed")


def _recorded(prov: dict | None, path: str) -> dict | None:
    """kvm_clone's record of the file at ``path`` (mode, base, base fingerprint), or None."""
    for c in (prov or {}).get("created_disks", []):
        if c.get("path") == path:
            return c
    return None


def _base_problems(src, dst, disk: dict, facts: dict, record: dict | None) -> tuple[list[str], dict | None]:
    """(problems, the destination's base identity to record in the moved domain's provenance or None)."""
    base = facts["backing"]
    here = src.facts(base)
    there = dst.facts(base)
    if there is None:
        return [
            f"the base {base} of {disk['path']} is missing on {dst.uri} (put the same file at the same path there)"
        ], None
    if here is not None and here["physical"] != there["physical"]:
        return [
            f"the base {base} of {disk['path']} is {there['physical']} bytes on {dst.uri}, "
            f"{here['physical']} bytes on {src.uri}: not the same file"
        ], None
    recorded = (record or {}).get("base_fingerprint")
    if not recorded or (record or {}).get("base") != base:
        return [], None
    if recorded.get("size") != there["physical"]:
        return [
            f"the base {base} of {disk['path']} is {there['physical']} bytes on {dst.uri}, but the overlay was "
            f"made on a base of {recorded.get('size')} bytes"
        ], None
    digest = dst.fingerprint_digest(base, there["physical"])
    if digest != recorded.get("digest"):
        return [
            f"the base {base} of {disk['path']} on {dst.uri} has other content than the base the overlay was "
            "made on (its sampled fingerprint differs)"
        ], None
    if there.get("mtime") is None:  # no timestamp from libvirt: the record stays as it is
        return [], None
    # verified: the destination's own copy is what the moved domain records (its mtime is that file's)
    return [], dict(size=there["physical"], mtime=there["mtime"], digest=digest)


def _plan_seed(entry: dict, disk: dict, src, dst) -> list[str]:
    """The cloud-init seed the collection made for the domain: it moves with it (action ``seed``); problems."""
    facts = src.facts(disk["path"])
    if facts is None:
        entry.update(action="none", reason="missing on the source")
        return [f"{disk['path']} ({disk['target']}) is missing on {src.uri}"]
    entry.update(
        action="seed",
        bytes=facts["physical"] or 0,
        format=facts["format"] or disk["format"],
        reason="the cloud-init seed made for this domain: copied whole through a volume stream",
    )
    if dst.facts(disk["path"]) is not None:
        return [
            f"{disk['path']} ({disk['target']}) already exists on {dst.uri}: a copy would overwrite it (remove it "
            "there if it is a leftover)"
        ]
    if not dst.directory_exists(disk["path"]):
        return [f"the directory of {disk['path']} ({disk['target']}) does not exist on {dst.uri} (make it there)"]
    return []


def plan_disks(root, storage: str, src, dst) -> tuple[list[dict], list[str]]:
    """([per disk: target, path, action, format, base, bytes, reason], [problems]) for domain XML ``root``."""
    prov = dx.provenance(root)
    disks, problems = [], []
    for disk in dx.disks(root):
        entry = dict(
            target=disk["target"], path=disk["path"], format=disk["format"], base=None, bytes=0, base_identity=None
        )
        disks.append(entry)
        if not disk["path"]:
            entry.update(action="none", reason="no medium")
            continue
        if disk["type"] != "file":
            entry.update(action="shared", reason=f"a disk of type {disk['type']} is not copied")
            continue
        if disk["device"] != "disk" or disk["readonly"] or disk["shareable"]:
            if storage != "shared" and (_recorded(prov, disk["path"]) or {}).get("mode") == "seed":
                problems.extend(_plan_seed(entry, disk, src, dst))
                continue
            entry.update(action="shared", reason=f"a read-only or shareable {disk['device']}: not copied")
            if dst.facts(disk["path"]) is None:
                problems.append(f"{disk['path']} ({disk['target']}) is missing on {dst.uri}")
            continue
        shared = storage == "shared" or (storage == "auto" and src.pool_type(disk["path"]) in SHARED_POOL_TYPES)
        if shared:
            entry.update(action="shared", reason=f"storage={storage}: the same path is used on the destination")
            if dst.facts(disk["path"]) is None:
                problems.append(f"{disk['path']} ({disk['target']}) is missing on {dst.uri} (storage={storage})")
            continue
        facts = src.facts(disk["path"])
        if facts is None:
            entry.update(action="none", reason="missing on the source")
            problems.append(f"{disk['path']} ({disk['target']}) is missing on {src.uri}")
            continue
        entry.update(bytes=facts["allocation"] or 0, format=facts["format"] or disk["format"])
        if not dst.directory_exists(disk["path"]):
            problems.append(
                f"the directory of {disk['path']} ({disk['target']}) does not exist on {dst.uri} (make it there)"
            )
        elif dst.facts(disk["path"]) is not None:
            problems.append(
                f"{disk['path']} ({disk['target']}) already exists on {dst.uri}: a copy would overwrite it "
                "(remove it there, or use storage=shared if it is the same file on shared storage)"
            )
        if facts["backing"]:
            entry.update(action="top", base=facts["backing"], reason="overlay: only its own layer moves")
            found, identity = _base_problems(src, dst, disk, facts, _recorded(prov, disk["path"]))
            problems.extend(found)
            entry["base_identity"] = identity
        else:
            entry.update(action="whole", reason="no backing file: all of it moves")
    return disks, problems


def record_bases(root, disks: list[dict]) -> bool:
    """Put each verified destination base identity into the provenance of domain XML ``root``; whether any."""
    identities = {d["base"]: d["base_identity"] for d in disks if d.get("base_identity")}
    if not identities:
        return False
    return dx.set_base_fingerprints(root, identities.get)


def refusal(name: str, dst_uri: str, problems: list[str]) -> StorageError:
    return StorageError(
        f"Domain {name} cannot be moved to {dst_uri}: " + "; ".join(problems) + ". Nothing was changed.",
        hint="Put each missing base on the destination at the same path (kvm_image does it), or choose storage=shared "
        "for disks on shared storage.",
        problems=problems,
    )


def removable(prov: dict | None, disks: list[dict], in_use: set) -> list[str]:
    """The source files to delete once the domain lives on the destination.

    Only files that moved (``top``/``whole``) and that the collection made for
    this domain (kvm_clone's provenance), never a base of a disk, never one that
    another domain uses (``in_use``: paths of other domains' disks and bases).
    """
    bases = {d["base"] for d in disks if d.get("base")}
    out = []
    for d in disks:
        if d.get("action") not in COPIED:
            continue
        rec = _recorded(prov, d["path"])
        if rec is None or d["path"] in bases or d["path"] in in_use:
            continue
        if rec.get("path") == rec.get("base"):
            continue
        out.append(d["path"])
    return out
