# Private to the virtops.kvm collection: not a public API, may change without notice.
"""The one read-only libguestfs appliance of a module run: launch, find and mount filesystems, shut down.

Every drive is added with ``readonly=1`` (libguestfs puts a throw-away
overlay on top; the image is never written), the appliance has no network,
and no guest program is ever run (no ``command``/``sh``): only the
appliance's own tools touch the filesystems. The one exception is
``writable=True``, which kvm_clone uses on the disks it has just created for
new clones (never a base, never an existing domain's disk) to reset their
identity: those drives are added read-write and mounted read-write.

One appliance launch costs ~20 s under software emulation, so one session
serves every path of a run, mounts by device when the caller knows them, and
runs OS inspection only when it does not. The libguestfs handle comes from a
factory (``handle_factory``), so all of this is testable with a fake handle.

The drives of several domains may share the one launch: each domain is then
a ``Part`` of the appliance (devices.py), mounted in turn (``mount(part=)``,
then ``unmount_all``), with inspection run once for all of them.
"""

from __future__ import annotations

from collections.abc import Callable

from ansible_collections.virtops.kvm.plugins.module_utils import _deps
from ansible_collections.virtops.kvm.plugins.module_utils._errors import GuestfsError
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.devices import Part
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.drives import TCG_HINT, mount_order

# Filesystem types list_filesystems reports that can never be a guest's root.
_NOT_MOUNTABLE = ("swap", "unknown", "", "crypto_LUKS", "LVM2_member", "linux_raid_member")


def runtime_message(exc: BaseException) -> str:
    """The text of a libguestfs RuntimeError (its type name when it has none)."""
    return str(exc).strip() or type(exc).__name__


def default_handle():
    return _deps.guestfs.GuestFS(python_return_dict=True)


