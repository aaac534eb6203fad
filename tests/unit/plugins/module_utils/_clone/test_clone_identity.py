"""kvm_clone's offline identity reset against an in-memory fake libguestfs handle: no appliance is launched.

The fake (``tests.fakes.FakeGuestFS``, shared with the _guestfs tests) holds one filesystem per
appliance device (one disk image -> its partitions), names the drives /dev/sda, /dev/sdb, ... in
the order they are added, and routes every file call to the filesystem mounted there, so a
batch of clones in one launch can be checked clone by clone. The manager
tests run on libvirt's test:///default with blank qcow2 disks in tmp_path
(the fake never reads them).
"""

from __future__ import annotations

import re

import pytest

from ansible_collections.virtops.kvm.plugins.module_utils import _domain_xml as dx
from ansible_collections.virtops.kvm.plugins.module_utils._clone import identity, sysprep
from ansible_collections.virtops.kvm.plugins.module_utils._clone.model import Item
from ansible_collections.virtops.kvm.plugins.module_utils._clone.sysprep import OPERATIONS
from ansible_collections.virtops.kvm.plugins.module_utils._errors import InvalidInput, KvmError
from ansible_collections.virtops.kvm.plugins.module_utils._guestfs.guest import OwnerError
from tests import fakes
from tests.fakes import FS, Appliances, FakeGuestFS, debian

# --------------------------------------------------------------------------- the fake appliance


def mounted(fs: FS) -> FakeGuestFS:
    """A launched fake with ``fs`` mounted read-write at / (for the single operations)."""
    g = FakeGuestFS(lambda path: [fs])
    g.add_drive_opts("/img/clone.qcow2", readonly=False)
    g.launch()
    g.mount("/dev/sda1", "/")
    return g


# --------------------------------------------------------------------------- sysprep: /etc/hosts


@pytest.mark.parametrize(
    "text, old, expected",
    [
        pytest.param(
            "127.0.0.1\tlocalhost\n127.0.1.1\tvirtops-base\n",
            "virtops-base",
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb1\n",
            id="debian-127.0.1.1",
        ),
        pytest.param(
            "127.0.1.1 old.example.com old\n10.0.0.9 oldish old-db\n",
            "old",
            "127.0.1.1\tweb1.example.com\tweb1\n10.0.0.9 oldish old-db\n",
            id="fqdn-and-look-alikes",
        ),
        pytest.param(
            "# old is the template\n10.0.0.5   old   # the template itself\n",
            "old",
            "# old is the template\n10.0.0.5\tweb1 # the template itself\n",
            id="comments-kept",
        ),
        pytest.param(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost\n",
            "old",
            "127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.1.1\tweb1\n",
            id="no-entry-appended",
        ),
        pytest.param(
            "127.0.0.1 localhost\n127.0.1.1 debian\n", "", "127.0.0.1 localhost\n127.0.1.1\tweb1\n", id="no-old"
        ),
        pytest.param("", "old", "127.0.1.1\tweb1\n", id="empty-file"),
    ],
)
def test_hosts_with_name(text, old, expected):
    assert sysprep.hosts_with_name(text, old, "web1") == expected


def test_hosts_keeps_localhost_when_the_template_is_named_localhost():
    """A template whose /etc/hostname is 'localhost' (minimal and cloud images) must keep its loopback names."""
    text = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    new = sysprep.hosts_with_name(text, "localhost", "web1")
    assert new.splitlines()[:2] == text.splitlines()
    assert "127.0.1.1\tweb1" in new.splitlines()


def test_hosts_renames_the_short_name_when_the_template_hostname_is_a_fqdn():
    """/etc/hostname may hold the FQDN (hostnamectl on EL): its short name on the host's line is the template's too."""
    new = sysprep.hosts_with_name("127.0.0.1\tlocalhost\n127.0.1.1\told.example.com\told\n", "old.example.com", "web1")
    names = [n for line in new.splitlines() for n in line.split()[1:]]
    assert "web1" in names and "localhost" in names
    assert "old" not in names and "old.example.com" not in names


# --------------------------------------------------------------------------- sysprep: each operation


