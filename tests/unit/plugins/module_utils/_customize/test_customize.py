"""CustomizeManager (kvm_customize) on libvirt's test:///default driver, real qcow2 files and the in-memory appliance.

The domains and their disks are real (test driver, qemu-img files in tmp_path); the appliance is
fakes.FakeGuestFS, one per launch (fakes.Appliances), holding a Debian-like guest per disk. Its mounts
know read-only from read-write, so a write through a read-only mount fails as it would in libguestfs.
"""

from __future__ import annotations

import secrets

import libvirt
import pytest

from ansible_collections.virtops.kvm.plugins.module_utils._connection import Connection
from ansible_collections.virtops.kvm.plugins.module_utils._customize.manager import CustomizeManager
from ansible_collections.virtops.kvm.plugins.module_utils._errors import (
    Conflict,
    DomainNotFound,
    GuestfsError,
    InvalidInput,
    StorageError,
)
from ansible_collections.virtops.kvm.plugins.module_utils._manager import validated
from tests import fakes

URI = "test:///default"
HASH = "$6$virtops$3sv0.0UH9lq2nYpPcaI0L1"
KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFirst operator@desk"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISecond backup@vault"


def guest():
    fs = fakes.debian()
    fs.add("/etc/shadow", "root:*:19000:0:99999:7:::\nalice:!:19000:0:99999:7:::\n", mode=0o640, gid=42)
    passwd = fs.text("/etc/passwd") + "games:x:5:60:games:/usr/games:/usr/sbin/nologin\n"
    fs.add("/etc/passwd", passwd)
    fs.mkdir_p("/root")
    fs.mkdir_p("/home/alice")
    fs.dirs["/home/alice"][1:] = [1000, 1000]
    return fs


@pytest.fixture
def env(conn, tmp_path):
    """Two shut-off domains on disks of their own; the appliance factory; cleanup."""
    prefix = f"ut-cz-{secrets.token_hex(3)}"
    created, names = [], []
    for n in ("a", "b"):
        disk = fakes.qcow2(tmp_path / f"{n}.qcow2")
        created.append(fakes.disk_domain(conn, f"{prefix}-{n}", disk))
        names.append(f"{prefix}-{n}")
    apps = fakes.Appliances({str(tmp_path / f"{n}.qcow2"): [guest()] for n in ("a", "b")})
    opened = []

    def run(check_mode=False, **params):
        params.setdefault("domains", names)
        params.setdefault("force_tcg", "no")
        connection = Connection(URI)
        opened.append(connection)
        m = CustomizeManager(validated(CustomizeManager, params), connection, check_mode, handle_factory=apps)
        return m.run()

    yield dict(run=run, names=names, apps=apps, tmp=tmp_path, conn=conn, created=created, prefix=prefix)
    for c in opened:
        c.close()
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)


def fs_of(env, n: str):
    return env["apps"].images[str(env["tmp"] / f"{n}.qcow2")][0]


EDITS = dict(
    files=[
        dict(path="/etc/motd", content="Managed by Ansible\n"),
        dict(path="/etc/hosts", state="appended", content="192.0.2.10 backup.example.com\n"),
        dict(path="/var/log/syslog", state="absent"),
        dict(path="/opt/app/app.conf", content="x = 1\n", mode="0600", owner="alice:staff"),
    ],
    authorized_keys=[dict(user="alice", keys=[KEY1])],
    passwords=[dict(user="root", hash=HASH)],
)


def writes(apps) -> list:
    return [e for h in apps.handles for e in h.events if e[0] in ("write", "mount")]


def test_four_ways_in_one_launch_for_two_domains(env):
    check = env["run"](True, **EDITS)
    assert check["changed"] is True and check["launches"] == 1
    assert len(env["apps"].handles) == 1 and writes(env["apps"]) == []
    assert all(opts["readonly"] for _p, opts in env["apps"].handles[0].drives)
    assert "/etc/motd" not in fs_of(env, "a").files
    planned = check["domains"][env["names"][0]]["changes"]
    assert planned[0].startswith("write /etc/motd") and "set the password hash of root" in planned

    real = env["run"](**EDITS)
    assert real["changed"] is True and real["launches"] == 1
    assert [d["changes"] for d in real["domains"].values()] == [planned, planned]
    handle = env["apps"].handles[1]
    assert not any(opts["readonly"] for _p, opts in handle.drives)
    # each guest compared read-only first, then mounted read-write to be changed, then synced once
    assert [e[0] for e in handle.events if e[0] in ("mount_ro", "mount", "sync")] == [
        "mount_ro",
        "mount",
        "mount_ro",
        "mount",
        "sync",
    ]
    for n in ("a", "b"):
        fs = fs_of(env, n)
        assert fs.text("/etc/motd") == "Managed by Ansible\n" and fs.files["/etc/motd"][1] == 0o644
        assert fs.text("/etc/hosts").endswith("virtops-base\n192.0.2.10 backup.example.com\n")
        assert "/var/log/syslog" not in fs.files
        assert fs.files["/opt/app/app.conf"][1:] == [0o600, 1000, 50]
        assert fs.dirs["/home/alice/.ssh"] == [0o700, 1000, 1000]
        assert fs.files["/home/alice/.ssh/authorized_keys"] == [f"{KEY1}\n".encode(), 0o600, 1000, 1000]
        assert fs.text("/etc/shadow").startswith(f"root:{HASH}:19000:0:99999:7:::\n")
        assert fs.files["/etc/shadow"][1:] == [0o640, 0, 42]  # mode and owner kept

    again = env["run"](**EDITS)
    assert again["changed"] is False and again["diff"] == []
    assert all(d == {"changed": False, "changes": []} for d in again["domains"].values())
    assert [e[0] for e in env["apps"].handles[2].events if e[0] in ("mount", "write", "sync")] == []
    assert env["run"](True, **EDITS)["changed"] is False