class GuestfsSession:
    """One read-only appliance for every read of a module run.

    ``g`` is the libguestfs handle once launched; ``launches`` counts
    appliance launches (tests assert it is 1); ``warnings`` collects what the
    run should report.
    """

    def __init__(
        self,
        drives: list[dict],
        force_tcg: bool = False,
        handle_factory: Callable | None = None,
        tcg_reason: str | None = None,
        writable: bool = False,
        smp: int | None = None,
    ):
        self.drives = drives
        self.writable = writable
        self.smp = smp
        self.force_tcg = force_tcg
        self.tcg_reason = tcg_reason
        self.handle_factory = handle_factory or default_handle
        self.g = None
        self.launches = 0
        self.warnings: list[str] = []
        self.backend = None
        self._roots: list[str] | None = None

    # -- lifecycle

    def launch(self) -> None:
        if self.g is not None:
            return
        g = self.handle_factory()
        self.g = g
        try:
            g.set_network(False)
            settings = list(g.get_backend_settings())
            if self.force_tcg and "force_tcg" not in settings:
                g.set_backend_settings([*settings, "force_tcg"])
            self.backend = g.get_backend()
            if self.smp:
                g.set_smp(self.smp)
            for d in self.drives:
                opts = {"readonly": not self.writable}
                if d.get("format"):
                    opts["format"] = d["format"]
                g.add_drive_opts(d["path"], **opts)
        except RuntimeError as exc:
            raise GuestfsError(f"libguestfs refused a drive: {runtime_message(exc)}") from exc
        self.launches += 1
        try:
            g.launch()
        except RuntimeError as exc:
            hint = (
                TCG_HINT
                if not self.force_tcg
                else (
                    "force_tcg is already on; run 'libguestfs-test-tool' on the host to see why qemu or the "
                    "appliance failed (a missing kernel in /boot is a common cause: install linux-image-*)."
                )
            )
            msg = f"The libguestfs appliance failed to launch: {runtime_message(exc)}"
            raise GuestfsError(msg, hint=hint) from exc

    def close(self) -> None:
        if self.g is None:
            return
        g, self.g = self.g, None
        try:
            g.shutdown()
        except RuntimeError as exc:
            self.warnings.append(f"libguestfs shutdown reported: {runtime_message(exc)}")
        finally:
            g.close()

    def __enter__(self) -> GuestfsSession:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- finding filesystems

    def filesystems(self) -> dict[str, str]:
        return dict(self.g.list_filesystems())

    def mount(
        self,
        mounts: dict | None = None,
        part: Part | None = None,
        parts: list | None = None,
        where: str = "mounts option",
        readonly: bool = False,
    ) -> dict | None:
        """Mount the guest's filesystems (read-only unless the session is writable); return the inspection
        findings (None for ``mounts``).

        With ``part``, the guest is the domain whose drives are that part of
        the appliance (of all ``parts``): ``mounts`` name its devices as its
        own (its first disk is /dev/sda), and inspection looks at it alone.
        ``readonly`` mounts read-only in a writable session too (to compare before writing).
        """
        self.launch()
        ro = readonly or not self.writable
        if mounts:
            if part is not None:
                mounts = {part.own(dev): mp for dev, mp in mounts.items()}
            self._mount_all(mounts, where, ro)
            return None
        return self._inspect_and_mount(part, parts or [], ro)

    def unmount_all(self) -> None:
        """Unmount everything (before the next domain of a shared launch is mounted)."""
        try:
            self.g.umount_all()
        except RuntimeError as exc:
            raise GuestfsError(f"Unmounting the guest's filesystems failed: {runtime_message(exc)}") from exc

    def _mount_all(self, mounts: dict, where: str, ro: bool) -> None:
        for mp, dev in mount_order(mounts):
            try:
                self._mount_one(dev, mp, ro)
            except RuntimeError as exc:
                raise GuestfsError(
                    f"Cannot mount {dev} on {mp} ({where}): {runtime_message(exc)}",
                    hint="Devices are named as the appliance sees them (/dev/sda1, /dev/sdb2, /dev/vg/lv), not as "
                    f"in the guest; filesystems found: {self._fs_summary()}."
                    + (" Leave mounts out to use inspection." if where == "mounts option" else ""),
                ) from exc

    def _mount_one(self, dev: str, mp: str, ro: bool) -> None:
        if ro:
            self.g.mount_ro(dev, mp)
        else:
            self.g.mount(dev, mp)

    def _fs_summary(self) -> str:
        try:
            fss = self.filesystems()
        except RuntimeError:
            return "unknown"
        return ", ".join(f"{d} ({t})" for d, t in sorted(fss.items())) or "none"

    def _inspect(self) -> list[str]:
        """The operating systems' root devices (inspection runs once per launch)."""
        if self._roots is None:
            try:
                self._roots = list(self.g.inspect_os())
            except RuntimeError as exc:
                raise GuestfsError(f"libguestfs inspection failed: {runtime_message(exc)}") from exc
        return self._roots

    def _inspect_and_mount(self, part: Part | None, parts: list, ro: bool) -> dict:
        g = self.g
        roots = self._inspect()
        if part is not None:
            roots = [r for r in roots if part.owns(r)]
        if roots:
            root = roots[0]
            if len(roots) > 1:
                self.warnings.append(
                    f"Inspection found {len(roots)} operating systems ({', '.join(roots)}); using {root}. "
                    "Give mounts to choose another."
                )
            mountpoints = dict(g.inspect_get_mountpoints(root))
            if part is not None:
                mountpoints = {mp: part.local(dev, parts or []) for mp, dev in mountpoints.items()}
            for mp, dev in mount_order({dev: mp for mp, dev in mountpoints.items()}):
                try:
                    self._mount_one(dev, mp, ro)
                except RuntimeError as exc:
                    # what guestmount -i does too: a broken /boot must not hide /etc
                    self.warnings.append(f"Could not mount {dev} on {mp}: {runtime_message(exc)}")
            major, minor = g.inspect_get_major_version(root), g.inspect_get_minor_version(root)
            return dict(
                method="inspection",
                root=root,
                os_type=g.inspect_get_type(root),
                distro=g.inspect_get_distro(root),
                product_name=g.inspect_get_product_name(root),
                version=f"{major}.{minor}",
                hostname=g.inspect_get_hostname(root),
                mountpoints=mountpoints,
            )
        dev, _fstype = self.single_filesystem(part)
        self._mount_all({dev: "/"}, "single filesystem", ro)
        return dict(
            method="single-filesystem",
            root=dev,
            os_type=None,
            distro=None,
            product_name=None,
            version=None,
            hostname=None,
            mountpoints={"/": dev},
        )

    def single_filesystem(self, part: Part | None = None) -> tuple[str, str]:
        """The fallback when inspection finds no OS: the one mountable filesystem, or a clear error."""
        self.launch()
        candidates = {
            d: t for d, t in self.filesystems().items() if t not in _NOT_MOUNTABLE and (part is None or part.owns(d))
        }
        if len(candidates) == 1:
            return next(iter(candidates.items()))
        raise GuestfsError(
            "No operating system found on the disk(s): libguestfs inspection recognised none, and there is "
            f"{'no' if not candidates else 'more than one'} filesystem to mount at / "
            f"(filesystems: {self._fs_summary()}).",
            hint="Give the mounts option (device: mountpoint, for example {'/dev/sda1': '/'}); devices are named "
            "as the appliance sees them (/dev/sda1, not /dev/vda1).",
            filesystems=candidates,
        )
