# Private to the virtops.kvm collection: not a public API, may change without notice.
"""VolumeManager, the kvm_volume module's work: create, clone, grow, delete (upload/download: volume_content).

One ``run()`` per task: validate the options, find the (active) pool and the
volume, plan against what exists, refuse what is unsafe before anything
changes (deleting or resizing a volume that is used, shrinking without
``allow_shrink``, changing a format or a backing file), then act, noting each
change in check mode exactly as in a real run. The diff is the volume's facts
before and the predicted facts after, the same either way.
"""

from __future__ import annotations

import os
import re

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._pool import handles, usage
from ansible_collections.virtops.kvm.plugins.module_utils._pool import volume_content as content
from ansible_collections.virtops.kvm.plugins.module_utils._pool import volume_xml as vx
from ansible_collections.virtops.kvm.plugins.module_utils._scan import ScansHost
from ansible_collections.virtops.kvm.plugins.module_utils._validate import validate_name

_SHA256 = re.compile(r"^(sha256:)?([0-9a-fA-F]{64})$")
_FILE_POOLS = ("dir", "fs", "netfs")
_SOURCES = ("clone_from", "backing_volume", "upload", "download")


def _validate(p: dict) -> dict:
    """Every check that needs no libvirt; returns the parsed values (size in bytes, checksum)."""
    validate_name(p["name"], "name")
    validate_name(p["pool"], "pool")
    size = vx.parse_size(p["size"]) if p["size"] is not None else None
    if p["format"] == "raw" and p["backing_volume"]:
        raise InvalidInput("A volume with a backing volume is a qcow2 overlay; format raw cannot have one.")
    if p["clone_from"] is not None:
        validate_name(p["clone_from"], "clone_from")
        if p["clone_from"] == p["name"]:
            raise InvalidInput("clone_from names the volume itself.")
    checksum = None
    if p["checksum"] is not None:
        m = _SHA256.match(p["checksum"].strip())
        if not m:
            raise InvalidInput(
                f"checksum {p['checksum']!r} is not a sha256.", hint="Give 64 hex digits, optionally after 'sha256:'."
            )
        checksum = m.group(2).lower()
        if not (p["upload"] or p["download"]):
            raise InvalidInput("checksum applies to upload or download only.")
    if p["progress_mib"] is not None and p["progress_mib"] < 0:
        raise InvalidInput(f"progress_mib must be 0 (no progress entries) or more, not {p['progress_mib']}.")
    if p["upload"] is not None and not os.path.isfile(p["upload"]):
        raise InvalidInput(f"upload: {p['upload']} is not a file on the managed host.")
    if p["download"] is not None:
        folder = os.path.dirname(os.path.abspath(p["download"]))
        if not os.path.isdir(folder) or os.path.isdir(p["download"]):
            raise InvalidInput(
                f"download: {p['download']} is not a file path in an existing directory.",
                hint="Give the full path of the file to write; its directory must exist.",
            )
    return dict(size=size, checksum=checksum)


