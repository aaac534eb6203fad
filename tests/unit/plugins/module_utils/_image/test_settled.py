"""_image.settled: would kvm_image change nothing for an image? What kvm_host_info's ``images`` answers.

Real files and real extended attributes in a tmp dir (the tests that need them skip where the tmp file
system has none). A record is made the way kvm_image makes it, by a real probe; ``settled`` must then
agree with what a probe would do, read nothing but a stat and the xattr, and write nothing.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _image as im

DATA = os.urandom(64 * 1024) + b"base"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def xattrs(tmp_path):
    probe = tmp_path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.virtops.test", b"1")
    except (AttributeError, OSError):
        pytest.skip("the tmp file system has no user extended attributes")
    finally:
        probe.unlink()


@pytest.fixture
def placed(tmp_path, xattrs):
    """A base kvm_image has put in place and recorded (a real probe, not in check mode)."""
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o444)
    probe = im.ImageTarget(dict(src="/srv/base.qcow2", dest=str(dest), _sha256=SHA, _step="probe"), False).run()
    assert probe["changed"] is False and probe["checksum_cached"] is False
    return dest


def settled(path, **params) -> dict:
    return im.settled(dict(dict(dest=str(path), sha256=SHA), **params))


def snapshot(path) -> tuple:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_ctime_ns, os.getxattr(path, im.XATTR)


def test_a_recorded_base_with_the_wanted_attributes_is_settled_without_reading_it(placed, monkeypatch):
    def no_hashing(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(im, "hash_file", no_hashing)
    before = snapshot(placed)
    res = settled(placed)
    assert res == dict(dest=str(placed), settled=True, sha256=SHA, reason="", size=len(DATA))
    assert snapshot(placed) == before  # nothing written, not even the record
    # and a real probe agrees: kvm_image would change nothing
    probe = im.ImageTarget(dict(src="s", dest=str(placed), _sha256=SHA, _step="probe"), True).run()
    assert probe["changed"] is False and probe["needs_copy"] is False


def test_sha256_may_be_given_as_kvm_image_takes_it(placed):
    assert settled(placed, sha256=f"sha256:{SHA.upper()}")["settled"] is True


def test_a_missing_base_is_not_settled(tmp_path):
    res = settled(tmp_path / "base.qcow2")
    assert res["settled"] is False and res["reason"] == "missing" and res["sha256"] is None


def test_a_file_without_a_record_is_not_settled_and_not_hashed(tmp_path, monkeypatch):
    dest = tmp_path / "base.qcow2"
    dest.write_bytes(DATA)
    dest.chmod(0o444)
    monkeypatch.setattr(im, "hash_file", lambda path: pytest.fail(f"{path} was hashed"))
    res = settled(dest)
    assert res["settled"] is False and res["reason"] == "no fresh digest record" and res["sha256"] is None


def test_other_content_is_not_settled_and_says_what_the_record_names(placed):
    other = "0" * 64
    res = settled(placed, sha256=other)
    assert res["settled"] is False and res["reason"] == "other content" and res["sha256"] == SHA


def test_a_write_after_the_record_makes_it_unsettled(placed, monkeypatch):
    monkeypatch.setattr(im, "SEAL_NS", 0)  # the record covers nothing after its write
    placed.chmod(0o644)
    with open(placed, "r+b") as f:
        f.write(b"X")
    placed.chmod(0o444)
    res = settled(placed)
    assert res["settled"] is False and res["reason"] == "no fresh digest record"


@pytest.mark.parametrize(
    "params, reason",
    [
        (dict(mode="0400"), "mode"),
        (dict(mode=0o400), "mode"),
        (dict(owner=str(os.geteuid() + 1)), "owner"),
        (dict(group=str(os.getegid() + 1)), "group"),
        (dict(owner=str(os.geteuid() + 1), mode="0400"), "mode, owner"),
    ],
)
def test_other_attributes_than_kvm_image_would_set_are_not_settled(placed, params, reason):
    res = settled(placed, **params)
    assert res["settled"] is False and res["reason"] == reason and res["sha256"] == SHA


def test_the_wanted_owner_and_group_by_number_are_settled(placed):
    assert settled(placed, owner=str(os.geteuid()), group=str(os.getegid()))["settled"] is True


def test_a_writable_mode_is_never_settled_kvm_image_warns_of_it(placed):
    placed.chmod(0o644)
    im.ImageTarget(dict(src="s", dest=str(placed), _sha256=SHA, _step="probe", mode="0644"), False).run()
    res = settled(placed, mode="0644")
    assert res["settled"] is False and res["reason"] == "mode"


def test_a_partial_copy_beside_it_is_not_settled(placed):
    (placed.parent / f".{placed.name}{im.PARTIAL}0123456789abcdef").write_bytes(b"part")
    res = settled(placed)
    assert res["settled"] is False and res["reason"] == "partial copy beside it"


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(sha256="nope"), "is not a sha256"),
        (dict(sha256=None), "sha256 of src is unknown"),
        (dict(dest="relative/base.qcow2"), "not an absolute path"),
        (dict(owner="no-such-user-virtops"), "does not exist on this host"),
        (dict(mode="rw"), "not an octal mode"),
    ],
)
def test_bad_options_are_answered_unsettled_not_raised(placed, params, message):
    res = settled(placed, **params)
    assert res["settled"] is False and message in res["reason"]


def test_a_missing_directory_is_not_settled(tmp_path):
    res = settled(tmp_path / "nodir" / "base.qcow2")
    assert res["settled"] is False and "does not exist" in res["reason"]


def test_a_dest_that_is_no_regular_file_is_not_settled(placed):
    link = placed.parent / "link.qcow2"
    link.symlink_to(placed)
    res = settled(link)
    assert res["settled"] is False and "symbolic link" in res["reason"]
