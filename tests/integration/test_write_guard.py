"""The write guard (issue 24): no module writes a disk file that something else stands on.

Before a write to a disk file, the collection asks the host scan who stands on it
(the backing chains of every domain, running or not, hand-made overlays beside it,
volumes of other pools, the layers of every domain's external snapshots) and
refuses, naming them. Here, per writer: a dependant is made on the file the writer
would touch (see ``dependant`` for the kinds), what the dependant reads is recorded
(its raw view, through ``qemu-img convert -O raw``) with the sha256 of the
written-to file, the module runs in check mode and for real, and the test asserts
that both refused, named the dependant, and that every byte is the same afterwards.
Where the writer has a safe way round instead of a refusal (an external snapshot
delete pulls rather than commits; a revert or a clone removal keeps a used file),
the test asserts that way and the same bytes.

Writers: kvm_snapshot (create internal/external, revert internal, delete internal,
external merges, external revert's dropped later state), kvm_volume (resize,
upload force, delete), kvm_pool (absent with delete), kvm_domain (start, absent
with remove_storage), kvm_clone (a clone onto an existing file, absent) and
kvm_migrate (an offline move onto a destination file, on two simulated hosts).

Every domain is only defined (shut off, never booted); the images are 16 MiB
qcow2 files with a few MiB written by qemu-io. Problems are collected and asserted
together, so a run shows every broken promise of a scenario at once (the refusal
and the bytes), not only the first.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import libvirt
import pytest

from tests import guestlib
from tests.harness import run_module

MIB = 1024**2


# ---------------------------------------------------------------------- images and domains


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True, text=True, timeout=60)


def new_disk(path: Path, pattern: int, size: str = "16M") -> Path:
    """A qcow2 image of ``size`` with its first MiB filled with ``pattern``."""
    qemu_img("create", "-q", "-f", "qcow2", str(path), size)
    write(path, pattern, 0)
    path.chmod(0o644)
    return path


def overlay(base: Path, path: Path) -> Path:
    """A hand-made qcow2 overlay on ``base`` (what a clone or a user makes)."""
    return guestlib.make_overlay(base, path)


def write(path: Path, pattern: int, offset_mib: int, length_mib: int = 1) -> None:
    """Write ``length_mib`` MiB of byte ``pattern`` at ``offset_mib`` into the image (its top layer)."""
    cmd = f"write -P {pattern:#x} {offset_mib}M {length_mib}M"
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", cmd, str(path)], check=True, capture_output=True, timeout=60)


def raw_view(path: Path, work: Path) -> str:
    """sha256 of what a guest on ``path`` reads: the whole chain flattened to raw."""
    out = work / f".{path.name}.{guestlib.new_prefix()}.raw"
    try:
        qemu_img("convert", "-U", "-O", "raw", str(path), str(out))
        return guestlib.sha256(out)
    except subprocess.CalledProcessError as exc:  # a file of the chain is gone: that is a change too
        return f"unreadable: {exc.stderr.strip()}"
    finally:
        out.unlink(missing_ok=True)


def file_sha256(path: Path) -> str:
    try:
        return guestlib.sha256(path)
    except FileNotFoundError:
        return "missing"


def domain_xml(name: str, disk: Path) -> str:
    """A shut-off qemu domain with one qcow2 disk (never started here)."""
    return f"""<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
      <os><type arch='x86_64'>hvm</type></os><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>
      <target dev='vda' bus='virtio'/></disk></devices></domain>"""


def define(conn, name: str, disk: Path):
    return conn.defineXML(domain_xml(name, disk))


def ok(result: dict) -> dict:
    assert not result.get("failed"), result.get("msg")
    return result


# ---------------------------------------------------------------------- the promise


class Guarded:
    """What must not change: the raw view of each dependant and the bytes of each written-to file."""

    def __init__(self, work: Path, views: list[Path], files: list[Path]):
        self.work = work
        self.views = list(views)
        self.files = list(files)
        self.before = self._take()

    def _take(self) -> dict:
        out = {f"view of {p.name}": raw_view(p, self.work) for p in self.views}
        out.update({f"sha256 of {p.name}": file_sha256(p) for p in self.files})
        return out

    def changed(self) -> list[str]:
        after = self._take()
        return [k for k in self.before if after.get(k) != self.before[k]]


def refusal_problems(label: str, result: dict, names: list[str]) -> list[str]:
    """Why ``result`` is not a refusal naming every one of ``names`` (empty: it is)."""
    if not result.get("failed"):
        return [f"{label}: did not fail (changed={result.get('changed')}, changes={result.get('changes')})"]
    msg = result.get("msg", "")
    missing = [n for n in names if n not in msg]
    return [f"{label}: the refusal does not name {missing}: {msg}"] if missing else []


def assert_refused_untouched(module: str, args: dict, guarded: Guarded, names: list[str]) -> list[dict]:
    """Run ``module`` in check mode and for real: both must refuse naming ``names``; no byte may change.

    Returns the two results.
    """
    problems = []
    results = []
    for check in (True, False):
        label = "check mode" if check else "real run"
        r = run_module(module, args, check=check)
        results.append(r)
        problems += refusal_problems(label, r, names)
        problems += [f"{label}: {what} changed" for what in guarded.changed()]
    assert not problems, "\n".join(problems)
    return results


def dependant(
    kind: str, conn, prefix: str, base: Path, name: str = "dep", outside: Path | None = None
) -> tuple[Path, list[str]]:
    """Make a dependant on ``base``; returns its overlay and the names a refusal must give.

    ``domain``: a defined domain (``<prefix>-<name>``) on an overlay beside the base;
    ``domain-elsewhere``: the same with the overlay in another directory (below ``outside``,
    default the base's directory);
    ``file``: an overlay file beside the base that no domain uses (made by hand);
    ``volume``: an overlay volume in another active storage pool (named ``<pool>/<volume>``);
    ``snapshot-layer``: an overlay in another directory that only an external snapshot
    (``keep``) of domain ``<prefix>-<name>`` still stands on: the domain itself moved on to
    another disk (named: the domain and the snapshot).
    A refusal must name the domain where there is one, else the overlay's path.
    """
    folder = base.parent
    outside = outside or base.parent
    if kind == "volume":  # an overlay volume of another active pool, no domain
        other = other_pool(conn, prefix, outside / "other")
        path = overlay(base, other["dir"] / f"{name}.qcow2")
        write(path, 0x44, 8)
        conn.storagePoolLookupByName(other["name"]).refresh(0)
        return path, [f"{other['name']}/{name}.qcow2"]
    if kind == "snapshot-layer":
        folder = outside / f"layer-{name}"
        folder.mkdir(mode=0o755, exist_ok=True)
        path = overlay(base, folder / f"{name}.qcow2")
        write(path, 0x44, 8)
        domain = f"{prefix}-{name}"
        dom = define(conn, domain, path)
        ok(run_module("kvm_snapshot", dict(domain=domain, name="keep", kind="external")))
        fresh = new_disk(folder / f"{name}-fresh.qcow2", 0x46)
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        conn.defineXML(xml.replace(str(folder / f"{domain}.vda.keep.qcow2"), str(fresh)))
        return path, [domain, "snapshot keep"]
    if kind == "domain-elsewhere":
        folder = outside / f"elsewhere-{name}"
        folder.mkdir(mode=0o755, exist_ok=True)
    path = overlay(base, folder / f"{name}.qcow2")
    write(path, 0x44, 8)  # the dependant's own data, above the base
    if kind == "file":
        return path, [str(path)]
    domain = f"{prefix}-{name}"
    define(conn, domain, path)
    return path, [domain]


# "domain" (the overlay beside the file) only where the issue's own scenario needs it: "domain-elsewhere"
# asks the same rule (the backing chains of the domains' disks) and keeps the file fast.
ALL_KINDS = pytest.mark.parametrize("kind", ["domain", "domain-elsewhere", "file", "snapshot-layer"])
KINDS = pytest.mark.parametrize("kind", ["domain-elsewhere", "file", "snapshot-layer"])


# ---------------------------------------------------------------------- storage pools


def make_pool(conn, name: str, folder: Path) -> dict:
    ok(run_module("kvm_pool", dict(name=name, path=str(folder), state="active")))
    folder.chmod(0o755)
    return dict(name=name, dir=folder)


def other_pool(conn, prefix: str, folder: Path) -> dict:
    """The second pool ``<prefix>-other`` (made once per test)."""
    name = f"{prefix}-other"
    try:
        conn.storagePoolLookupByName(name)
        return dict(name=name, dir=folder)
    except libvirt.libvirtError:
        return make_pool(conn, name, folder)


def remove_pools(conn, prefix: str) -> None:
    for p in conn.listAllStoragePools(0):
        if p.name().startswith(prefix):
            if p.isActive():
                p.destroy()
            if p.isPersistent():
                p.undefine()


@pytest.fixture
def pool(conn, prefix, scratch):
    """A started dir pool ``<prefix>-pool`` in ``scratch/pool``: {name, dir}; every ``<prefix>`` pool goes after."""
    try:
        yield make_pool(conn, f"{prefix}-pool", scratch / "pool")
    finally:
        remove_pools(conn, prefix)


# ---------------------------------------------------------------------- kvm_snapshot


@ALL_KINDS
def test_revert_to_an_internal_snapshot_of_a_base(conn, prefix, scratch, kind):
    """The known data-loss bug: reverting A to an internal snapshot rewrites A under B's overlay."""
    a_disk = new_disk(scratch / "a.qcow2", 0x41)
    a = f"{prefix}-a"
    define(conn, a, a_disk)
    ok(run_module("kvm_snapshot", dict(domain=a, name="s1")))
    write(a_disk, 0x42, 0)  # after the snapshot: what the dependant reads, and a revert would undo
    write(a_disk, 0x43, 4)
    dep, names = dependant(kind, conn, prefix, a_disk)
    guarded = Guarded(scratch, [dep], [a_disk, dep])
    assert_refused_untouched("kvm_snapshot", dict(domain=a, name="s1", state="current"), guarded, names)


@KINDS
def test_delete_an_internal_snapshot_of_a_base(conn, prefix, scratch, kind):
    a_disk = new_disk(scratch / "a.qcow2", 0x41)
    a = f"{prefix}-a"
    define(conn, a, a_disk)
    ok(run_module("kvm_snapshot", dict(domain=a, name="s1")))
    write(a_disk, 0x42, 0)
    dep, names = dependant(kind, conn, prefix, a_disk)
    guarded = Guarded(scratch, [dep], [a_disk, dep])
    assert_refused_untouched("kvm_snapshot", dict(domain=a, name="s1", state="absent"), guarded, names)
    assert [s.getName() for s in conn.lookupByName(a).listAllSnapshots()] == ["s1"]


@pytest.mark.parametrize("snapshot_kind", ["internal", "external"])
@KINDS
def test_create_a_snapshot_of_a_base(conn, prefix, scratch, kind, snapshot_kind):
    a_disk = new_disk(scratch / "a.qcow2", 0x41)
    a = f"{prefix}-a"
    define(conn, a, a_disk)
    dep, names = dependant(kind, conn, prefix, a_disk)
    before = sorted(p.name for p in scratch.iterdir())
    guarded = Guarded(scratch, [dep], [a_disk, dep])
    assert_refused_untouched("kvm_snapshot", dict(domain=a, name="s1", kind=snapshot_kind), guarded, names)
    assert conn.lookupByName(a).listAllSnapshots() == [] and sorted(p.name for p in scratch.iterdir()) == before


def external_world(conn, prefix: str, scratch: Path) -> tuple[str, Path, Path]:
    """Shut-off domain A with an external snapshot s1: (A, its base a.qcow2, the layer above with later data)."""
    a_disk = new_disk(scratch / "a.qcow2", 0x41)
    a = f"{prefix}-a"
    define(conn, a, a_disk)
    ok(run_module("kvm_snapshot", dict(domain=a, name="s1", kind="external")))
    top = scratch / f"{a}.vda.s1.qcow2"
    assert top.is_file()
    write(top, 0x42, 0)  # written after the snapshot, into the layer above the base
    return a, a_disk, top


@KINDS
def test_delete_an_external_snapshot_whose_base_is_used(conn, prefix, scratch, kind):
    """A commit would write the base: the layer is pulled instead, the base and its dependant untouched."""
    a, a_disk, top = external_world(conn, prefix, scratch)
    dep, _names = dependant(kind, conn, prefix, a_disk)
    guarded = Guarded(scratch, [dep, top], [a_disk, dep])
    problems = []
    for check in (True, False):
        r = run_module("kvm_snapshot", dict(domain=a, name="s1", state="absent"), check=check)
        label = "check mode" if check else "real run"
        if r.get("failed"):
            problems.append(f"{label}: failed: {r.get('msg')}")
        elif [m["method"] for m in r.get("merged", [])] != ["pull"]:
            problems.append(f"{label}: merged {r.get('merged')}, not one pull")
        problems += [f"{label}: {what} changed" for what in guarded.changed()]
    assert not problems, "\n".join(problems)


@KINDS
def test_delete_an_external_snapshot_whose_layer_is_used(conn, prefix, scratch, kind):
    """Neither a commit (writes the base, deletes the layer) nor a pull (rewrites the layer) may happen."""
    a, a_disk, top = external_world(conn, prefix, scratch)
    dep, names = dependant(kind, conn, prefix, top)
    guarded = Guarded(scratch, [dep, top], [a_disk, top, dep])
    assert_refused_untouched("kvm_snapshot", dict(domain=a, name="s1", state="absent"), guarded, names)


@KINDS
def test_revert_to_an_external_snapshot_keeps_a_used_later_layer(conn, prefix, scratch, kind):
    """drop_later_state deletes the state after the snapshot, except a file something stands on."""
    a, a_disk, top = external_world(conn, prefix, scratch)
    dep, _names = dependant(kind, conn, prefix, top)
    guarded = Guarded(scratch, [dep, top], [a_disk, top, dep])
    problems = []
    for check in (True, False):
        r = run_module("kvm_snapshot", dict(domain=a, name="s1", state="current", drop_later_state=True), check=check)
        label = "check mode" if check else "real run"
        if r.get("failed"):
            problems.append(f"{label}: failed: {r.get('msg')}")
        elif str(top) in (r.get("removed_files") or []):
            problems.append(f"{label}: deletes {top}, which {dep} stands on")
        if not top.exists():
            problems.append(f"{label}: {top} is gone")
            break
        problems += [f"{label}: {what} changed" for what in guarded.changed()]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- kvm_volume


VOLUME_KINDS = pytest.mark.parametrize("kind", ["domain-elsewhere", "file", "volume", "snapshot-layer"])


def used_volume(conn, prefix: str, pool: dict, kind: str) -> tuple[Path, Path, list[str], Guarded]:
    base = new_disk(pool["dir"] / "base.qcow2", 0x41)
    write(base, 0x42, 4)
    dep, names = dependant(kind, conn, prefix, base, outside=pool["dir"].parent)
    conn.storagePoolLookupByName(pool["name"]).refresh(0)
    return base, dep, names, Guarded(pool["dir"].parent, [dep], [base, dep])


@VOLUME_KINDS
def test_resize_a_used_volume(conn, prefix, pool, kind):
    base, _dep, names, guarded = used_volume(conn, prefix, pool, kind)
    args = dict(pool=pool["name"], name=base.name, size="32M")
    assert_refused_untouched("kvm_volume", args, guarded, names)


@VOLUME_KINDS
def test_upload_over_a_used_volume(conn, prefix, pool, kind, tmp_path):
    base, _dep, names, guarded = used_volume(conn, prefix, pool, kind)
    src = tmp_path / "other.img"
    src.write_bytes(bytes([0x45]) * MIB)
    args = dict(pool=pool["name"], name=base.name, upload=str(src), force=True)
    assert_refused_untouched("kvm_volume", args, guarded, names)


@VOLUME_KINDS
def test_delete_a_used_volume(conn, prefix, pool, kind):
    base, _dep, names, guarded = used_volume(conn, prefix, pool, kind)
    assert_refused_untouched("kvm_volume", dict(pool=pool["name"], name=base.name, state="absent"), guarded, names)


# ---------------------------------------------------------------------- kvm_pool


@pytest.mark.parametrize("kind", ["domain", "domain-elsewhere", "volume", "snapshot-layer"])
def test_delete_a_pool_with_a_used_volume(conn, prefix, pool, kind):
    """state=absent with delete: a volume something outside stands on (or a domain's disk inside) refuses."""
    _base, _dep, names, guarded = used_volume(conn, prefix, pool, kind)
    assert_refused_untouched("kvm_pool", dict(name=pool["name"], state="absent", delete=True), guarded, names)
    assert conn.storagePoolLookupByName(pool["name"]).isActive()


# ---------------------------------------------------------------------- kvm_domain


@KINDS
def test_start_a_domain_whose_disk_is_used(conn, prefix, scratch, kind):
    """A running guest writes its disk: a disk others stand on is not started (it never boots here)."""
    a_disk = new_disk(scratch / "a.qcow2", 0x41)
    a = f"{prefix}-a"
    define(conn, a, a_disk)
    dep, names = dependant(kind, conn, prefix, a_disk)
    guarded = Guarded(scratch, [dep], [a_disk, dep])
    try:
        assert_refused_untouched("kvm_domain", dict(name=a, state="running"), guarded, names)
    finally:
        dom = conn.lookupByName(a)
        if dom.isActive():
            dom.destroy()


@KINDS
def test_remove_a_domain_with_storage_others_stand_on(conn, prefix, scratch, kind):
    a_disk = new_disk(scratch / "a.qcow2", 0x41)
    a = f"{prefix}-a"
    define(conn, a, a_disk)
    dep, names = dependant(kind, conn, prefix, a_disk)
    guarded = Guarded(scratch, [dep], [a_disk, dep])
    assert_refused_untouched("kvm_domain", dict(name=a, state="absent", remove_storage="all"), guarded, names)
    assert a in [d.name() for d in conn.listAllDomains()]


# ---------------------------------------------------------------------- kvm_clone


def template(conn, prefix: str, scratch: Path) -> tuple[str, Path]:
    """A shut-off template domain ``<prefix>-tpl`` on ``scratch/tpl.qcow2``."""
    disk = new_disk(scratch / "tpl.qcow2", 0x41)
    name = f"{prefix}-tpl"
    define(conn, name, disk)
    return name, disk


@KINDS
def test_clone_onto_an_existing_file_that_is_used(conn, prefix, scratch, kind):
    """The identity reset writes only the clone's new disk: a file already at its path refuses the run.

    (A clone's disk is always a new file, so the reset cannot be pointed at a file with dependants;
    the refusal names the file, not its dependants: any file there refuses.)
    """
    tpl, tpl_disk = template(conn, prefix, scratch)
    clone = f"{prefix}-c"
    taken = new_disk(scratch / f"{clone}.qcow2", 0x43)
    dep, _names = dependant(kind, conn, prefix, taken)
    guarded = Guarded(scratch, [dep], [taken, dep, tpl_disk])
    assert_refused_untouched("kvm_clone", dict(template=tpl, name=clone, domain_type="qemu"), guarded, [str(taken)])
    assert clone not in [d.name() for d in conn.listAllDomains()]


@KINDS
def test_remove_a_clone_whose_disk_is_used(conn, prefix, scratch, kind):
    """state=absent deletes the clone's own files, except one something else stands on (kept, reported)."""
    tpl, tpl_disk = template(conn, prefix, scratch)
    clone = f"{prefix}-c"
    args = dict(template=tpl, name=clone, domain_type="qemu", identity=dict(operations=[]))
    ok(run_module("kvm_clone", args))
    disk = scratch / f"{clone}.qcow2"
    assert disk.is_file()
    write(disk, 0x42, 2)
    dep, _names = dependant(kind, conn, prefix, disk)
    guarded = Guarded(scratch, [dep], [disk, dep, tpl_disk])
    problems = []
    for check in (True, False):
        label = "check mode" if check else "real run"
        r = run_module("kvm_clone", dict(name=clone, state="absent"), check=check)
        if r.get("failed"):
            problems.append(f"{label}: failed: {r.get('msg')}")
        else:
            if str(disk) in (r.get("removed_files") or []):
                problems.append(f"{label}: removes {disk}, which {dep} stands on")
            if str(disk) not in [k.get("path") for k in r.get("kept_files") or []]:
                problems.append(f"{label}: kept_files {r.get('kept_files')} do not name {disk}")
        if not disk.exists():
            problems.append(f"{label}: {disk} is gone")
            break
        problems += [f"{label}: {what} changed" for what in guarded.changed()]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- kvm_migrate

IMAGES = "/var/lib/libvirt/images"


@pytest.fixture(scope="module")
def ground():
    """Two simulated hypervisors hv1, hv2 (tests/ground.py) on a port and root of this file's own."""
    from tests import ground as groundlib

    g = groundlib.Ground(2, root=Path("/var/lib/virtops-ground-writeguard"), port=2224)
    with g:
        yield g


class HostFiles:
    """One directory ``/var/lib/libvirt/images/<prefix>`` as a ground host sees it."""

    def __init__(self, host, prefix: str):
        self.host = host
        self.dir = f"{IMAGES}/{prefix}"
        self.outside(self.dir).mkdir(mode=0o755, exist_ok=True)
        self.outside(self.dir).chmod(0o755)

    def outside(self, path: str) -> Path:
        """Where the host's ``path`` (below /var/lib/libvirt/images) is seen from this machine."""
        return self.host.root / "lib" / "images" / path[len(IMAGES) + 1 :]

    def run(self, *argv: str) -> None:
        self.host.run(list(argv), check=True, capture_output=True, timeout=60)

    def disk(self, name: str, pattern: int, backing: str | None = None) -> str:
        path = f"{self.dir}/{name}"
        extra = ["-b", backing, "-F", "qcow2"] if backing else []
        self.run("qemu-img", "create", "-q", "-f", "qcow2", *extra, path, "16M")
        self.run("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {pattern % 8}M 1M", path)
        self.outside(path).chmod(0o644)
        return path

    def view(self, path: str) -> str:
        raw = f"{path}.{guestlib.new_prefix()}.raw"
        try:
            self.run("qemu-img", "convert", "-U", "-O", "raw", path, raw)
            return guestlib.sha256(self.outside(raw))
        except subprocess.CalledProcessError as exc:
            return f"unreadable: {exc.stderr}"
        finally:
            self.outside(raw).unlink(missing_ok=True)

    def state(self, views: list[str], files: list[str]) -> dict:
        out = {f"view of {p}": self.view(p) for p in views}
        out.update({f"sha256 of {p}": file_sha256(self.outside(p)) for p in files})
        return out

    def remove(self) -> None:
        shutil.rmtree(self.outside(self.dir), ignore_errors=True)


@pytest.mark.parametrize("kind", ["domain", "file"])
def test_migrate_onto_a_destination_file_that_is_used(ground, kind):
    """A shut-off overlay clone moves from hv1 to hv2, where a file at its disk's path is the base of others.

    The offline move would copy the overlay over that file: it must refuse, with every byte on hv2 the
    same. The refusal names the file (any file there refuses, so naming its dependants is not asked).
    storage=shared is not a case here: it copies nothing, and a shut-off domain defined on hv2 writes
    nothing until it starts (which kvm_domain refuses on a disk others stand on).
    """
    prefix = guestlib.new_prefix()
    hv1, hv2 = ground["hv1"], ground["hv2"]
    src, dst = HostFiles(hv1, prefix), HostFiles(hv2, prefix)
    conns = {h.name: h.connect() for h in (hv1, hv2)}
    try:
        name = f"{prefix}-c"
        base = src.disk("base.qcow2", 0x41)
        copy = dst.outside(base)
        copy.write_bytes(src.outside(base).read_bytes())  # the same base at the same path on hv2
        copy.chmod(0o644)
        disk = src.disk(f"{name}.qcow2", 0x42, backing=base)
        define(conns["hv1"], name, Path(disk))
        # on hv2: another file at the clone's path, and something standing on it
        taken = dst.disk(f"{name}.qcow2", 0x43, backing=base)
        dep = dst.disk("dep.qcow2", 0x44, backing=taken)
        if kind == "domain":
            define(conns["hv2"], f"{prefix}-dep", Path(dep))
        before = dst.state([dep, taken], [base, taken, dep])
        problems = []
        args = dict(name=name, uri=hv1.uri, dest_uri=hv2.uri)
        for check in (True, False):
            label = "check mode" if check else "real run"
            r = run_module("kvm_migrate", args, check=check)
            problems += refusal_problems(label, r, [taken])
            after = dst.state([dep, taken], [base, taken, dep])
            problems += [f"{label}: {k} on hv2 changed" for k in before if after[k] != before[k]]
            if not check and name in [d.name() for d in conns["hv2"].listAllDomains()]:
                problems.append(f"{label}: {name} is defined on hv2 on top of {taken}")
        assert not problems, "\n".join(problems)
    finally:
        for c in conns.values():
            guestlib.cleanup_domains(c, prefix)
            c.close()
        src.remove()
        dst.remove()
