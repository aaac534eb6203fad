"""kvm_clone into a filesystem that fills up (issue 10, "out of space"), on the real daemon and a real tmpfs.

Each test mounts a small tmpfs as ``dest_dir`` (under the test's scratch dir, so
libvirt-qemu can traverse it; unmounted at teardown). The template's disk is a
copy of the test guest's base with 40 MiB of real data written into it, so a
full copy needs ~41.6 MiB: one fits in 64 MiB, two do not.

ENOSPC in the middle of a copy is made for real, not mocked: a ``qemu-img``
first on the module's PATH (a few lines of Python, ``shim``) waits for the
one command the test names (the convert or create of one clone's disk), fills
the tmpfs with a filler file up to a margin the test chooses (what another
writer on the same filesystem would do between the precheck and the copy),
then execs the real qemu-img, which runs out of space part way through.

Every test ends with ``assert_end_state``: the prefix's domains are exactly the
expected ones and each has its disk (a flat copy, or an overlay on the
template's base), dest_dir holds exactly those disks plus the foreign files,
which are untouched, no intent journal is left, and the base is unchanged.

The refusal before anything is created needs ``_clone/space.check_space`` wired
into the plan, and the ENOSPC handling ``space.make_disk`` into act.py; tests that
need a part that is not wired yet are skipped, and turn on by themselves once it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _disk_files as st
from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import act, manager, plan, space
from ansible_collections.virtops.kvm.plugins.module_utils._clone.journal import JOURNAL_DIR
from ansible_collections.virtops.kvm.plugins.module_utils._errors import StorageError
from tests import guestlib
from tests.harness import run_module

MiB = space.MiB
PRECHECK_WIRED = any(hasattr(m, "space") or hasattr(m, "check_space") for m in (plan, manager))
MAKE_DISK_WIRED = hasattr(act, "space") or hasattr(act, "make_disk")
needs_precheck = pytest.mark.skipif(
    not PRECHECK_WIRED, reason="space.check_space is not called by _clone/plan.py or manager.py yet"
)
needs_make_disk = pytest.mark.skipif(
    not MAKE_DISK_WIRED, reason="space.make_disk is not called by _clone/act.py make_files yet"
)

SHIM = """#!{python}
# qemu-img for one test: before the named command, fill the filesystem, then run the real one
import os, sys
want, path = os.environ["VT_FILL_CMD"], os.environ["VT_FILL_PATH"]
filler, leave = os.environ["VT_FILLER"], int(os.environ["VT_FILL_LEAVE"])
if sys.argv[1:2] == [want] and sys.argv[-1] == path and not os.path.exists(filler):
    s = os.statvfs(os.path.dirname(path))
    todo = s.f_bavail * s.f_frsize - leave
    with open(filler, "wb") as f:
        while todo > 0:
            todo -= f.write(b"\\xa5" * min(todo, 1 << 20))
os.execv(os.environ["VT_REAL_QEMU_IMG"], ["qemu-img"] + sys.argv[1:])
"""


def runner(argv, env=None):
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture
def tpl(tpl) -> dict:
    """conftest's template with 40 MiB of data written into its disk, and that disk's sha256."""
    disk = tpl["disk"]
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 40M", str(disk)], check=True, capture_output=True)
    return dict(tpl, sha=guestlib.sha256(disk))


@pytest.fixture
def small_fs(scratch):
    """``small_fs(size)``: a fresh tmpfs of ``size`` (mode 0755) under scratch; unmounted at teardown."""
    mounted = []

    def make(size: str) -> Path:
        path = scratch / f"fs{len(mounted)}"
        path.mkdir(mode=0o755)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path) -> int:
    s = os.statvfs(path)
    return s.f_bavail * s.f_frsize


def fill(dest: Path, leave: int) -> Path:
    """A foreign file that takes all of ``dest``'s free space but ``leave`` bytes."""
    filler = dest / "someone-elses.bin"
    with open(filler, "wb") as f:
        todo = free_bytes(dest) - leave
        while todo > 0:
            todo -= f.write(b"\xa5" * min(todo, MiB))
    return filler


def shim_env(scratch: Path, cmd: str, path: Path, filler: Path, leave: int) -> dict:
    """The module's environment with the filling qemu-img first on PATH (see the module docstring)."""
    bindir = scratch / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "qemu-img"
    shim.write_text(SHIM.format(python=sys.executable))
    shim.chmod(0o755)
    return dict(
        PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        VT_FILL_CMD=cmd,
        VT_FILL_PATH=str(path),
        VT_FILLER=str(filler),
        VT_FILL_LEAVE=str(leave),
        VT_REAL_QEMU_IMG=shutil.which("qemu-img"),
    )