@pytest.mark.parametrize(
    ("extra", "installed"),
    [
        ((), True),  # Debian/Ubuntu: nothing regenerates the keys but cloud-init with a datasource
        (("/usr/lib/systemd/system/sshd-keygen@.service",), False),  # EL, Fedora: their own unit does
        (("/lib/systemd/system/sshd-keygen@.service",), False),
    ],
)
def test_a_guest_without_its_own_key_generation_gets_a_first_boot_unit(extra, installed):
    fs = debian()
    fs.add("/usr/bin/ssh-keygen", b"ELF", mode=0o755)
    fs.mkdir_p("/etc/systemd/system")
    for path in extra:
        fs.add(path, "[Unit]\n")
    g = mounted(fs)
    ok, detail = sysprep.ssh_hostkeys(g)
    unit = f"/etc/systemd/system/{sysprep.KEYGEN_UNIT}"
    link = f"/etc/systemd/system/multi-user.target.wants/{sysprep.KEYGEN_UNIT}"
    assert ok and not [p for p in fs.files if p.startswith("/etc/ssh/ssh_host_")]
    if installed:
        assert detail == f"4 host key file(s) removed, first-boot key generation {sysprep.KEYGEN_UNIT} enabled"
        text = fs.text(unit)
        assert "ExecStart=/usr/bin/ssh-keygen -A" in text and "Before=ssh.service sshd.service" in text
        assert "cloud-init" not in text  # Before=cloud-init.service made an ordering cycle on Debian 12
        assert "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key" in text
        assert fs.links[link] == unit
    else:
        assert detail == "4 host key file(s) removed" and unit not in fs.files and link not in fs.links


def test_no_unit_without_systemd_or_ssh_keygen():
    fs = debian()  # no /etc/systemd/system, no /usr/bin/ssh-keygen (busybox-like)
    g = mounted(fs)
    assert sysprep.ssh_hostkeys(g) == (True, "4 host key file(s) removed")
    assert not [p for p in fs.files if "systemd" in p]


def test_every_operation_on_a_debian_guest():
    fs = debian()
    g = mounted(fs)
    report = sysprep.run_operations(g, list(OPERATIONS), "web1", [])
    assert report["done"] == list(OPERATIONS) and report["skipped"] == [] and report["files"] == []
    assert fs.text("/etc/hostname") == "web1\n"
    assert fs.text("/etc/hosts") == "127.0.0.1\tlocalhost\n127.0.1.1\tweb1.example.com\tweb1\n"
    assert report["details"]["hostname"] == "virtops-base -> web1 in /etc/hostname, /etc/hosts"
    assert fs.files["/etc/machine-id"][:2] == [b"", 0o444]  # emptied in place, mode kept
    assert "/var/lib/dbus/machine-id" not in fs.files
    assert sorted(p for p in fs.files if p.startswith("/etc/ssh/")) == ["/etc/ssh/sshd_config"]
    assert report["details"]["ssh-hostkeys"] == "4 host key file(s) removed"
    assert "/etc/udev/rules.d/70-persistent-net.rules" not in fs.files
    assert "/etc/udev/rules.d/99-local.rules" in fs.files
    assert "/var/lib/dhcp/dhclient.eth0.leases" not in fs.files
    assert fs.text("/var/log/syslog") == "" and fs.text("/var/log/apt/history.log") == ""
    # the template's journal goes with its directory, named after the template's machine-id
    assert not [p for p in [*fs.files, *fs.dirs] if p.startswith("/var/log/journal/")]
    assert "/var/log/journal" in fs.dirs
    assert report["details"]["logfiles"] == "2 log file(s) truncated, 1 journal directory(ies) removed"
    # a symlink below /var/log is not followed out of it
    assert fs.links["/var/log/passwd-link"] == "/etc/passwd" and "alice" in fs.text("/etc/passwd")


def test_operations_that_do_not_apply_are_skipped_with_their_reason():
    fs = FS().add("/etc/os-release", "ID=alpine\n")
    fs.mkdir_p("/var/lib")
    report = sysprep.run_operations(mounted(fs), list(OPERATIONS), "web1", [])
    assert report["done"] == ["hostname"]
    assert {s["operation"]: s["reason"] for s in report["skipped"]} == {
        "machine-id": "no /etc/machine-id (no systemd)",
        "ssh-hostkeys": "no /etc/ssh (no SSH server installed)",
        "net-persistent": "no udev persistent-net rules",
        "dhcp-leases": "no DHCP client lease files",
        "logfiles": "no /var/log",
    }
    assert fs.text("/etc/hostname") == "web1\n" and "/etc/hosts" not in fs.files
    assert report["details"]["hostname"] == "(none) -> web1 in /etc/hostname"


def test_not_a_linux_guest_skips_hostname():
    fs = FS()
    fs.add("/Windows/System32/config/SYSTEM", b"regf")
    report = sysprep.run_operations(mounted(fs), ["hostname"], "web1", [])
    assert report["done"] == [] and report["skipped"] == [
        dict(operation="hostname", reason="no /etc (not a Linux guest)")
    ]
    assert "/etc/hostname" not in fs.files


def test_ssh_dir_without_keys_is_skipped():
    fs = FS().add("/etc/ssh/sshd_config", "x")
    assert sysprep.ssh_hostkeys(mounted(fs)) == (False, "no SSH host keys in /etc/ssh")
    assert "/etc/ssh/sshd_config" in fs.files


