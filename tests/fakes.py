"""The unit tests' shared fakes and fixtures: ``from tests import fakes`` (no test file imports another).

- libvirt's test:///default driver with real qemu-img: ``open_conn``, ``template_xml``, ``make_template``,
  ``qcow2``, ``disk_domain``, ``dom_disk``, ``external_snapshot``, ``clone_manager``, ``Held`` (a manager's
  connection holding an open virConnect), ``runner`` (a real program, an argument list, no shell) and
  ``FakeRunner`` (canned results, calls recorded);
- libguestfs in memory: ``FS`` (one guest filesystem), ``debian()`` (a used Debian-like template),
  ``FakeGuestFS`` (the appliance handle, for _guestfs's reads and _clone's identity reset alike) and
  ``Appliances`` (a handle_factory: one new fake per launch over the same disk images);
- kvm_guestfs on test:///default: ``define_domain``, ``guestfs_manager`` and ``close_managers``.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import stat
import subprocess
from typing import Callable

import libvirt

from ansible_collections.virtops.kvm.plugins.module_utils._clone.manager import CloneManager
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.devices import drive_letters
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.manager import GuestfsManager

URI = "test:///default"


def runner(argv, env=None):
    """The manager's runner: a real program, an argument list, no shell."""
    p = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    return p.returncode, p.stdout, p.stderr


class Held:
    """The manager's connection, holding the test's open virConnect (or a stand-in for it)."""

    uri = URI

    def __init__(self, conn):
        self.conn = conn

    def close(self) -> None:
        pass  # the fixture closes it


def template_xml(name: str, disk: str, fmt: str = "qcow2", ifaces: int = 1) -> str:
    nics = "".join("<interface type='user'><model type='virtio'/></interface>" for _i in range(ifaces))
    return f"""<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{disk}'/>
<target dev='vda' bus='virtio'/></disk>{nics}</devices></domain>"""


def open_conn(prefixes=("ut-", "ut_")):
    """A test:///default connection and its teardown (undefines the test's domains, snapshots and networks)."""
    c = libvirt.open(URI)

    def close() -> None:
        for dom in c.listAllDomains():
            if dom.name().startswith(prefixes):
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        for net in c.listAllNetworks():
            if net.name().startswith(prefixes):
                if net.isActive():
                    net.destroy()
                net.undefine()
        c.close()

    return c, close


def make_template(conn, folder, name: str, size: str = "16M"):
    """A shut-off template domain on a blank qcow2 ``folder/base.qcow2``; returns that path."""
    base = folder / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), size], check=True)
    conn.defineXML(template_xml(name, str(base)))
    return base


def qcow2(path, backing=None):
    """A real qcow2 file at ``path``: blank (16M), or an overlay of ``backing``; returns ``path``."""
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    argv += ["-b", str(backing), "-F", "qcow2", str(path)] if backing else [str(path), "16M"]
    subprocess.run(argv, check=True, capture_output=True)
    return path


def disk_domain(conn, name: str, disk):
    """A shut-off test:///default domain whose one disk is the qcow2 file ``disk``."""
    return conn.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )


def dom_disk(dom) -> str:
    """The source file of a domain's first disk (its inactive definition)."""
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return xml.split("<source file='", 1)[1].split("'", 1)[0]


def external_snapshot(dom, snap: str, base, overlay) -> None:
    """Record an external snapshot as libvirt does: its overlay, and the definition at that time (its base)."""
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace(str(dom_disk(dom)), str(base))
    dom.snapshotCreateXML(
        f"<domainsnapshot><name>{snap}</name><state>shutoff</state><creationTime>1000</creationTime>"
        "<memory snapshot='no'/><disks><disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>"
        f"<source file='{overlay}'/></disk></disks>{xml}</domainsnapshot>",
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE,
    )


def clone_manager(conn, tmp_path, check_mode: bool = False, **params) -> CloneManager:
    """A CloneManager as the module makes one, its lock and intent journal private to the test."""
    params.setdefault("domain_type", "qemu")
    seams = {k: params.pop(k) for k in ("handle_factory",) if k in params}
    return CloneManager(
        params,
        Held(conn),
        check_mode,
        runner=runner,
        lock_path=str(tmp_path / "lock"),
        journal_dir=str(tmp_path) + "-journal",
        **seams,
    )


