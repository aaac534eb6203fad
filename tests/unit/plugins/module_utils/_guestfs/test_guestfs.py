"""Unit tests for the _guestfs package: the read logic against a fake libguestfs handle, no appliance."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    GuestfsError,
    InvalidInput,
    StorageError,
    TimeoutExpired,
)
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs import drives, mount, read
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.manager import GuestfsManager
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.session import GuestfsSession
from ansible_collections.virtops.kvm.plugins.module_utils._wait import Clock
from tests import fakes
from tests.fakes import FS, FakeGuestFS, FakeRunner

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = b"root:x:0:\nstaff:x:50:\n"


def reg(data: bytes, perm: int = 0o644, uid: int = 0, gid: int = 0):
    return (data, stat.S_IFREG | perm, uid, gid)


def one_disk(files=None, dirs=(), filesystems=None, roots=(), **kw) -> FakeGuestFS:
    """A fake appliance whose every filesystem (default: /dev/sda1, ext4) shows ``files`` and ``dirs``."""
    content = FS()
    for path, (data, mode, uid, gid) in (files or {}).items():
        content.add(path, data, stat.S_IMODE(mode), uid, gid)
    for path in dirs:
        content.mkdir_p(path)
    fss = filesystems if filesystems is not None else {"/dev/sda1": "ext4"}
    return FakeGuestFS(devices={d: content.typed(t) for d, t in fss.items()}, roots=roots, **kw)


def guest(**kw) -> FakeGuestFS:
    files = {"/etc/passwd": reg(PASSWD), "/etc/group": reg(GROUP), **kw.pop("files", {})}
    return one_disk(files=files, dirs={"/etc", *kw.pop("dirs", ())}, **kw)


def session(handle, force_tcg=False):
    return GuestfsSession([{"path": "/img/a.qcow2", "format": "qcow2"}], force_tcg, handle_factory=lambda: handle)


# --------------------------------------------------------------------------- one launch, safety


def test_one_launch_for_many_paths_readonly_no_network():
    files = {f"/etc/f{i}": reg(f"file {i}\n".encode()) for i in range(20)}
    h = guest(files=files)
    s = GuestfsSession(
        [{"path": "/img/a.qcow2", "format": "qcow2"}, {"path": "/img/b.img", "format": "raw"}],
        force_tcg=True,
        handle_factory=lambda: h,
    )
    result = read.read_guest(s, paths=list(files), list_dirs=["/etc"], mounts={"/dev/sda1": "/"})
    assert h.launches == 1
    assert result["appliance"]["launches"] == 1
    assert h.drives == [
        ("/img/a.qcow2", {"readonly": True, "format": "qcow2"}),
        ("/img/b.img", {"readonly": True, "format": "raw"}),
    ]
    assert h.network is False
    assert h.settings == ["force_tcg"]
    assert h.closed and ("shutdown",) in h.events
    assert result["files"]["/etc/f7"]["content"] == "file 7\n"
    assert result["dirs"]["/etc"][:3] == ["f0", "f1", "f10"]
    assert result["changed"] is False


def test_force_tcg_keeps_existing_settings_and_is_not_added_when_off():
    h = guest()
    h.settings = ["appliance.debug"]
    read.read_guest(session(h, force_tcg=True), mounts={"/dev/sda1": "/"})
    assert h.settings == ["appliance.debug", "force_tcg"]
    h2 = guest()
    read.read_guest(session(h2, force_tcg=False), mounts={"/dev/sda1": "/"})
    assert h2.settings == []


def test_no_guest_program_is_ever_run():
    h = guest(files={"/etc/hosts": reg(b"x")})
    # a fake without command/sh: any such call would raise AttributeError
    assert not hasattr(h, "command") and not hasattr(h, "sh")
    read.read_guest(session(h), paths=["/etc/hosts"], list_dirs=["/etc"])


def test_launch_failure_names_libguestfs_message_and_force_tcg_hint():
    h = guest(launch_error="qemu: failed to set MSR 0x10a")
    with pytest.raises(GuestfsError) as exc:
        read.read_guest(session(h, force_tcg=False), paths=["/etc/hosts"])
    assert "failed to set MSR 0x10a" in exc.value.message
    assert "force_tcg: yes" in exc.value.message
    h2 = guest(launch_error="supermin: failed to find a suitable kernel")
    with pytest.raises(GuestfsError) as exc2:
        read.read_guest(session(h2, force_tcg=True), paths=["/etc/hosts"])
    assert "libguestfs-test-tool" in exc2.value.message and "suitable kernel" in exc2.value.message


# --------------------------------------------------------------------------- reads


def test_text_file_metadata_and_owner_names():
    data = b"127.0.0.1 localhost\n"
    h = guest(files={"/etc/hosts": reg(data, 0o640, 1000, 50)})
    f = read.read_guest(session(h), paths=["/etc/hosts"])["files"]["/etc/hosts"]
    assert f == {
        "exists": True,
        "size": len(data),
        "mode": "0640",
        "uid": 1000,
        "gid": 50,
        "owner": "alice",
        "group": "staff",
        "mtime": 1700000000,
        "sha256": hashlib.sha256(data).hexdigest(),
        "content": data.decode(),
    }


def test_unknown_uid_is_reported_as_number():
    h = one_disk(files={"/x": reg(b"a", uid=4242, gid=7)})
    f = read.read_guest(session(h), paths=["/x"])["files"]["/x"]
    assert (f["owner"], f["group"]) == ("4242", "7")


def test_binary_file_is_base64():
    data = bytes(range(256))
    h = guest(files={"/bin/blob": reg(data, 0o755)})
    f = read.read_guest(session(h), paths=["/bin/blob"])["files"]["/bin/blob"]
    assert "content" not in f
    assert base64.b64decode(f["content_b64"]) == data
    assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert f["mode"] == "0755"


def test_missing_path_is_not_a_failure_by_default():
    h = guest(files={"/etc/hosts": reg(b"x")})
    r = read.read_guest(session(h), paths=["/etc/hosts", "/etc/nope"])
    assert r["files"]["/etc/nope"] == {"exists": False}
    assert r["files"]["/etc/hosts"]["exists"] is True


def test_missing_path_fails_with_fail_missing_but_others_are_read():
    h = guest(files={"/etc/hosts": reg(b"x")})
    with pytest.raises(GuestfsError) as exc:
        read.read_guest(session(h), paths=["/etc/nope", "/etc/hosts"], fail_missing=True)
    assert "/etc/nope does not exist" in exc.value.message
    files = exc.value.details["files"]
    assert files["/etc/hosts"]["content"] == "x"
    assert files["/etc/nope"]["exists"] is False


def test_oversized_file_is_an_error_never_truncated():
    big = b"a" * 2000
    h = guest(files={"/var/big": reg(big), "/etc/hosts": reg(b"small")})
    with pytest.raises(GuestfsError) as exc:
        read.read_guest(session(h), paths=["/var/big", "/etc/hosts"], max_size=1000)
    entry = exc.value.details["files"]["/var/big"]
    assert "content" not in entry and "content_b64" not in entry
    assert entry["size"] == 2000 and entry["exists"] is True
    assert "2000 bytes" in entry["error"] and "max_size 1000" in entry["error"]
    assert "2000 bytes" in exc.value.message
    assert ("pread", "/var/big") not in h.events  # not even read
    assert exc.value.details["files"]["/etc/hosts"]["content"] == "small"


def test_large_file_is_read_in_chunks_whole():
    data = bytes(range(256)) * 9000  # 2.2 MiB: three 1 MiB preads
    h = guest(files={"/var/big.bin": reg(data)})
    f = read.read_guest(session(h), paths=["/var/big.bin"], max_size=4 << 20)["files"]["/var/big.bin"]
    assert base64.b64decode(f["content_b64"]) == data
    assert h.events.count(("pread", "/var/big.bin")) == 3


def test_file_exactly_max_size_is_read():
    h = guest(files={"/f": reg(b"a" * 1000)})
    assert read.read_guest(session(h), paths=["/f"], max_size=1000)["files"]["/f"]["size"] == 1000


def test_directory_in_paths_is_an_error_that_points_to_list_dirs():
    h = guest()
    with pytest.raises(GuestfsError) as exc:
        read.read_guest(session(h), paths=["/etc"])
    assert "list_dirs" in exc.value.details["files"]["/etc"]["error"]


def test_missing_directory_listing_is_null_with_warning_or_fails():
    h = guest()
    r = read.read_guest(session(h), list_dirs=["/nope", "/etc"])
    assert r["dirs"]["/nope"] is None
    assert r["dirs"]["/etc"] == ["group", "passwd"]
    assert any("/nope" in w for w in r["warnings_list"])
    with pytest.raises(GuestfsError):
        read.read_guest(session(guest()), list_dirs=["/nope"], fail_missing=True)


@pytest.mark.parametrize("bad", ["etc/hosts", "", "./x"])
def test_relative_guest_path_is_refused_before_launch(bad):
    h = guest()
    with pytest.raises(InvalidInput) as exc:
        read.read_guest(session(h), paths=[bad])
    assert "not an absolute path" in exc.value.message
    assert h.launches == 0


# --------------------------------------------------------------------------- finding filesystems


def test_explicit_mounts_skip_inspection_and_mount_shortest_first():
    # one content behind every device: /boot for sda2 on sda1, /efi for sda3 on sda2
    h = guest(filesystems={"/dev/sda1": "ext4", "/dev/sda2": "ext4", "/dev/sda3": "vfat"}, dirs=["/boot", "/efi"])
    r = read.read_guest(session(h), mounts={"/dev/sda3": "/boot/efi", "/dev/sda2": "/boot", "/dev/sda1": "/"})
    assert ("inspect_os",) not in h.events
    assert h.mounted == [("/dev/sda1", "/"), ("/dev/sda2", "/boot"), ("/dev/sda3", "/boot/efi")]
    assert r["inspection"] is None


def test_explicit_mount_of_unknown_device_lists_filesystems():
    h = guest()
    with pytest.raises(GuestfsError) as exc:
        read.read_guest(session(h), mounts={"/dev/vda1": "/"})
    assert "/dev/vda1" in exc.value.message and "/dev/sda1 (ext4)" in exc.value.message


def test_inspection_findings_and_mount_order():
    h = guest(
        files={"/etc/hostname": reg(b"guest1\n")},
        dirs=["/boot"],
        filesystems={"/dev/sda1": "ext4", "/dev/sda2": "ext4"},
        roots=["/dev/sda2"],
        mountpoints={"/boot": "/dev/sda1", "/": "/dev/sda2"},
    )
    r = read.read_guest(session(h))
    assert h.mounted == [("/dev/sda2", "/"), ("/dev/sda1", "/boot")]
    assert r["inspection"] == {
        "method": "inspection",
        "root": "/dev/sda2",
        "os_type": "linux",
        "distro": "debian",
        "product_name": "Debian GNU/Linux 12",
        "version": "12.0",
        "hostname": "guest1",
        "mountpoints": {"/boot": "/dev/sda1", "/": "/dev/sda2"},
    }


def test_no_os_but_one_filesystem_is_mounted_at_root():
    h = guest(filesystems={"/dev/sda1": "ext4", "/dev/sda2": "swap"})
    r = read.read_guest(session(h))
    assert h.mounted == [("/dev/sda1", "/")]
    assert r["inspection"]["method"] == "single-filesystem"
    assert r["inspection"]["mountpoints"] == {"/": "/dev/sda1"}


@pytest.mark.parametrize("fss", [{}, {"/dev/sda1": "ext4", "/dev/sdb1": "xfs"}])
def test_no_os_found_error_says_how_to_fix(fss):
    h = guest(filesystems=fss)
    with pytest.raises(GuestfsError) as exc:
        read.read_guest(session(h), paths=["/etc/hosts"])
    assert "No operating system found" in exc.value.message
    assert "mounts option" in exc.value.message


# --------------------------------------------------------------------------- drives and formats


@pytest.fixture
def qcow2(tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 65536)
    top = tmp_path / "top.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top)],
        check=True,
    )
    return top, base


def test_resolve_drives_detects_formats(qcow2):
    top, base = qcow2
    assert drives.resolve_drives([str(top), {"path": str(base)}]) == [
        {"path": str(top), "format": "qcow2"},
        {"path": str(base), "format": "raw"},
    ]


def test_resolve_drives_missing_disk_and_missing_backing_file(qcow2, tmp_path):
    top, base = qcow2
    with pytest.raises(StorageError) as exc:
        drives.resolve_drives([str(tmp_path / "nope.qcow2")])
    assert "does not exist" in exc.value.message
    base.unlink()
    with pytest.raises(StorageError) as exc2:
        drives.resolve_drives([str(top)])
    assert str(base) in exc2.value.message and "backing chain" in exc2.value.message


def test_resolve_drives_unknown_format_and_relative_path(qcow2):
    top = qcow2[0]
    with pytest.raises(InvalidInput) as exc:
        drives.resolve_drives([{"path": str(top), "format": "qcow3"}])
    assert "Unknown disk image format 'qcow3'" in exc.value.message and "qcow2" in exc.value.hint
    with pytest.raises(InvalidInput):
        drives.resolve_drives(["images/a.qcow2"])


def test_domain_drives_skip_cdrom_and_network():
    root = dx.parse(
        """<domain type='qemu'><name>g1</name><devices>
        <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sdc'/></disk>
        <disk type='network' device='disk'><source protocol='nbd' name='x'/><target dev='vdb'/></disk>
        <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/dev/null'/>
        <target dev='vda'/></disk></devices></domain>"""
    )
    found, skipped = drives.domain_drives(root)
    assert found == [{"path": "/dev/null", "format": "raw", "target": "vda"}]
    assert len(skipped) == 2 and any("cdrom" in s for s in skipped)


# --------------------------------------------------------------------------- force_tcg


def test_decide_force_tcg():
    assert drives.decide_force_tcg("auto", lambda: (False, "no vmx"))[0] is True
    assert "no vmx" in drives.decide_force_tcg("auto", lambda: (False, "no vmx"))[1]
    assert drives.decide_force_tcg("auto", lambda: (True, "ok"))[0] is False
    assert drives.decide_force_tcg("yes", lambda: pytest.fail("not asked"))[0] is True
    assert drives.decide_force_tcg("no", lambda: pytest.fail("not asked"))[0] is False


def test_backend_env_merges_user_settings():
    assert drives.backend_env(True, {}) == {"LIBGUESTFS_BACKEND_SETTINGS": "force_tcg"}
    assert drives.backend_env(True, {"LIBGUESTFS_BACKEND_SETTINGS": "a:force_tcg"}) == {
        "LIBGUESTFS_BACKEND_SETTINGS": "a:force_tcg"
    }
    assert drives.backend_env(False, {}) == {}


def test_kvm_usable_uses_host_verdict():
    usable, reason = drives.kvm_usable()
    assert isinstance(usable, bool) and reason


# --------------------------------------------------------------------------- dest


def test_write_dest_only_when_different_and_not_in_check_mode(tmp_path):
    dest = str(tmp_path / "out")
    target, changed = read.write_dest(dest, "/etc/hosts", b"one", "4755", check_mode=True)
    assert changed and not os.path.exists(target)
    target, changed = read.write_dest(dest, "/etc/hosts", b"one", "4755", check_mode=False)
    assert changed and target == os.path.join(dest, "etc/hosts")
    assert open(target, "rb").read() == b"one"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755  # no setuid on the copy
    assert read.write_dest(dest, "/etc/hosts", b"one", "4755", check_mode=False) == (target, False)
    assert read.write_dest(dest, "/etc/hosts", b"two", "4755", check_mode=True) == (target, True)
    assert open(target, "rb").read() == b"one"


def test_read_guest_with_dest_reports_change_and_diff(tmp_path):
    h = guest(files={"/etc/hosts": reg(b"x")})
    r = read.read_guest(session(h), paths=["/etc/hosts", "/nope"], dest=str(tmp_path))
    assert r["changed"] is True
    assert r["files"]["/etc/hosts"]["dest"] == str(tmp_path / "etc/hosts")
    assert r["diff"]["after"]["dest_files"] == [str(tmp_path / "etc/hosts")]
    r2 = read.read_guest(session(guest(files={"/etc/hosts": reg(b"x")})), paths=["/etc/hosts"], dest=str(tmp_path))
    assert r2["changed"] is False


# --------------------------------------------------------------------------- guestmount


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
97 22 0:52 / /srv/my\\040root rw,nosuid,nodev,relatime shared:60 - fuse /dev/fuse rw,user_id=0,group_id=0
98 22 0:53 / /mnt rw - tmpfs tmpfs rw
"""