def test_dbus_machine_id_symlink_is_kept():
    fs = debian(dbus_link=True)
    done, detail = sysprep.machine_id(mounted(fs))
    assert done and detail == "/etc/machine-id emptied"
    assert fs.links["/var/lib/dbus/machine-id"] == "/etc/machine-id"
    assert fs.text("/etc/machine-id") == ""


def test_lease_globs_remove_files_not_directories():
    fs = FS().add("/var/lib/NetworkManager/internal-x.lease", "l").add("/var/lib/dhclient/dhclient.leases", "l")
    fs.add("/var/lib/dhclient/keep/inner", "x").add("/var/lib/NetworkManager/NetworkManager.state", "s")
    done, detail = sysprep.dhcp_leases(mounted(fs))
    assert (done, detail) == (True, "2 lease file(s) removed")
    assert sorted(fs.files) == ["/var/lib/NetworkManager/NetworkManager.state", "/var/lib/dhclient/keep/inner"]


def test_write_files_with_modes_and_owners_from_the_guest():
    fs = debian()
    g = mounted(fs)
    files = identity.check_files(
        [
            dict(path="/etc/virtops/role", content="web\n", mode="0600", owner="alice:staff"),
            dict(path="/home/alice/.note", content="hi", owner="alice"),
            dict(path="/opt/numeric", content="", mode=0o750, owner="1234:50"),
            dict(path="/etc/motd", content="welcome\n"),
        ],
        "identity.files",
    )
    assert sysprep.write_files(g, files) == [f["path"] for f in files]
    assert fs.files["/etc/virtops/role"] == [b"web\n", 0o600, 1000, 50]
    assert fs.files["/home/alice/.note"] == [b"hi", 0o644, 1000, 1000]  # the user's primary group
    assert fs.files["/opt/numeric"] == [b"", 0o750, 1234, 50]
    assert fs.files["/etc/motd"] == [b"welcome\n", 0o644, 0, 0]
    assert "/etc/virtops" in fs.dirs


def test_an_existing_file_keeps_its_mode_unless_one_is_given():
    fs = debian()
    g = mounted(fs)
    sysprep.write_files(g, identity.check_files([dict(path="/etc/secret", content="a", mode="0600")], "f"))
    sysprep.write_files(g, identity.check_files([dict(path="/etc/secret", content="b")], "f"))
    assert fs.files["/etc/secret"][:2] == [b"b", 0o600]  # not made world-readable by an overwrite
    sysprep.write_files(g, identity.check_files([dict(path="/etc/secret", content="c", mode="0640")], "f"))
    assert fs.files["/etc/secret"][:2] == [b"c", 0o640]


@pytest.mark.parametrize(
    "owner, words",
    [("nobody", "no user 'nobody' in /etc/passwd"), ("alice:wheel", "no group 'wheel' in /etc/group")],
)
def test_unknown_owner_is_an_owner_error(owner, words):
    g = mounted(debian())
    files = identity.check_files([dict(path="/etc/x", content="x", owner=owner)], "identity.files")
    with pytest.raises(OwnerError, match=re.escape(words)) as info:
        sysprep.write_files(g, files)
    assert "/etc/x" in str(info.value)


# --------------------------------------------------------------------------- identity: options and plan


def test_check_config_leaves_the_operations_to_the_template():
    """No operations given: every one for an unsealed template, none for a sealed one (decided by the plan)."""
    for value in (None, {}):
        assert identity.check_config(value) == dict(operations=None, files=[], mounts=None, force_tcg="auto")
    assert identity.clone_plan(dict(name="web1"), identity.check_config(None))["operations"] == list(OPERATIONS)
    cfg = identity.check_config(
        dict(operations=["hostname", "hostname", "logfiles"], mounts={"/dev/sda1": "/"}, force_tcg="yes")
    )
    assert cfg["operations"] == ["hostname", "logfiles"]
    assert cfg["mounts"] == {"/dev/sda1": "/"} and cfg["force_tcg"] == "yes"


