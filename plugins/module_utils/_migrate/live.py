# Private to the virtops.kvm collection: not a public API, may change without notice.
"""A live migration driven from this process, watched while it runs, aborted when it takes too long.

``virDomainMigrate3`` (managed, not peer-to-peer: this process holds both
connections) runs in a thread; the caller's thread reads the job's statistics
every ``POLL`` seconds for the progress it returns, and past ``timeout``
aborts the job (virDomainAbortJob): the domain then goes on running on the
source. libvirt itself cleans the half-made domain on the destination when a
migration fails.
"""

from __future__ import annotations

import threading
from urllib.parse import urlsplit

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._connection import libvirt_failed
from ansible_collections.virtops.kvm.plugins.module_utils._errors import ConnectionFailed, TimeoutExpired
from ansible_collections.virtops.kvm.plugins.module_utils._wait import SYSTEM, Clock

POLL = 0.5
#: at most this many progress points are returned (evenly picked from those read)
POINTS = 10


def flags_and_params(copy_targets: list[str], migrate_uri: str | None, bandwidth: int | None) -> tuple:
    """(flags, typed parameters) of the migration."""
    lv = _deps.libvirt
    flags = lv.VIR_MIGRATE_LIVE | lv.VIR_MIGRATE_PERSIST_DEST | lv.VIR_MIGRATE_UNDEFINE_SOURCE
    params: dict = {}
    if copy_targets:
        flags |= lv.VIR_MIGRATE_NON_SHARED_INC
        params[lv.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(copy_targets)
    if migrate_uri:
        params[lv.VIR_MIGRATE_PARAM_URI] = migrate_uri
        disks_uri = _disks_uri(migrate_uri)
        if copy_targets and disks_uri and hasattr(lv, "VIR_MIGRATE_PARAM_DISKS_URI"):
            params[lv.VIR_MIGRATE_PARAM_DISKS_URI] = disks_uri
    if bandwidth:
        params[lv.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth)
    return flags, params


def _disks_uri(migrate_uri: str) -> str | None:
    """The NBD address of the disk copy: the migration URI's host, without its port (libvirt picks one)."""
    parts = urlsplit(migrate_uri)
    if parts.scheme != "tcp" or not parts.hostname:
        return None
    host = parts.hostname
    return f"tcp://[{host}]" if ":" in host else f"tcp://{host}"


def _point(stats: dict, seconds: float) -> dict:
    return dict(
        seconds=round(seconds, 2),
        bytes=stats.get("data_processed", 0),
        total=stats.get("data_total", 0),
        disk_bytes=stats.get("disk_processed", 0),
        memory_bytes=stats.get("memory_processed", 0),
    )


def pick(points: list[dict]) -> list[dict]:
    if len(points) <= POINTS:
        return points
    step = (len(points) - 1) / (POINTS - 1)
    return [points[round(i * step)] for i in range(POINTS)]


def migrate(dom, dconn, flags: int, params: dict, timeout: float, dest_alive=None, clock: Clock = SYSTEM) -> tuple:
    """Migrate ``dom`` to ``dconn``; (the domain on the destination, transfer dict). Raises on failure.

    ``dest_alive()``: whether the connection to the destination still holds; when it is lost the job is
    aborted at once (else the source would go on sending to a destination that cannot finish it).
    """
    lv = _deps.libvirt
    box: dict = {}

    def work() -> None:
        try:
            box["dom"] = dom.migrate3(dconn, params, flags)
        except lv.libvirtError as exc:
            box["error"] = exc

    started = clock.now()
    thread = threading.Thread(target=work, name="virtops-migrate", daemon=True)
    thread.start()
    points: list[dict] = []
    aborted = False
    while thread.is_alive():
        thread.join(POLL)
        elapsed = clock.now() - started
        try:
            stats = dom.jobStats(0)
        except lv.libvirtError:
            stats = {}
        if stats.get("type", lv.VIR_DOMAIN_JOB_NONE) != lv.VIR_DOMAIN_JOB_NONE:
            points.append(_point(stats, elapsed))
        lost = dest_alive is not None and not dest_alive()
        if (lost or (timeout and elapsed > timeout)) and not aborted:
            aborted = "lost" if lost else "timeout"
            try:
                dom.abortJob()
            except lv.libvirtError:
                pass  # the job ended meanwhile: the outcome in ``box`` says how
    seconds = clock.now() - started
    if "error" in box:
        if aborted == "lost":
            raise ConnectionFailed(
                f"The connection to the destination was lost during the live migration of {dom.name()} (its libvirt "
                f"daemon died or stopped answering), so the job was aborted after {seconds:.0f} s.",
                hint="Check the destination's libvirt daemon, then rerun the task.",
            ) from box["error"]
        if aborted:
            raise TimeoutExpired(
                f"The live migration of {dom.name()} took more than {timeout:g} s and was aborted; the domain runs "
                "on the source as before.",
                hint="Give it more time (timeout), more bandwidth, or migrate it shut off.",
            ) from box["error"]
        raise libvirt_failed(box["error"], f"The live migration of {dom.name()}")
    new = box["dom"]
    final = {}
    try:
        final = new.jobStats(lv.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except lv.libvirtError:
        pass  # not every driver keeps the completed job's statistics
    if final:
        points.append(_point(final, seconds))
    # the completed job's counters may leave the disk copy out: memory as counted at the end, disks at their most
    memory = max((p["memory_bytes"] for p in points), default=0)
    disks = max((p["disk_bytes"] for p in points), default=0)
    total = max(memory + disks, final.get("data_processed", 0))
    result = dict(bytes=total, memory_bytes=memory, disk_bytes=disks, seconds=round(seconds, 2))
    return new, dict(result, progress=pick(points))