class FakeRunner:
    """A manager's runner that returns ``results`` in turn and records each (argv, env)."""

    def __init__(self, results):
        self.results = list(results)
        self.calls = []

    def __call__(self, argv, env=None):
        self.calls.append((argv, env))
        return self.results.pop(0)


# --------------------------------------------------------------------------- libguestfs in memory


class FS:
    """One guest filesystem: files (path -> [bytes, mode, uid, gid]), directories and symlinks."""

    def __init__(self, fstype: str = "ext4", uuid: str = "root-of-the-template"):
        self.type, self.uuid = fstype, uuid
        self.files: dict[str, list] = {}
        self.dirs: dict[str, list] = {"/": [0o755, 0, 0]}
        self.links: dict[str, str] = {}

    def typed(self, fstype: str) -> FS:
        """The same files seen as a filesystem of another type (one content behind several devices)."""
        other = FS(fstype, self.uuid)
        other.files, other.dirs, other.links = self.files, self.dirs, self.links
        return other

    def add(self, path: str, data=b"", mode: int = 0o644, uid: int = 0, gid: int = 0) -> FS:
        self.mkdir_p(posixpath.dirname(path))
        self.files[path] = [data.encode() if isinstance(data, str) else data, mode, uid, gid]
        return self

    def link(self, path: str, target: str) -> FS:
        self.mkdir_p(posixpath.dirname(path))
        self.links[path] = target
        return self

    def mkdir_p(self, path: str) -> None:
        while path not in self.dirs:
            self.dirs[path] = [0o755, 0, 0]
            path = posixpath.dirname(path)

    def text(self, path: str) -> str:
        return self.files[path][0].decode()

    def entries(self) -> list[str]:
        return sorted([*self.files, *self.dirs, *self.links])

    def resolve(self, path: str) -> str:
        """``path`` with every link in it followed, its directories' and its own (as open(2) does)."""
        for _i in range(10):
            parts = path.split("/")
            for i in range(2, len(parts) + 1):
                prefix = "/".join(parts[:i])
                if prefix in self.links:
                    target = self.links[prefix]
                    base = target if target.startswith("/") else posixpath.join(posixpath.dirname(prefix), target)
                    path = posixpath.normpath("/".join([base, *parts[i:]]))
                    break
            else:
                return path
        return path

    def parent_resolved(self, path: str) -> str:
        """``path`` with the links in its directories followed, not its own last part (as lstat(2) does)."""
        parent, name = posixpath.split(path)
        return path if parent in ("", "/") and not name else posixpath.join(self.resolve(parent), name)