@pytest.mark.parametrize(
    "value, words",
    [
        ("all", "identity must be a dict"),
        (dict(operation=["hostname"]), "identity has unknown key(s) operation"),
        (dict(operations=["hostname", "sysprep-all"]), "identity.operations has unknown operation(s) sysprep-all"),
        (dict(operations="hostname"), "identity.operations must be a list"),
        (dict(force_tcg="maybe"), "identity.force_tcg"),
        (dict(files="x"), "identity.files must be a list"),
        (dict(files=["/etc/x"]), "identity.files[0] must be a dict"),
        (dict(files=[dict(path="relative", content="")]), "identity.files[0].path 'relative'"),
        (dict(files=[dict(path="/a/../b", content="")]), "identity.files[0].path '/a/../b'"),
        (dict(files=[dict(path="/", content="")]), "identity.files[0].path '/'"),
        (dict(files=[dict(path="/etc/", content="")]), "identity.files[0].path '/etc/'"),
        (dict(files=[dict(path="//etc/x", content="")]), "identity.files[0].path '//etc/x'"),
        (dict(files=[dict(content="x")]), "identity.files[0].path None"),
        (dict(files=[dict(path="/x", content="", mode="0999")]), "identity.files[0].mode '0999'"),
        (dict(files=[dict(path="/x", content="", mode="rw-r--r--")]), "identity.files[0].mode"),
        (dict(files=[dict(path="/x", content="", mode="17777")]), "identity.files[0].mode '17777' is out of range"),
        (dict(files=[dict(path="/x", content="", owner="a b")]), "identity.files[0].owner 'a b'"),
        (dict(files=[dict(path="/x", content="", owner="a:b:c")]), "identity.files[0].owner"),
        (dict(files=[dict(path="/x", content=5)]), "identity.files[0].content must be a string"),
        (dict(files=[dict(path="/x", data="")]), "identity.files[0] has unknown key(s) data"),
        (dict(files=[dict(path="/x"), dict(path="/x")]), "identity.files writes /x twice"),
        (dict(mounts={"sda1": "/"}), "mounts"),
    ],
)
def test_check_config_refuses_what_cannot_be_used(value, words):
    with pytest.raises(InvalidInput) as info:
        identity.check_config(value)
    assert words in info.value.message


def test_check_files_names_where_and_keeps_none_defaults():
    with pytest.raises(InvalidInput, match=re.escape("files of clone 'web1'[0].path")):
        identity.check_files([dict(path="etc/x")], "files of clone 'web1'")
    assert identity.check_files([dict(path="/x", content=None)], "f") == [
        dict(path="/x", content="", mode=None, owner=None)
    ]
    assert identity.check_files([dict(path="/x", mode=0o640, owner=0)], "f")[0]["mode"] == 0o640


def cfg(**value) -> dict:
    return identity.check_config(value)


def spec(name: str, **kw) -> dict:
    return dict(name=name, **kw)


def test_clone_plan_nothing_to_do_is_none():
    assert identity.clone_plan(spec("web1"), cfg(operations=[])) is None
    only_files = identity.clone_plan(
        spec("a_b", files=[dict(path="/x", content="", mode=None, owner=None)]), cfg(operations=[])
    )
    assert only_files == dict(operations=[], files=[dict(path="/x", content="", mode=None, owner=None)], hostname="a_b")


def test_clone_files_replace_the_tasks_for_the_same_path():
    task = cfg(files=[dict(path="/etc/role", content="any"), dict(path="/etc/motd", content="hi")])
    own = identity.check_files([dict(path="/etc/role", content="db"), dict(path="/etc/extra", content="e")], "f")
    plan = identity.clone_plan(spec("web1", files=own), task)
    assert [(f["path"], f["content"]) for f in plan["files"]] == [
        ("/etc/role", "db"),
        ("/etc/motd", "hi"),
        ("/etc/extra", "e"),
    ]
    assert plan["operations"] == list(OPERATIONS) and plan["hostname"] == "web1"
    assert [f["content"] for f in identity.clone_plan(spec("web2"), task)["files"]] == ["any", "hi"]


def test_clone_plan_needs_a_valid_host_name():
    with pytest.raises(InvalidInput) as info:
        identity.clone_plan(spec("a_b"), cfg())
    assert "The name of clone 'a_b' (its hostname, as none is given) is 'a_b': " in info.value.message
    assert "RFC 1123" in info.value.message and "identity.operations" in info.value.message
    assert identity.clone_plan(spec("a_b"), cfg(operations=["machine-id"]))["hostname"] == "a_b"
    assert identity.clone_plan(spec("a_b", hostname="a-b.example.com"), cfg())["hostname"] == "a-b.example.com"
    # a bad hostname is blamed, shown and explained; the valid clone name is not
    with pytest.raises(InvalidInput) as info:
        identity.clone_plan(spec("web1", hostname="-bad-"), cfg())
    assert info.value.msg.startswith("hostname of clone 'web1' is '-bad-': a host name (RFC 1123)")


# --------------------------------------------------------------------------- identity: one appliance per batch


def item(name: str, *disks: str, config=None, **kw) -> Item:
    paths = disks or (f"/img/{name}.qcow2",)
    return Item(
        action="create",
        spec=spec(name, **kw),
        name=name,
        disks=[dict(path=p, format="qcow2") for p in paths],
        identity=identity.clone_plan(spec(name, **kw), config or cfg()),
    )