def test_the_password_hash_is_never_in_the_result_or_the_diff(env):
    res = env["run"](passwords=[dict(user="root", hash=HASH)])
    assert res["changed"] is True and HASH not in repr(res)
    assert any("not shown" in d["before"] for d in res["diff"])


def test_a_diff_shows_each_file_before_and_after(env):
    res = env["run"](files=[dict(path="/etc/hostname", content="web1\n")], domain=env["names"][0], domains=None)
    assert res["diff"] == [
        dict(
            before_header=f"{env['names'][0]}:/etc/hostname",
            after_header=f"{env['names'][0]}:/etc/hostname",
            before="virtops-base\n",
            after="web1\n",
        )
    ]


def test_appended_text_already_there_is_no_change(env):
    res = env["run"](files=[dict(path="/etc/hosts", state="appended", content="127.0.0.1\tlocalhost")])
    assert res["changed"] is False


def test_exclusive_keys_replace_the_file_and_a_present_key_is_not_added_twice(env):
    env["run"](authorized_keys=[dict(user="alice", keys=[KEY1, KEY2])])
    assert env["run"](authorized_keys=[dict(user="alice", keys=[KEY2])])["changed"] is False
    res = env["run"](authorized_keys=[dict(user="alice", keys=[KEY2], exclusive=True)])
    assert res["changed"] is True
    assert fs_of(env, "a").text("/home/alice/.ssh/authorized_keys") == f"{KEY2}\n"


def test_a_parent_directory_that_is_a_link_is_followed_inside_the_guest(env):
    for n in ("a", "b"):
        fs = fs_of(env, n)
        fs.mkdir_p("/usr/bin")
        fs.link("/bin", "usr/bin")  # a merged /usr, as on Debian 12
    res = env["run"](files=[dict(path="/bin/virtops-hello", content="#!/bin/sh\necho hi\n", mode="0755")])
    assert res["changed"] is True
    assert fs_of(env, "a").files["/usr/bin/virtops-hello"][:2] == [b"#!/bin/sh\necho hi\n", 0o755]
    again = env["run"](files=[dict(path="/bin/virtops-hello", content="#!/bin/sh\necho hi\n", mode="0755")])
    assert again["changed"] is False


def test_two_edits_of_one_file_are_refused_the_order_would_decide(env):
    with pytest.raises(GuestfsError, match=r"/etc/shadow in domain .* would be written by both files and password"):
        env["run"](
            files=[dict(path="/etc/shadow", content="root:x:::::::\n")], passwords=[dict(user="root", hash=HASH)]
        )
    assert [e for e in writes(env["apps"]) if e[0] == "write"] == []


def test_a_shadow_file_with_bytes_that_are_not_utf8_keeps_them(env):
    for n in ("a", "b"):
        fs_of(env, n).add("/etc/shadow", b"root:*:19000:0:99999:7:::\nj\xe9r\xf4me:!:19000::::::\n", mode=0o640)
    assert env["run"](passwords=[dict(user="root", hash=HASH)])["changed"] is True
    assert (
        fs_of(env, "a").files["/etc/shadow"][0]
        == f"root:{HASH}:19000:0:99999:7:::\n".encode() + b"j\xe9r\xf4me:!:19000::::::\n"
    )


