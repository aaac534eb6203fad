"""kvm_image on the managed host (module_utils/_image.py): probe, install without overwrite, the xattr digest cache.

Real files in a tmp dir, real extended attributes (the tests that need them skip where the tmp
file system has none), no Ansible: ImageTarget is driven with the params the action plugin sends,
ImageManager through run_module.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _image as im
from ansible_collections.virtops.kvm.plugins.module_utils._errors import Conflict, InvalidInput, StorageError
from ansible_collections.virtops.kvm.plugins.module_utils._manager import run_module

DATA = os.urandom(256 * 1024) + b"base"
SHA = hashlib.sha256(DATA).hexdigest()
OTHER = b"x" * len(DATA)  # the same size, other content
TOKEN = "0123456789abcdef"


def _xattrs_work(directory) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.virtops.test", b"1")
        return True
    except (AttributeError, OSError):
        return False
    finally:
        probe.unlink()


@pytest.fixture
def xattrs(tmp_path):
    if not _xattrs_work(tmp_path):
        pytest.skip("the tmp file system has no user extended attributes")


@pytest.fixture
def short_seal(monkeypatch):
    """A record covers 20 ms after its write, so a test can tamper 'later' without waiting a second."""
    monkeypatch.setattr(im, "SEAL_NS", 20_000_000)
    return 0.05


def target(dest, step="probe", check_mode=False, **params) -> im.ImageTarget:
    p = dict(src="/srv/base.qcow2", dest=str(dest), _sha256=SHA, mode="0444", _step=step)
    p.update(params)
    return im.ImageTarget(p, check_mode)


def stage(dest, data=DATA) -> str:
    staged = im.staged_path(str(dest), TOKEN)
    with open(staged, "wb") as f:
        f.write(data)
    return staged


def record(path):
    return json.loads(os.getxattr(path, im.XATTR))


def has_record(path) -> bool:
    try:
        os.getxattr(path, im.XATTR)
        return True
    except OSError:
        return False


# -- option checks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [(SHA, SHA), ("sha256:" + SHA.upper(), SHA), (f"  {SHA} ", SHA), (None, None), ("", None)],
)
def test_checksum_forms(value, expected):
    assert im.parse_checksum(value) == expected


@pytest.mark.parametrize("value", ["md5:" + "0" * 32, SHA[:-1], SHA + "0", "sha1:" + SHA, "g" * 64])
def test_checksum_that_is_no_sha256_is_refused(value):
    with pytest.raises(InvalidInput, match="not a sha256"):
        im.parse_checksum(value)


@pytest.mark.parametrize("dest", ["base.qcow2", "/a/../b.qcow2", "/a/b.qcow2/", "/a/b\n.qcow2", "/a/\0b", "", "/"])
def test_bad_dest_is_refused(dest):
    with pytest.raises(InvalidInput):
        im.check_dest(dest)


def test_dest_is_normalised():
    assert im.check_dest("/var//lib/./base.qcow2") == "/var/lib/base.qcow2"


@pytest.mark.parametrize("value, mode", [("0444", 0o444), ("444", 0o444), ("0o640", 0o640), (0o444, 0o444)])
def test_mode_forms(value, mode):
    assert im.parse_mode(value) == mode


@pytest.mark.parametrize("value", ["u+r", "0999", "12345", -1, 0o10000, True, None])
def test_bad_mode_is_refused(value):
    with pytest.raises(InvalidInput):
        im.parse_mode(value)


def test_unknown_owner_is_refused():
    with pytest.raises(InvalidInput, match="owner 'no-such-user-virtops' does not exist"):
        im.resolve_ids("no-such-user-virtops", None)
    assert im.resolve_ids("0", "0") == (0, 0)


def test_only_a_staging_name_of_dest_is_accepted(tmp_path):
    dest = str(tmp_path / "base.qcow2")
    assert im.check_staged(dest, im.staged_path(dest, TOKEN)) == str(tmp_path / f".base.qcow2.virtops-partial-{TOKEN}")
    for bad in (dest, str(tmp_path / "other"), im.staged_path(str(tmp_path / "x.qcow2"), TOKEN), "/etc/passwd", None):
        with pytest.raises(InvalidInput):
            im.check_staged(dest, bad)


def test_the_sha256_must_be_known(tmp_path):
    with pytest.raises(InvalidInput, match="sha256 of src is unknown"):
        target(tmp_path / "b", _sha256=None)


# -- probe -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check_mode", [False, True])
def test_probe_of_an_absent_dest_asks_for_a_copy_and_writes_nothing(tmp_path, check_mode):
    dest = tmp_path / "base.qcow2"
    res = target(dest, check_mode=check_mode).run()
    assert res["needs_copy"] is True and res["changed"] is True and res["copied"] is False
    assert res["diff"] == {
        "before": {"path": str(dest), "state": "absent"},
        "after": {"path": str(dest), "state": "file", "sha256": SHA, "mode": "0444"},
    }
    assert os.listdir(tmp_path) == []


def test_probe_of_a_missing_directory_says_to_create_it(tmp_path):
    with pytest.raises(InvalidInput, match=f"directory {tmp_path}/nodir of dest does not exist"):
        target(tmp_path / "nodir" / "base.qcow2").run()


def test_probe_of_the_same_image_is_unchanged_and_records_the_digest(tmp_path, xattrs):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o444)
    first = target(dest).run()
    assert first["changed"] is False and first["needs_copy"] is False and first["checksum_cached"] is False
    assert first["sha256"] == SHA and first["size"] == len(DATA)
    rec = record(dest)
    st = os.stat(dest)
    assert rec["sha256"] == SHA and rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns
    assert rec["ctime_ns"] >= st.st_ctime_ns
    second = target(dest).run()
    assert second["checksum_cached"] is True and second["changed"] is False and second["sha256"] == SHA


def test_a_cache_hit_does_not_read_the_file(tmp_path, xattrs, monkeypatch):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o444)
    target(dest).run()

    def no_hashing(path):
        raise AssertionError(f"{path} was read although its record is valid")

    monkeypatch.setattr(im, "hash_file", no_hashing)
    assert target(dest).run()["checksum_cached"] is True


def test_check_mode_probe_writes_no_record(tmp_path, xattrs):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o444)
    before = os.stat(dest)
    res = target(dest, check_mode=True).run()
    assert res["changed"] is False and res["checksum_cached"] is False
    assert not has_record(dest)
    assert os.stat(dest).st_ctime_ns == before.st_ctime_ns


def test_a_write_after_the_record_invalidates_it(tmp_path, xattrs, short_seal):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o644)
    target(dest, mode="0644").run()
    assert target(dest, mode="0644").run()["checksum_cached"] is True
    time.sleep(short_seal)
    dest.write_bytes(DATA)  # same bytes, new mtime: the record no longer holds, the file is read again
    res = target(dest, mode="0644").run()
    assert res["checksum_cached"] is False and res["sha256"] == SHA


def test_a_write_that_puts_the_old_size_and_mtime_back_is_caught_by_ctime(tmp_path, xattrs, short_seal):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o644)
    target(dest, mode="0644").run()
    st = os.stat(dest)
    time.sleep(short_seal)
    dest.write_bytes(OTHER)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(dest).st_mtime_ns == st.st_mtime_ns and os.stat(dest).st_size == st.st_size
    assert record(dest)["sha256"] == SHA  # the stale record is still there
    with pytest.raises(Conflict) as err:
        target(dest, mode="0644").run()
    assert hashlib.sha256(OTHER).hexdigest() in err.value.message


def test_a_record_for_another_size_or_mtime_is_not_trusted(tmp_path, xattrs):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(OTHER)
    st = os.stat(dest)
    for size, mtime in ((st.st_size + 1, st.st_mtime_ns), (st.st_size, st.st_mtime_ns - 1)):
        forged = dict(sha256=SHA, size=size, mtime_ns=mtime, ctime_ns=time.time_ns() + 10**12)
        os.setxattr(dest, im.XATTR, json.dumps(forged).encode())
        assert im.read_record(str(dest), os.stat(dest)) is None
    os.setxattr(dest, im.XATTR, b"not json")
    assert im.read_record(str(dest), os.stat(dest)) is None


def test_without_xattr_support_the_file_is_hashed_every_time(tmp_path, monkeypatch):
    def unsupported(*args):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "getxattr", unsupported)
    monkeypatch.setattr(os, "setxattr", unsupported)
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o444)
    results = [target(dest).run(), target(dest).run()]
    for res in results:
        assert res["checksum_cached"] is False and res["changed"] is False and res["sha256"] == SHA


def test_other_content_is_refused_with_both_checksums_and_left_untouched(tmp_path, xattrs):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(OTHER)
    dest.chmod(0o640)
    before = os.stat(dest)
    with pytest.raises(Conflict) as err:
        target(dest).run()
    other = hashlib.sha256(OTHER).hexdigest()
    assert str(dest) in err.value.message and other in err.value.message and SHA in err.value.message
    assert "never overwrites" in err.value.message and "remove or rename it yourself" in err.value.message
    assert err.value.details == dict(path=str(dest), dest_sha256=other, src_sha256=SHA)
    after = os.stat(dest)
    assert dest.read_bytes() == OTHER and stat.S_IMODE(after.st_mode) == 0o640
    assert after.st_ctime_ns == before.st_ctime_ns and not has_record(dest)


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_dest_that_is_no_regular_file_is_left_alone(tmp_path, kind):
    dest = tmp_path / "base.qcow2"
    if kind == "symlink":
        (tmp_path / "real").write_bytes(DATA)
        dest.symlink_to(tmp_path / "real")
    else:
        dest.mkdir()
    with pytest.raises(Conflict, match="left alone"):
        target(dest).run()


def test_a_wrong_mode_is_set_and_reported_as_a_change(tmp_path):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o644)
    check = target(dest, check_mode=True).run()
    assert check["changed"] is True and check["changes"] == ["mode 0644 -> 0444"]
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o644
    assert check["diff"]["before"]["mode"] == "0644" and check["diff"]["after"]["mode"] == "0444"
    real = target(dest).run()
    assert real["changed"] is True and stat.S_IMODE(os.stat(dest).st_mode) == 0o444
    assert target(dest).run()["changed"] is False


def test_a_mode_fix_keeps_the_record_valid(tmp_path, xattrs, short_seal):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o444)
    target(dest).run()
    time.sleep(short_seal)
    assert target(dest, mode="0440").run()["changed"] is True
    assert target(dest, mode="0440").run()["checksum_cached"] is True


def test_a_writable_mode_is_warned_about(tmp_path):
    t = target(tmp_path / "base.qcow2", mode="0644")
    t.run()
    assert any("lets" in w and "be written" in w for w in t.warnings)


def test_leftover_partial_copies_are_named_in_a_warning(tmp_path):
    staged = stage(tmp_path / "base.qcow2")
    t = target(tmp_path / "base.qcow2")
    t.run()
    assert any(staged in w for w in t.warnings)
    assert os.path.exists(staged)  # it may belong to a run in progress: only named, never removed here


# -- install and cleanup ---------------------------------------------------------------------------------


def test_install_links_the_staged_copy_in_place(tmp_path, xattrs):
    dest = tmp_path / "base.qcow2"
    staged = stage(dest)
    res = target(dest, "install", _staged=staged).run()
    assert res["copied"] is True and res["changed"] is True and res["sha256"] == SHA
    assert dest.read_bytes() == DATA and not os.path.exists(staged)
    st = os.stat(dest)
    assert stat.S_IMODE(st.st_mode) == 0o444 and st.st_nlink == 1
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert os.listdir(tmp_path) == ["base.qcow2"]
    # the record written before the link still holds: the next probe does not read the file
    assert target(dest).run()["checksum_cached"] is True


def test_install_of_a_damaged_copy_removes_it_and_fails(tmp_path):
    dest = tmp_path / "base.qcow2"
    staged = stage(dest, DATA[:-1] + b"X")
    with pytest.raises(StorageError, match="damaged on the way") as err:
        target(dest, "install", _staged=staged).run()
    assert SHA in err.value.message
    assert os.listdir(tmp_path) == []


def test_install_never_overwrites_a_file_that_appeared_meanwhile(tmp_path):
    dest = tmp_path / "base.qcow2"
    staged = stage(dest)
    dest.write_bytes(OTHER)
    with pytest.raises(Conflict, match="never overwrites"):
        target(dest, "install", _staged=staged).run()
    assert dest.read_bytes() == OTHER and os.listdir(tmp_path) == ["base.qcow2"]


def test_install_accepts_the_same_image_that_appeared_meanwhile(tmp_path):
    dest = tmp_path / "base.qcow2"
    staged = stage(dest)
    dest.write_bytes(DATA)
    dest.chmod(0o644)
    res = target(dest, "install", _staged=staged).run()
    assert res["copied"] is False and res["changes"] == ["mode 0644 -> 0444"] and res["changed"] is True
    assert os.listdir(tmp_path) == ["base.qcow2"] and stat.S_IMODE(os.stat(dest).st_mode) == 0o444


def test_install_sets_owner_and_group(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    dest = tmp_path / "base.qcow2"
    staged = stage(dest)
    target(dest, "install", _staged=staged, owner="1", group="2", mode="0440").run()
    st = os.stat(dest)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1, 2, 0o440)
    res = target(dest, owner="1", group="2", mode="0440").run()
    assert res["changed"] is False and res["diff"]["before"]["owner"] == 1


def test_install_refuses_a_file_that_is_no_staging_name(tmp_path):
    dest = tmp_path / "base.qcow2"
    victim = tmp_path / "keep"
    victim.write_bytes(DATA)
    with pytest.raises(InvalidInput):
        target(dest, "install", _staged=str(victim)).run()
    assert victim.exists() and not dest.exists()


def test_cleanup_removes_the_staged_file(tmp_path):
    dest = tmp_path / "base.qcow2"
    staged = stage(dest)
    assert target(dest, "cleanup", _staged=staged, _sha256=None).run() == dict(
        changed=False, dest=str(dest), removed=True
    )
    assert os.listdir(tmp_path) == []
    assert target(dest, "cleanup", _staged=staged).run()["removed"] is False


class FakeModule:
    def __init__(self, params, check_mode=False, diff=True):
        self.params, self.check_mode, self._diff = params, check_mode, diff
        self.warned, self.out = [], None

    def warn(self, msg):
        self.warned.append(msg)

    def get_bin_path(self, name):
        return None

    def exit_json(self, **kw):
        self.out = dict(kw, ok=True)
        raise SystemExit(0)

    def fail_json(self, **kw):
        self.out = dict(kw, failed=True)
        raise SystemExit(1)


def test_run_module_turns_a_refusal_into_fail_json_and_drops_the_diff_without_diff_mode(tmp_path):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(OTHER)
    m = FakeModule(dict(src="s", dest=str(dest), _sha256=SHA, mode="0444", _step="probe"))
    with pytest.raises(SystemExit):
        run_module(m, im.ImageManager)
    assert m.out["failed"] and m.out["error"] == "Conflict" and m.out["src_sha256"] == SHA
    dest.unlink()
    m = FakeModule(dict(src="s", dest=str(dest), _sha256=SHA, mode="0644", _step="probe"), diff=False)
    with pytest.raises(SystemExit):
        run_module(m, im.ImageManager)
    assert m.out["ok"] and m.out["needs_copy"] and "diff" not in m.out and m.warned


def test_an_os_error_no_step_translated_is_a_storage_error_with_its_errno(tmp_path, monkeypatch):
    def refused(path):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(im.os, "listdir", refused)
    m = FakeModule(dict(src="s", dest=str(tmp_path / "base.qcow2"), _sha256=SHA, mode="0444", _step="probe"))
    with pytest.raises(SystemExit):
        run_module(m, im.ImageManager)
    assert m.out["failed"] and m.out["error"] == "StorageError" and m.out["errno"] == "EACCES"
    assert m.out["msg"] == f"Permission denied ({tmp_path}).", m.out


def test_the_module_has_no_uri_option():
    kwargs = im.ImageManager.module_kwargs()
    assert kwargs["argument_spec"] == im.ARGUMENT_SPEC and kwargs["supports_check_mode"] is True