def test_one_launch_for_the_batch_each_clone_on_its_own_disk():
    apps = Appliances()
    items = [item("web1"), item("web2", "/img/web2-a.qcow2", "/img/web2-b.qcow2"), item("web3", hostname="db")]
    apps.images["/img/web2-b.qcow2"] = [FS(uuid="data")]  # a data disk, no OS
    out, warnings = identity.reset_batch(items, cfg(), True, apps)
    assert warnings == []
    assert len(apps.handles) == 1
    h = apps.handles[0]
    assert h.launches == 1 and h.network is False and h.settings == ["force_tcg"]
    assert h.drives == [
        ("/img/web1.qcow2", {"readonly": False, "format": "qcow2"}),
        ("/img/web2-a.qcow2", {"readonly": False, "format": "qcow2"}),
        ("/img/web2-b.qcow2", {"readonly": False, "format": "qcow2"}),
        ("/img/web3.qcow2", {"readonly": False, "format": "qcow2"}),
    ]
    assert {n: o["ok"] for n, o in out.items()} == {"web1": True, "web2": True, "web3": True}
    assert apps.root("/img/web1.qcow2").text("/etc/hostname") == "web1\n"
    assert apps.root("/img/web2-a.qcow2").text("/etc/hostname") == "web2\n"
    assert apps.root("/img/web3.qcow2").text("/etc/hostname") == "db\n"
    assert apps.root("/img/web2-b.qcow2").files == {}
    assert [o["report"]["root"] for o in out.values()] == ["/dev/sda1", "/dev/sdb1", "/dev/sdd1"]
    assert out["web3"]["report"]["hostname"] == "db" and out["web3"]["report"]["done"] == list(OPERATIONS)
    mounts = [e for e in h.events if e[0] in ("mount", "mount_ro", "umount_all")]
    assert mounts == [
        ("mount_ro", "/dev/sda1", "/"),  # the layout, found once on the first clone
        ("umount_all",),
        ("mount", "/dev/sda1", "/"),
        ("umount_all",),
        ("mount", "/dev/sdb1", "/"),
        ("umount_all",),
        ("mount", "/dev/sdd1", "/"),
        ("umount_all",),
    ]
    assert ("inspect_os",) not in h.events  # OS inspection of every disk costs ~8 s each under TCG
    assert {e[1] for e in h.events if e[0] == "write"} == {"/dev/sda1", "/dev/sdb1", "/dev/sdd1"}
    assert h.events[-2:] == [("sync",), ("shutdown",)] and h.closed


def test_fstab_by_uuid_still_writes_each_clone():
    """Clones of one template share filesystem UUIDs: libguestfs names the first clone's device for all."""
    apps = Appliances(uuid_mountpoints=True)
    out, _w = identity.reset_batch(
        [item("web1"), item("web2"), item("web3")], cfg(operations=["hostname"]), False, apps
    )
    assert all(o["ok"] for o in out.values())
    for n in ("web1", "web2", "web3"):
        assert apps.root(f"/img/{n}.qcow2").text("/etc/hostname") == f"{n}\n"
    assert apps.handles[0].settings == []


def test_mounts_name_each_clones_own_devices():
    apps = Appliances()
    config = cfg(operations=["hostname"], mounts={"/dev/sda1": "/"})
    out, _w = identity.reset_batch([item("web1", config=config), item("web2", config=config)], config, False, apps)
    assert all(o["ok"] for o in out.values()) and out["web2"]["report"]["root"] == "/dev/sdb1"
    h = apps.handles[0]
    assert [e for e in h.events if e[0] == "mount"] == [("mount", "/dev/sda1", "/"), ("mount", "/dev/sdb1", "/")]
    assert ("inspect_os",) not in h.events
    assert apps.root("/img/web2.qcow2").text("/etc/hostname") == "web2\n"


def test_a_clone_without_a_filesystem_fails_alone():
    apps = Appliances(images={"/img/web2.qcow2": []})
    out, _w = identity.reset_batch([item("web1"), item("web2"), item("web3")], cfg(), False, apps)
    assert out["web1"]["ok"] and out["web3"]["ok"]
    assert not out["web2"]["ok"]
    assert out["web2"]["error"].startswith("identity reset: Cannot mount /dev/sdb1 on / (the layout found on the")
    assert "Leave mounts out" not in out["web2"]["error"]
    assert apps.root("/img/web3.qcow2").text("/etc/hostname") == "web3\n"
    assert apps.handles[0].launches == 1


def test_an_unknown_owner_or_a_guest_error_fails_that_clone_alone():
    apps = Appliances()
    own = identity.check_files([dict(path="/etc/x", content="x", owner="nobody")], "f")
    bad_path = identity.check_files([dict(path="/etc/hostname/x", content="x")], "f")
    items = [item("web1", files=own), item("web2"), item("web3", files=bad_path)]
    out, _w = identity.reset_batch(items, cfg(), False, apps)
    assert out["web2"]["ok"]
    assert (
        out["web1"]["error"]
        == "identity reset: owner 'nobody' of /etc/x: the guest has no user 'nobody' in /etc/passwd"
    )
    assert out["web3"]["error"].startswith("identity reset of web3: ")