def clone_args(tpl: dict, dest: Path, names: list[str], mode: str = "copy") -> dict:
    return dict(
        template=tpl["name"],
        clones=names,
        mode=mode,
        dest_dir=str(dest),
        parallel=1,
        domain_type="qemu",
        identity={"operations": []},
    )


def snapshot(paths: list[Path]) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths}


def assert_end_state(conn, prefix: str, tpl: dict, dest: Path, clones: dict[str, str], foreign: dict) -> None:
    """Exactly ``clones`` (name -> mode) defined, each on its own disk in dest; nothing else there or left."""
    domains = sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(prefix))
    assert domains == sorted([tpl["name"], *clones])
    expected = set(foreign)
    for name, mode in clones.items():
        (disk,) = [d for d in dx.disks(dx.parse(conn.lookupByName(name).XMLDesc(0))) if d["device"] == "disk"]
        assert disk["path"] == str(dest / f"{name}.qcow2")
        chain = st.backing_chain(disk["path"])  # raises if the disk (or its base) is missing
        if mode == "overlay":
            assert [c["path"] for c in chain] == [disk["path"], str(tpl["disk"])]
        else:
            assert len(chain) == 1
        check = subprocess.run(["qemu-img", "check", "-q", disk["path"]], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        expected.add(disk["path"])
    assert {str(p) for p in dest.iterdir()} == expected  # no partial file, no temp file, no orphan
    assert snapshot([Path(p) for p in foreign]) == foreign  # nothing foreign touched
    left = os.listdir(JOURNAL_DIR) if os.path.isdir(JOURNAL_DIR) else []
    assert [n for n in left if n.startswith(prefix)] == []
    assert guestlib.sha256(tpl["disk"]) == tpl["sha"]


def test_the_estimates_cover_what_qemu_img_writes_on_a_tmpfs(tpl, small_fs):
    """Measured on the real template and a real tmpfs, with the real statvfs (no wiring needed)."""
    dest = small_fs("64m")
    copy = dict(mode="copy", source=str(tpl["disk"]), source_format="qcow2")
    overlay = dict(copy, mode="overlay")
    need_copy, need_overlay = space.needed_bytes(copy, runner), space.needed_bytes(overlay, runner)
    items = [dict(name=n, disks=[dict(copy, path=str(dest / f"{n}.qcow2"))], nvram=None, seed=None) for n in ("a", "b")]
    with pytest.raises(StorageError, match=f"Not enough free space in {dest} for this batch"):
        space.check_space(items, runner)
    (summary,) = space.check_space(items[:1], runner)
    assert summary["free"] == 64 * MiB and summary["needed"] == need_copy
    st.copy_image(runner, str(tpl["disk"]), str(dest / "a.qcow2"), "qcow2")
    written = (dest / "a.qcow2").stat().st_blocks * 512
    st.create_overlay(runner, str(tpl["disk"]), str(dest / "o.qcow2"), "qcow2")
    ov_written = (dest / "o.qcow2").stat().st_blocks * 512
    print(f"copy: estimate {need_copy} written {written}; overlay: estimate {need_overlay} written {ov_written}")
    assert written <= need_copy - space.SLACK + 64 * 1024 and need_copy - space.SLACK - written < 512 * 1024
    assert ov_written <= need_overlay - space.SLACK


@needs_precheck
def test_a_batch_that_cannot_fit_is_refused_before_anything_is_created(conn, prefix, tpl, small_fs):
    dest = small_fs("64m")
    notes = dest / "notes.txt"
    notes.write_text("someone else's file\n")
    foreign = snapshot([notes])
    a, b = f"{prefix}-a", f"{prefix}-b"
    need = 2 * space.needed_bytes(dict(mode="copy", source=str(tpl["disk"]), source_format="qcow2"), runner)
    free = free_bytes(dest)
    for check in (True, False):
        r = run_module("kvm_clone", clone_args(tpl, dest, [a, b]), check=check)
        assert r.get("failed") and r["error"] == "StorageError", r
        msg = r["msg"]
        assert f"Not enough free space in {dest} for this batch" in msg
        assert f"need {space.human(need)} ({need} bytes" in msg and f"{space.human(free)} ({free} bytes) is free" in msg
        assert "Nothing was created" in msg and "the first 1 of these 2 clones would fit" in msg
        assert (r["needed_bytes"], r["free_bytes"], r["directory"]) == (need, free, str(dest))
        assert_end_state(conn, prefix, tpl, dest, {}, foreign)
    # what fits is not refused: one copy, then a rerun that changes nothing
    r = run_module("kvm_clone", clone_args(tpl, dest, [a]))
    assert not r.get("failed"), r.get("msg")
    assert r["changed"] is True
    assert not run_module("kvm_clone", clone_args(tpl, dest, [a]))["changed"]
    assert_end_state(conn, prefix, tpl, dest, {a: "copy"}, foreign)


@needs_make_disk
def test_enospc_during_a_copy_leaves_no_partial_file_and_no_domain(conn, prefix, tpl, scratch, small_fs):
    dest = small_fs("128m")  # both copies fit when the run starts: the precheck (if wired) lets it go
    a, b = f"{prefix}-a", f"{prefix}-b"
    filler = dest / "someone-elses.bin"
    # b's convert starts with 16 MiB left: qemu-img writes 16 MiB of it, then gets ENOSPC
    env = shim_env(scratch, "convert", dest / f"{b}.qcow2", filler, 16 * MiB)
    r = run_module("kvm_clone", clone_args(tpl, dest, [a, b]), env=env)
    assert filler.exists(), "the qemu-img shim was not used; the module no longer runs qemu-img from PATH"
    assert r.get("failed") and r["failed_clones"] == [b], r
    made = {c["name"]: c for c in r["clones"]}
    assert made[a]["changed"] is True and made[a]["state"] == "present" and not made[a].get("failed")
    assert made[b]["failed"] is True
    assert f"Out of space in {dest} while creating disk {b}.qcow2 of clone '{b}'" in r["msg"]
    assert "No space left on device" in r["msg"] and "(rollback:" not in r["msg"]
    foreign = snapshot([filler])
    assert_end_state(conn, prefix, tpl, dest, {a: "copy"}, foreign)
    # once there is room again, the rerun makes b (nothing half-made is in its way), then nothing changes
    filler.unlink()
    r = run_module("kvm_clone", clone_args(tpl, dest, [a, b]))
    assert not r.get("failed"), r.get("msg")
    assert [c["changed"] for c in r["clones"]] == [False, True]
    assert not run_module("kvm_clone", clone_args(tpl, dest, [a, b]))["changed"]
    assert_end_state(conn, prefix, tpl, dest, {a: "copy", b: "copy"}, {})


@needs_precheck
@needs_make_disk
def test_overlays_into_a_nearly_full_filesystem(conn, prefix, tpl, scratch, small_fs):
    dest = small_fs("16m")
    one = space.overlay_bytes(space.virtual_size(str(tpl["disk"]), "qcow2"))
    filler = fill(dest, 2 * one + one // 2)  # room for two overlays, not three
    foreign = snapshot([filler])
    o1, o2, o3 = (f"{prefix}-o{i}" for i in (1, 2, 3))
    r = run_module("kvm_clone", clone_args(tpl, dest, [o1, o2, o3], mode="overlay"))
    assert r.get("failed") and r["error"] == "StorageError", r
    assert f"Not enough free space in {dest} for this batch" in r["msg"]
    assert f"3 overlays of {tpl['disk']} at {space.human(one)} each" in r["msg"]
    assert "the first 2 of these 3 clones would fit" in r["msg"]
    assert_end_state(conn, prefix, tpl, dest, {}, foreign)
    assert os.stat(tpl["disk"]).st_mode & 0o222  # refused before anything: the base was not even protected

    # two fit by the precheck; the filesystem then fills up (another writer) before o2's qemu-img create
    env = shim_env(scratch, "create", dest / f"{o2}.qcow2", dest / "late-writer.bin", 0)
    r = run_module("kvm_clone", clone_args(tpl, dest, [o1, o2], mode="overlay"), env=env)
    assert (dest / "late-writer.bin").exists(), "the qemu-img shim was not used"
    assert r.get("failed") and r["failed_clones"] == [o2], r
    assert f"Out of space in {dest} while creating disk {o2}.qcow2 of clone '{o2}'" in r["msg"]
    foreign.update(snapshot([dest / "late-writer.bin"]))
    assert_end_state(conn, prefix, tpl, dest, {o1: "overlay"}, foreign)
    assert not os.stat(tpl["disk"]).st_mode & 0o222  # o1 is made: its base is read-only now
