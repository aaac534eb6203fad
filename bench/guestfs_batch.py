#!/usr/bin/env python3
"""How kvm_guestfs's cost grows with the number of files, against the course's guestmount + cat, in one run.

On an overlay of the test guest's base image, into which 20 small files were
written (setup, not timed), it times:

* kvm_guestfs reading 1 file, then 20 files: the real module run as Ansible runs it
  (tests/harness.run_module, a fresh Python process), with ``mounts`` given;
* the course's way for 20 files: per file a real ``guestmount --ro -o nonempty -a IMAGE
  -m /dev/sda1 MOUNTPOINT``, ``cat MOUNTPOINT/FILE``, ``guestunmount`` and a wait for
  guestmount to exit (so each file pays one appliance launch).

Prints seconds and ratios (target: 20 files within 1.2x of 1 file). Everything it
creates (one directory under /var/lib/libvirt/images) is removed at the end, also on
failure. Not part of the tests; one appliance launch is ~20-60 s here, so the course
part alone takes several minutes (``--course-files`` runs fewer and scales).

    .venv/bin/python -m bench.guestfs_batch [--files 20] [--course-files 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

from tests import guestlib
from tests.harness import run_module

ROOT = Path(__file__).resolve().parent.parent

IMAGES = Path("/var/lib/libvirt/images")
ENV = {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}  # only for the course's commands; the module decides itself


def file_path(i: int) -> str:
    return f"/etc/bench/file{i:02d}.conf"


def content(i: int) -> bytes:
    return (f"# bench file {i}\n" + f"key{i} = value {i}\n" * 40).encode()


def prepare(overlay: Path, count: int) -> None:
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    try:
        g.set_backend_settings(["force_tcg"])
        g.add_drive_opts(str(overlay), format="qcow2", readonly=0)  # the overlay only; the base stays untouched
        g.launch()
        g.mount("/dev/sda1", "/")
        g.mkdir_p("/etc/bench")
        for i in range(1, count + 1):
            g.write(file_path(i), content(i))
        g.umount_all()
        g.shutdown()
    finally:
        g.close()


def module_read(overlay: Path, paths: list[str]) -> float:
    t = time.monotonic()
    r = run_module(
        "kvm_guestfs",
        {"disks": [{"path": str(overlay), "format": "qcow2"}], "mounts": {"/dev/sda1": "/"}, "paths": paths},
    )
    elapsed = time.monotonic() - t
    if r.get("failed"):
        raise SystemExit(f"kvm_guestfs failed: {r.get('msg')}")
    for i, p in enumerate(paths, 1):
        assert r["files"][p]["content"].encode() == content(int(p[-7:-5])), (i, p)
    return elapsed


def wait_exit(pid_file: Path, timeout: float = 120) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        if "\nState:\tZ" in state:
            return
        time.sleep(0.1)
    raise SystemExit(f"guestmount {pid} did not exit within {timeout} s")


def course_read(overlay: Path, workdir: Path, paths: list[str]) -> float:
    mp = workdir / "mnt"
    mp.mkdir(exist_ok=True)
    (mp / "placeholder").write_text("the course's -o nonempty case\n")
    pid_file = workdir / "guestmount.pid"
    env = dict(os.environ, **ENV)
    t = time.monotonic()
    for p in paths:
        subprocess.run(
            ["guestmount", "--ro", "-o", "nonempty", "--pid-file", str(pid_file), "--format=qcow2", "-a", str(overlay),
             "-m", "/dev/sda1", str(mp)],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
        try:
            data = subprocess.run(["cat", f"{mp}{p}"], check=True, capture_output=True).stdout
            assert data == content(int(p[-7:-5]))
        finally:
            subprocess.run(["guestunmount", str(mp)], check=True, env=env, capture_output=True)
            wait_exit(pid_file)
    return time.monotonic() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--course-files", type=int, default=20, help="files read the course's way (scaled to --files)")
    args = ap.parse_args()

    guest = guestlib.build_guest()
    workdir = IMAGES / f"virtops-bench-vb-{secrets.token_hex(4)}"
    workdir.mkdir(mode=0o755)
    try:
        overlay = guestlib.make_overlay(guest["base"], workdir / "bench.qcow2")
        prepare(overlay, args.files)
        paths = [file_path(i) for i in range(1, args.files + 1)]

        one = module_read(overlay, paths[:1])
        many = module_read(overlay, paths)
        course_n = min(args.course_files, args.files)
        course = course_read(overlay, workdir, paths[:course_n])
        course_scaled = course * args.files / course_n

        n = args.files
        rows = [
            ("kvm_guestfs, 1 file", one, 1.0),
            (f"kvm_guestfs, {n} files", many, many / one),
            (
                f"guestmount + cat per file, {n} files" + (f" (measured {course_n}, scaled)" if course_n != n else ""),
                course_scaled,
                course_scaled / one,
            ),
        ]
        print(f"{'method':<52} {'seconds':>9} {'x 1 file':>9}")
        for label, secs, ratio in rows:
            print(f"{label:<52} {secs:9.1f} {ratio:9.2f}")
        print()
        verdict = "met" if many <= 1.2 * one else "NOT met"
        print(f"kvm_guestfs {n} files / 1 file: {many / one:.2f}x (target <= 1.2x: {verdict})")
        print(f"course ({n} guestmounts) / kvm_guestfs {n} files: {course_scaled / many:.1f}x slower")
        print()
        print("| method | seconds | x 1 file |\n|---|---:|---:|")
        for label, secs, ratio in rows:
            print(f"| {label} | {secs:.1f} | {ratio:.2f} |")
    finally:
        mp = workdir / "mnt"
        if mp.is_dir() and os.path.ismount(mp):
            subprocess.run(["guestunmount", str(mp)], check=False, capture_output=True)
            wait_exit(workdir / "guestmount.pid")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