def test_a_launch_failure_fails_every_clone_with_the_libguestfs_message():
    apps = Appliances(launch_error="qemu-system-x86_64: failed to initialize kvm: No such device")
    out, _w = identity.reset_batch([item("web1"), item("web2")], cfg(), False, apps)
    assert set(out) == {"web1", "web2"}
    for o in out.values():
        assert not o["ok"]
        assert o["error"].startswith("identity reset: The libguestfs appliance failed to launch: qemu-system-x86_64")
        assert "No such device" in o["error"]
    assert apps.handles[0].closed
    assert apps.root("/img/web1.qcow2").text("/etc/hostname") == "virtops-base\n"


def test_a_sync_failure_fails_the_clones_it_wrote():
    apps = Appliances(images={"/img/web2.qcow2": []}, sync_error="fsync: Input/output error")
    out, _w = identity.reset_batch([item("web1"), item("web2")], cfg(), False, apps)
    assert out["web1"] == dict(
        ok=False, error="identity reset: syncing the clone disks failed: fsync: Input/output error"
    )
    assert "Cannot mount /dev/sdb1" in out["web2"]["error"] and "identity.mounts" in out["web2"]["error"]


def test_a_first_clone_without_a_linux_root_fails_the_batch_asking_for_mounts():
    apps = Appliances(images={"/img/web1.qcow2": [FS(fstype="vfat", uuid="ESP")]})
    out, _w = identity.reset_batch([item("web1"), item("web2")], cfg(), False, apps)
    for o in out.values():
        assert not o["ok"] and "No Linux root filesystem (one holding /etc)" in o["error"], o
        assert "/dev/sda1 (vfat)" in o["error"] and "identity.mounts" in o["error"]
    assert apps.root("/img/web2.qcow2").text("/etc/hostname") == "virtops-base\n"  # nothing written


def test_the_layout_follows_the_first_clones_fstab_to_each_clones_own_devices():
    def disk():
        root = debian()
        root.add(
            "/etc/fstab",
            "# comment\nUUID=root-of-the-template / ext4 defaults 0 1\n"
            "UUID=var-fs /var ext4 defaults 0 2\n/dev/vdb1 none swap sw 0 0\n",
        )
        root.mkdir_p("/var")
        var = FS(uuid="var-fs")
        var.add("/log/messages", "old log\n")
        return [root, var]

    apps = Appliances(images={"/img/web1.qcow2": disk(), "/img/web2.qcow2": disk()})
    out, _w = identity.reset_batch([item("web1"), item("web2")], cfg(operations=["logfiles"]), False, apps)
    assert all(o["ok"] for o in out.values()), out
    for n in ("web1", "web2"):
        assert apps.images[f"/img/{n}.qcow2"][1].files["/log/messages"][0] == b""  # /var mounted, log truncated
    mounts = [e for e in apps.handles[0].events if e[0] == "mount"]
    assert mounts == [
        ("mount", "/dev/sda1", "/"),
        ("mount", "/dev/sda2", "/var"),
        ("mount", "/dev/sdb1", "/"),
        ("mount", "/dev/sdb2", "/var"),
    ]


# --------------------------------------------------------------------------- CloneManager end to end

TPL = "ut-tpl"


def manager(conn, tmp_path, apps, check_mode=False, **params):
    params.setdefault("template", TPL)
    return fakes.clone_manager(conn, tmp_path, check_mode, handle_factory=apps, **params)


def files_in(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "lock")


def recorded(conn, name: str) -> dict | None:
    return dx.provenance(dx.parse(conn.lookupByName(name).XMLDesc(0)))["identity"]


ROLE = dict(path="/etc/virtops/role", content="fleet\n", mode="0600", owner="alice")


def test_check_mode_plans_the_reset_and_launches_nothing(conn, tpl, tmp_path):
    apps = Appliances()
    before = files_in(tmp_path)
    res = manager(
        conn,
        tmp_path,
        apps,
        check_mode=True,
        clones=["ut-a", {"name": "ut-b", "hostname": "web-b", "files": [dict(path="/etc/b", content="b")]}],
        identity=dict(files=[ROLE]),
    ).run()
    assert res["changed"] is True
    assert {c["name"]: c["identity"] for c in res["clones"]} == {
        "ut-a": dict(hostname="ut-a", planned=list(OPERATIONS), files=["/etc/virtops/role"]),
        "ut-b": dict(hostname="web-b", planned=list(OPERATIONS), files=["/etc/virtops/role", "/etc/b"]),
    }
    assert apps.handles == []
    assert files_in(tmp_path) == before and "ut-a" not in [d.name() for d in conn.listAllDomains()]