def debian(hostname: str = "virtops-base", dbus_link: bool = False) -> FS:
    """What the identity operations touch on a Debian-like template (the integration guest has the same)."""
    fs = FS()
    fs.add("/etc/hostname", f"{hostname}\n")
    fs.add("/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}.example.com\t{hostname}\n")
    fs.add("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    fs.add("/etc/group", "root:x:0:\nstaff:x:50:alice\nalice:x:1000:\n")
    fs.add("/etc/machine-id", "0123456789abcdef0123456789abcdef\n", mode=0o444)
    if dbus_link:
        fs.link("/var/lib/dbus/machine-id", "/etc/machine-id")
    else:
        fs.add("/var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n")
    for key in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
        fs.add(f"/etc/ssh/{key}", "PRIVATE", mode=0o600).add(f"/etc/ssh/{key}.pub", "PUBLIC")
    fs.add("/etc/ssh/sshd_config", "PermitRootLogin no\n")
    fs.add("/etc/udev/rules.d/70-persistent-net.rules", 'SUBSYSTEM=="net", NAME="eth0"\n')
    fs.add("/etc/udev/rules.d/99-local.rules", "# mine\n")
    fs.add("/var/lib/dhcp/dhclient.eth0.leases", "lease { }\n")
    fs.add("/var/log/syslog", "boot of the template\n")
    fs.add("/var/log/apt/history.log", "installed things\n")
    fs.add("/var/log/empty.log", "")
    fs.add("/var/log/journal/0123/system.journal", b"LPKSHHRH")
    fs.link("/var/log/passwd-link", "/etc/passwd")
    return fs


class FakeGuestFS:
    """guestfs.GuestFS(python_return_dict=True) in memory, for the calls _guestfs and _clone make.

    The disks: ``image(path)`` gives each added drive its filesystems (one ``FS`` per partition; the
    drives are /dev/sda, /dev/sdb, ... in the order they are added, ``[]`` is a blank disk), or
    ``devices`` names them outright (device -> FS) whatever the drives. Every file call goes to the
    filesystem mounted at the longest mount point that covers it, as in libguestfs. Inspection finds
    the filesystems that hold /etc unless ``roots`` names them; ``mountpoints`` (a dict, or a function
    of the root) says each root's fstab, by default ``{"/": root}``. What the appliance did is in
    ``events``: ("mount_ro", dev, mp), ("write", dev, path), ("pread", path), ("inspect_os",), ...
    """

    def __init__(
        self,
        image: Callable[[str], list] | None = None,
        launch_error=None,
        uuid_mountpoints=False,
        sync_error=None,
        devices: dict | None = None,
        roots=None,
        mountpoints=None,
    ):
        self.image = image  # disk path -> list of FS (its partitions; [] for a blank disk)
        self.launch_error, self.sync_error = launch_error, sync_error
        self.uuid_mountpoints = uuid_mountpoints  # fstab by UUID=: libguestfs names the first device with it
        self.roots, self.mountpoints = roots, mountpoints
        self.drives: list[tuple[str, dict]] = []
        self.devices: dict[str, FS] = dict(devices or {})
        self.blank: list[str] = []
        self.mounts: dict[str, tuple[str, bool]] = {}
        self.events: list[tuple] = []
        self.network, self.settings, self.launches, self.closed = None, [], 0, False

    @property
    def mounted(self) -> list[tuple[str, str]]:
        """Every (device, mount point) mounted so far, in order."""
        return [e[1:] for e in self.events if e[0] in ("mount", "mount_ro")]

    # -- setup and lifecycle
    def set_network(self, flag):
        self.network = flag

    def get_backend_settings(self):
        return list(self.settings)

    def set_backend_settings(self, settings):
        self.settings = list(settings)

    def get_backend(self):
        return "direct"

    def set_smp(self, n):
        self.smp = n

    def add_drive_opts(self, path, **opts):
        assert self.launches == 0, "drives must be added before launch"
        disk = "/dev/sd" + drive_letters(len(self.drives))  # sdz, then sdaa, as the kernel names them
        self.drives.append((path, opts))
        if self.image is None:
            return
        parts = self.image(path)
        for j, fs in enumerate(parts, 1):
            self.devices[f"{disk}{j}"] = fs
        if not parts:
            self.blank.append(disk)

    def launch(self):
        self.launches += 1
        if self.launch_error:
            raise RuntimeError(self.launch_error)

    def sync(self):
        self.events.append(("sync",))
        if self.sync_error:
            raise RuntimeError(self.sync_error)

    def shutdown(self):
        self.events.append(("shutdown",))

    def close(self):
        self.closed = True

    # -- inspection and mounts
    def list_filesystems(self):
        return {**{d: fs.type for d, fs in self.devices.items()}, **{d: "unknown" for d in self.blank}}

    def list_partitions(self):
        return sorted(self.devices)

    def list_devices(self):
        return sorted({d.rstrip("0123456789") for d in self.devices} | set(self.blank))

    def vfs_type(self, dev):
        if dev not in self.devices:
            raise RuntimeError(f"vfs_type: {dev}: no filesystem")
        return self.devices[dev].type

    def vfs_uuid(self, dev):
        return self.devices[dev].uuid

    def vfs_label(self, dev):
        return ""

    def inspect_os(self):
        self.events.append(("inspect_os",))
        if self.roots is not None:
            return list(self.roots)
        return sorted(d for d, fs in self.devices.items() if "/etc" in fs.dirs)

    def inspect_get_mountpoints(self, root):
        if callable(self.mountpoints):
            return dict(self.mountpoints(root))
        if self.mountpoints is not None:
            return dict(self.mountpoints)
        if self.uuid_mountpoints:
            root = min(d for d, fs in self.devices.items() if fs.uuid == self.devices[root].uuid)
        return {"/": root}

    def inspect_get_type(self, root):
        return "linux"

    def inspect_get_distro(self, root):
        return "debian"

    def inspect_get_product_name(self, root):
        return "Debian GNU/Linux 12"

    def inspect_get_major_version(self, root):
        return 12

    def inspect_get_minor_version(self, root):
        return 0

    def inspect_get_hostname(self, root):
        fs = self.devices[root]
        return fs.text("/etc/hostname").strip() if "/etc/hostname" in fs.files else "unknown"

    def mount(self, dev, mp):
        self._mount(dev, mp, True)

    def mount_ro(self, dev, mp):
        self._mount(dev, mp, False)

    def _mount(self, dev, mp, writable):
        call = "mount" if writable else "mount_ro"
        self.events.append((call, dev, mp))
        if dev not in self.devices:
            raise RuntimeError(f"{call}: {dev}: No such file or directory")
        if mp != "/" and not self.is_dir(mp):
            raise RuntimeError(f"{call}: {mp}: No such file or directory")
        self.mounts[mp] = (dev, writable)

    def umount_all(self):
        self.events.append(("umount_all",))
        self.mounts.clear()

    # -- file calls, on whatever is mounted
    def _at(self, path: str, write: bool = False) -> tuple[FS, str, str]:
        if not path.startswith("/"):
            raise RuntimeError(f"{path}: path must start with a / character")
        if "/" not in self.mounts:
            raise RuntimeError("you must call 'mount' first to mount the root filesystem")
        mp = max((m for m in self.mounts if path == m or path.startswith(m.rstrip("/") + "/")), key=len)
        dev, writable = self.mounts[mp]
        if write and not writable:
            raise RuntimeError(f"{path}: Read-only file system")
        rel = path if mp == "/" else "/" + path[len(mp) :].lstrip("/")
        if write:
            self.events.append(("write", dev, rel))
        return self.devices[dev], rel, mp

    def is_file(self, path, followsymlinks=False):
        fs, rel, _mp = self._at(path)
        return (fs.resolve(rel) if followsymlinks else fs.parent_resolved(rel)) in fs.files

    def is_dir(self, path, followsymlinks=False):
        fs, rel, _mp = self._at(path)
        return (fs.resolve(rel) if followsymlinks else fs.parent_resolved(rel)) in fs.dirs

    def is_symlink(self, path):
        fs, rel, _mp = self._at(path)
        return fs.parent_resolved(rel) in fs.links

    def exists(self, path):
        fs, rel, _mp = self._at(path)
        return fs.resolve(rel) in fs.files or fs.resolve(rel) in fs.dirs

    def cat(self, path):
        fs, rel, _mp = self._at(path)
        rel = fs.resolve(rel)
        if rel not in fs.files:
            raise RuntimeError(f"cat: {path}: No such file or directory")
        return fs.files[rel][0].decode()

    def read_file(self, path):
        self.events.append(("read_file", path))
        fs, rel, _mp = self._at(path)
        rel = fs.resolve(rel)
        if rel not in fs.files:
            raise RuntimeError(f"read_file: {path}: No such file or directory")
        return fs.files[rel][0]

    def pread(self, path, count, offset):
        self.events.append(("pread", path))
        fs, rel, _mp = self._at(path)
        rel = fs.resolve(rel)
        if rel not in fs.files:
            raise RuntimeError(f"pread: {path}: No such file or directory")
        return fs.files[rel][0][offset : offset + count]

    def statns(self, path):
        fs, rel, _mp = self._at(path)
        rel = fs.resolve(rel)
        if rel in fs.dirs:
            mode, uid, gid = fs.dirs[rel]
            return dict(st_mode=stat.S_IFDIR | mode, st_size=4096, st_uid=uid, st_gid=gid, st_mtime_sec=1)
        if rel not in fs.files:
            raise RuntimeError(f"statns: {path}: No such file or directory")
        data, mode, uid, gid = fs.files[rel]
        return dict(st_mode=stat.S_IFREG | mode, st_size=len(data), st_uid=uid, st_gid=gid, st_mtime_sec=1700000000)

    def filesize(self, path):
        fs, rel, _mp = self._at(path)
        return len(fs.files[fs.resolve(rel)][0])

    def ls(self, path):
        fs, rel, _mp = self._at(path)
        below = fs.resolve(rel).rstrip("/") + "/"
        return sorted({p[len(below) :].split("/")[0] for p in fs.entries() if p.startswith(below)})

    def write(self, path, content):
        assert isinstance(content, (bytes, str)), content
        fs, rel, _mp = self._at(path, write=True)
        rel = fs.resolve(rel)
        if rel in fs.dirs:
            raise RuntimeError(f"open: {path}: Is a directory")
        if posixpath.dirname(rel) not in fs.dirs:
            raise RuntimeError(f"open: {path}: No such file or directory")
        old = fs.files.get(rel, [b"", 0o644, 0, 0])
        fs.files[rel] = [content.encode() if isinstance(content, str) else bytes(content), *old[1:]]

    def truncate(self, path):
        fs, rel, _mp = self._at(path, write=True)
        fs.files[fs.resolve(rel)][0] = b""

    def ln_sf(self, target, linkname):
        fs, rel, _mp = self._at(linkname, write=True)
        fs.link(rel, target)

    def rm_rf(self, path):
        fs, rel, _mp = self._at(path, write=True)
        below = rel.rstrip("/") + "/"
        for table in (fs.files, fs.dirs, fs.links):
            for p in [p for p in table if p == rel or p.startswith(below)]:
                del table[p]

    def rm(self, path):
        fs, rel, _mp = self._at(path, write=True)
        if rel in fs.links:
            del fs.links[rel]
        elif rel in fs.files:
            del fs.files[rel]
        else:
            raise RuntimeError(f"rm: {path}: No such file or directory (or a directory)")

    def mkdir_p(self, path):
        fs, rel, _mp = self._at(path, write=True)
        up = rel
        while up not in fs.dirs:
            if up in fs.files or up in fs.links:
                raise RuntimeError(f"mkdir_p: {path}: File exists")
            up = posixpath.dirname(up)
        fs.mkdir_p(rel)

    def chmod(self, mode, path):
        fs, rel, _mp = self._at(path, write=True)
        entry = fs.files.get(fs.resolve(rel)) or fs.dirs[fs.resolve(rel)]
        entry[-3] = mode

    def chown(self, uid, gid, path):
        fs, rel, _mp = self._at(path, write=True)
        entry = fs.files.get(fs.resolve(rel)) or fs.dirs[fs.resolve(rel)]
        entry[-2:] = [uid, gid]

    def glob_expand(self, pattern):
        fs, _rel, mp = self._at(pattern.split("*")[0].rsplit("/", 1)[0] or "/")
        prefix = "" if mp == "/" else mp.rstrip("/")
        pat = pattern[len(prefix) :]
        rx = re.compile("^" + re.escape(pat).replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$")
        return [prefix + p + ("/" if p in fs.dirs else "") for p in fs.entries() if p != "/" and rx.match(p)]

    def find(self, directory):
        fs, rel, _mp = self._at(directory)
        if rel not in fs.dirs:
            raise RuntimeError(f"find: {directory}: No such file or directory")
        base = rel.rstrip("/")
        # libguestfs 1.48 (Debian 12) names what it finds with a leading '/': '/apt/history.log'
        return [p[len(base) :] for p in fs.entries() if p.startswith(base + "/")]


class Appliances:
    """The handle_factory: each call is one new appliance over the same disk images (default: a Debian guest)."""

    def __init__(self, images=None, **handle_kw):
        self.images = dict(images or {})  # disk path -> [FS, ...]
        self.handle_kw = handle_kw
        self.handles: list[FakeGuestFS] = []

    def content(self, path: str) -> list[FS]:
        if path not in self.images:
            self.images[path] = [debian()]
        return self.images[path]

    def __call__(self) -> FakeGuestFS:
        h = FakeGuestFS(self.content, **self.handle_kw)
        self.handles.append(h)
        return h

    def root(self, path) -> FS:
        return self.images[str(path)][0]


# --------------------------------------------------------------------------- kvm_guestfs on test:///default

_OPENED: list[Connection] = []  # the guestfs managers' own lazy connections, closed by close_managers()


def define_domain(conn, created: list, name: str, disk, running: bool):
    """A test:///default domain on ``disk`` (appended to ``created``), started if ``running``."""
    dom = conn.defineXML(
        f"""<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os>
        <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
        <target dev='vda' bus='virtio'/></disk></devices></domain>"""
    )
    created.append(dom)
    if running:
        dom.create()
    return dom


def guestfs_manager(conn, params, handle, check_mode=False, uri=None) -> GuestfsManager:
    """A GuestfsManager on its own lazy connection to ``conn``'s URI (test:///default shares its state); ``handle``
    is the fake appliance of every launch, or an ``Appliances`` (one per launch)."""
    connection = Connection(uri or conn.getURI())
    _OPENED.append(connection)
    p = {"state": "read", "force_tcg": "no", **params}
    factory = handle if isinstance(handle, Appliances) else (lambda: handle)  # Appliances: a new handle per launch
    return GuestfsManager(p, connection, check_mode, runner=FakeRunner([]), handle_factory=factory)


def close_managers(created: list) -> None:
    """Close the managers' connections, then remove the domains the test defined."""
    while _OPENED:
        _OPENED.pop().close()
    for dom in created:
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