def test_a_guest_that_fails_does_not_stop_the_other_and_the_task_fails_naming_it(env):
    fs_of(env, "a").link("/etc/motd", "/etc/shadow")  # the guest's own symlink: never written through
    with pytest.raises(GuestfsError, match=r"Editing failed on ut-cz-\w+-a: /etc/motd in domain .* symbolic link") as e:
        env["run"](files=[dict(path="/etc/motd", content="hi\n")])
    assert e.value.details["domains"][env["names"][1]] == dict(
        changed=True, changes=["write /etc/motd (3 bytes)", "mode of /etc/motd 0644"]
    )
    assert fs_of(env, "b").text("/etc/motd") == "hi\n" and fs_of(env, "a").links["/etc/motd"] == "/etc/shadow"


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(files=[dict(path="/x", owner="nobody-here")]), "the guest has no user 'nobody-here'"),
        (dict(passwords=[dict(user="bob", hash=HASH)]), "user bob is not in /etc/shadow"),
        (dict(authorized_keys=[dict(user="games", keys=[KEY1])]), "no home directory"),
        (dict(files=[dict(path="/etc", content="x")]), "/etc in domain .* is a directory"),
        (dict(files=[dict(path="/etc/hostname/x", content="x")]), "/etc/hostname in domain .* is not a directory"),
    ],
)
def test_what_a_guest_cannot_take_fails_with_its_reason_and_writes_nothing(env, params, message):
    params = dict(params)
    if "files" in params and "content" not in params["files"][0]:
        params["files"] = [dict(params["files"][0], content="x\n")]
    with pytest.raises(GuestfsError, match=message):
        env["run"](**params)
    assert [e for e in writes(env["apps"]) if e[0] == "write"] == []


def test_a_running_domain_is_refused_before_any_launch(env):
    env["conn"].lookupByName(env["names"][1]).create()
    with pytest.raises(Conflict, match=r"is running: kvm_customize edits only shut-off domains"):
        env["run"](**EDITS)
    assert env["apps"].handles == []


def test_a_disk_a_clone_stands_on_is_never_written(env):
    base = str(env["tmp"] / "a.qcow2")
    fakes.disk_domain(env["conn"], f"{env['prefix']}-clone", fakes.qcow2(env["tmp"] / "clone.qcow2", base))
    with pytest.raises(
        StorageError, match=r"disk vda of domain ut-cz-\w+-a \(.*a.qcow2\) is the base of .*clone.qcow2"
    ) as e:
        env["run"](**EDITS)
    assert e.value.details["dependants"] and env["apps"].handles == []
    # the clone itself may be edited: nothing stands on its overlay
    res = env["run"](domains=[f"{env['prefix']}-clone"], files=[dict(path="/etc/motd", content="clone\n")])
    assert res["changed"] is True


def test_a_disk_its_own_external_snapshot_stands_on_is_never_written(env):
    dom = env["conn"].lookupByName(env["names"][0])
    fakes.external_snapshot(dom, "before", env["tmp"] / "a.qcow2", env["tmp"] / "a-layer.qcow2")
    with pytest.raises(StorageError, match=r"is the base of snapshot before of domain ut-cz-\w+-a") as e:
        env["run"](**EDITS)
    assert e.value.details["dependants"] == [f"snapshot before of domain {env['names'][0]}"]
    assert env["apps"].handles == []


def test_a_read_only_disk_is_refused(env):
    dom = env["conn"].lookupByName(env["names"][0])
    xml = dom.XMLDesc(0).replace("<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><readonly/>")
    env["conn"].defineXML(xml)
    with pytest.raises(Conflict, match="is read-only in the domain's XML"):
        env["run"](**EDITS)
    assert env["apps"].handles == []


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(passwords=[dict(user="root", hash="hunter2")]), r"is not a crypt\(3\) hash"),
        (dict(files=[dict(path="etc/motd", content="x")]), "must be an absolute, normalised file path"),
        (dict(files=[dict(path="/etc/../etc/motd", content="x")]), "must be an absolute, normalised file path"),
        (dict(files=[dict(path="/a", content="x"), dict(path="/a", state="absent")]), "edits /a twice"),
        (dict(files=[dict(path="/a", state="absent", content="x")]), "state absent and content"),
        (dict(files=[dict(path="/a", state="appended")]), "has state appended but no content"),
        (dict(files=[dict(path="/a", content="x", mode="rw")]), "is not an octal mode"),
        (dict(authorized_keys=[dict(user="alice", keys=["two\nlines"])]), "must be one public key line"),
        (dict(authorized_keys=[dict(user="alice")]), "keys is empty"),
        (dict(authorized_keys=[dict(user="a", keys=[KEY1]), dict(user="a", keys=[KEY2])]), "names user a twice"),
        (dict(), "Nothing to edit"),
        (dict(domains=["no-such-domain"], files=[dict(path="/a", content="x")]), "not defined"),
    ],
)
def test_bad_input_says_what_to_fix_and_launches_nothing(env, params, message):
    with pytest.raises((InvalidInput, DomainNotFound)) as e:
        env["run"](**params)
    assert e.value.message and __import__("re").search(message, e.value.message), e.value.message
    assert "hunter2" not in e.value.message
    assert env["apps"].handles == []


def test_the_module_options_and_libraries():
    kwargs = CustomizeManager.module_kwargs()
    assert kwargs["supports_check_mode"] is True
    assert kwargs["argument_spec"]["passwords"]["options"]["hash"]["no_log"] is True
    assert CustomizeManager.needs({}) == ("guestfs", "libvirt", "lxml")