def test_chunks_keep_every_appliance_under_the_drive_limit():
    items = [Item(action="create", spec={}, name=f"c{i}", disks=[{}] * (2 if i % 3 == 0 else 1)) for i in range(300)]
    cut = identity.chunks(items)
    assert [i.name for c in cut for i in c] == [i.name for i in items]  # in order, each once
    assert all(sum(len(i.disks) for i in c) <= identity.MAX_DRIVES for c in cut)
    assert len(cut) == 2
    assert identity.chunks(items[:3], limit=2) == [[items[0]], [items[1], items[2]]]
    assert identity.chunks([]) == []


def test_a_batch_over_the_drive_limit_is_reset_in_several_appliances(conn, tpl, tmp_path, monkeypatch):
    """300 new clones hit libguestfs's 255 drives in one appliance; here the limit is 2 and 3 clones."""
    monkeypatch.setattr(identity, "MAX_DRIVES", 2)
    apps = Appliances()
    res = manager(conn, tmp_path, apps, clones=["ut-a", "ut-b", "ut-c"]).run()
    assert res["changed"] is True
    assert sorted(c["name"] for c in res["clones"] if c["identity"]["done"] == list(OPERATIONS)) == [
        "ut-a",
        "ut-b",
        "ut-c",
    ]
    assert [len(h.drives) for h in apps.handles] == [2, 1]
    assert res["identity_appliances"] == 2  # the result says so
    for name in ("ut-a", "ut-b", "ut-c"):
        assert apps.root(tmp_path / f"{name}.qcow2").text("/etc/hostname") == f"{name}\n"
        assert recorded(conn, name)["done"] == list(OPERATIONS)


def test_three_hundred_new_clones_at_the_real_drive_limit(conn, tpl, tmp_path):
    """Any batch size (issue 28): 300 new clones of one disk each are reset in two appliances (250 + 50 drives),
    as check mode predicts; each clone gets its own hostname."""
    names = [f"ut-{i:03d}" for i in range(300)]
    apps = Appliances()
    check = manager(conn, tmp_path, apps, check_mode=True, clones=names).run()
    assert check["identity_appliances"] == 2 and apps.handles == []
    res = manager(conn, tmp_path, apps, clones=names).run()
    assert res["changed"] is True and res["identity_appliances"] == 2
    assert [len(h.drives) for h in apps.handles] == [250, 50]
    assert apps.root(tmp_path / "ut-299.qcow2").text("/etc/hostname") == "ut-299\n"
    assert all(c["identity"]["hostname"] == c["name"] for c in res["clones"])


def test_a_run_resets_records_and_a_rerun_is_unchanged(conn, tpl, tmp_path):
    apps = Appliances()
    kw = dict(
        clones=["ut-a", {"name": "ut-b", "hostname": "web-b"}], xml_dir=str(tmp_path), identity=dict(files=[ROLE])
    )
    res = manager(conn, tmp_path, apps, **kw).run()
    assert res["changed"] is True
    assert len(apps.handles) == 1 and apps.handles[0].launches == 1 and res["identity_appliances"] == 1
    assert apps.handles[0].drives == [
        (str(tmp_path / "ut-a.qcow2"), {"readonly": False, "format": "qcow2"}),
        (str(tmp_path / "ut-b.qcow2"), {"readonly": False, "format": "qcow2"}),
    ]
    assert str(tpl) not in apps.images  # never the base
    assert apps.root(tmp_path / "ut-a.qcow2").text("/etc/hostname") == "ut-a\n"
    assert apps.root(tmp_path / "ut-b.qcow2").text("/etc/hostname") == "web-b\n"
    assert apps.root(tmp_path / "ut-b.qcow2").files["/etc/virtops/role"] == [b"fleet\n", 0o600, 1000, 1000]
    entries = {c["name"]: c for c in res["clones"]}
    for name, host in (("ut-a", "ut-a"), ("ut-b", "web-b")):
        want = dict(hostname=host, done=list(OPERATIONS), skipped=[], files=["/etc/virtops/role"])
        assert recorded(conn, name) == want
        xml_file = dx.parse((tmp_path / f"{name}.xml").read_text())
        assert dx.provenance(xml_file)["identity"] == want
        got = entries[name]["identity"]
        assert {k: got[k] for k in want} == want
        assert got["root"] in ("/dev/sda1", "/dev/sdb1") and set(got["details"]) == set(OPERATIONS)

    again = manager(conn, tmp_path, apps, **kw).run()
    assert again["changed"] is False
    assert len(apps.handles) == 1 and again["identity_appliances"] == 0
    assert {c["name"]: c["identity"]["hostname"] for c in again["clones"]} == {"ut-a": "ut-a", "ut-b": "web-b"}
    assert manager(conn, tmp_path, apps, check_mode=True, **kw).run()["changed"] is False