def test_mount_entry_and_guestmount_detection(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text(MOUNTINFO)
    entry = mount.mount_entry("/srv/my root", str(mi))
    assert entry == {"fstype": "fuse", "source": "/dev/fuse"}
    assert mount.is_guestmount(entry)
    assert not mount.is_guestmount(mount.mount_entry("/mnt", str(mi)))
    assert mount.mount_entry("/srv/other", str(mi)) is None


def test_guestmount_argv_readonly_nonempty_pidfile(tmp_path):
    gm = mount.GuestMount(FakeRunner([]), str(tmp_path / "mp"), pid_dir=str(tmp_path / "run"))
    disks = [{"path": "/img/a.qcow2", "format": "qcow2"}]
    assert gm.argv(disks, None) == [
        "guestmount", "--ro", "-o", "nonempty", "--pid-file", gm.pid_file,
        "--format=qcow2", "-a", "/img/a.qcow2", "-i", str(tmp_path / "mp"),
    ]  # fmt: skip
    argv = gm.argv(disks, {"/dev/sda2": "/boot", "/dev/sda1": "/"})
    assert argv[-5:] == ["-m", "/dev/sda1:/", "-m", "/dev/sda2:/boot", str(tmp_path / "mp")]
    assert "--rw" not in argv and "-w" not in argv


def test_guestmount_falls_back_to_single_filesystem(tmp_path):
    runner = FakeRunner([(1, "", "guestmount: no operating system was found on this disk"), (0, "", "")])
    gm = mount.GuestMount(runner, str(tmp_path / "mp"), pid_dir=str(tmp_path / "run"))
    done = gm.mount([{"path": "/img/a", "format": "raw"}], None, {"X": "1"}, lambda: {"/dev/sda1": "/"})
    assert "-i" in runner.calls[0][0]
    assert runner.calls[1][0][-3:] == ["-m", "/dev/sda1:/", str(tmp_path / "mp")]
    assert runner.calls[1][1] == {"X": "1"}
    assert done["mounts"] == {"/dev/sda1": "/"}
    assert os.path.isdir(tmp_path / "mp")


def test_guestmount_failure_message(tmp_path):
    gm = mount.GuestMount(FakeRunner([(1, "", "fuse: device not found")]), str(tmp_path / "mp"), str(tmp_path / "r"))
    with pytest.raises(GuestfsError) as exc:
        gm.mount([{"path": "/img/a", "format": "raw"}], {"/dev/sda1": "/"}, {}, lambda: pytest.fail("no"))
    assert "fuse: device not found" in exc.value.message and "force_tcg" in exc.value.message


def test_unmount_waits_for_guestmount_process_to_exit(tmp_path):
    child = subprocess.Popen(["sleep", "60"])
    try:
        pid_dir = tmp_path / "run"
        pid_dir.mkdir()

        class Runner(FakeRunner):
            def __call__(self, argv, env=None):
                result = super().__call__(argv, env)
                child.terminate()  # guestmount exits some time after guestunmount returns
                return result

        runner = Runner([(0, "", "")])
        gm = mount.GuestMount(runner, str(tmp_path / "mp"), pid_dir=str(pid_dir))
        with open(gm.pid_file, "w") as f:
            f.write(f"{child.pid}\n")
        polls = []
        gm.clock = Clock(sleep=lambda s: polls.append(s) or child.wait(5))
        gm.unmount({}, timeout=30)
        assert runner.calls[0][0] == ["guestunmount", str(tmp_path / "mp")]
        assert child.poll() is not None
        assert not os.path.exists(gm.pid_file)
    finally:
        child.kill()
        child.wait()


def test_unmount_times_out_when_guestmount_does_not_exit(tmp_path):
    child = subprocess.Popen(["sleep", "60"])
    try:
        gm = mount.GuestMount(FakeRunner([(0, "", "")]), str(tmp_path / "mp"), pid_dir=str(tmp_path))
        with open(gm.pid_file, "w") as f:
            f.write(str(child.pid))
        now = [0.0]
        gm.clock = Clock(lambda: now[0], lambda s: now.__setitem__(0, now[0] + 10))
        with pytest.raises(TimeoutExpired) as exc:
            gm.unmount({}, timeout=25)
        assert str(child.pid) in exc.value.message
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------- the manager (libvirt test driver)


def test_manager_reads_domain_disks(testconn, qcow2):
    conn, created = testconn
    top = qcow2[0]
    fakes.define_domain(conn, created, "vt-gfs-off", top, running=False)
    h = guest(files={"/etc/hosts": reg(b"hi")})
    r = fakes.guestfs_manager(conn, dict(domain="vt-gfs-off", paths=["/etc/hosts"], mounts={"/dev/sda1": "/"}), h).run()
    assert h.drives == [(str(top), {"readonly": True, "format": "qcow2"})]
    assert r["files"]["/etc/hosts"]["content"] == "hi"
    assert r["appliance"]["force_tcg"] is False and r["mounted"] is False


def test_manager_refuses_running_domain_unless_allowed(testconn, qcow2):
    conn, created = testconn
    top = qcow2[0]
    fakes.define_domain(conn, created, "vt-gfs-on", top, running=True)
    h = guest(files={"/etc/hosts": reg(b"hi")})
    with pytest.raises(GuestfsError) as exc:
        fakes.guestfs_manager(conn, dict(domain="vt-gfs-on", paths=["/etc/hosts"]), h).run()
    assert "running domain(s) vt-gfs-on" in exc.value.message and "allow_running" in exc.value.message
    assert h.launches == 0
    # the same disk given by path is refused too
    with pytest.raises(GuestfsError):
        fakes.guestfs_manager(conn, dict(disks=[str(top)], paths=["/etc/hosts"]), h).run()
    assert h.launches == 0
    m = fakes.guestfs_manager(conn, dict(domain="vt-gfs-on", paths=["/etc/hosts"], allow_running=True), h)
    r = m.run()
    assert r["files"]["/etc/hosts"]["content"] == "hi"
    assert h.drives[0][1]["readonly"] is True
    assert any("inconsistent" in w for w in m.warnings)


def test_manager_unknown_domain(testconn):
    conn = testconn[0]
    with pytest.raises(DomainNotFound):
        fakes.guestfs_manager(conn, dict(domain="vt-gfs-nope"), guest()).run()


def test_manager_paths_refused_with_mount_states(testconn):
    conn = testconn[0]
    with pytest.raises(InvalidInput):
        fakes.guestfs_manager(conn, dict(state="unmounted", mount_point="/srv/x", paths=["/etc/hosts"]), guest()).run()


def test_manager_mounted_check_mode_and_foreign_mount(testconn, qcow2, tmp_path, monkeypatch):
    conn = testconn[0]
    top = qcow2[0]
    mp = tmp_path / "mp"
    runner = FakeRunner([])
    m = fakes.guestfs_manager(
        conn, dict(disks=[str(top)], state="mounted", mount_point=str(mp)), guest(), check_mode=True
    )
    m.runner = runner
    r = m.run()
    assert r["changed"] is True and r["mounted"] is True and runner.calls == []
    assert not mp.exists()
    # something that is not a guestmount on the mount point is refused, for both states
    monkeypatch.setattr(mount.GuestMount, "entry", lambda self: {"fstype": "tmpfs", "source": "tmpfs"})
    with pytest.raises(Conflict):
        fakes.guestfs_manager(conn, dict(disks=[str(top)], state="mounted", mount_point=str(mp)), guest()).run()
    with pytest.raises(Conflict):
        fakes.guestfs_manager(conn, dict(state="unmounted", mount_point=str(mp)), guest()).run()


def test_manager_mounted_again_is_unchanged_and_other_disks_conflict(testconn, qcow2, tmp_path, monkeypatch):
    conn = testconn[0]
    top, base = qcow2
    monkeypatch.setattr(mount.GuestMount, "entry", lambda self: {"fstype": "fuse", "source": "/dev/fuse"})
    monkeypatch.setattr(mount.GuestMount, "mounted_images", lambda self: [str(top)])
    r = fakes.guestfs_manager(conn, dict(disks=[str(top)], state="mounted", mount_point=str(tmp_path)), guest()).run()
    assert r["changed"] is False and r["mounted"] is True
    with pytest.raises(Conflict):
        fakes.guestfs_manager(conn, dict(disks=[str(base)], state="mounted", mount_point=str(tmp_path)), guest()).run()


def test_manager_refuses_only_writers_not_readers_or_backing_users(testconn, qcow2):
    """running_users keeps the active, writable, own-disk users of the one HostScan."""
    conn, created = testconn
    top, base = qcow2
    fakes.define_domain(conn, created, "vt-gfs-overlay", top, running=True)  # runs on top, which base backs
    ro = conn.defineXML(
        f"""<domain type='test'><name>vt-gfs-ro</name><memory>65536</memory><os><type>hvm</type></os>
        <devices><disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{base}'/>
        <target dev='vdb' bus='virtio'/><readonly/></disk></devices></domain>"""
    )
    created.append(ro)
    ro.create()
    m = fakes.guestfs_manager(conn, dict(disks=[str(base)], paths=["/etc/hosts"], mounts={"/dev/sda1": "/"}), guest())
    assert m.run()["files"]["/etc/hosts"]["exists"] is False
    assert not any("inconsistent" in w for w in m.warnings)


def test_manager_reads_disks_when_the_daemon_is_not_running(qcow2):
    """The lazy connection fails on first use; with disks that is a warning and the images are still read."""
    pytest.importorskip("libvirt")
    top = qcow2[0]
    h = guest(files={"/etc/hosts": reg(b"hi")})
    connection = Connection("qemu:///system?socket=/nonexistent/virtops-test.sock")
    m = GuestfsManager(
        dict(disks=[str(top)], paths=["/etc/hosts"], mounts={"/dev/sda1": "/"}, force_tcg="no"),
        connection,
        handle_factory=lambda: h,
    )
    r = m.run()
    assert r["files"]["/etc/hosts"]["content"] == "hi"
    assert any("is not running" in w and "virtops-test.sock" in w for w in m.warnings)
    assert h.launches == 1


def test_manager_session_warnings_survive_a_failed_read(testconn, qcow2):
    conn = testconn[0]
    top = qcow2[0]
    h = guest()

    def shutdown():
        raise RuntimeError("appliance closed early")

    h.shutdown = shutdown
    m = fakes.guestfs_manager(
        conn, dict(disks=[str(top)], paths=["/nope"], fail_missing=True, mounts={"/dev/sda1": "/"}), h
    )
    with pytest.raises(GuestfsError):
        m.run()
    assert m.warnings == ["libguestfs shutdown reported: appliance closed early"]


def test_manager_spec_defaults_and_needs(testconn, qcow2):
    conn = testconn[0]
    top = qcow2[0]
    assert GuestfsManager.needs({"state": "unmounted"}) == ()
    assert set(GuestfsManager.needs({"state": "read"})) == {"guestfs", "libvirt", "lxml"}
    kwargs = GuestfsManager.module_kwargs()
    assert kwargs["argument_spec"]["max_size"]["default"] == read.DEFAULT_MAX_SIZE
    assert "uri" in kwargs["argument_spec"] and kwargs["mutually_exclusive"] == [("domain", "disks")]
    # options not given come from the spec; max_size given reaches the read run
    h = guest(files={"/f": reg(b"a" * 11)})
    m = fakes.guestfs_manager(conn, dict(disks=[str(top)], paths=["/f"], max_size=10, mounts={"/dev/sda1": "/"}), h)
    assert m.p["unmount_timeout"] == 120 and m.p["state"] == "read"
    with pytest.raises(GuestfsError) as exc:
        m.run()
    assert "max_size 10" in exc.value.details["files"]["/f"]["error"]


@pytest.mark.parametrize("disks", [None, [], [None], [3], [["/x.img"]]])
def test_resolve_drives_refuses_what_is_not_a_disk(disks):
    """Found by fuzzing: these raised TypeError (a traceback) instead of naming the option."""
    with pytest.raises(InvalidInput, match=r"^disks"):
        drives.resolve_drives(disks)