class VolumeManager(ScansHost, Manager):
    """Bring one volume of a pool to the requested state (see the kvm_volume module)."""

    ARGUMENT_SPEC = dict(
        pool=dict(type="str", required=True),
        name=dict(type="str", required=True),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        format=dict(type="str", choices=list(vx.VOLUME_FORMATS)),
        size=dict(type="str"),
        allow_shrink=dict(type="bool", default=False),
        backing_volume=dict(type="str"),
        backing_format=dict(type="str", choices=list(vx.VOLUME_FORMATS)),
        clone_from=dict(type="str"),
        upload=dict(type="path"),
        download=dict(type="path"),
        checksum=dict(type="str"),
        force=dict(type="bool", default=False),
        verify=dict(type="bool", default=True),
        progress_mib=dict(type="int", default=256),
    )
    MODULE_OPTIONS = dict(
        mutually_exclusive=[_SOURCES, ("size", "upload"), ("size", "download"), ("format", "download")],
        required_by=dict(backing_format="backing_volume"),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pool = None
        self.pool_type: str | None = None
        self._index: dict | None = None

    # ------------------------------------------------------------------ shared with volume_content

    def users(self, info: dict) -> list[dict]:
        """Domains and files that use the volume, plus volumes of any pool backed by it (``relation: volume``)."""
        out = usage.volume_users(self.scan(), self.p["pool"], info)
        if self._index is None:
            self._index = usage.backing_index(self.conn)
        seen = {os.path.realpath(u["disk"]) for u in out if u["domain"] is None}
        for label, path in usage.backed_by(self.conn, info["path"], self._index):
            if os.path.realpath(path) not in seen:
                out.append(dict(domain=None, disk=f"volume {label}", target=None, relation="file", active=False))
        return out

    def refuse_if_based_or_running(self, info: dict, what: str, hint: str) -> list[dict]:
        """Refuse ``what`` for a volume a running domain uses or anything is backed by; returns the users."""
        users = self.users(info)
        blocking = [u for u in users if u["active"] or u["relation"] != "disk"]
        if blocking:
            raise Conflict(
                f"Volume {self.p['pool']}/{info['name']} is in use, so it is not {what}: "
                f"{'; '.join(usage.describe(blocking))}.",
                hint=hint,
                users=usage.describe(blocking),
            )
        return users

    def create(self, xml: str, source=None):
        """virStorageVolCreateXML, or CreateXMLFrom when cloning ``source``."""
        name = self.p["name"]
        if source is None:
            return handles.call(f"Creating volume {name}", self.pool.createXML, xml, 0)
        return handles.call(f"Cloning volume {source.name()} to {name}", self.pool.createXMLFrom, xml, source, 0)

    # ------------------------------------------------------------------ plans

    def _backing(self) -> dict:
        ref = self.p["backing_volume"]
        vol = handles.volume_by_path(self.conn, ref) if "/" in ref else handles.lookup_volume(self.pool, ref)
        if vol is None:
            raise InvalidInput(
                f"backing_volume {ref!r} is not a volume libvirt knows"
                + (" (by path, in an active pool)." if "/" in ref else f" in pool {self.p['pool']}."),
                hint="Create or upload it first, or give the path of a volume of an active pool.",
            )
        info = handles.volume_info(vol, self.p["pool"])
        info["format"] = self.p["backing_format"] or info["format"]
        return info

    def _new(self, size: int | None) -> dict:
        """Create the volume (plain, on a backing volume, or as a clone); returns the predicted facts."""
        p = self.p
        name = p["name"]
        file_pool = self.pool_type in _FILE_POOLS
        if p["clone_from"]:
            src = handles.lookup_volume(self.pool, p["clone_from"])
            if src is None:
                raise InvalidInput(f"clone_from: volume {p['clone_from']!r} is not in pool {p['pool']}.")
            src_info = handles.volume_info(src, p["pool"])
            self.refuse_running_writer(src_info)
            fmt = p["format"] or src_info["format"]
            after = dict(name=name, format=fmt, capacity=src_info["capacity"], backing=None)
            if self.note(f"clone {p['clone_from']} ({vx.human(src_info['capacity'])}) as {fmt}"):
                self.create(vx.build(name, src_info["capacity"], fmt, allocation=0 if file_pool else None), src)
            if size is not None and size > src_info["capacity"]:
                self._grow_new(after, size)
            return after
        if p["backing_volume"]:
            backing = self._backing()
            self.refuse_running_writer(backing)
            capacity = size if size is not None else backing["capacity"]
            if capacity < (backing["capacity"] or 0):
                raise InvalidInput(
                    f"size {vx.human(capacity)} is smaller than the backing volume ({vx.human(backing['capacity'])})."
                )
            after = dict(
                name=name,
                format="qcow2",
                capacity=capacity,
                backing=dict(path=backing["path"], format=backing["format"]),
            )
            if self.note(f"create a qcow2 overlay of {backing['path']} ({backing['format']})"):
                self.create(
                    vx.build(name, capacity, "qcow2", backing_path=backing["path"], backing_format=backing["format"])
                )
            return after
        if size is None:
            raise InvalidInput(
                f"Volume {p['pool']}/{name} does not exist, and size is needed to create it.",
                hint="Give size (for example 10G), or backing_volume, clone_from or upload.",
            )
        fmt = p["format"] or ("qcow2" if file_pool else "raw")
        if fmt == "qcow2" and not file_pool:
            raise InvalidInput(f"A {self.pool_type} pool holds raw volumes only, not qcow2.")
        if self.note(f"create {fmt} {vx.human(size)}"):
            self.create(vx.build(name, size, fmt, allocation=0 if file_pool else None))
        return dict(name=name, format=fmt, capacity=size, backing=None)

    def refuse_running_writer(self, info: dict) -> None:
        """A copy of (or an overlay on) a disk a running guest writes to would be inconsistent."""
        writers = [u for u in self.users(info) if u["active"] and u["relation"] == "disk"]
        if writers:
            raise Conflict(
                f"Volume {info['path']} is a disk of a running domain, so it is not copied or used as a "
                f"backing volume: {'; '.join(usage.describe(writers))}.",
                hint="Shut the domain down first.",
            )

    def _grow_new(self, after: dict, size: int) -> None:
        if self.note(f"grow to {vx.human(size)}"):
            vol = handles.lookup_volume(self.pool, self.p["name"])
            handles.call(f"Resizing volume {self.p['name']}", vol.resize, size, 0)
        after["capacity"] = size

    def _existing(self, vol, info: dict, size: int | None) -> dict:
        """Compare an existing volume with the options; grow or shrink it. Returns the predicted facts."""
        p = self.p
        after = dict(info)
        where = f"{p['pool']}/{info['name']}"
        if p["format"] and p["format"] != info["format"]:
            raise InvalidInput(
                f"Volume {where} is {info['format']}, not {p['format']}; this module does not convert volumes.",
                hint="Clone it into a new volume with the other format (clone_from and format).",
            )
        if p["backing_volume"]:
            backing = self._backing()
            have = info["backing"] or {}
            same = have.get("path") and os.path.realpath(have["path"]) == os.path.realpath(backing["path"])
            if not same or (have.get("format") or backing["format"]) != backing["format"]:
                raise InvalidInput(
                    f"Volume {where} has backing store {have.get('path') or 'none'} ({have.get('format')}), "
                    f"not {backing['path']} ({backing['format']}); this module does not rebase volumes.",
                    hint="Delete and recreate it (state=absent first), or rebase it with qemu-img rebase.",
                )
        if size is None:
            return after
        capacity = info["capacity"] or 0
        shrink = vx.round_up(size, self.pool_type) < capacity
        if size <= capacity and not shrink:
            return after
        if shrink and not p["allow_shrink"]:
            raise InvalidInput(
                f"Volume {where} is {vx.human(capacity)}; size {vx.human(size)} would shrink it, which "
                "loses the data past the new end.",
                hint="Set allow_shrink=true if that is intended (and shrink the file system inside first).",
            )
        verb = "shrink" if shrink else "grow"
        self.refuse_if_based_or_running(
            info,
            "resized",
            "A running domain's disk is resized with 'virsh blockresize' (the guest sees it at once); a volume "
            "other disks are backed by must not change.",
        )
        lv = _deps.libvirt
        if self.note(f"{verb} from {vx.human(capacity)} to {vx.human(size)}"):
            flags = lv.VIR_STORAGE_VOL_RESIZE_SHRINK if shrink else 0
            handles.call(f"Resizing volume {where}", vol.resize, size, flags)
        after["capacity"] = size
        return after

    def _absent(self, vol, info: dict) -> None:
        users = self.users(info)
        if users:
            raise Conflict(
                f"Volume {self.p['pool']}/{info['name']} is in use, so it is not deleted: "
                f"{'; '.join(usage.describe(users))}.",
                hint="Remove the domains (or their disks) and the volumes backed by it first.",
                users=usage.describe(users),
            )
        if self.note("delete"):
            handles.call(f"Deleting volume {info['path']}", vol.delete, 0)

    # ------------------------------------------------------------------ run

    def run(self) -> dict:
        p = self.p
        values = _validate(p)
        self.pool = handles.active_pool(self.conn, p["pool"])
        self.pool_type = handles.pool_type(self.pool)
        vol = handles.lookup_volume(self.pool, p["name"])
        info = handles.volume_info(vol, p["pool"]) if vol is not None else None
        header = f"{p['pool']}/{p['name']}"
        extra_before: dict = {}
        extra_after: dict = {}
        result: dict = dict(transfer=None, sha256=None)
        after = None
        if p["state"] == "absent":
            if vol is not None:
                self._absent(vol, info)
        elif p["upload"] or p["download"]:
            job = content.Content(self, vol, info, values["checksum"])
            after, extra_before, extra_after = job.upload() if p["upload"] else job.download()
            result.update(transfer=job.transfer, sha256=job.sha256)
        elif vol is None:
            after = self._new(values["size"])
        else:
            after = self._existing(vol, info, values["size"])
        changed = bool(self.changes)
        before_text = vx.snapshot(info, extra_before)
        after_text = vx.snapshot(after, extra_after) if changed else before_text
        if self.check_mode:
            final = vol
        else:
            final = handles.lookup_volume(self.pool, p["name"]) if p["state"] == "present" else None
        return dict(
            result,
            changed=changed,
            changes=self.changes,
            volume=handles.volume_info(final, p["pool"]) if final is not None else None,
            diff=dict(before_header=header, after_header=header, before=before_text, after=after_text),
        )
