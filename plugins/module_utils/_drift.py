# Private to the virtops.kvm collection: not a public API, may change without notice.
"""Base drift: the course's "never modify a base once overlays exist", checked instead of hoped for.

An overlay stores only what changed against its base, by cluster; a base that
is written after the overlay was made leaves the overlay silently corrupt.
When kvm_clone makes an overlay it records its base's identity in the clone's
provenance: size, modification time, which file it was (device and inode,
``file``), and a digest of the first 64 KiB (the qcow2 header and tables) and
of 15 more 64 KiB pieces spread over the file, ~1 MiB read whatever the base's
size (milliseconds on a 10 GiB base; bench/base_fingerprint.py). A base whose
identity differs has drifted: kvm_domain will not start a domain on it,
kvm_clone will not add overlays to it, kvm_domain_info reports it, and
``accept_base_change`` re-records it once the operator has decided the
overlays are still good.

Size and digest can be checked on any host. The modification time means
something only for the file that was recorded: on that file an equal size and
mtime is the fast path (nothing is read) and another mtime is drift; on
another file at the same path (the copy kvm_image put on another hypervisor,
a base restored from a backup) only size and digest count. A record without
``file`` (older records, and those kvm_migrate writes for the destination's
copy, which it reads through libvirt) is taken as made on the file there now.
"""

from __future__ import annotations

import hashlib
import os

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, StorageError

SAMPLES = 16
CHUNK = 64 * 1024
DIGEST = "sha256-16x64k"


def sample_offsets(size: int) -> list[int]:
    """Where the digest's 64 KiB pieces of a file of ``size`` bytes start: 0 and 15 more spread over it."""
    return sorted({0} | {(size * i // SAMPLES) // CHUNK * CHUNK for i in range(1, SAMPLES)})


def digest_text(h) -> str:
    """The recorded form of the sampled digest ``h`` (a hashlib sha256 fed the pieces in order)."""
    return f"{DIGEST}:{h.hexdigest()[:32]}"


def fingerprint(path: str) -> dict:
    """``{size, mtime, file, digest}`` of the file at ``path`` (see the module doc for what is read)."""
    try:
        st = os.stat(path)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for off in sample_offsets(st.st_size):
                f.seek(off)
                h.update(f.read(CHUNK))
    except OSError as exc:
        raise StorageError(f"Cannot read base {path} to check it: {exc.strerror}.") from exc
    return dict(size=st.st_size, mtime=st.st_mtime_ns, file=file_id(st), digest=digest_text(h))


def file_id(st: os.stat_result) -> str:
    """Which file a stat is of on its host: ``DEVICE:INODE``."""
    return f"{st.st_dev}:{st.st_ino}"


def _same_file(recorded: dict, file: str | None) -> bool:
    """Whether ``recorded`` was made on the file ``file`` (a record without ``file`` is taken as made on it)."""
    return recorded.get("file") in (None, file)


def changes(recorded: dict, current: dict | None) -> list[str]:
    """What differs between a recorded identity and the base now (empty: no drift)."""
    if current is None:
        return ["the file is gone"]
    out = []
    if recorded.get("size") != current["size"]:
        out.append(f"size {recorded.get('size')} -> {current['size']} bytes")
    if recorded.get("digest") != current["digest"]:
        out.append("content")
    if recorded.get("mtime") != current["mtime"] and _same_file(recorded, current.get("file")):
        out.append("modification time")
    return out


class Bases:
    """The current identity of each base, read once per run (its digest only when needed)."""

    def __init__(self):
        self._stats: dict[str, os.stat_result | None] = {}
        self._prints: dict[str, dict | None] = {}

    def _stat(self, real: str) -> os.stat_result | None:
        if real not in self._stats:
            try:
                self._stats[real] = os.stat(real)
            except FileNotFoundError:
                self._stats[real] = None
            except OSError as exc:
                raise StorageError(f"Cannot read base {real} to check it: {exc.strerror}.") from exc
        return self._stats[real]

    def now(self, base: str) -> dict | None:
        real = os.path.realpath(base)
        if real not in self._prints:
            self._prints[real] = fingerprint(real) if self._stat(real) is not None else None
        return self._prints[real]

    def changes(self, recorded: dict, base: str) -> list[str]:
        """``changes(recorded, now)``; the recorded file, same size and mtime: none, without reading it."""
        st = self._stat(os.path.realpath(base))
        if (
            st is not None
            and recorded.get("file") == file_id(st)
            and (recorded.get("size"), recorded.get("mtime")) == (st.st_size, st.st_mtime_ns)
        ):
            return []
        return changes(recorded, self.now(base))

    def drifts(self, root, only: set[str] | None = None) -> list[dict]:
        """``[{disk, base, changes}]`` for each overlay of domain XML ``root`` whose recorded base drifted.

        ``only``: real paths of the bases to look at (others are not read).
        """
        prov = dx.provenance(root) or {}
        out = []
        for c in prov.get("created_disks", []):
            recorded = c.get("base_fingerprint")
            if not recorded or not c.get("base"):
                continue
            if only is not None and os.path.realpath(c["base"]) not in only:
                continue
            found = self.changes(recorded, c["base"])
            if found:
                out.append(dict(disk=c["path"], base=c["base"], changes=found))
        return out


def dependents(domains, base: str) -> list[str]:
    """Names of the scanned domains whose provenance records an overlay on ``base``."""
    real = os.path.realpath(base)
    out = []
    for d in domains:
        prov = dx.provenance(d.inactive) or {}
        if any(c.get("base") and os.path.realpath(c["base"]) == real for c in prov.get("created_disks", [])):
            out.append(d.name)
    return sorted(out)


def describe(drifts: list[dict]) -> str:
    return "; ".join(f"{d['base']} ({', '.join(d['changes'])})" for d in drifts)


def refusal(what: str, drifts: list[dict], deps: list[str]) -> Conflict:
    return Conflict(
        f"{what}: the base changed after overlays were made on it: {describe(drifts)}. An overlay whose base "
        f"changed reads a mix of old and new clusters (silently corrupt). Domains on it: {', '.join(deps) or 'none'}.",
        hint="Restore the base, or, if you know the overlays are still good (for example the change was undone "
        "or was to unallocated space), set accept_base_change: true to record the base as it is now.",
        drifted=drifts,
    )


def rerecord(dom, root, bases: Bases) -> bool:
    """Record the current identity of every base in domain ``dom``'s provenance; whether anything changed."""
    if not dx.set_base_fingerprints(root, bases.now):
        return False
    save_record(dom, root)
    return True


def save_record(dom, root) -> None:
    """Write the provenance of domain XML ``root`` into domain ``dom``'s metadata (its definition, and the
    running domain when it runs)."""
    lv = _deps.libvirt
    el = root.find(f"metadata/{{{dx.NS}}}clone")
    flags = lv.VIR_DOMAIN_AFFECT_CONFIG | (lv.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
    dom.setMetadata(lv.VIR_DOMAIN_METADATA_ELEMENT, dx.metadata_text(el), dx.NS_PREFIX, dx.NS, flags)