def test_a_clone_that_existed_is_not_touched(conn, tpl, tmp_path):
    apps = Appliances()
    manager(conn, tmp_path, apps, name="ut-a", identity=dict(operations=[])).run()
    assert apps.handles == [] and recorded(conn, "ut-a") is None
    res = manager(conn, tmp_path, apps, clones=["ut-a", "ut-b"]).run()
    assert [d[0] for d in apps.handles[0].drives] == [str(tmp_path / "ut-b.qcow2")]
    assert str(tmp_path / "ut-a.qcow2") not in apps.images
    assert recorded(conn, "ut-a") is None and recorded(conn, "ut-b")["hostname"] == "ut-b"
    entries = {c["name"]: c for c in res["clones"]}
    assert "identity" not in entries["ut-a"] and entries["ut-b"]["identity"]["done"] == list(OPERATIONS)


def test_a_failed_reset_rolls_that_clone_back(conn, tpl, tmp_path):
    apps = Appliances(images={str(tmp_path / "ut-bad.qcow2"): []})
    m = manager(conn, tmp_path, apps, clones=["ut-ok1", "ut-bad", "ut-ok2"], xml_dir=str(tmp_path))
    with pytest.raises(KvmError, match=r"1 of 3 clone\(s\) failed \(ut-bad\).*ut-bad: identity reset: Cannot mount"):
        m.run()
    names = {d.name() for d in conn.listAllDomains()}
    assert {"ut-ok1", "ut-ok2"} <= names and "ut-bad" not in names
    assert not (tmp_path / "ut-bad.qcow2").exists() and not (tmp_path / "ut-bad.xml").exists()
    assert (tmp_path / "ut-ok1.qcow2").exists() and (tmp_path / "ut-ok2.xml").exists()
    assert recorded(conn, "ut-ok2")["hostname"] == "ut-ok2"
    assert len(apps.handles) == 1 and len(apps.handles[0].drives) == 3


def test_a_failed_reset_is_in_the_error_details(conn, tpl, tmp_path):
    apps = Appliances(images={str(tmp_path / "ut-bad.qcow2"): []})
    with pytest.raises(KvmError) as info:
        manager(conn, tmp_path, apps, clones=["ut-ok", "ut-bad"]).run()
    assert info.value.details["failed_clones"] == ["ut-bad"]
    entries = {c["name"]: c for c in info.value.details["clones"]}
    assert entries["ut-bad"]["failed"] is True and entries["ut-bad"]["state"] == "absent"
    assert "mounts" in entries["ut-bad"]["msg"]
    assert entries["ut-ok"]["state"] == "present" and entries["ut-ok"]["identity"]["hostname"] == "ut-ok"


def test_no_operations_and_no_files_never_launch(conn, tpl, tmp_path):
    apps = Appliances()
    res = manager(conn, tmp_path, apps, clones=["ut-a", "ut-b"], identity=dict(operations=[])).run()
    assert apps.handles == []
    assert all("identity" not in c for c in res["clones"])
    assert recorded(conn, "ut-a") is None


def test_a_clone_name_that_is_no_host_name(conn, tpl, tmp_path):
    apps = Appliances()
    before = files_in(tmp_path)
    with pytest.raises(
        InvalidInput, match=r"The name of clone 'ut_a' \(its hostname, as none is given\) is 'ut_a': .*RFC 1123"
    ):
        manager(conn, tmp_path, apps, name="ut_a").run()
    assert files_in(tmp_path) == before and apps.handles == []
    manager(conn, tmp_path, apps, clones=[{"name": "ut_a", "hostname": "ut-a"}]).run()
    assert apps.root(tmp_path / "ut_a.qcow2").text("/etc/hostname") == "ut-a\n"


def test_an_appliance_that_does_not_launch_fails_every_new_clone(conn, tpl, tmp_path):
    apps = Appliances(launch_error="cannot find any suitable libguestfs supermin appliance")
    with pytest.raises(KvmError, match=r"2 of 2 clone\(s\) failed \(ut-a, ut-b\).*supermin") as info:
        manager(conn, tmp_path, apps, clones=["ut-a", "ut-b"], identity=dict(force_tcg="yes")).run()
    assert apps.handles[0].settings == ["force_tcg"]
    assert files_in(tmp_path) == ["base.qcow2"]
    assert "ut-a" not in {d.name() for d in conn.listAllDomains()}
    assert info.value.details["failed_clones"] == ["ut-a", "ut-b"]
