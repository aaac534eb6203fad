# Private to the virtops.kvm collection: not a public API, may change without notice.
"""GuestfsManager, kvm_guestfs's backend: options -> drives -> safety checks -> read run or (un)mount -> result.

One ``HostScan`` per run answers both "which disks has this domain" and
"which running domain writes these disks". With ``disks`` and no libvirt
daemon, no domain of that URI can run, so the images are still read (with a
warning). ``handle_factory`` makes the libguestfs handles (a fake one in the
unit tests); guestmount and guestunmount run through ``self.runner``.

With ``domains``, the disks of several shut-off domains are added to the one
appliance and each domain is read in turn (``read_guests``): one launch for
a whole fleet's verification instead of one per domain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DaemonNotRunning,
    DomainNotFound,
    GuestfsError,
    InvalidInput,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.devices import by_launch, parts_of
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import (
    RUNNING_WARNING,
    backend_env,
    check_mounts,
    decide_force_tcg,
    domain_drives,
    kvm_usable,
    resolve_drives,
    running_refusal,
    running_users,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.mount import GuestMount
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.read import (
    DEFAULT_MAX_SIZE,
    READ_OPTIONS,
    read_guest,
    read_guests,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.session import GuestfsSession
from ansible_collections.virtops.kvm.plugins.module_utils._manager import Manager
from ansible_collections.virtops.kvm.plugins.module_utils._scan import HostScan

_INSTALL_HINT = "Install libguestfs-tools (Debian/Ubuntu) or guestfs-tools / libguestfs-tools-c (Fedora/RHEL)."


class GuestfsManager(Manager):
    """Read files from guest disks in one appliance launch, or keep a read-only guestmount."""

    ARGUMENT_SPEC = dict(
        domain=dict(type="str"),
        domains=dict(type="list", elements="str"),
        disks=dict(type="list", elements="raw"),
        paths=dict(type="list", elements="str", default=[]),
        list_dirs=dict(type="list", elements="str", default=[]),
        mounts=dict(type="dict"),
        fail_missing=dict(type="bool", default=False),
        max_size=dict(type="int", default=DEFAULT_MAX_SIZE),
        dest=dict(type="path"),
        allow_running=dict(type="bool", default=False),
        state=dict(type="str", choices=["read", "mounted", "unmounted"], default="read"),
        mount_point=dict(type="path"),
        force_tcg=dict(type="str", choices=["auto", "yes", "no"], default="auto"),
        unmount_timeout=dict(type="int", default=120),
    )
    MODULE_OPTIONS = dict(
        # domains excludes both as well (checked in run(): the spec keeps its documented pair)
        mutually_exclusive=[("domain", "disks")],
        required_if=[
            ("state", "read", ("domain", "disks", "domains"), True),
            ("state", "mounted", ("domain", "disks"), True),
            ("state", "mounted", ("mount_point",)),
            ("state", "unmounted", ("mount_point",)),
        ],
    )
    LIBRARIES = ("guestfs", "libvirt", "lxml")

    @classmethod
    def needs(cls, params: dict) -> tuple:
        """Unmounting is guestunmount and /proc only: no library."""
        return () if params.get("state") == "unmounted" else cls.LIBRARIES

    #: handle_factory: makes libguestfs handles (unit tests give a fake one)
    SEAMS = dict(handle_factory=None)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.force_tcg = False
        self.tcg_reason: str | None = None

    # -- source and safety

    def _domain_drives(self, scan: HostScan, name: str | None = None) -> list[dict]:
        name = name or self.p["domain"]
        found = scan.get(name)
        if found is None:
            raise DomainNotFound(
                f"Domain {name} is not defined at {self.uri}.",
                hint="Check the name with 'virsh list --all' (and the uri option).",
            )
        drives, skipped = domain_drives(found.inactive)
        self.warnings.extend(skipped)
        return drives

    def groups(self) -> list[tuple[str, list[dict]]]:
        """``domains``: (name, drives) per domain, in order, checked like ``source()``; one scan for all."""
        names = list(dict.fromkeys(self.p["domains"]))
        if not names:
            raise InvalidInput("The domains option is empty.", hint="List at least one domain name.")
        scan = HostScan.take(self.conn)
        missing = [n for n in names if n not in scan]
        if missing:
            raise DomainNotFound(
                f"Domain(s) {', '.join(missing)} not defined at {self.uri}; nothing was read.",
                hint="Check the names with 'virsh list --all' (and the uri option).",
            )
        groups = [(n, self._domain_drives(scan, n)) for n in names]
        self._check_running(scan, [d for _n, drives in groups for d in drives])
        self._decide_tcg(self.conn)
        return groups

    def _check_running(self, scan: HostScan, drives: list[dict]) -> None:
        users = running_users(scan, [d["path"] for d in drives])
        if not users:
            return
        names = sorted({u["domain"] for u in users})
        what = "these disks"
        if self.p["domain"]:
            what = f"domain {self.p['domain']}'s disks"
        elif self.p.get("domains"):
            what = "the disks of these domains"
        if not self.p["allow_running"]:
            raise running_refusal(what, names)
        self.warn(RUNNING_WARNING.format(names=", ".join(names)))

    def _decide_tcg(self, conn) -> None:
        self.force_tcg, self.tcg_reason = decide_force_tcg(self.p["force_tcg"], lambda: kvm_usable(conn))

    def source(self) -> list[dict]:
        """The drives to add, after the running-domain check; decides force_tcg on the way."""
        if self.p["domain"]:
            scan = HostScan.take(self.conn)
            drives = self._domain_drives(scan)
        else:
            drives = resolve_drives(self.p["disks"])
            try:
                scan = HostScan.take(self.conn)
            except DaemonNotRunning:
                # no daemon, so no domain of this URI runs; the images are still read read-only
                self.warn(f"libvirt at {self.uri} is not running, so no domain can be checked for using these disks.")
                self._decide_tcg(None)
                return drives
        self._check_running(scan, drives)
        self._decide_tcg(self.conn)
        return drives

    @contextmanager
    def session(self, drives: list[dict]) -> Iterator[GuestfsSession]:
        """A session whose warnings (also those of a failed run) become the run's."""
        s = GuestfsSession(
            drives, force_tcg=self.force_tcg, handle_factory=self.handle_factory, tcg_reason=self.tcg_reason
        )
        try:
            yield s
        finally:
            s.close()
            self.warnings.extend(s.warnings)

    # -- states

    def run(self) -> dict:
        state = self.p["state"]
        if state != "read":
            for opt in ("paths", "list_dirs", "dest"):
                if self.p[opt]:
                    raise InvalidInput(
                        f"{opt} is only used with state=read (state is {state}).",
                        hint="Read files in a separate task with state=read, or through the mount_point.",
                    )
        several = self.p.get("domains") is not None
        if several and (self.p["domain"] or self.p["disks"]):
            raise InvalidInput("domains cannot be combined with domain or disks.", hint="Give one of the three.")
        if several and state != "read":
            raise InvalidInput(
                "domains is only used with state=read; a guestmount shows one domain.",
                hint="Use domain to mount one of them.",
            )
        if state == "unmounted":
            return self.unmounted()
        mounts = check_mounts(self.p["mounts"])
        if several:
            return self.read_domains(self.groups(), mounts)
        drives = self.source()
        if state == "mounted":
            return self.mounted(drives, mounts)
        return self.read(drives, mounts)

    def read(self, drives: list[dict], mounts: dict | None) -> dict:
        with self.session(drives) as s:
            result = read_guest(s, mounts=mounts, **self._read_options())
        return self._read_result(result)

    def read_domains(self, groups: list[tuple[str, list[dict]]], mounts: dict | None) -> dict:
        """Every domain read in turn, in one launch per ``MAX_DRIVES`` drives (a domain is never split); results
        keyed by domain."""
        launches = [
            (partial(self.session, [d for _n, drives in chunk for d in drives]), parts_of(chunk))
            for chunk in by_launch(groups, lambda group: len(group[1]))
        ]
        return self._read_result(read_guests(launches, mounts=mounts, **self._read_options()))

    def _read_options(self) -> dict:
        """The options of a read run (``Reads``), which are this module's options of the same names."""
        return dict({name: self.p[name] for name in READ_OPTIONS}, check_mode=self.check_mode)

    @staticmethod
    def _read_result(result: dict) -> dict:
        result.pop("warnings_list")  # the session's warnings, already taken by self.session()
        result.update(mounted=False, mount_point=None)
        return result

    def _guestmount(self) -> GuestMount:
        if not self.p["mount_point"]:
            raise InvalidInput("state=mounted and state=unmounted need mount_point.")
        return GuestMount(self.runner, self.p["mount_point"])

    def _need_tool(self, tool: str) -> None:
        if not self.which(tool):
            raise GuestfsError(f"{tool} is not installed on the managed host.", hint=_INSTALL_HINT)

    def _will_change(self, result: dict, undone: str, tool: str) -> bool:
        """Mark ``result`` changed (``mounted`` flips); whether to act (not in check mode, which warns ``undone``)."""
        result["changed"] = True
        result["diff"] = dict(before={"mounted": not result["mounted"]}, after={"mounted": result["mounted"]})
        if self.check_mode:
            self.warn(f"Check mode: {undone}.")
            return False
        self._need_tool(tool)
        return True

    def mounted(self, drives: list[dict], mounts: dict | None) -> dict:
        gm = self._guestmount()
        result = dict(changed=False, mounted=True, mount_point=gm.mount_point, files={}, dirs={}, inspection=None)
        status = gm.status()
        if status == "foreign":
            raise gm.foreign_error()
        if status == "mounted":
            images = gm.mounted_images()
            wanted = sorted(os.path.realpath(d["path"]) for d in drives)
            if images is None:
                self.warn(f"{gm.mount_point} holds a guestmount whose disks cannot be told; left as it is.")
            elif sorted(os.path.realpath(i) for i in images) != wanted:
                raise Conflict(
                    f"{gm.mount_point} already holds a guestmount of {', '.join(images)}, not of "
                    f"{', '.join(d['path'] for d in drives)}.",
                    hint="Unmount it first (state=unmounted) or choose another mount_point.",
                )
            return result
        if not self._will_change(result, f"guestmount on {gm.mount_point} not run", "guestmount"):
            return result
        probe: dict = {}

        def find_mounts() -> dict:
            with self.session(drives) as s:
                dev, fstype = s.single_filesystem()
            probe.update(method="single-filesystem", root=dev, mountpoints={"/": dev}, fstype=fstype)
            return {dev: "/"}

        done = gm.mount(drives, mounts, backend_env(self.force_tcg), find_mounts)
        result["guestmount_argv"] = done["argv"]
        if probe:
            result["inspection"] = dict(os_type=None, distro=None, version=None, hostname=None, **probe)
        return result

    def unmounted(self) -> dict:
        gm = self._guestmount()
        result = dict(changed=False, mounted=False, mount_point=gm.mount_point, files={}, dirs={}, inspection=None)
        status = gm.status()
        if status == "unmounted":
            return result
        if status == "foreign":
            raise gm.foreign_error()
        if not self._will_change(result, f"{gm.mount_point} not unmounted", "guestunmount"):
            return result
        gm.unmount(backend_env(False), timeout=self.p["unmount_timeout"])
        return result
