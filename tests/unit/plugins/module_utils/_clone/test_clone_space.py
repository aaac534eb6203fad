"""_clone/space.py: what new clone files need (against real qemu-img output), the precheck, ENOSPC messages.

The estimates are checked against what qemu-img really writes in tmp_path: an
estimate below it would let a batch start that cannot finish, one far above
it would refuse batches that fit.
"""

from __future__ import annotations

import os
import select
import subprocess
from types import SimpleNamespace

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._clone import space
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, StorageError
from tests.fakes import runner

MiB = space.MiB


def qimg(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def qio(fmt, cmd, path):
    subprocess.run(["qemu-io", "-f", fmt, "-c", cmd, str(path)], check=True, capture_output=True)


def allocated(path) -> int:
    return os.stat(path).st_blocks * 512


def disk(src, mode="copy", fmt="qcow2", path="/nowhere/c.qcow2"):
    return dict(
        target="vda", path=str(path), format=fmt, mode=mode, source=str(src), source_format=fmt, backing_file=None
    )


def item(name, disks, nvram=None, seed=None):
    return dict(name=name, disks=disks, nvram=nvram, seed=seed)


def statvfs_free(free: int, frsize: int = 4096):
    return lambda _path: SimpleNamespace(f_bavail=free // frsize, f_frsize=frsize)


@pytest.fixture
def images(tmp_path):
    """qcow2 with 8 MiB of data; an overlay of it with 6 more (half over the first); that compressed; raw."""
    a = tmp_path / "a.qcow2"
    qimg("create", "-q", "-f", "qcow2", str(a), "64M")
    qio("qcow2", "write -P 0x5a 0 8M", a)
    top = tmp_path / "top.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", str(a), "-F", "qcow2", str(top))
    qio("qcow2", "write -P 0x11 5M 6M", top)
    comp = tmp_path / "comp.qcow2"
    qimg("convert", "-c", "-f", "qcow2", "-O", "qcow2", str(a), str(comp))
    raw = tmp_path / "r.img"
    qimg("create", "-q", "-f", "raw", str(raw), "64M")
    qio("raw", "write -P 0x5a 0 8M", raw)
    return dict(a=a, top=top, comp=comp, raw=raw)


@pytest.mark.parametrize("name", ["a", "top", "comp", "raw"])
def test_copy_estimate_covers_what_qemu_img_convert_writes(images, tmp_path, name):
    src = images[name]
    fmt = "raw" if name == "raw" else "qcow2"
    out = tmp_path / f"out-{name}"
    qimg("convert", "-q", "-f", fmt, "-O", fmt, str(src), str(out))
    written = allocated(out)
    need = space.needed_bytes(disk(src, fmt=fmt), runner)
    assert need >= written + space.SLACK - 64 * 1024, (need, written)  # covered, with the slack on top
    assert need <= written + space.SLACK + 512 * 1024, (need, written)  # and not far over
    if name in ("top", "comp"):
        # the source's own allocation would be far too low: chains flatten, compressed clusters expand
        assert allocated(src) < written - 2 * MiB


@pytest.mark.parametrize("size", ["128M", "10G", "1T"])
def test_overlay_estimate_is_the_empty_qcow2_plus_slack(tmp_path, size):
    base = tmp_path / "base.qcow2"
    qimg("create", "-q", "-f", "qcow2", str(base), size)
    ov = tmp_path / "ov.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(ov))
    need = space.needed_bytes(disk(base, mode="overlay"), runner)
    real = max(allocated(ov), os.path.getsize(ov))
    assert real <= need - space.SLACK < real + space.CLUSTER, (need, real)


def test_overlay_of_a_raw_base_uses_its_length(tmp_path):
    base = tmp_path / "base.img"
    qimg("create", "-q", "-f", "raw", str(base), "2G")
    assert space.virtual_size(str(base), "raw") == 2 << 30
    assert space.needed_bytes(disk(base, mode="overlay", fmt="raw"), runner) == 3 * 65536 + 65536 + space.SLACK


def test_each_source_is_measured_once_per_batch(images):
    calls = []

    def counting(argv, env=None):
        calls.append(argv[1])
        return runner(argv)

    cache = {}
    first = space.needed_bytes(disk(images["a"]), counting, cache)
    assert space.needed_bytes(disk(images["a"], path="/nowhere/d.qcow2"), counting, cache) == first
    assert calls == ["measure"]


def test_measure_failure_is_a_storage_error_naming_the_source(tmp_path):
    bad = tmp_path / "bad.qcow2"
    bad.write_bytes(b"QFI\xfb" + b"\0" * 200)
    with pytest.raises(StorageError, match=r"Cannot measure how much space a copy of .*bad\.qcow2 needs"):
        space.needed_bytes(disk(bad), runner)


def test_the_measure_does_not_need_the_write_lock_of_a_running_template(images):
    # an interactive qemu-io holds the image's locks, as the qemu of a running template does
    proc = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(images["a"])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        seen = b""
        while b"qemu-io> " not in seen:  # its prompt: the image is open and locked (nothing may probe before)
            ready, _w, _x = select.select([proc.stdout], [], [], 30)
            chunk = os.read(proc.stdout.fileno(), 4096) if ready else b""
            assert chunk, f"qemu-io did not open the image: {seen!r}"
            seen += chunk
        rc, _o, err = runner(["qemu-img", "measure", "-O", "qcow2", "-f", "qcow2", str(images["a"])])
        assert rc != 0 and "lock" in err  # a plain `qemu-img measure` is refused
        assert space.needed_bytes(disk(images["a"]), runner) > 8 * MiB
    finally:
        proc.communicate(b"quit\n", timeout=30)


def test_check_space_refuses_the_whole_batch_with_directory_needed_and_free(images, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    one = space.needed_bytes(disk(images["a"]), runner)
    items = [item(n, [disk(images["a"], path=dest / f"{n}.qcow2")]) for n in ("c1", "c2", "c3")]
    free = one + one // 2
    with pytest.raises(StorageError) as err:
        space.check_space(items, runner, statvfs=statvfs_free(free))
    msg = err.value.message
    assert f"Not enough free space in {dest} for this batch" in msg
    assert f"need {space.human(3 * one)} ({3 * one} bytes: 3 copies of {images['a']} at {space.human(one)} each)" in msg
    free_seen = free // 4096 * 4096
    assert f"and {space.human(free_seen)} ({free_seen} bytes) is free there. Nothing was created." in msg
    assert "the first 1 of these 3 clones would fit" in msg
    assert f"Free at least {space.human(3 * one - free_seen)} there" in msg
    assert err.value.details == dict(directory=str(dest), needed_bytes=3 * one, free_bytes=free_seen)
    assert list(dest.iterdir()) == []


def test_check_space_passes_and_reports_the_headroom(images, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    items = [item(n, [disk(images["a"], mode="overlay", path=dest / f"{n}.qcow2")]) for n in ("o1", "o2")]
    each = space.overlay_bytes(64 * MiB)
    summary = space.check_space(items, runner, statvfs=statvfs_free(40 * MiB))
    assert summary == [
        dict(directory=str(dest), needed=2 * each, free=40 * MiB, after=40 * MiB - 2 * each, overlay_virtual=64 * MiB)
    ]
    (warning,) = space.headroom_warnings(summary)
    assert warning.startswith(f"{dest} will have {space.human(40 * MiB - 2 * each)} free after this batch")
    assert "less than one overlay can grow to (64.0 MiB)" in warning
    roomy = space.check_space(items, runner, statvfs=statvfs_free(1 << 30))
    assert space.headroom_warnings(roomy) == []


def test_files_in_two_directories_of_one_filesystem_share_its_free_space(images, tmp_path):
    dest, nv = tmp_path / "dest", tmp_path / "nvram"
    dest.mkdir()
    nv.mkdir()
    vars_src = tmp_path / "tpl_VARS.fd"
    vars_src.write_bytes(b"\1" * (3 * MiB))
    docs = {"meta-data": b"instance-id: x\n", "user-data": b"#cloud-config\n"}
    it = item(
        "c1",
        [disk(images["a"], mode="overlay", path=dest / "c1.qcow2")],
        nvram=(str(vars_src), str(nv / "c1_VARS.fd")),
        seed=dict(path=str(dest / "c1-cidata.iso"), documents=docs),
    )
    needs = space.item_needs(it, runner)
    assert [n["kind"] for n in needs] == ["overlay", "NVRAM copy", "cloud-init seed"]
    assert needs[1]["bytes"] == 3 * MiB + space.SLACK
    total = sum(n["bytes"] for n in needs)
    with pytest.raises(StorageError, match=rf"in {dest} and {nv} for this batch: its 3 new file\(s\) need"):
        space.check_space([it], runner, statvfs=statvfs_free(total - 4096))
    assert space.check_space([it], runner, statvfs=statvfs_free(total))[0]["needed"] == total


def test_no_item_to_create_needs_nothing():
    assert space.check_space([], runner, statvfs=statvfs_free(0)) == []


@pytest.mark.parametrize(
    "n, text", [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (42598400, "40.6 MiB"), (3 << 40, "3.0 TiB")]
)
def test_human(n, text):
    assert space.human(n) == text


def test_enospc_message_names_directory_clone_need_and_free(tmp_path):
    err = "Copying /b/tpl.qcow2 to /d/c2.qcow2 failed: qemu-img: error while writing at byte 2: No space left on device"
    msg = space.enospc_message(err, "/d/c2.qcow2", str(tmp_path), "c2", 43 * MiB, statvfs=statvfs_free(5 * MiB))
    assert msg == (
        f"Out of space in {tmp_path} while creating disk c2.qcow2 of clone 'c2'; it needs about 43.0 MiB; "
        f"5.0 MiB is free there now. The partial file was removed and no domain was defined for 'c2'. "
        f"Free space in {tmp_path} (or choose another dest_dir) and run again. ({err})"
    )
    assert space.enospc_message("Permission denied", "/d/c2.qcow2", str(tmp_path), "c2") is None
    assert space.is_enospc("write failed: Disk quota exceeded")


def failing_copy(stderr: str, partial: bytes = b"half a disk"):
    """A runner whose qemu-img convert leaves a partial file and fails, as a full filesystem makes it."""

    def run(argv, env=None):
        if argv[1] == "convert":
            with open(argv[-1], "wb") as f:
                f.write(partial)
            return 1, "", stderr
        return runner(argv)

    return run


def test_make_disk_removes_the_partial_copy_and_explains_enospc(images, tmp_path):
    target = tmp_path / "c2.qcow2"
    d = disk(images["a"], path=target)
    err = "qemu-img: error while writing at byte 23330816: No space left on device"
    with pytest.raises(StorageError) as exc:
        space.make_disk(failing_copy(err), "c2", d, statvfs=statvfs_free(MiB))
    assert not target.exists()
    msg = exc.value.message
    assert msg.startswith(f"Out of space in {tmp_path} while creating disk c2.qcow2 of clone 'c2'; it needs about ")
    assert "1.0 MiB is free there now. The partial file was removed" in msg and err in msg
    assert exc.value.details == dict(directory=str(tmp_path))


def test_make_disk_other_failures_keep_their_message_and_leave_nothing(images, tmp_path):
    target = tmp_path / "c2.qcow2"
    with pytest.raises(StorageError, match=r"^Copying .* failed: qemu-img: Could not open 'x': Permission denied$"):
        space.make_disk(
            failing_copy("qemu-img: Could not open 'x': Permission denied"), "c2", disk(images["a"], path=target)
        )
    assert not target.exists()


def test_make_disk_never_touches_a_file_that_appeared_after_the_plan(images, tmp_path):
    target = tmp_path / "c2.qcow2"
    target.write_bytes(b"someone else's")
    with pytest.raises(Conflict, match="appeared after the plan was made; it was left alone"):
        space.make_disk(runner, "c2", disk(images["a"], path=target))
    assert target.read_bytes() == b"someone else's"


@pytest.mark.parametrize("mode", ["copy", "overlay"])
def test_make_disk_creates_a_real_copy_or_overlay(images, tmp_path, mode):
    target = tmp_path / "c1.qcow2"
    space.make_disk(runner, "c1", disk(images["top"], mode=mode, path=target))
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(target)], capture_output=True, text=True, check=True
    )
    has_backing = '"backing-filename"' in info.stdout
    assert has_backing is (mode == "overlay")


def test_make_disk_that_cannot_remove_the_partial_file_keeps_the_intent_open(images, tmp_path):
    target = tmp_path / "c2.qcow2"

    def leaves_a_directory(argv, env=None):
        if argv[1] != "convert":
            return runner(argv)
        os.mkdir(argv[-1])  # something os.unlink cannot delete
        return 1, "", "qemu-img: error while writing at byte 0: No space left on device"

    with pytest.raises(StorageError) as exc:
        space.make_disk(leaves_a_directory, "c2", disk(images["a"], path=target), statvfs=statvfs_free(0))
    msg = exc.value.message
    assert f"The partial file {target} was NOT removed" in msg
    # the error names the file left (partial_file): act.py keeps the intent journal open, a rerun finishes it
    assert msg.endswith(f" (rollback: cannot delete {target}: Is a directory)")
    assert exc.value.details["partial_file"] == str(target)


def test_explain_failure_names_the_directories_of_the_clone_files():
    it = item("c1", [disk("/b/tpl.qcow2", path="/d/c1.qcow2")], nvram=("/n/tpl_VARS.fd", "/n/c1_VARS.fd"))
    err = "No space left on device (/n/c1_VARS.fd)"
    assert space.explain_failure(err, it) == (
        "Out of space in /d or /n while creating the files of clone 'c1'; free space there (or choose another "
        f"dest_dir) and run again. ({err})"
    )
    assert space.explain_failure("Permission denied (/n/c1_VARS.fd)", it) == "Permission denied (/n/c1_VARS.fd)"
    already = "Out of space in /d while creating disk c1.qcow2 of clone 'c1'; ..."
    assert space.explain_failure(already, it) == already
